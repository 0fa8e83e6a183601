"""UPMC Food-101 (Wang et al., 2015): recipe-page images with their page titles, 101 classes.

Layout read from ``data.path`` (as distributed)::

    images/<split>/<class>/<file>.jpg
    texts/<split>_titles.csv        rows: <file>,<text>,<class>   (no header; a header row is skipped)

for split in train, test. Both splits are read and pooled; mmfl makes its own stratified
train/test split (``data.test_fraction``). ``data.image_text.top_classes = 8`` gives the
FED-PRIME setting (the 8 most frequent classes).
"""

from __future__ import annotations

import csv

import numpy as np

from mmfl.config import DataConfig
from mmfl.data.image_text import load_image, require_dir, select_classes, tokenize
from mmfl.data.dataset import RawData
from mmfl.data.dataset import ModalitySpec
from mmfl.errors import DataError

LAYOUT = "images/<split>/<class>/<file>.jpg and texts/<split>_titles.csv"


def load_food101(cfg: DataConfig) -> RawData:
    opts = cfg.image_text
    root = require_dir(cfg.path, "food101", LAYOUT)
    records: list[tuple[str, str, str, str]] = []  # split, file, text, class
    for split in ("train", "test"):
        file = root / "texts" / f"{split}_titles.csv"
        if not file.is_file():
            continue
        with file.open(newline="", encoding="utf-8", errors="replace") as fh:
            for lineno, row in enumerate(csv.reader(fh), start=1):
                if not row or (lineno == 1 and not row[0].lower().endswith((".jpg", ".jpeg", ".png"))):
                    continue
                if len(row) < 3:
                    raise DataError(f"{file}:{lineno}: expected <file>,<text>,<class>, got {len(row)} fields")
                name, label = row[0], row[-1]
                records.append((split, name, ",".join(row[1:-1]), label))
    if not records:
        raise DataError(f"data.path = {cfg.path!r}: no texts/train_titles.csv or texts/test_titles.csv ({LAYOUT})")
    classes, keep = select_classes([r[3] for r in records], opts)
    images, texts, labels = [], [], []
    for i in keep:
        split, name, text, label = records[i]
        path = root / "images" / split / label / name
        if not path.is_file():
            raise DataError(f"food101: image {path} listed in texts/{split}_titles.csv does not exist")
        images.append(load_image(path, opts.image_size))
        texts.append(text)
        labels.append(classes.index(label))
    s = opts.image_size
    specs = [ModalitySpec("image", (3, s, s), "image"), ModalitySpec("text", (opts.max_text_len,), "tokens")]
    arrays = {"image": np.stack(images), "text": tokenize(texts, opts)}
    return RawData(specs, arrays, np.asarray(labels, dtype=np.int64), len(classes),
                   class_names=[c.replace("_", " ") for c in classes])
