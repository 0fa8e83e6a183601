"""Fixed stratified train/test split and train-statistics normalisation."""

from __future__ import annotations

import numpy as np
import torch

from mmfl.config import DataConfig
from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.data.loaders import load_raw
from mmfl.errors import ConfigError


def load_dataset(cfg: DataConfig) -> tuple[MultimodalDataset, MultimodalDataset]:
    """Return (train, test), both complete; the split depends only on ``split_seed``.

    Each modality is standardised with statistics of the training part only: per feature for
    vectors (with a floor on the deviation so near-constant features do not explode on unseen
    samples), per channel for images and series (so pixels keep their spatial relations).
    """
    from sklearn.model_selection import train_test_split  # with scipy and pandas: a second to import

    raw = load_raw(cfg)
    idx = np.arange(len(raw.labels))
    try:
        train_idx, test_idx = train_test_split(
            idx, test_size=cfg.test_fraction, stratify=raw.labels, random_state=cfg.split_seed
        )
    except ValueError as exc:  # too few samples on one side for a stratified split
        raise ConfigError(f"data.test_fraction = {cfg.test_fraction:g}: no stratified split of {len(idx)} samples "
                          f"of {raw.num_classes} classes ({str(exc).splitlines()[0][:160]})") from None
    train_idx.sort()
    test_idx.sort()
    spec = DataSpec(tuple(raw.specs), raw.num_classes, tuple(raw.class_names or ()))
    train_inputs, test_inputs = {}, {}
    for m in raw.specs:
        x = raw.arrays[m.name]
        if np.issubdtype(x.dtype, np.integer):  # token ids: categorical, never standardised
            train_inputs[m.name] = torch.from_numpy(np.ascontiguousarray(x[train_idx]))
            test_inputs[m.name] = torch.from_numpy(np.ascontiguousarray(x[test_idx]))
            continue
        axes = (0,) if m.kind == "vector" else tuple(a for a in range(x.ndim) if a != 1)
        mean = x[train_idx].mean(axis=axes, keepdims=True)
        std = x[train_idx].std(axis=axes, keepdims=True)
        std = np.maximum(std, 0.05 * float(std.mean()) + 1e-6)
        z = ((x - mean) / std).astype(np.float32)
        train_inputs[m.name] = torch.from_numpy(np.ascontiguousarray(z[train_idx]))
        test_inputs[m.name] = torch.from_numpy(np.ascontiguousarray(z[test_idx]))
    labels = torch.from_numpy(raw.labels)
    return (
        MultimodalDataset(spec, train_inputs, labels[train_idx]),
        MultimodalDataset(spec, test_inputs, labels[test_idx]),
    )
