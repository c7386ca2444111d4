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


MANY_ABOVE, FEW_BELOW = 100, 20  # the literature's thresholds (training images); --many-above, --few-below


def evaluate(pred: np.ndarray, labels: np.ndarray, train_counts: np.ndarray) -> dict:
    """``top1`` over all rows, the mean per-class accuracy of each group (NaN if the group is empty), per
    class."""
    train_counts = np.asarray(train_counts)
    acc = per_class_accuracy(pred, labels, len(train_counts))
    out = {"top1": float(np.mean(np.asarray(pred) == np.asarray(labels))) if len(labels) else float("nan")}
    out.update(group_means(acc, train_counts))
    out["per_class"] = [None if np.isnan(a) else float(a) for a in acc]
    return out


def group_means(acc: np.ndarray, train_counts, many_above: int = MANY_ABOVE, few_below: int = FEW_BELOW):
    """Mean per-class accuracy of each group (NaN for an empty group or one whose classes have no rows)."""
    out = {}
    for name, mask in group_masks(train_counts, many_above, few_below).items():
        vals = acc[mask & ~np.isnan(acc)]
        out[name] = float(vals.mean()) if vals.size else float("nan")
    return out


def summary_row(metrics: dict, scale: float = 100.0) -> dict:
    """The headline numbers (in percent) for a results table."""
    return {k: round(metrics[k] * scale, 2) for k in ("top1", *GROUPS)}


def group_of(counts: np.ndarray, many_above: int = MANY_ABOVE, few_below: int = FEW_BELOW) -> np.ndarray:
    """Group name per class: many (n > many_above), medium (few_below <= n <= many_above), few (n <
    few_below); the literature's 100 and 20 by default."""
    counts = np.asarray(counts)
    return np.where(counts > many_above, "many", np.where(counts >= few_below, "medium", "few"))


def group_masks(counts: np.ndarray, many_above: int = MANY_ABOVE, few_below: int = FEW_BELOW) -> dict:
    """Boolean class mask for each of the three groups."""
    g = group_of(counts, many_above, few_below)
    return {name: g == name for name in GROUPS}


def regroup(metrics: dict, train_counts: np.ndarray, many_above: int, few_below: int) -> dict:
    """``metrics`` (from ``evaluate``) with its group means recomputed from its per-class accuracies under
    other thresholds: the groups are a way to report, so a user's own thresholds never retrain anything."""
    acc = np.array([np.nan if a is None else a for a in metrics["per_class"]], dtype=float)
    return {**metrics, **group_means(acc, train_counts, many_above, few_below)}


def groups_line(many_above: int = MANY_ABOVE, few_below: int = FEW_BELOW) -> str:
    """The groups in words, for report headers."""
    return (
        f"groups by training images: Many > {many_above}, Medium {few_below}-{many_above}, Few < {few_below}"
    )
