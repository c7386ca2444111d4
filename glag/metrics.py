"""Top-1 accuracy overall, per Many/Medium/Few group (by training count) and per class.

Below extract, generate and classify: it imports nothing from them."""

from __future__ import annotations

import numpy as np

GROUPS = ("many", "medium", "few")


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class (NaN for a class with no rows)."""
    labels = np.asarray(labels)
    hits = np.bincount(labels, weights=(np.asarray(pred) == labels), minlength=num_classes)
    n = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, hits / np.maximum(n, 1), np.nan)


def evaluate(pred: np.ndarray, labels: np.ndarray, train_counts: np.ndarray) -> dict:
    """``top1`` over all rows, the mean per-class accuracy of each group (NaN if the group is empty), per
    class."""
    train_counts = np.asarray(train_counts)
    acc = per_class_accuracy(pred, labels, len(train_counts))
    out = {"top1": float(np.mean(np.asarray(pred) == np.asarray(labels))) if len(labels) else float("nan")}
    for name, mask in group_masks(train_counts).items():
        vals = acc[mask & ~np.isnan(acc)]
        out[name] = float(vals.mean()) if vals.size else float("nan")
    out["per_class"] = [None if np.isnan(a) else float(a) for a in acc]
    return out


def summary_row(metrics: dict, scale: float = 100.0) -> dict:
    """The headline numbers (in percent) for a results table."""
    return {k: round(metrics[k] * scale, 2) for k in ("top1", *GROUPS)}


def group_of(counts: np.ndarray) -> np.ndarray:
    """Group name per class: many (n > 100), medium (20 <= n <= 100), few (n < 20)."""
    counts = np.asarray(counts)
    return np.where(counts > 100, "many", np.where(counts >= 20, "medium", "few"))


def group_masks(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean class mask for each of the three groups."""
    g = group_of(counts)
    return {name: g == name for name in GROUPS}
