"""FED-PRIME, FedAvg-P and FedMVP on cached frozen features: batch losses that padding cannot touch,
the hooks the vectorized engine trains them through, on tiny random-config backbones."""

from __future__ import annotations

import pytest
import torch

from mmfl.engine import steps
from tests import test_foundation_methods as foundation
from tests.test_foundation_methods import food_dir  # noqa: F401  (the Food-101 fixture)

PARAMS = {
    "fedprime": {"pool_size": 6, "top_k": 2, "match_steps": 5},
    "fedavg_p": {"prompt_length": 2, "prompt_layers": 2},
    "fedmvp": {"joint_dim": 16, "synthetic_samples": 16, "completion": "feature"},
}


def frozen_cfg(tmp_path, food_dir, method: str, **train):
    return foundation.food_cfg(tmp_path, food_dir, method, PARAMS[method], missing={"pattern": "mixed", "rate": 0.5},
                               train={"rounds": 1, "local_epochs": 2, "batch_size": 5, "lr": 0.05, **train})


def _setup(tmp_path, food_dir, method: str, **train):
    cfg = frozen_cfg(tmp_path, food_dir, method, **train)
    data = steps.prepare_data(cfg)
    state = steps.init_state(cfg, data.spec)
    ctx = steps.context(cfg, data.spec, 1, 0)
    m = steps.method_of(cfg)
    model = m.load_model(m.start_weights(state, ctx), ctx)
    return m, model, state, ctx, m.local_data(model, data.clients[0], state, ctx)


def _loss(method, model, batch, state, ctx):
    out = method.batch_loss(model, batch, state, ctx)
    loss, metrics = (out, {}) if isinstance(out, torch.Tensor) else out
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    return loss.detach(), {k: torch.as_tensor(v) for k, v in metrics.items()}, grads


@pytest.mark.parametrize("method", sorted(PARAMS))
def test_padding_rows_change_nothing_in_a_batch_loss(tmp_path, food_dir, method):
    """What the vectorized engine relies on: rows of weight 0 leave loss, metrics and gradients as they are."""
    m, model, state, ctx, data = _setup(tmp_path, food_dir, method)
    real = torch.arange(4)
    # Padding rows: the client's other samples, the first one repeated (any rows must do).
    padded = torch.cat([real, torch.arange(4, len(data)), torch.full((3,), 4)])
    batch = data.take(padded, "cpu")
    batch.weight = (torch.arange(len(padded)) < 4).float()
    loss, metrics, grads = _loss(m, model, data.take(real, "cpu"), state, ctx)
    p_loss, p_metrics, p_grads = _loss(m, model, batch, state, ctx)
    torch.testing.assert_close(p_loss, loss)
    assert set(p_metrics) == set(metrics)
    for k in metrics:
        torch.testing.assert_close(p_metrics[k], metrics[k])
    for g, p_g in zip(grads, p_grads):
        torch.testing.assert_close(p_g, g)


def test_fedmvp_leaves_a_frozen_space_projection_untouched_without_two_real_rows(tmp_path, food_dir):
    """A transfer-loss term needs two rows; without one, the projection into that modality's frozen
    space gets no update at all, its AdamW weight decay and moments included."""
    m, model, state, ctx, data = _setup(tmp_path, food_dir, "fedmvp", weight_decay=0.1)
    image = model.names.index("image")
    one_image = [i for i in range(len(data)) if data.present[i, image]][:1]
    rows = torch.tensor(one_image + [i for i in range(len(data)) if not data.present[i, image]][:3])
    batch = data.take(rows, "cpu")
    flags = m.updated_params(model, batch, ctx)
    assert not flags["to_frozen.image.weight"] and flags["to_frozen.text.weight"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = m.make_optimizer(model, ctx)
    m.local_step(model, batch, opt, state, ctx, before)
    after = dict(model.named_parameters())
    assert torch.equal(after["to_frozen.image.weight"], before["to_frozen.image.weight"])
    assert not torch.equal(after["to_frozen.text.weight"], before["to_frozen.text.weight"])
    assert not opt.state.get(after["to_frozen.image.weight"])


def test_cached_features_do_not_depend_on_the_clients_weights(tmp_path, food_dir):
    """The vectorized engine computes a client's LocalData with the global weights loaded."""
    for method in ("fedprime", "fedmvp"):
        m, model, state, ctx, data = _setup(tmp_path / method, food_dir, method)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        again = m.local_data(model, steps.prepare_data(frozen_cfg(tmp_path / method, food_dir, method)).clients[0],
                             state, ctx)
        assert set(again.extra) == set(data.extra) and all(torch.equal(again.extra[k], data.extra[k]) for k in data.extra)
        assert torch.equal(again.present, data.present)
