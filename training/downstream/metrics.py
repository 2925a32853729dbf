"""Overall accuracy, macro / weighted F1 and mIoU from a confusion matrix (or per-label counts), and the
change class's IoU / F1 / precision / recall for change detection."""

from __future__ import annotations

import torch


def confusion(pred: torch.Tensor, target: torch.Tensor, k: int, ignore: int | None = None) -> torch.Tensor:
    """``[K, K]`` int64 counts, rows = truth, columns = prediction; ``ignore`` targets are skipped."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target >= 0) & (target < k)
    if ignore is not None:
        keep &= target != ignore
    return torch.bincount(target[keep] * k + pred[keep], minlength=k * k).reshape(k, k)


def scores(cm: torch.Tensor) -> dict[str, float | list[float]]:
    """From a confusion matrix: ``oa``, ``f1_macro``, ``f1_weighted``, ``miou`` and per-class IoU / F1.

    Classes absent from both truth and prediction are left out of the macro averages."""
    cm = cm.double()
    tp, support, predicted = cm.diag(), cm.sum(1), cm.sum(0)
    oa = float(tp.sum() / cm.sum().clamp(min=1e-12))
    return _summary(oa, tp, predicted - tp, support - tp, support, present=(support + predicted) > 0)


def change_scores(cm: torch.Tensor) -> dict[str, float]:
    """From a ``[2, 2]`` confusion matrix (rows = truth, class 1 = change): ``iou_change``, ``f1_change``,
    ``precision_change``, ``recall_change`` — what change-detection papers report, since OA and mIoU are
    dominated by the no-change majority. A ratio with an empty denominator (no change predicted, or none
    in the truth) is 0, as absent classes are elsewhere."""
    if cm.shape != (2, 2):
        raise ValueError(f"change metrics need a 2x2 confusion matrix (no change, change), got {tuple(cm.shape)}")
    cm = cm.double()
    tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]

    def ratio(num: torch.Tensor, den: torch.Tensor) -> float:
        return float(num / den) if den > 0 else 0.0

    return {"iou_change": ratio(tp, tp + fp + fn), "f1_change": ratio(2 * tp, 2 * tp + fp + fn),
            "precision_change": ratio(tp, tp + fp), "recall_change": ratio(tp, tp + fn)}


def multilabel_scores(probs: torch.Tensor, target: torch.Tensor,
                      threshold: float = 0.5) -> dict[str, float | list[float]]:
    """Multi-label: each class is a binary decision; ``oa`` is the per-label accuracy."""
    pred = probs >= threshold
    truth = target >= 0.5
    tp = (pred & truth).sum(0).double()
    fp = (pred & ~truth).sum(0).double()
    fn = (~pred & truth).sum(0).double()
    oa = float((pred == truth).double().mean())
    return _summary(oa, tp, fp, fn, truth.sum(0).double(), present=(tp + fp + fn) > 0)


def _summary(oa: float, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, support: torch.Tensor,
             present: torch.Tensor) -> dict[str, float | list[float]]:
    f1 = torch.where(present, 2 * tp / (2 * tp + fp + fn).clamp(min=1e-12), torch.zeros_like(tp))
    iou = torch.where(present, tp / (tp + fp + fn).clamp(min=1e-12), torch.zeros_like(tp))
    return {
        "oa": oa,
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
        "f1_weighted": float((f1 * support).sum() / support.sum().clamp(min=1e-12)),
        "miou": float(iou[present].mean()) if present.any() else 0.0,
        "iou_per_class": [float(v) for v in iou],
        "f1_per_class": [float(v) for v in f1],
        "support": [int(v) for v in support],
    }
