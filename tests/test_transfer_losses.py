"""FedMVP's MCM (contrastive matching to frozen features) and RAM (representation-aligned margin)."""

from __future__ import annotations

import torch

from mmfl.models.transfer_losses import margin_ranking, mcm_loss, ram_loss


def _identity(b, x):
    return x


def test_margin_ranking_is_zero_beyond_the_margin_and_margin_when_indistinct():
    eye = torch.eye(4)
    assert float(margin_ranking(eye, eye, 0.2)) == 0.0  # own similarity 1, others 0: margin met
    same = torch.ones(4, 4)
    torch.testing.assert_close(margin_ranking(same, same, 0.2), torch.tensor(0.2))  # no separation: cost = margin
    half = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # cos(row1, row0) = 0.6: violates a margin of 0.5 by 0.1
    torch.testing.assert_close(margin_ranking(half, half, 0.5), torch.tensor(0.1))


def test_ram_targets_only_real_rows_and_trains_only_the_student():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(6, 4, generator=g, requires_grad=True)
    frozen = [torch.randn(6, 4, generator=g, requires_grad=True), torch.randn(6, 4, generator=g)]
    real = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    loss = ram_loss(h, frozen, real, _identity, 0.2)
    loss.backward()
    assert loss > 0 and h.grad.abs().sum() > 0 and frozen[0].grad is None  # frozen targets are detached
    moved = [frozen[0].clone(), frozen[1].clone()]
    moved[1][2:4] += 5.0  # rows whose modality 1 is not real
    torch.testing.assert_close(ram_loss(h, moved, real, _identity, 0.2), loss)
    # aligned student: the loss falls to zero once every row matches its own frozen feature best
    aligned = ram_loss(torch.eye(4), [torch.eye(4), torch.eye(4)], torch.ones(4, 2, dtype=torch.bool), _identity, 0.2)
    assert float(aligned) == 0.0


def test_mcm_matches_each_modality_token_to_the_other_modalitys_frozen_feature():
    g = torch.Generator().manual_seed(1)
    f_img, f_txt = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    real = torch.ones(8, 2, dtype=torch.bool)
    crossed = torch.stack([f_txt, f_img], dim=1)  # image token = frozen text feature, text token = frozen image feature
    own = torch.stack([f_img, f_txt], dim=1)  # each token copies its own modality's frozen feature
    good = mcm_loss(crossed, [f_img, f_txt], real, _identity, 0.1)
    bad = mcm_loss(own, [f_img, f_txt], real, _identity, 0.1)
    assert float(good) < 0.05 < float(bad)
    # a pair with fewer than two real rows contributes nothing
    one = torch.zeros(8, 2, dtype=torch.bool)
    one[0] = True
    assert float(mcm_loss(own, [f_img, f_txt], one, _identity, 0.1)) == 0.0


def test_rows_left_out_count_as_absent_and_get_no_gradient():
    g = torch.Generator().manual_seed(2)
    outputs = torch.randn(7, 2, 5, generator=g, requires_grad=True)
    h = torch.randn(7, 5, generator=g, requires_grad=True)
    frozen = [torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)]
    real = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 1], [1, 1], [1, 1], [1, 1]], dtype=torch.bool)
    keep = torch.tensor([True, True, True, True, True, False, False])  # the last two rows are padding
    masked = real & keep.unsqueeze(1)
    for loss, subset in (
        (mcm_loss(outputs, frozen, masked, _identity, 0.1),
         mcm_loss(outputs[keep], [f[keep] for f in frozen], real[keep], _identity, 0.1)),
        (ram_loss(h, frozen, masked, _identity, 0.2), ram_loss(h[keep], [f[keep] for f in frozen], real[keep], _identity, 0.2)),
    ):
        torch.testing.assert_close(loss, subset)
    total = mcm_loss(outputs, frozen, masked, _identity, 0.1) + ram_loss(h, frozen, masked, _identity, 0.2)
    total.backward()
    assert outputs.grad[~keep].abs().sum() == 0 and h.grad[~keep].abs().sum() == 0
    assert outputs.grad[keep].abs().sum() > 0 and h.grad[keep].abs().sum() > 0
