"""Dataset readers by ``data.name``. The readers of optional datasets import their modules on use."""

from __future__ import annotations

from mmfl.config import DataConfig
from mmfl.data.dataset import RawData
from mmfl.data.sources import load_basicmotions, load_mfeat, load_synthetic


def _load_food101(cfg: DataConfig) -> RawData:
    from mmfl.data.food101 import load_food101

    return load_food101(cfg)


def _load_mmimdb(cfg: DataConfig) -> RawData:
    from mmfl.data.mmimdb import load_mmimdb

    return load_mmimdb(cfg)


def _load_mfeat_text(cfg: DataConfig) -> RawData:
    from mmfl.data.minilm_text import load_mfeat_text

    return load_mfeat_text(cfg)


def _load_cub200(cfg: DataConfig) -> RawData:
    from mmfl.data.captioned import load_cub200

    return load_cub200(cfg)


def _load_flowers102(cfg: DataConfig) -> RawData:
    from mmfl.data.captioned import load_flowers102

    return load_flowers102(cfg)


LOADERS = {"mfeat": load_mfeat, "basicmotions": load_basicmotions, "synthetic": load_synthetic,
           "food101": _load_food101, "mmimdb": _load_mmimdb, "mfeat_text": _load_mfeat_text,
           "cub200": _load_cub200, "flowers102": _load_flowers102}


def load_raw(cfg: DataConfig) -> RawData:
    return LOADERS[cfg.name](cfg)
