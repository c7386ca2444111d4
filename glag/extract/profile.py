"""Long-tail class profiles and the Many / Medium / Few grouping (SPEC section 5)."""
from __future__ import annotations

import math

import numpy as np

from glag.errors import GlagError

GROUPS = ("many", "medium", "few")


def check_imbalance(imbalance: float) -> float:
    """Return ``imbalance`` as a float, or raise if it is not a finite number >= 1."""
    try:
        value = float(imbalance)
    except (TypeError, ValueError):
        raise GlagError(f"imbalance ratio {imbalance!r} is not a number; use a value >= 1 (e.g. 10, 50, 100, 200)")
    if not math.isfinite(value) or value < 1:
        raise GlagError(f"imbalance ratio {imbalance!r} is invalid; it must be >= 1 (e.g. 10, 50, 100, 200)")
    return value


def exponential_counts(n_max: int, num_classes: int, imbalance: float) -> np.ndarray:
    """``n_c = floor(n_max * IM ** (-c / (C - 1)))`` for c = 0..C-1 (LDAM-DRW convention)."""
    imbalance = check_imbalance(imbalance)
    if num_classes < 1 or n_max < 1:
        raise GlagError(f"need n_max >= 1 and num_classes >= 1, got n_max={n_max}, num_classes={num_classes}")
    if num_classes == 1:
        return np.array([n_max], dtype=np.int64)
    # Written as LDAM-DRW's reference code does (imb_factor = 1 / IM) so floor() matches it exactly.
    factor = 1.0 / imbalance
    counts = [int(n_max * factor ** (c / (num_classes - 1.0))) for c in range(num_classes)]
    return np.maximum(np.array(counts, dtype=np.int64), 1)


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Number of rows of each class in ``labels``."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.int64)


def group_of(counts: np.ndarray) -> np.ndarray:
    """Group name per class: many (n > 100), medium (20 <= n <= 100), few (n < 20)."""
    counts = np.asarray(counts)
    return np.where(counts > 100, "many", np.where(counts >= 20, "medium", "few"))


def group_masks(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean class mask for each of the three groups."""
    g = group_of(counts)
    return {name: g == name for name in GROUPS}
