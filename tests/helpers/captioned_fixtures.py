"""Tiny CUB-200-2011 and Oxford Flowers-102 copies in their published layouts, ten captions per image.

Images are small JPEGs coloured by class (plus noise); every caption mentions a class-specific
word, so either modality carries the label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.helpers.image_text_fixtures import PALETTE, WORDS, _jpeg

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross", "004.Groove_billed_Ani"]


def _captions(word: str, i: int) -> str:
    return "\n".join(f"this bird number {i} has {word} feathers, caption {k}." for k in range(10)) + "\n"


def write_cub200(root: Path, per_class: int, classes: int = 3, seed: int = 0) -> Path:
    """``root/CUB_200_2011/...`` and ``root/text_c10/...``; every other image is in the published train split."""
    rng = np.random.default_rng(seed)
    base = root / "CUB_200_2011"
    images, labels, splits = [], [], []
    for c, folder in enumerate(CUB_CLASSES[:classes]):
        for i in range(per_class):
            stem = f"{folder.split('.')[1]}_{i:04d}_{100 + i}"
            _jpeg(base / "images" / folder / f"{stem}.jpg", PALETTE[c], rng)
            (root / "text_c10" / folder).mkdir(parents=True, exist_ok=True)
            (root / "text_c10" / folder / f"{stem}.txt").write_text(_captions(WORDS[c], i))
            image_id = len(images) + 1
            images.append(f"{image_id} {folder}/{stem}.jpg")
            labels.append(f"{image_id} {c + 1}")
            splits.append(f"{image_id} {i % 2}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "classes.txt").write_text("\n".join(f"{c + 1} {f}" for c, f in enumerate(CUB_CLASSES[:classes])) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(splits) + "\n")
    return root


def write_flowers102(root: Path, per_class: int, classes: int = 3, seed: int = 0) -> Path:
    """``jpg/``, ``imagelabels.mat``, ``setid.mat`` and ``text_c10/class_NNNNN/``; images interleaved by class."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    labels = [c + 1 for i in range(per_class) for c in range(classes)]
    for number, c in enumerate(labels, start=1):
        _jpeg(root / "jpg" / f"image_{number:05d}.jpg", PALETTE[c - 1], rng)
        (root / "text_c10" / f"class_{c:05d}").mkdir(parents=True, exist_ok=True)
        (root / "text_c10" / f"class_{c:05d}" / f"image_{number:05d}.txt").write_text(
            _captions(WORDS[c - 1], number).replace("bird", "flower"))
    numbers = np.arange(1, len(labels) + 1)
    savemat(root / "imagelabels.mat", {"labels": np.asarray(labels, dtype=np.uint8)[None, :]})
    savemat(root / "setid.mat", {"trnid": numbers[0::3][None, :], "valid": numbers[1::3][None, :],
                                 "tstid": numbers[2::3][None, :]})
    return root
