"""Linear CKA properties."""

from __future__ import annotations

import pytest
import torch

from mmfl.aggregation.cka import cka_matrix, cka_weights, linear_cka


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_cka_self_is_one_and_invariant_to_rotation_and_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g, dtype=torch.float64)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ _orthogonal(16, 1)) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)
    y = torch.randn(200, 10, generator=g, dtype=torch.float64)
    base = linear_cka(x, y)
    assert base < 0.5  # unrelated representations are far from 1
    assert linear_cka(x @ _orthogonal(16, 2), 3.0 * y @ _orthogonal(10, 3)) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)


def test_cka_weights_downweight_the_outlier():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(100, 8, generator=g)
    similar = [base @ _orthogonal(8, s).float() + 0.05 * torch.randn(100, 8, generator=g) for s in range(3)]
    outlier = torch.randn(100, 8, generator=g)
    w = cka_weights(similar + [outlier])
    assert w.sum().item() == pytest.approx(1.0)
    assert w[3] < w[:3].min()
    sim = cka_matrix(similar + [outlier])
    assert torch.allclose(sim, sim.T) and torch.allclose(torch.diag(sim), torch.ones(4, dtype=torch.float64))
    # Sample counts act as a prior: more data, more weight at equal similarity.
    w2 = cka_weights(similar[:2], num_samples=[10, 30])
    assert w2[1] > w2[0]

