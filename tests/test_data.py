"""Real shipped datasets and the synthetic generator."""

import numpy as np
import pytest
import torch

from mmfl.config import DataConfig
from mmfl.data.splits import load_dataset
from mmfl.data.loaders import load_raw
from mmfl.errors import DataError


def test_mfeat_reads_six_views_from_the_installed_package():
    raw = load_raw(DataConfig(name="mfeat", modalities=["fou", "fac", "kar", "pix", "zer", "mor"]))
    shapes = {s.name: s.shape for s in raw.specs}
    assert shapes == {"fou": (76,), "fac": (216,), "kar": (64,), "pix": (1, 16, 15), "zer": (47,), "mor": (6,)}
    assert raw.num_classes == 10
    assert np.bincount(raw.labels).tolist() == [200] * 10
    assert {s.name: s.kind for s in raw.specs}["pix"] == "image"


def test_mfeat_split_is_stratified_fixed_and_normalised_on_train_only():
    cfg = DataConfig(name="mfeat")
    train, test = load_dataset(cfg)
    train2, test2 = load_dataset(cfg)
    assert len(train) == 1600 and len(test) == 400
    assert np.bincount(test.labels.numpy()).tolist() == [40] * 10
    assert torch.equal(test.inputs["fou"], test2.inputs["fou"])
    # feature-wise standardisation uses training statistics: train means ~0, test means not exactly 0
    assert train.inputs["fou"].mean(0).abs().max() < 1e-4
    assert test.inputs["fou"].mean(0).abs().max() > 1e-4
    other = load_dataset(DataConfig(name="mfeat", split_seed=1))[1]
    assert not torch.equal(other.labels, test.labels) or not torch.equal(other.inputs["fou"], test.inputs["fou"])


def test_basicmotions_has_accelerometer_and_gyroscope_series():
    train, test = load_dataset(DataConfig(name="basicmotions", test_fraction=0.25))
    assert train.names == ("accelerometer", "gyroscope")
    assert train.inputs["accelerometer"].shape[1:] == (3, 100)
    assert train.spec.num_classes == 4
    assert len(train) + len(test) == 80
    assert np.bincount(test.labels.numpy()).tolist() == [5, 5, 5, 5]


def test_synthetic_is_seeded_and_class_informative():
    cfg = DataConfig(name="synthetic")
    a, _ = load_dataset(cfg)
    b, _ = load_dataset(cfg)
    assert torch.equal(a.inputs["a"], b.inputs["a"]) and torch.equal(a.labels, b.labels)
    # class means are far apart relative to noise: nearest-class-mean classification works well
    x, y = a.inputs["a"], a.labels
    means = torch.stack([x[y == c].mean(0) for c in range(a.spec.num_classes)])
    acc = (torch.cdist(x, means).argmin(1) == y).float().mean()
    assert acc > 0.8


def test_unknown_modality_is_a_clear_error():
    with pytest.raises(DataError, match=r"data.modalities: 'audio' is not a modality of mfeat"):
        load_raw(DataConfig(name="mfeat", modalities=["pix", "audio"]))
    with pytest.raises(DataError, match="at least two distinct"):
        load_raw(DataConfig(name="mfeat", modalities=["pix", "pix"]))


def test_missing_dataset_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="mfeat-pix.csv not found"):
        load_raw(DataConfig(name="mfeat", path=str(tmp_path)))
