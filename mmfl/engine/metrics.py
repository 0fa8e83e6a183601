"""Test metrics of the global model from one confusion matrix: accuracy and macro-F1.

Both follow torchmetrics' multiclass definitions (``multiclass_accuracy(average="micro")`` and
``multiclass_f1_score(average="macro")``): F1 of a class is 2TP / (2TP + FP + FN), 0 where that
is 0/0, and the macro mean leaves out the classes that occur neither in the labels nor in the
predictions. ``tests/test_metrics.py`` checks the equality against torchmetrics on seeded
random cases. They are computed here rather than with torchmetrics because importing
torchmetrics costs about 2 s per process (its package imports transformers, scipy.signal and
matplotlib), paid by every `mmfl run` and every pipeline task that evaluates.
"""

from __future__ import annotations

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[num_classes, num_classes] counts, rows the true class, columns the predicted one."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    for name, t in (("prediction", pred), ("label", target)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"{name} class outside 0..{num_classes - 1}: {int(t.min())}..{int(t.max())}")
    return torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def classification_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """{"acc": micro accuracy, "f1": macro-F1 over the classes that occur} of predicted class ids."""
    cm = confusion_matrix(pred, target, num_classes).double()
    tp = cm.diagonal()
    denom = 2 * tp + (cm.sum(0) - tp) + (cm.sum(1) - tp)  # 2TP + FP + FN
    occurs = denom > 0
    f1 = torch.where(occurs, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    total = cm.sum()
    return {
        "acc": float(tp.sum() / total) if total > 0 else 0.0,
        "f1": float(f1[occurs].mean()) if bool(occurs.any()) else 0.0,
    }
