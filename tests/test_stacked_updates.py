"""Updates of the vectorized engine stay stacked: views, averaging, screening, artifacts, replay buffers."""

from __future__ import annotations

import math

import pytest
import torch

from mmfl.aggregation import weighted_mean
from mmfl.engine.vectorized.stack import ClientStack, StackView, accumulate_stacked
from mmfl.engine import robust, steps
from mmfl.state import ClientUpdate
from mmfl.io.codec import update_from_bytes, update_to_bytes
from mmfl.engine.vectorized import client_train_vectorized
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict
from tests.helpers.engines import max_diff
from tests.test_vectorized import TOL, _setup


def _plain(update: ClientUpdate) -> ClientUpdate:
    """The same update with its tensors copied into an ordinary dict."""
    return ClientUpdate(update.client_id, update.num_samples, {k: v.clone() for k, v in update.tensors.items()},
                        dict(update.metrics), dict(update.meta))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg, shards, state = _setup(tmp_path_factory.mktemp("stack"), train={"local_epochs": 1})
    ids = steps.sample_clients(cfg, 1)
    return cfg, shards, state, client_train_vectorized(cfg, state, shards, ids)


def test_vectorized_updates_are_read_only_views_of_chunk_stacks(trained):
    cfg, _, state, vec = trained
    assert all(isinstance(u.tensors, StackView) for u in vec)
    stacks = {id(u.tensors.stack) for u in vec}
    assert len(stacks) >= math.ceil(len(vec) / cfg.train.vector_chunk)  # one stack per chunk
    assert all(u.tensors.stack.size <= cfg.train.vector_chunk for u in vec)
    u = vec[0]
    assert list(u.tensors) == [f"model/{k}" for k in state.model_weights()]
    weights = u.model_weights()
    assert isinstance(weights, StackView) and list(weights) == list(state.model_weights())
    assert "model/" + next(iter(weights)) in u.tensors and 3 not in u.tensors
    assert weights.shape_dtype(next(iter(weights)))[0] == state.model_weights()[next(iter(weights))].shape
    with pytest.raises(KeyError):
        u.tensors["model/nope"]
    with pytest.raises(TypeError):
        u.tensors["model/x"] = torch.zeros(1)  # type: ignore[index]


def test_stacked_mean_equals_the_mean_of_host_copies(trained):
    _, _, _, vec = trained
    plain = [_plain(u) for u in vec]
    sizes = [u.num_samples for u in vec]
    ref = weighted_mean([u.model_weights() for u in plain], sizes)
    got = weighted_mean([u.model_weights() for u in vec], sizes)
    assert max_diff(ref, got) < 1e-7
    # Every row of one stack in order (read in place), against the same rows as host copies.
    stack = vec[0].tensors.stack
    rows = [stack.view(j) for j in range(stack.size)]
    w = [float(j + 1) for j in range(stack.size)]
    ref = weighted_mean([{k: v.clone() for k, v in r.items()} for r in rows], w)
    assert max_diff(ref, weighted_mean(rows, w)) < 1e-7
    # Some rows of a stack, out of order, mixed with ordinary dicts and rows of another stack.
    pick = [3, 0, 2]
    mixed = [vec[3].model_weights(), plain[0].model_weights(), vec[2].model_weights()]
    ref = weighted_mean([plain[i].model_weights() for i in pick], [sizes[i] for i in pick])
    assert max_diff(ref, weighted_mean(mixed, [sizes[i] for i in pick])) < 1e-7


@pytest.mark.parametrize("rows", [[0, 1, 2, 3], [3, 1]], ids=["whole stack", "some rows"])
def test_blocked_reduction_equals_row_by_row(rows, monkeypatch):
    """The accelerator's reduction (blocks of rows, one product each), forced here on the host."""
    gen = torch.Generator().manual_seed(0)
    stack = ClientStack({"w": torch.randn(4, 5, 3, generator=gen), "b": torch.randn(4, 7, generator=gen)},
                        {"s": torch.randn(2, generator=gen)}, ["w", "s", "b"])
    views = [stack.view(j) for j in rows]
    fracs = [0.1 * (j + 1) for j in rows]
    shapes = {"w": (5, 3), "s": (2,), "b": (7,)}
    monkeypatch.setattr("mmfl.engine.vectorized.stack._BLOCK_BYTES", 8 * 15 * 3)  # three rows of w per block
    got = {k: torch.zeros(v, dtype=torch.float64) for k, v in shapes.items()}
    accumulate_stacked(got, views, fracs, blocked=True)
    ref = {k: torch.zeros(v, dtype=torch.float64) for k, v in shapes.items()}
    accumulate_stacked(ref, views, fracs, blocked=False)
    by_hand = {k: sum(f * v[k].double() for f, v in zip(fracs, views)) for k in shapes}
    for k in shapes:
        assert torch.allclose(got[k], ref[k], rtol=0, atol=1e-12)
        assert torch.allclose(got[k], by_hand[k], rtol=0, atol=1e-12)


def test_weighted_mean_names_a_shape_mismatch():
    a = {"w": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match=r"'w' has shape \(3, 2\)"):
        weighted_mean([a, {"w": torch.zeros(3, 2)}], [1, 1])


def test_screening_of_a_stack_matches_screening_of_copies(trained):
    cfg, shards, state, _ = trained
    vec = client_train_vectorized(cfg, state, shards, steps.sample_clients(cfg, 1))  # its own stacks: poisoned below
    cfg = parse_experiment({**cfg.model_dump(mode="json"),
                        "reliability": {**cfg.reliability.model_dump(mode="json"), "max_norm_ratio": 3.0}})
    g = state.model_weights()
    for u in vec:
        assert robust.update_distance(u, g) == pytest.approx(robust.update_distance(_plain(u), g), rel=1e-12)
    # Poison one row of the stack in place: NaN in one tensor, a huge step in another row.
    stack = vec[0].tensors.stack
    u0, u1 = [u for u in vec if u.tensors.stack is stack][:2]
    trained_keys = [k for k in stack.order if k in stack.stacked]
    first, second = trained_keys[0], trained_keys[-1]
    stack.stacked[second][u0.tensors.index].view(-1)[:3] = float("nan")
    stack.stacked[first][u1.tensors.index].view(-1)[0] = float("inf")
    stack._summaries = None  # statistics are cached per reference; this test changes the rows under it
    accepted, rejected = robust.validate_updates(vec, state, cfg)
    ref_accepted, ref_rejected = robust.validate_updates([_plain(u) for u in vec], state, cfg)
    assert [u.client_id for u in accepted] == [u.client_id for u in ref_accepted]
    assert rejected == ref_rejected
    reasons = {r["client"]: r["reason"] for r in rejected}
    assert reasons[u0.client_id] == f"non-finite values in {second} (3 NaN, 0 inf)"
    assert reasons[u1.client_id] == f"non-finite values in {first} (0 NaN, 1 inf)"


def test_a_view_serialises_like_its_copy(trained):
    _, _, _, vec = trained
    u = vec[-1]
    back = update_from_bytes(*update_to_bytes(u))
    assert back.tensors.keys() == u.tensors.keys()
    assert max_diff(back.tensors, dict(u.tensors)) == 0.0


def test_client_stack_rejects_inconsistent_input():
    with pytest.raises(ValueError, match="number of clients"):
        ClientStack({"a": torch.zeros(2, 1), "b": torch.zeros(3, 1)}, {}, ["a", "b"])
    with pytest.raises(ValueError, match="exactly once"):
        ClientStack({"a": torch.zeros(2, 1)}, {"a": torch.zeros(1)}, ["a"])
    with pytest.raises(IndexError, match="row 2"):
        ClientStack({"a": torch.zeros(2, 1)}, {}, ["a"]).view(2)


def test_graph_buffers_replayed_over_rounds_equal_the_loop(tmp_path):
    """The CUDA-graph path's buffer discipline (static batches, reset to the new global model,
    copies out of shared buffers), run eagerly: two rounds, several chunks of one shape."""
    raw = tiny_config_dict(tmp_path, train={"local_epochs": 1, "batch_size": 16, "lr": 0.05, "momentum": 0.9,
                                            "vector_chunk": 2})
    cfg = parse_experiment(raw)
    data = steps.prepare_data(cfg)
    shards = {i: s for i, s in enumerate(data.clients)}
    # Every client the same size, so consecutive chunks share one set of buffers.
    n = min(len(s) for s in shards.values())
    shards = {i: type(s)(s.spec, {k: v[:n] for k, v in s.inputs.items()}, s.labels[:n], s.present[:n])
              for i, s in shards.items()}
    state_loop = state_vec = steps.init_state(cfg, data.spec)
    ids = list(shards)
    assert len(ids) >= 2 * cfg.train.vector_chunk
    for _ in range(2):
        loop = steps.client_train(cfg, state_loop, shards, ids)
        vec = client_train_vectorized(cfg, state_vec, shards, ids, static_buffers=True)
        for a, b in zip(loop, vec):
            assert max_diff(a.tensors, dict(b.tensors)) < TOL
        state_loop, state_vec = steps.aggregate(cfg, state_loop, loop), steps.aggregate(cfg, state_vec, vec)
        assert max_diff(state_loop.tensors, state_vec.tensors) < TOL
    assert max_diff(state_vec.tensors, steps.init_state(cfg, data.spec).tensors) > 1e-3


def test_captured_chunks_are_bounded(tmp_path, monkeypatch):
    """Chunk shapes change with the sampled clients; the trainer keeps only the most recent ones."""
    from mmfl.engine import vectorized
    from mmfl.engine.vectorized import trainer as vector_trainer

    monkeypatch.setattr(vector_trainer, "MAX_GRAPHS", 2)
    cfg, shards, state = _setup(tmp_path, train={"local_epochs": 1, "vector_chunk": 1})
    ids = list(shards)
    sizes = {len(shards[c]) for c in ids}
    assert len(sizes) > 2  # more chunk shapes than the bound
    client_train_vectorized(cfg, state, shards, ids, static_buffers=True)
    trainers = [t for t in vectorized._TRAINERS.values() if not isinstance(t, str) and t.static_buffers]
    assert trainers and all(len(t._graphs) <= 2 for t in trainers)
    again = client_train_vectorized(cfg, state, shards, ids, static_buffers=True)  # evicted shapes rebuilt
    loop = steps.client_train(cfg, state, shards, ids)
    for a, b in zip(loop, again):
        assert max_diff(a.tensors, dict(b.tensors)) < TOL


def test_failed_capture_falls_back_to_eager_and_says_so(tmp_path, monkeypatch, caplog):
    import logging

    from mmfl.engine.vectorized import trainer as vector_trainer

    def refuse(self, *args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(vector_trainer._GraphedChunk, "__init__", refuse)
    cfg, shards, state = _setup(tmp_path, train={"local_epochs": 1, "lr": 0.07})
    ids = steps.sample_clients(cfg, 1)
    with caplog.at_level(logging.WARNING, logger="mmfl.engine.vectorized.trainer"):
        vec = client_train_vectorized(cfg, state, shards, ids, static_buffers=True)
    assert any("capture or replay failed" in r.message and "stream is capturing" in r.message for r in caplog.records)
    for a, b in zip(steps.client_train(cfg, state, shards, ids), vec):
        assert max_diff(a.tensors, dict(b.tensors)) < TOL
