"""3FM on the real model: support = limited / query = full modalities, meta-gradient against autograd, 2 rounds."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from mmfl.data import build_federated_data
from mmfl.local import run_experiment
from mmfl.methods import get_method, parse_experiment
from mmfl.methods.base import Context
from mmfl.methods.maml import inner_adapt
from mmfl.methods.threefm import ThreeFMParams, meta_gradient, part_loss, support_query
from tests.conftest import tiny_config_dict

PROTOCOL = {"pattern": "subsets", "rate": 0.2, "client_modalities": [["a"], ["b"]]}


def _model_and_batches(tmp_path, split="presence"):
    """Client 0 holds only modality a in 20% of its samples (support) and both in the rest (query)."""
    cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "threefm"}, missing=PROTOCOL))
    data = build_federated_data(cfg)
    method = get_method("threefm")
    model = method.load_model(method.init_state(data.spec, cfg).model_weights(), Context(cfg, data.spec, 1))
    shard = data.clients[0]

    def batch(ix):
        return ({k: v[ix] for k, v in shard.inputs.items()}, shard.present[ix], shard.labels[ix])

    sup, qry, fell_back = support_query(shard.present, ThreeFMParams(split=split))
    assert not fell_back
    return model, batch(sup), batch(qry), shard


def _zero_loss(model, inputs, present, labels):
    subs = torch.zeros(present.shape[0], present.shape[1], model.head.in_features)
    return F.cross_entropy(model(inputs, present, subs), labels)


def _grads(loss, params, create_graph=False):
    """autograd.grad with zeros for parameters the loss does not use (the placeholders here)."""
    gs = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)]


def test_support_holds_the_limited_modalities_and_query_the_full_ones(tmp_path):
    _, support, query, shard = _model_and_batches(tmp_path)
    assert support[1].tolist() == [[True, False]] * len(support[2])  # client 0's subset {a}
    assert query[1].all()
    assert len(support[2]) == round(0.2 * len(shard)) and len(support[2]) + len(query[2]) == len(shard)
    # a batch with only complete samples falls back to the positional 20/80 split
    sup, qry, fell_back = support_query(torch.ones(10, 2, dtype=torch.bool), ThreeFMParams())
    assert fell_back and sup.tolist() == [0, 1] and qry.tolist() == list(range(2, 10))


def test_inner_step_equals_hand_computed_gradient_step(tmp_path):
    model, support, _, _ = _model_and_batches(tmp_path)
    params = {n: p.detach() for n, p in model.named_parameters()}
    lr = 0.3
    adapted = inner_adapt(lambda q: part_loss(model, q, support), params, lr, steps=1)
    loss = _zero_loss(model, *support)
    grads = _grads(loss, list(model.parameters()))
    for (name, p), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(adapted[name], p.detach() - lr * g, atol=1e-6, rtol=1e-5)


def test_meta_gradient_with_limited_support_and_full_query_matches_second_order_autograd(tmp_path):
    model, support, query, _ = _model_and_batches(tmp_path)
    p = ThreeFMParams(inner_lr=0.1, inner_steps=1)
    params = {n: t.detach() for n, t in model.named_parameters()}
    grads, loss = meta_gradient(model, params, support, query, p)
    # the same with autograd: theta' = theta - a * g(theta) with create_graph, then d L_q(theta') / d theta
    theta = list(model.parameters())
    g = _grads(_zero_loss(model, *support), theta, create_graph=True)
    names = [n for n, _ in model.named_parameters()]
    adapted = {n: t - 0.1 * gi for n, t, gi in zip(names, theta, g)}
    subs = torch.zeros(query[1].shape[0], query[1].shape[1], model.head.in_features)
    q_loss = F.cross_entropy(torch.func.functional_call(model, adapted, (query[0], query[1]), {"substitutes": subs}), query[2])
    expect = _grads(q_loss, theta)
    torch.testing.assert_close(loss, q_loss.detach())
    for n, e in zip(names, expect):
        torch.testing.assert_close(grads[n], e, atol=1e-6, rtol=1e-4)
    # first order drops the Hessian term and so differs
    fo, _ = meta_gradient(model, params, support, query, ThreeFMParams(inner_lr=0.1, first_order=True))
    assert any(not torch.allclose(fo[n], grads[n]) for n in names)
    # modality b is absent from the support, so its encoder is not adapted, yet the full query trains it
    assert all(torch.equal(inner_adapt(lambda q: part_loss(model, q, support), params, 0.1, 1)[n], params[n])
               for n in names if n.startswith("encoders.b."))
    assert all(grads[n].abs().sum() > 0 for n in names if n.startswith("encoders.b."))


def test_missing_branch_is_zeroed_at_prediction(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "threefm"}))
    data = build_federated_data(cfg)
    method = get_method("threefm")
    state = method.init_state(data.spec, cfg)
    ctx = Context(cfg, data.spec, 0)
    model = method.load_model(state.model_weights(), ctx)
    test = data.test
    present = torch.tensor([[True, False]]).expand(len(test), 2)
    noisy = dict(test.inputs)
    noisy["b"] = torch.randn_like(noisy["b"]) * 100  # whatever the absent input holds, it cannot matter
    out = method.predict(model, state, noisy, present, ctx)
    with torch.no_grad():
        emb = model.encode(test.inputs)
        emb[:, 1] = 0.0
        expect = model.head(model.fuse(emb))
    torch.testing.assert_close(out, expect)


def test_threefm_two_rounds_end_to_end(tmp_path):
    """Paper protocol with the shared budget: train.local_epochs full-batch meta-steps per client and round."""
    cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "threefm"}, missing=PROTOCOL,
                                        train={"rounds": 2, "local_epochs": 2, "batch_size": 32}))
    result = run_experiment(cfg, progress=False)
    assert result.rounds_done == 2 and set(result.final) == {"full", "only:a", "only:b"}
    assert all(h["train_loss"] > 0 for h in result.history)
    data = build_federated_data(cfg)
    method, ctx = get_method("threefm"), Context(cfg, data.spec, 1, 0)
    state = method.init_state(data.spec, cfg)
    model = method.load_model(state.model_weights(), ctx)
    metrics = method.train_local(model, data.clients[0], ctx, state)
    assert metrics["local_steps"] == 2 and metrics["fallback_splits"] == 0
    mini = parse_experiment(tiny_config_dict(tmp_path, method={"name": "threefm", "params": {"batching": "minibatch",
                        "inner_optimizer": "adam", "inner_steps": 2}}, missing=PROTOCOL,
                        train={"rounds": 1, "local_epochs": 2, "batch_size": 16}))
    ctx = Context(mini, data.spec, 1, 0)
    metrics = method.train_local(method.load_model(model.state_dict(), ctx), data.clients[0], ctx, state)
    assert metrics["local_steps"] == 2 * -(-len(data.clients[0]) // 16)  # the baselines' steps
