"""3FM's MAML math on a hand-solvable model: support = limited modalities, query = full modalities.

Model: two scalar modalities a, b; prediction ``w_a x_a + w_b x_b`` with an absent modality's branch
output exactly 0; loss ``0.5 (prediction - y)^2``. Support: one sample that has only ``a``
(x_a = 2, y = 2); query: one complete sample (x_a = 1, x_b = 3, y = 0); theta = (w_a, w_b) = (0.5, -1).

Plain GD, lr 0.1 (Algorithm 1 of the paper), worked by hand:
  support gradient: g_a = (0.5*2 - 2) * 2 = -2, g_b = 0 (b is absent in the support)
  adapted: w_a' = 0.5 + 0.1*2 = 0.7, w_b' = -1
  query residual: r = 0.7*1 - 1*3 - 0 = -2.3, query loss = 0.5 * 2.3^2 = 2.645
  meta-gradient: d/dw_a = r * x_a^q * (1 - lr * (x_a^s)^2) = -2.3 * 0.6 = -1.38, d/dw_b = r * x_b^q = -6.9
  first order (FOMAML): d/dw_a = r * x_a^q = -2.3, d/dw_b = -6.9
So the b branch, absent from the support, is trained only through the full-modality query.
"""

from __future__ import annotations

import pytest
import torch

from mmfl.methods.maml import adam_step, inner_adapt, meta_gradient, safe_sqrt, split_by_fraction, split_by_presence

SUPPORT = (torch.tensor([[2.0, 0.0]], dtype=torch.float64), torch.tensor([[True, False]]), torch.tensor([2.0], dtype=torch.float64))
QUERY = (torch.tensor([[1.0, 3.0]], dtype=torch.float64), torch.tensor([[True, True]]), torch.tensor([0.0], dtype=torch.float64))
THETA = {"w_a": torch.tensor(0.5, dtype=torch.float64), "w_b": torch.tensor(-1.0, dtype=torch.float64)}


def loss_of(batch):
    x, present, y = batch

    def loss(p):
        branches = torch.stack([p["w_a"] * x[:, 0], p["w_b"] * x[:, 1]], dim=1) * present  # zeroed absent branch
        return 0.5 * ((branches.sum(dim=1) - y) ** 2).mean()

    return loss


def test_plain_gd_meta_gradient_matches_the_hand_computed_values():
    grads, loss = meta_gradient(loss_of(SUPPORT), loss_of(QUERY), THETA, lr=0.1, steps=1, optimizer="sgd")
    assert float(loss) == pytest.approx(2.645)
    assert float(grads["w_a"]) == pytest.approx(-1.38)
    assert float(grads["w_b"]) == pytest.approx(-6.9)
    adapted = inner_adapt(loss_of(SUPPORT), THETA, 0.1, 1)
    assert float(adapted["w_a"]) == pytest.approx(0.7) and float(adapted["w_b"]) == -1.0


def test_first_order_drops_the_hessian_term_by_hand():
    grads, _ = meta_gradient(loss_of(SUPPORT), loss_of(QUERY), THETA, lr=0.1, steps=1, first_order=True)
    assert float(grads["w_a"]) == pytest.approx(-2.3)
    assert float(grads["w_b"]) == pytest.approx(-6.9)


def test_adam_inner_step_by_hand_and_finite_for_the_absent_branch():
    """Adam at t=1 moves each weight by lr * g / (|g| + eps): w_a' = 0.5 + 0.1 * 2/(2 + 1e-8); w_b has g = v = 0.

    Its derivative in w_a is 1 - lr * eps * (x_a^s)^2 / (|g| + eps)^2 (= 1 - 1e-9), so the meta-gradient is
    r * x_a^q times that with r = w_a' - 3; w_b's stays r * 3 and is finite (sqrt'(0) is taken as 0).
    """
    step = 0.1 * 2 / (2 + 1e-8)
    r = 0.5 + step - 3.0
    grads, loss = meta_gradient(loss_of(SUPPORT), loss_of(QUERY), THETA, lr=0.1, steps=1, optimizer="adam")
    assert float(loss) == pytest.approx(0.5 * r * r, rel=1e-12)
    assert float(grads["w_a"]) == pytest.approx(r * (1 - 0.1 * 1e-8 * 4 / (2 + 1e-8) ** 2), rel=1e-12)
    assert float(grads["w_b"]) == pytest.approx(3 * r, rel=1e-12)
    assert all(torch.isfinite(g) for g in grads.values())


def test_adam_step_equals_torch_adam_over_several_steps():
    torch.manual_seed(0)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.01)
    params = {"w": w.detach().clone()}
    moments = ({"w": torch.zeros(5, dtype=torch.float64)}, {"w": torch.zeros(5, dtype=torch.float64)})
    for t in range(1, 6):
        g = torch.randn(5, dtype=torch.float64)
        w.grad = g.clone()
        opt.step()
        params, moments = adam_step(params, {"w": g}, moments, t, 0.01)
        torch.testing.assert_close(params["w"], w.detach(), rtol=0, atol=1e-15)


def test_several_inner_steps_match_unrolled_autograd():
    """Five Adam / GD inner steps (the official code's steps_per_task) against torch.autograd with create_graph."""
    for optimizer in ("sgd", "adam"):
        grads, _ = meta_gradient(loss_of(SUPPORT), loss_of(QUERY), THETA, lr=0.05, steps=5, optimizer=optimizer)
        theta = {k: v.clone().requires_grad_(True) for k, v in THETA.items()}
        adapted, m, v = dict(theta), {k: 0.0 for k in theta}, {k: 0.0 for k in theta}
        for t in range(1, 6):
            (ga,) = torch.autograd.grad(loss_of(SUPPORT)(adapted), [adapted["w_a"]], create_graph=True)
            if optimizer == "sgd":
                adapted = {"w_a": adapted["w_a"] - 0.05 * ga, "w_b": adapted["w_b"]}
            else:
                m["w_a"] = 0.9 * m["w_a"] + 0.1 * ga
                v["w_a"] = 0.999 * v["w_a"] + 0.001 * ga * ga
                denom = (v["w_a"] / (1 - 0.999**t)).sqrt() + 1e-8
                adapted = {"w_a": adapted["w_a"] - 0.05 * (m["w_a"] / (1 - 0.9**t)) / denom, "w_b": adapted["w_b"]}
        expect = torch.autograd.grad(loss_of(QUERY)(adapted), [theta["w_a"], theta["w_b"]])
        torch.testing.assert_close(grads["w_a"], expect[0])
        torch.testing.assert_close(grads["w_b"], expect[1])


def test_safe_sqrt_has_zero_derivative_at_zero():
    x = torch.tensor([0.0, 4.0], requires_grad=True)
    y = safe_sqrt(x)
    (g,) = torch.autograd.grad(y.sum(), [x])
    assert y.tolist() == [0.0, 2.0] and g.tolist() == [0.0, 0.25]


def test_splits():
    present = torch.tensor([[True, False], [True, True], [False, True], [True, True]])
    sup, qry = split_by_presence(present)
    assert sup.tolist() == [0, 2] and qry.tolist() == [1, 3]
    sup, qry = split_by_fraction(10, 0.2)
    assert sup.tolist() == [0, 1] and qry.tolist() == list(range(2, 10))
    sup, qry = split_by_fraction(2, 0.2)
    assert len(sup) == 1 and len(qry) == 1
