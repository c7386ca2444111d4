"""Per-class statistics in Tukey space (Eq. 5-6), computed in one pass over the cache's class slices."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glag.errors import GlagError


def tukey(x, lt: float, xp=np):
    """Tukey's ladder of powers ``sign(x) |x|^lt``; ``lt = 1`` is the identity."""
    if lt == 1.0:
        return x
    return xp.sign(x) * xp.abs(x) ** lt


def check_lt(lt: float) -> float:
    if not (0.0 < lt <= 1.0):
        raise GlagError(f"Tukey power lt={lt} is invalid; it must lie in (0, 1]")
    return float(lt)


@dataclass
class ClassStats:
    """Counts ``[C]``, means ``[C, d]`` and, in dense mode, covariances ``[C, d, d]`` (all float32 except counts)."""

    counts: np.ndarray
    means: object
    covs: object | None


def class_stats(split, lt: float, xp=np, dense: bool = True) -> ClassStats:
    """Mean and unbiased covariance of each class's Tukey-transformed rows (zero covariance when n_c = 1)."""
    counts = np.asarray(split.counts, dtype=np.int64)
    C = len(counts)
    d = split.features.shape[1]
    means = xp.zeros((C, d), dtype=xp.float32)
    covs = xp.zeros((C, d, d), dtype=xp.float32) if dense else None
    for c in range(C):
        n = int(counts[c])
        if n == 0:
            continue
        x = tukey(xp.asarray(np.asarray(split.of_class(c)), dtype=xp.float64), lt, xp)
        mu = x.mean(axis=0)
        means[c] = mu
        if dense and n > 1:
            xc = x - mu
            covs[c] = (xc.T @ xc) / (n - 1)
    return ClassStats(counts, means, covs)
