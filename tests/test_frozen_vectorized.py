"""FED-PRIME, FedAvg-P and FedMVP on cached frozen features: batch losses that padding cannot touch,
the hooks the vectorized engine trains them through, on tiny random-config backbones."""

from __future__ import annotations

import pytest
import torch

from mmfl.engine import steps
from mmfl.engine import vectorized
from mmfl.engine.vectorized.method_trainer import MethodTrainer
from mmfl.engine.vectorized.stack import StackView
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


TOL = 1e-6


def _cfg(tmp_path, food_dir, method: str, engine: str, lr: float = 0.05, **params):
    return foundation.food_cfg(tmp_path, food_dir, method, {**PARAMS[method], **params},
                               partition={"scheme": "dirichlet", "alpha": 1.0, "num_clients": 4, "min_client_size": 4},
                               missing={"pattern": "mixed", "rate": 0.5},
                               train={"rounds": 2, "local_epochs": 2, "batch_size": 4, "lr": lr, "momentum": 0.9,
                                      "engine": engine, "vector_chunk": 4})


def _assert_same(loop, vec, tol=TOL, skip=lambda k: False):
    assert [u.client_id for u in loop] == [v.client_id for v in vec]
    for u, v in zip(loop, vec):
        assert u.num_samples == v.num_samples and set(u.tensors) == set(v.tensors)
        for k in u.tensors:
            if not skip(k):
                diff = float((u.tensors[k].double() - v.tensors[k].double()).abs().max())
                assert diff < tol, (u.client_id, k, diff)
        assert u.metrics.keys() == v.metrics.keys()
        for k in u.metrics:
            assert v.metrics[k] == pytest.approx(u.metrics[k], rel=tol, abs=tol), (u.client_id, k)


def _both(tmp_path, food_dir, method: str, rounds: list[list[int]], **params):
    """Each round's clients trained by the loop and by the vectorized engine from the same state;
    the next round starts from the loop's aggregate."""
    cfgs = {e: _cfg(tmp_path / e, food_dir, method, e, **params) for e in ("loop", "vectorized")}
    data = steps.prepare_data(cfgs["loop"])
    shards = dict(enumerate(data.clients))
    assert len({len(s) for s in shards.values()}) > 1  # unequal clients
    state = steps.init_state(cfgs["loop"], data.spec)
    out = []
    for ids in rounds:
        trainer = vectorized.trainer_for(steps.method_of(cfgs["vectorized"]), cfgs["vectorized"], state, shards[ids[0]])
        assert isinstance(trainer, MethodTrainer), trainer  # not the loop
        loop, vec = (steps.client_train(cfgs[e], state, shards, ids) for e in ("loop", "vectorized"))
        out.append((state, loop, vec))
        state = steps.aggregate(cfgs["loop"], state, loop)
    return out


@pytest.mark.parametrize("method", sorted(PARAMS))
def test_auto_is_the_default_and_trains_them_with_the_method_trainer(tmp_path, food_dir, method):
    cfg = frozen_cfg(tmp_path, food_dir, method)
    assert cfg.train.engine == "auto"
    data = steps.prepare_data(cfg)
    state = steps.init_state(cfg, data.spec)
    trainer = vectorized.trainer_for(steps.method_of(cfg), cfg, state, data.clients[0])
    if method == "fedmvp":  # its default AdamW differs beyond 1e-6 (see below): auto keeps the loop
        assert trainer is None
        sgd = foundation.food_cfg(tmp_path / "sgd", food_dir, method, {**PARAMS[method], "optimizer": "sgd"},
                                  missing={"pattern": "mixed", "rate": 0.5})
        trainer = vectorized.trainer_for(steps.method_of(sgd), sgd, state, data.clients[0])
    assert isinstance(trainer, MethodTrainer)


def test_fedprime_vectorized_equals_the_loop_with_personal_queries(tmp_path, food_dir):
    (_, loop1, vec1), (state, loop2, vec2) = _both(tmp_path, food_dir, "fedprime", [[0, 1, 2], [3, 0, 2]])
    _assert_same(loop1, vec1)
    # Round 2: clients 0 and 2 start from their own query projections, client 3 from the global ones,
    # over the matched inter pool (its size set by the server).
    assert "client/0/inter.query.weight" in state.tensors and "client/3/inter.query.weight" not in state.tensors
    _assert_same(loop2, vec2)
    for u in vec2:
        assert int(u.tensors["aux/inter_used"].sum()) == u.metrics["inter_retrieved"] >= 2


def test_fedavg_p_vectorized_equals_the_loop(tmp_path, food_dir):
    (_, loop, vec), = _both(tmp_path, food_dir, "fedavg_p", [[0, 1, 2, 3]])
    _assert_same(loop, vec)
    assert all(isinstance(v.tensors, StackView) for v in vec)  # the trained rows stay stacked


def test_fedmvp_vectorized_equals_the_loop(tmp_path, food_dir):
    (_, loop, vec), = _both(tmp_path, food_dir, "fedmvp", [[0, 1, 2, 3]], optimizer="sgd")
    _assert_same(loop, vec)


def test_fedmvp_with_adamw_vectorized_equals_the_loop_up_to_adams_noise(tmp_path, food_dir):
    """FedMVP's default AdamW divides each gradient coordinate by its own running scale, so
    coordinates whose exact gradient is zero (the attention's key bias: softmax ignores a shift of
    every key) take steps of up to lr from float rounding alone, in the loop as here; the key bias
    changes no output. Everything else, and the model's outputs, agree."""
    (state, loop, vec), = _both(tmp_path, food_dir, "fedmvp", [[0, 1, 2, 3]], lr=1e-3)
    key_bias = "model/encoder.layers.0.self_attn.in_proj_bias"
    _assert_same(loop, vec, tol=1e-5, skip=lambda k: k == key_bias)
    cfg = _cfg(tmp_path / "loop", food_dir, "fedmvp", "loop", lr=1e-3)
    method, ctx = steps.method_of(cfg), steps.context(cfg, steps.spec_of(state), 1, 0)
    shard = steps.prepare_data(cfg).clients[0]
    feats, present = method.prepared(shard.inputs, shard.present, ctx)
    with torch.no_grad():
        for u, v in zip(loop, vec):
            assert float((u.tensors[key_bias] - v.tensors[key_bias]).abs().max()) < 1e-3  # at most lr
            out_loop, out_vec = (method.load_model(w.model_weights(), ctx).eval()(feats, present) for w in (u, v))
            torch.testing.assert_close(out_vec, out_loop, rtol=1e-4, atol=1e-4)
