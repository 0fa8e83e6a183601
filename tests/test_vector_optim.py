"""The stacked optimiser step equals torch.optim per client (SGD, Adam, AdamW), padding steps included."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mmfl.engine.vectorized.optim import VectorOptimizer, settings_of, unsupported


def _torch_opt(kind: str, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=0.01)
    if kind == "adam":
        return torch.optim.Adam(params, lr=0.01, weight_decay=0.01)
    return torch.optim.AdamW(params, lr=0.01, weight_decay=0.05)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_stacked_step_equals_torch_per_client(kind):
    gen = torch.Generator().manual_seed(0)
    c, steps = 3, 6
    start = {"w": torch.randn(4, 2, generator=gen), "b": torch.randn(2, generator=gen)}
    grads = [{n: torch.randn(c, *v.shape, generator=gen) for n, v in start.items()} for _ in range(steps)]
    active = torch.ones(steps, c, dtype=torch.bool)
    active[4:, 1] = False  # client 1 has fewer steps
    updated_b = torch.ones(steps, c, dtype=torch.bool)
    updated_b[2, 0] = False  # client 0 leaves ``b`` without a gradient in step 2
    # Reference: one torch optimiser per client.
    ref = []
    for j in range(c):
        ps = {n: torch.nn.Parameter(v.clone()) for n, v in start.items()}
        opt = _torch_opt(kind, list(ps.values()))
        for s in range(steps):
            if not active[s, j]:
                continue
            ps["w"].grad = grads[s]["w"][j].clone()
            ps["b"].grad = grads[s]["b"][j].clone() if updated_b[s, j] else None
            opt.step()
        ref.append({n: p.detach() for n, p in ps.items()})
    probe = _torch_opt(kind, [torch.nn.Parameter(torch.zeros(1))])
    assert unsupported(probe) is None
    stacked = {n: v.unsqueeze(0).repeat(c, *([1] * v.dim())) for n, v in start.items()}
    vopt = VectorOptimizer(settings_of(probe), stacked)
    with torch.no_grad():
        for s in range(steps):
            vopt.step(stacked, grads[s], active[s], {"b": updated_b[s]})
    for j in range(c):
        for n in start:
            torch.testing.assert_close(stacked[n][j], ref[j][n], rtol=0, atol=1e-6)


def test_unsupported_optimizer_is_named():
    opt = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))])
    assert unsupported(opt) == "optimizer RMSprop"


def test_sgd_fast_path_when_every_client_updates_everything():
    gen = torch.Generator().manual_seed(1)
    c = 4
    start = torch.randn(3, 2, generator=gen)
    grads = [torch.randn(c, 3, 2, generator=gen) for _ in range(3)]
    ref = []
    for j in range(c):
        w = torch.nn.Parameter(start.clone())
        opt = _torch_opt("sgd", [w])
        for g in grads:
            w.grad = g[j].clone()
            opt.step()
        ref.append(w.detach())
    stacked = {"w": start.unsqueeze(0).repeat(c, 1, 1)}
    vopt = VectorOptimizer(settings_of(_torch_opt("sgd", [torch.nn.Parameter(torch.zeros(1))])), stacked)
    with torch.no_grad():
        for g in grads:
            vopt.step(stacked, {"w": g}, torch.ones(c, dtype=torch.bool))
    for j in range(c):
        torch.testing.assert_close(stacked["w"][j], ref[j], rtol=0, atol=1e-6)


def test_chunks_group_clients_of_similar_length():
    from mmfl.engine.vectorized.batches import plan_chunks

    assert plan_chunks([4] * 5, 64) == [[0, 1, 2, 3, 4]]  # equal clients: one chunk
    assert plan_chunks([4] * 5, 2) == [[0, 1], [2, 3], [4]]  # at most max_chunk clients
    chunks = plan_chunks([5, 5, 10, 10, 5, 15], 64)  # skewed: at most 25% padding in each chunk
    assert chunks == [[0, 1, 4], [2, 3, 5]]
    assert plan_chunks([1, 1, 1, 8], 64) == [[0, 1, 2], [3]]
    assert sorted(i for c in chunks for i in c) == list(range(6))


@given(st.lists(st.integers(0, 60), min_size=1, max_size=40), st.integers(1, 12))
def test_every_chunk_keeps_padding_within_a_quarter(steps, max_chunk):
    """Property (seeded): each client in exactly one chunk, at most ``max_chunk`` per chunk, and at
    most 25% of a chunk's client-steps padding (a client of 0 steps counts as 1)."""
    from mmfl.engine.vectorized.batches import plan_chunks

    chunks = plan_chunks(steps, max_chunk)
    assert sorted(i for c in chunks for i in c) == list(range(len(steps)))
    for chunk in chunks:
        assert 1 <= len(chunk) <= max_chunk
        lengths = [max(steps[i], 1) for i in chunk]
        assert len(chunk) * max(lengths) - sum(lengths) <= 0.25 * len(chunk) * max(lengths)
