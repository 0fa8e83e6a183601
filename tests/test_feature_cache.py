"""Frozen backbones run once per sample: across rounds, across resumed runs, keyed by content."""

from __future__ import annotations

import torch

from mmfl.local import run_experiment
from mmfl.io.store import LocalStore
from mmfl.methods import resolve
from mmfl.models.backbones import load_clip, load_vilt
from mmfl.engine.resources import _RESOURCES as _CACHES
from mmfl.models.feature_cache import FeatureCache, cached_features, dataset_fingerprint
from mmfl.engine import steps
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict
from tests.helpers.image_text_fixtures import write_food101

BACKBONE = {"image_size": 16, "patch_size": 8, "max_text_len": 12}


class CountingEncoder:
    def __init__(self):
        self.rows = 0

    def __call__(self, inputs, present):
        self.rows += int(present.shape[0])
        return {"feat": inputs["x"].sum(dim=1, keepdim=True) * 2}


def test_cache_computes_each_sample_once_and_persists(tmp_path):
    store = LocalStore(tmp_path / "store")
    enc = CountingEncoder()
    x = {"x": torch.arange(40.0).reshape(10, 4)}
    present = torch.ones(10, 2, dtype=torch.bool)
    cache = FeatureCache(store)
    for _ in range(5):  # five "rounds"
        out = cached_features(cache, "bb", x, present, enc, batch_size=3)
    assert enc.rows == 10 and cache.computed_rows == 10
    assert torch.equal(out["feat"], x["x"].sum(1, keepdim=True) * 2)
    key = f"feature-cache/bb/{dataset_fingerprint(x, present)}.safetensors"
    assert store.exists(key)
    # Another process (fresh memory) with the same store reuses the entry.
    again = cached_features(FeatureCache(store), "bb", x, present, enc)
    assert enc.rows == 10 and torch.equal(again["feat"], out["feat"])
    # Different content or presence, or another backbone: a new entry.
    cached_features(cache, "bb", x, torch.zeros(10, 2, dtype=torch.bool), enc)
    cached_features(cache, "other", x, present, enc)
    assert enc.rows == 30


def _count_rows(module: torch.nn.Module, counter: list[int]):
    def hook(_mod, args, kwargs, _out):
        tensor = next(a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor))
        counter[0] += int(tensor.shape[0])

    return module.register_forward_hook(hook, with_kwargs=True)


def _food_cfg(tmp_path, method: str, rounds: int = 3):
    food = write_food101(tmp_path / "food", {f"c{i}": 8 for i in range(3)})
    return parse_experiment(tiny_config_dict(
        tmp_path,
        data={"name": "food101", "path": str(food), "image_text": {"image_size": 16, "max_text_len": 12}},
        partition={"scheme": "iid", "num_clients": 2, "min_client_size": 4},
        method={"name": method, "params": {"backbone": BACKBONE, "pool_size": 4, "top_k": 2} if method == "fedprime"
                else {"backbone": BACKBONE, "joint_dim": 16, "completion": "feature"}},
        train={"rounds": rounds, "local_epochs": 2, "batch_size": 8, "lr": 0.01},
    ))


def test_fedprime_backbone_embeds_each_sample_once_over_rounds(tmp_path):
    _CACHES.clear()
    cfg = _food_cfg(tmp_path, "fedprime")
    vilt = load_vilt(resolve(cfg).params.backbone)
    rows = [0]
    handle = _count_rows(vilt.embeddings, rows)
    try:
        run_experiment(cfg, progress=False, stop_after=1)
        data = steps.prepare_data(cfg)
        distinct = sum(len(s) for s in data.clients) + 3 * len(data.test)  # train shards + 3 test patterns
        assert rows[0] == distinct
        run_experiment(cfg, progress=False)  # rounds 2 and 3: nothing new to embed
        assert rows[0] == distinct
        _CACHES.clear()  # a new process, same artifact store
        cfg2 = cfg.model_copy(update={"name": "again"})
        run_experiment(cfg2, progress=False)
        assert rows[0] == distinct
    finally:
        handle.remove()


def test_fedmvp_clip_towers_run_once_per_sample(tmp_path):
    _CACHES.clear()
    cfg = _food_cfg(tmp_path, "fedmvp")
    clip = load_clip(resolve(cfg).params.backbone)
    img, txt = [0], [0]
    handles = [_count_rows(clip.vision_model, img), _count_rows(clip.text_model, txt)]
    try:
        run_experiment(cfg, progress=False)
        data = steps.prepare_data(cfg)
        distinct = sum(len(s) for s in data.clients) + 3 * len(data.test)
        assert img[0] == distinct and txt[0] == distinct
    finally:
        for h in handles:
            h.remove()
