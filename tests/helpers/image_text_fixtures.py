"""Tiny datasets written in the real UPMC Food-101 and MM-IMDB directory layouts.

Images are small JPEGs whose colour depends on the class (plus noise), texts mention a
class-specific word, so that a model can learn something from either modality.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from mmfl.methods import parse_experiment

PALETTE = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40), (220, 40, 220), (40, 220, 220),
           (120, 60, 20), (250, 250, 250), (10, 10, 10), (128, 128, 128)]
WORDS = ["tomato", "basil", "blueberry", "lemon", "beet", "mint", "chocolate", "rice", "squid", "mushroom"]


def _jpeg(path: Path, colour: tuple[int, int, int], rng: np.random.Generator, size: int = 20) -> None:
    from PIL import Image

    arr = np.clip(np.array(colour, dtype=np.float64) + rng.normal(0, 25, size=(size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=90)


def write_food101(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """``counts``: class name -> samples; every 4th sample goes to the test split."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list[list[str]]] = {"train": [], "test": []}
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            split = "test" if i % 4 == 3 else "train"
            file = f"{name}_{i}.jpg"
            _jpeg(root / "images" / split / name / file, PALETTE[c % len(PALETTE)], rng)
            rows[split].append([file, f"Homemade {WORDS[c % len(WORDS)]} dish, recipe number {i}", name])
    (root / "texts").mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        with (root / "texts" / f"{split}_titles.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows(items)
    return root


def write_mmimdb(root: Path, movies: list[list[str]], seed: int = 0) -> Path:
    """``movies``: the genre list of each movie; the first genre picks colour and plot word."""
    rng = np.random.default_rng(seed)
    genres = sorted({g for gs in movies for g in gs})
    ids = []
    for i, gs in enumerate(movies):
        mid = f"{1000000 + i:07d}"
        ids.append(mid)
        c = genres.index(gs[0])
        _jpeg(root / "dataset" / f"{mid}.jpeg", PALETTE[c % len(PALETTE)], rng)
        doc = {"plot": [f"A story about {WORDS[c % len(WORDS)]} and friends, part {i}."], "genres": gs,
               "title": f"Movie {i}"}
        (root / "dataset" / f"{mid}.json").write_text(json.dumps(doc))
    split = {"train": ids[: len(ids) * 3 // 4], "dev": [], "test": ids[len(ids) * 3 // 4 :]}
    (root / "split.json").write_text(json.dumps(split))
    return root


TINY_BACKBONE = {"image_size": 16, "patch_size": 8, "max_text_len": 12}


def tiny_food101_runs(tmp_path: Path, method: str, params: dict, rounds: int) -> tuple:
    """(pipeline config, reference config) of a foundation method on a tiny Food-101 fixture.

    Both train the same experiment (same id) into different local stores: ``pipe`` and ``ref``.
    """
    from tests.conftest import tiny_config_dict

    food = write_food101(tmp_path / "food", {f"c{i}": 8 for i in range(3)})
    raw = tiny_config_dict(
        tmp_path,
        data={"name": "food101", "path": str(food), "image_text": {"image_size": 16, "max_text_len": 12}},
        partition={"scheme": "iid", "num_clients": 2, "min_client_size": 4},
        method={"name": method, "params": {"backbone": TINY_BACKBONE, **params}},
        train={"rounds": rounds, "local_epochs": 1, "batch_size": 8, "lr": 0.01},
    )
    return (parse_experiment({**raw, "storage": {"kind": "local", "root": str(tmp_path / "pipe")}}),
            parse_experiment({**raw, "storage": {"kind": "local", "root": str(tmp_path / "ref")}}))
