"""MM-IMDB (Arevalo et al., 2017): movie posters with plots, multi-label genres.

Layout read from ``data.path`` (as distributed; the ``dataset/`` level is optional)::

    dataset/<id>.jpeg
    dataset/<id>.json     {"plot": ["..."], "genres": ["Drama", ...], ...}
    split.json            {"train": [ids], "dev": [ids], "test": [ids]}   (optional: ids to read)

mmfl trains single-label classifiers, so a movie's label is the first of its listed genres that
belongs to the kept classes (``data.image_text.top_classes``: most frequent genres counted over all
listed genres; FED-PRIME uses 8); movies with no kept genre are dropped. The text is the first plot.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from mmfl.config import DataConfig
from mmfl.data.image_text import load_image, require_dir, tokenize
from mmfl.data.dataset import RawData
from mmfl.data.dataset import ModalitySpec
from mmfl.errors import DataError

LAYOUT = "dataset/<id>.jpeg + dataset/<id>.json with plot and genres (+ split.json)"


def load_mmimdb(cfg: DataConfig) -> RawData:
    opts = cfg.image_text
    root = require_dir(cfg.path, "mmimdb", LAYOUT)
    folder = root / "dataset" if (root / "dataset").is_dir() else root
    split_file = root / "split.json"
    if split_file.is_file():
        try:
            split = json.loads(split_file.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{split_file}: not valid JSON ({exc})") from None
        ids = [str(i) for part in ("train", "dev", "test") for i in split.get(part, [])]
    else:
        ids = sorted(p.stem for p in folder.glob("*.json"))
    if not ids:
        raise DataError(f"data.path = {cfg.path!r}: no movies found ({LAYOUT})")
    movies = []
    for mid in ids:
        meta_file = folder / f"{mid}.json"
        try:
            meta = json.loads(meta_file.read_text())
        except FileNotFoundError:
            raise DataError(f"mmimdb: {meta_file} not found") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{meta_file}: not valid JSON ({exc})") from None
        genres, plot = meta.get("genres") or [], meta.get("plot") or [""]
        if not isinstance(genres, list) or not isinstance(plot, list):
            raise DataError(f"{meta_file}: 'genres' and 'plot' must be lists")
        movies.append((mid, [str(g) for g in genres], str(plot[0]) if plot else ""))
    counts = Counter(g for _, genres, _ in movies for g in genres)
    if opts.top_classes is not None and opts.top_classes > len(counts):
        raise DataError(f"data.image_text.top_classes = {opts.top_classes}: only {len(counts)} genres present")
    ranked = [g for g, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    classes = ranked[: opts.top_classes] if opts.top_classes else sorted(counts)
    images, texts, labels, taken = [], [], [], Counter()
    for mid, genres, plot in movies:
        label = next((g for g in genres if g in classes), None)
        if label is None or (opts.max_per_class is not None and taken[label] >= opts.max_per_class):
            continue
        image = folder / f"{mid}.jpeg"
        if not image.is_file():
            raise DataError(f"mmimdb: poster {image} not found")
        taken[label] += 1
        images.append(load_image(image, opts.image_size))
        texts.append(plot)
        labels.append(classes.index(label))
    s = opts.image_size
    specs = [ModalitySpec("image", (3, s, s), "image"), ModalitySpec("text", (opts.max_text_len,), "tokens")]
    return RawData(specs, {"image": np.stack(images), "text": tokenize(texts, opts)},
                   np.asarray(labels, dtype=np.int64), len(classes))
