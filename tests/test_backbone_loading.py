"""``from_pretrained`` loading of frozen backbones from a directory or through the artifact store."""

from __future__ import annotations

import pytest
import torch

from mmfl.errors import ConfigError
from mmfl.io.store import LocalStore
from mmfl.models.backbones import BackboneConfig, load_vilt, resolve_pretrained
from mmfl.methods import parse_experiment


def test_pretrained_vilt_from_dir_and_from_store(tmp_path):
    tiny = BackboneConfig(image_size=16, patch_size=8, max_text_len=12, seed=7)
    original = load_vilt(tiny)
    saved = tmp_path / "vilt"
    original.save_pretrained(saved)
    store = LocalStore(tmp_path / "store")
    for f in saved.iterdir():
        store.put_bytes(f"models/vilt/{f.name}", f.read_bytes())

    ids = torch.tensor([[101, 2000, 102, 0]])
    px = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref = original(input_ids=ids, pixel_values=px).pooler_output
        from_dir = load_vilt(BackboneConfig(source="pretrained", path=str(saved), image_size=16))
        assert not any(p.requires_grad for p in from_dir.parameters())
        assert torch.allclose(from_dir(input_ids=ids, pixel_values=px).pooler_output, ref, atol=1e-6)
        local = resolve_pretrained("store://models/vilt", store, cache_dir=str(tmp_path / "cache"))
        assert sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()) == sorted(f.name for f in saved.iterdir())
        from_store = load_vilt(BackboneConfig(source="pretrained", path=local, image_size=16))
        assert torch.allclose(from_store(input_ids=ids, pixel_values=px).pooler_output, ref, atol=1e-6)


def test_pretrained_path_errors(tmp_path):
    with pytest.raises(ConfigError, match="backbone.path"):
        resolve_pretrained(None)
    with pytest.raises(ConfigError, match="no files"):
        resolve_pretrained("store://models/none", LocalStore(tmp_path))
    with pytest.raises(ConfigError, match="needs an artifact store"):
        resolve_pretrained("store://models/none", None)
    assert resolve_pretrained("dandelin/vilt-b32-mlm") == "dandelin/vilt-b32-mlm"  # hub ids pass through


def test_fedprime_reads_a_store_backbone_through_the_experiment_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFL_CACHE", str(tmp_path / "cache"))
    from mmfl.engine import steps
    from tests.conftest import tiny_config_dict
    from tests.helpers.image_text_fixtures import write_food101

    tiny = BackboneConfig(image_size=16, patch_size=8, max_text_len=12, seed=11)
    saved = tmp_path / "vilt"
    load_vilt(tiny).save_pretrained(saved)
    store = LocalStore(tmp_path / "store")
    for f in saved.iterdir():
        store.put_bytes(f"models/vilt11/{f.name}", f.read_bytes())
    food = write_food101(tmp_path / "food", {"a": 6, "b": 6})
    cfg = parse_experiment(tiny_config_dict(
        tmp_path,
        data={"name": "food101", "path": str(food), "image_text": {"image_size": 16, "max_text_len": 12}},
        partition={"scheme": "iid", "num_clients": 2, "min_client_size": 4},
        method={"name": "fedprime", "params": {"pool_size": 2, "top_k": 1, "backbone": {
            "source": "pretrained", "path": "store://models/vilt11", "image_size": 16, "max_text_len": 12}}},
    ))
    data = steps.prepare_data(cfg)
    state = steps.init_state(cfg, data.spec)
    assert not any("embeddings" in k for k in state.tensors)  # the loaded backbone is not state
    assert any((tmp_path / "cache" / "backbones").rglob("model.safetensors"))

