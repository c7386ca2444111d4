"""Per-class statistics in Tukey space (Eq. 5-6), from one in-memory Tukey copy of the train rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glag.cache.format import read_rows
from glag.errors import GlagError

CHUNK_BYTES = 64 << 20  # rows read and transformed at a time when the Tukey copy is built


def tukey(x, lt: float, xp=np):
    """Tukey's ladder of powers ``sign(x) |x|^lt``; ``lt = 1`` is the identity."""
    if lt == 1.0:
        return x
    return xp.sign(x) * xp.abs(x) ** lt


def untukey(x, lt: float, xp=np):
    """The inverse of ``tukey``: ``sign(x) |x|^(1/lt)``."""
    if lt == 1.0:
        return x
    if lt == 0.5:
        return x * xp.abs(x)
    return xp.sign(x) * xp.abs(x) ** (1.0 / lt)


MIN_LT = 0.01  # below, untukey (x^(1/lt)) of float32 features overflows


def check_lt(lt: float) -> float:
    if not (MIN_LT <= lt <= 1.0):
        raise GlagError(f"Tukey power lt={lt} is invalid; it must lie in [{MIN_LT}, 1]")
    return float(lt)


def tukey_rows(features, lt: float, xp=np):
    """``tukey(features)`` as one float32 array on ``xp``, built a chunk at a time: the peak is the
    copy itself plus one chunk, and a memory-mapped cache is read without mapping its pages."""
    n, d = features.shape
    out = xp.empty((n, d), dtype=xp.float32)
    step = max(1, CHUNK_BYTES // max(1, 4 * d))
    buf = np.empty((min(step, n), d), dtype=np.float32) if features.dtype == np.float32 else None
    for a in range(0, n, step):
        b = min(n, a + step)
        rows = read_rows(features, a, b, None if buf is None else buf[: b - a]).astype(np.float32, copy=False)
        chunk = xp.asarray(rows)
        if lt != 1.0:
            chunk = tukey(chunk, lt, xp)
        out[a:b] = chunk
    return out


def class_cov(x, xp=np):
    """Unbiased covariance of the float64 rows ``x`` [n, d] (a zero matrix when n < 2)."""
    if len(x) < 2:
        return xp.zeros((x.shape[1], x.shape[1]))
    xc = x - x.mean(axis=0)
    return xc.T @ xc / (len(x) - 1)


@dataclass
class ClassStats:
    """Counts ``[C]``, means ``[C, d]`` and, in dense mode, covariances ``[C, d, d]`` (all float32 except
    counts)."""

    counts: np.ndarray
    means: object
    covs: object | None


def class_stats(rows, offsets, xp=np, dense: bool = True) -> ClassStats:
    """Mean and unbiased covariance of each class's Tukey-space ``rows`` (grouped by class with
    ``offsets`` [C+1]); zero covariance when n_c = 1. Accumulated in float64 one class at a time."""
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = np.diff(offsets)
    C, d = len(counts), rows.shape[1]
    means = xp.zeros((C, d), dtype=xp.float32)
    covs = xp.zeros((C, d, d), dtype=xp.float32) if dense else None
    for c in range(C):
        n = int(counts[c])
        if n == 0:
            continue
        x = rows[offsets[c] : offsets[c + 1]].astype(xp.float64)
        means[c] = x.mean(axis=0)
        if dense:
            covs[c] = class_cov(x, xp)
    return ClassStats(counts, means, covs)
