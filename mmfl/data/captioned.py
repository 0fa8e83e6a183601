"""CUB-200-2011 and Oxford Flowers-102 with the ten captions per image (FedMVP's datasets).

Both are read from ``data.path`` in their published layouts, the captions in the layout of Reed
et al. (2016, "Learning Deep Representations of Fine-Grained Visual Descriptions": ten sentences
per image, one per line, in ``text_c10/<class dir>/<image stem>.txt``).

CUB-200-2011 (Wah et al., 2011), 11,788 images of 200 bird species::

    CUB_200_2011/images.txt               <image id> <class dir>/<file>.jpg
    CUB_200_2011/image_class_labels.txt   <image id> <class id>
    CUB_200_2011/classes.txt              <class id> <NNN.Class_Name>
    CUB_200_2011/train_test_split.txt     <image id> <1 = train, 0 = test>
    CUB_200_2011/images/<class dir>/<file>.jpg
    text_c10/<class dir>/<stem>.txt       (or text/<class dir>/<stem>.txt)

Oxford Flowers-102 (Nilsback & Zisserman, 2008), 8,189 images of 102 flower species::

    jpg/image_NNNNN.jpg
    imagelabels.mat                       labels: 1 x 8189, classes 1..102
    setid.mat                             trnid, valid, tstid: 1-based image numbers
    text_c10/class_NNNNN/image_NNNNN.txt
    cat_to_name.json                      optional {"1": "pink primrose", ...}; else the standard names

The published splits are read (``split`` of each record) but, as for the other datasets, mmfl
makes its own stratified split; FedMVP's 10,610 / 1,178 (CUB) and 7,370 / 819 (Flowers) are
90 / 10 splits of all images, i.e. ``data.test_fraction = 0.1``. The text modality is one of the
ten captions per image: ``data.image_text.caption_index`` (0-9), or by default one drawn per
image with ``data.split_seed``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmfl.config import DataConfig
from mmfl.data.image_text import load_image, require_dir, select_classes, tokenize
from mmfl.data.dataset import ModalitySpec, RawData
from mmfl.errors import DataError

CAPTIONS_PER_IMAGE = 10
DOMAINS = {"cub200": "bird", "flowers102": "flower"}
"""Super-class word of each dataset, the ``{domain}`` of FedMVP's prompt template."""

CUB_LAYOUT = "CUB_200_2011/{images,image_class_labels,classes,train_test_split}.txt, CUB_200_2011/images/, text_c10/"
FLOWERS_LAYOUT = "jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat, text_c10/class_NNNNN/"

FLOWERS102_NAMES = (
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold",
    "tiger lily", "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon", "colt's foot",
    "king protea", "spear thistle", "yellow iris", "globe-flower", "purple coneflower", "peruvian lily",
    "balloon flower", "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger",
    "grape hyacinth", "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke", "sweet william",
    "carnation", "garden phlox", "love in the mist", "mexican aster", "alpine sea holly", "ruby-lipped cattleya",
    "cape flower", "great masterwort", "siam tulip", "lenten rose", "barbeton daisy", "daffodil", "sword lily",
    "poinsettia", "bolero deep blue", "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion",
    "petunia", "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura", "geranium",
    "orange dahlia", "pink-yellow dahlia", "cautleya spicata", "japanese anemone", "black-eyed susan",
    "silverbush", "californian poppy", "osteospermum", "spring crocus", "bearded iris", "windflower",
    "tree poppy", "gazania", "azalea", "water lily", "rose", "thorn apple", "morning glory", "passion flower",
    "lotus", "toad lily", "anthurium", "frangipani", "clematis", "hibiscus", "columbine", "desert-rose",
    "tree mallow", "magnolia", "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "ball moss",
    "foxglove", "bougainvillea", "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower",
    "trumpet creeper", "blackberry lily",
)
"""Class names of Flowers-102 in label order (the distribution itself has numbers only)."""


@dataclass(frozen=True)
class CaptionedImage:
    image: Path
    label: str  # class name
    captions: tuple[str, ...]
    split: str  # the published split: train, val or test


def _rows(file: Path, fields: int) -> list[list[str]]:
    if not file.is_file():
        raise DataError(f"data.path: {file} not found")
    out = []
    for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=fields - 1)
        if len(parts) != fields:
            raise DataError(f"{file}:{lineno}: expected {fields} fields, got {len(parts)}")
        out.append(parts)
    return out


def read_captions(file: Path) -> tuple[str, ...]:
    """The ten captions of one image (one per line; blank lines skipped)."""
    if not file.is_file():
        raise DataError(f"captions {file} not found (text_c10 layout: ten lines per image)")
    lines = tuple(" ".join(x.split()) for x in file.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip())
    if len(lines) != CAPTIONS_PER_IMAGE:
        raise DataError(f"{file}: expected {CAPTIONS_PER_IMAGE} captions, got {len(lines)}")
    return lines


def _caption_root(root: Path, layout: str) -> Path:
    for name in ("text_c10", "text"):
        if (root / name).is_dir():
            return root / name
    raise DataError(f"data.path = {str(root)!r}: no text_c10/ (or text/) caption directory ({layout})")


def cub_class_name(folder: str) -> str:
    """'001.Black_footed_Albatross' -> 'black footed albatross'."""
    return folder.split(".", 1)[-1].replace("_", " ").lower()


def read_cub200(root: Path) -> list[CaptionedImage]:
    base = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
    texts = _caption_root(root if any((root / n).is_dir() for n in ("text_c10", "text")) else base, CUB_LAYOUT)
    images = dict(_rows(base / "images.txt", 2))
    labels = dict(_rows(base / "image_class_labels.txt", 2))
    classes = dict(_rows(base / "classes.txt", 2))
    split = dict(_rows(base / "train_test_split.txt", 2))
    out = []
    for image_id, rel in images.items():
        if image_id not in labels or labels[image_id] not in classes:
            raise DataError(f"{base / 'image_class_labels.txt'}: no class for image id {image_id}")
        folder = rel.split("/", 1)[0]
        captions = read_captions(texts / folder / (Path(rel).stem + ".txt"))
        out.append(CaptionedImage(base / "images" / rel, cub_class_name(classes[labels[image_id]]), captions,
                                  "train" if split.get(image_id, "1") == "1" else "test"))
    return out


def _mat(file: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    if not file.is_file():
        raise DataError(f"data.path: {file} not found ({FLOWERS_LAYOUT})")
    mat = loadmat(str(file))
    missing = [k for k in keys if k not in mat]
    if missing:
        raise DataError(f"{file}: no variable {missing[0]!r}")
    return {k: np.asarray(mat[k]).reshape(-1).astype(np.int64) for k in keys}


def read_flowers102(root: Path) -> list[CaptionedImage]:
    labels = _mat(root / "imagelabels.mat", ("labels",))["labels"]
    sets = _mat(root / "setid.mat", ("trnid", "valid", "tstid"))
    split = {int(i): name for key, name in (("trnid", "train"), ("valid", "val"), ("tstid", "test")) for i in sets[key]}
    names = list(FLOWERS102_NAMES)
    if (root / "cat_to_name.json").is_file():
        custom = json.loads((root / "cat_to_name.json").read_text())
        names = [str(custom.get(str(c), names[c - 1] if c <= len(names) else f"class {c}")) for c in range(1, len(names) + 1)]
    texts = _caption_root(root, FLOWERS_LAYOUT)
    out = []
    for number in sorted(split):
        if not 1 <= number <= len(labels):
            raise DataError(f"{root / 'setid.mat'}: image number {number} outside 1..{len(labels)}")
        c = int(labels[number - 1])
        if not 1 <= c <= len(names):
            raise DataError(f"{root / 'imagelabels.mat'}: label {c} of image {number} outside 1..{len(names)}")
        stem = f"image_{number:05d}"
        captions = read_captions(texts / f"class_{c:05d}" / f"{stem}.txt")
        out.append(CaptionedImage(root / "jpg" / f"{stem}.jpg", names[c - 1], captions, split[number]))
    return out


def _to_raw(records: list[CaptionedImage], cfg: DataConfig) -> RawData:
    opts = cfg.image_text
    if not records:
        raise DataError(f"data.path = {cfg.path!r}: no images listed")
    classes, keep = select_classes([r.label for r in records], opts)
    index = opts.caption_index
    if index is None:
        picks = np.random.default_rng(cfg.split_seed + 7_919).integers(0, CAPTIONS_PER_IMAGE, size=len(records))
    images, texts, labels = [], [], []
    for i in keep:
        r = records[i]
        if not r.image.is_file():
            raise DataError(f"{cfg.name}: image {r.image} does not exist")
        images.append(load_image(r.image, opts.image_size))
        texts.append(r.captions[index if index is not None else int(picks[i])])
        labels.append(classes.index(r.label))
    s = opts.image_size
    specs = [ModalitySpec("image", (3, s, s), "image"), ModalitySpec("text", (opts.max_text_len,), "tokens")]
    arrays = {"image": np.stack(images), "text": tokenize(texts, opts)}
    return RawData(specs, arrays, np.asarray(labels, dtype=np.int64), len(classes), class_names=classes)


def load_cub200(cfg: DataConfig) -> RawData:
    return _to_raw(read_cub200(require_dir(cfg.path, "cub200", CUB_LAYOUT)), cfg)


def load_flowers102(cfg: DataConfig) -> RawData:
    return _to_raw(read_flowers102(require_dir(cfg.path, "flowers102", FLOWERS_LAYOUT)), cfg)
