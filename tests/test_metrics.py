"""The engine's accuracy and macro-F1 equal torchmetrics' multiclass definitions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from mmfl.engine.metrics import classification_metrics, confusion_matrix


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.integers(2, 12), st.integers(1, 300), st.integers(0, 2**31 - 1), st.floats(0.0, 1.0))
def test_metrics_equal_torchmetrics(num_classes, n, seed, skew):
    g = torch.Generator().manual_seed(seed)
    # skewed labels leave some classes out of the labels, the predictions or both
    used = max(1, round(num_classes * (1 - skew)))
    target = torch.randint(0, used, (n,), generator=g)
    pred = torch.where(torch.rand(n, generator=g) < 0.5, target, torch.randint(0, num_classes, (n,), generator=g))
    got = classification_metrics(pred, target, num_classes)
    acc = float(multiclass_accuracy(pred, target, num_classes=num_classes, average="micro"))
    f1 = float(multiclass_f1_score(pred, target, num_classes=num_classes, average="macro"))
    assert got["acc"] == pytest.approx(acc, abs=1e-6)
    assert got["f1"] == pytest.approx(f1, abs=1e-6)


def test_metrics_of_a_known_case():
    # labels 0 0 1 2, predictions 0 1 1 1: class 0 F1 2/3, class 1 F1 2/4, class 2 F1 0, class 3 absent
    got = classification_metrics(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 2]), 4)
    assert got["acc"] == pytest.approx(0.5)
    assert got["f1"] == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)


def test_out_of_range_class_is_refused():
    with pytest.raises(ValueError, match="label class outside 0..2: 0..3"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 3]), 3)
