"""Long-tail class profiles (SPEC section 5): how many training images each class keeps."""

from __future__ import annotations

import math

import numpy as np

from glag.config import CHOICES
from glag.errors import GlagError

PROFILES = CHOICES["profile"]


def check_imbalance(imbalance: float) -> float:
    """Return ``imbalance`` as a float, or raise if it is not a finite number >= 1."""
    try:
        value = float(imbalance)
    except (TypeError, ValueError):
        raise GlagError(
            f"imbalance (--imbalance) {imbalance!r} is not a number; use a value >= 1 (e.g. 10, 50, 100, 200)"
        ) from None
    if not math.isfinite(value) or value < 1:
        raise GlagError(
            f"imbalance (--imbalance) {imbalance!r} is invalid; it must be >= 1 (e.g. 10, 50, 100, 200)"
        )
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


def step_counts(n_max: int, num_classes: int, imbalance: float) -> np.ndarray:
    """First ``C // 2`` classes ``n_max``, the rest ``int(n_max / IM)`` (LDAM-DRW's step profile)."""
    imbalance = check_imbalance(imbalance)
    small = max(int(n_max * (1.0 / imbalance)), 1)
    half = num_classes // 2
    return np.array([n_max] * half + [small] * (num_classes - half), dtype=np.int64)


def profile_counts(profile: str, n_max: int, num_classes: int, imbalance: float) -> np.ndarray:
    """Per-class training counts of the named profile (``exp`` or ``step``; ``all`` has no formula)."""
    if profile == "exp":
        return exponential_counts(n_max, num_classes, imbalance)
    if profile == "step":
        return step_counts(n_max, num_classes, imbalance)
    raise GlagError(f"profile '{profile}' is unknown; choose one of: {', '.join(PROFILES)}")


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Number of rows of each class in ``labels``."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.int64)
