"""MM-IMDB (Arevalo et al., 2017): movie posters with plots, multi-label genres.

Layout read from ``data.path`` (as distributed; the ``dataset/`` level is optional)::

    dataset/<id>.jpeg
    dataset/<id>.json     {"plot": ["..."], "genres": ["Drama", ...], ...}
    split.json            {"train": [ids], "dev": [ids], "test": [ids]}   (optional: ids to read)

Labels follow FED-PRIME's preparation of MM-IMDB: a movie is kept only when exactly one of its
genres belongs to the dataset's 23 genres (``GENRES``; other listed genres are ignored), that genre
is its label, and the ``data.image_text.top_classes`` most frequent of these labels are kept (the
paper uses 8), numbered by frequency. The official script counts the frequencies separately per
split file (train + dev, then test); mmfl reads all listed movies and splits them itself, so it
counts once over all of them. The text is the first plot.
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

GENRES = (
    "Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror", "Documentary", "Mystery",
    "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History", "Music", "Animation", "Musical", "Western",
    "Sport", "Short", "Film-Noir",
)
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
        known = {str(g) for g in genres} & set(GENRES)
        if len(known) == 1:  # single-genre movies only
            movies.append((mid, known.pop(), str(plot[0]) if plot else ""))
    counts = Counter(genre for _, genre, _ in movies)
    if not counts:
        raise DataError(f"data.path = {cfg.path!r}: no movie has exactly one of the {len(GENRES)} MM-IMDB genres")
    if opts.top_classes is not None and opts.top_classes > len(counts):
        raise DataError(f"data.image_text.top_classes = {opts.top_classes}: only {len(counts)} single-genre classes present")
    ranked = [g for g, _ in sorted(counts.items(), key=lambda kv: (-kv[1], GENRES.index(kv[0])))]
    classes = ranked[: opts.top_classes] if opts.top_classes else ranked
    images, texts, labels, taken = [], [], [], Counter()
    for mid, label, plot in movies:
        if label not in classes or (opts.max_per_class is not None and taken[label] >= opts.max_per_class):
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
