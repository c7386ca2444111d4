"""Exact calibrated sampling (Eq. 8-9) batched as matrix products.

A draw is ``x = center + sum_i sqrt(w_i) A_i z_i + noise``, where ``A_i A_i^T = Sigma_i``.
``A_i`` is the Cholesky factor of ``Sigma_i + eps I`` (dense mode, ``C d^2`` memory) or the
centred class data ``(X_i - mu_i)^T / sqrt(n_i - 1)`` (factor mode, the cache's memory).
Draws are grouped by support class so each class costs one GEMM per batch.
"""
from __future__ import annotations

import numpy as np

from glag.errors import GlagError

MODES = ("auto", "dense", "factor")
DISPERSIONS = ("identity", "all-entries")


class Factors:
    """Square-root factors ``A_i`` of every class covariance, in dense or factor mode."""

    def __init__(self, mode: str, xp, *, chol=None, centred=None, offsets=None):
        self.mode, self.xp, self.chol, self.centred, self.offsets = mode, xp, chol, centred, offsets

    @classmethod
    def dense(cls, covs, xp, eps: float) -> "Factors":
        d = covs.shape[-1]
        jitter = eps * xp.eye(d, dtype=xp.float64)
        chol = xp.linalg.cholesky(covs.astype(xp.float64) + jitter).astype(xp.float32)
        return cls("dense", xp, chol=chol)

    @classmethod
    def factor(cls, tukey_rows, offsets, means, xp) -> "Factors":
        """``tukey_rows`` [N, d] grouped by class with ``offsets`` [C+1]; rows are centred and scaled in place."""
        rows = xp.asarray(tukey_rows, dtype=xp.float32)
        for c in range(len(offsets) - 1):
            a, b = int(offsets[c]), int(offsets[c + 1])
            n = b - a
            if n > 1:
                rows[a:b] = (rows[a:b] - means[c]) / np.sqrt(n - 1.0)
            else:
                rows[a:b] = 0.0  # one sample: zero covariance
        return cls("factor", xp, centred=rows, offsets=np.asarray(offsets))

    def nbytes(self) -> int:
        arr = self.chol if self.mode == "dense" else self.centred
        return int(arr.nbytes)

    def add_noise(self, out, rows, classes, coef, rng) -> None:
        """``out[rows[p]] += coef[p] * A_{classes[p]} z_p`` for every pair p, one GEMM per class."""
        xp = self.xp
        if len(classes) == 0:
            return
        classes_np = np.asarray(classes.get() if hasattr(classes, "get") else classes)
        order = np.argsort(classes_np, kind="stable")
        uniq, starts = np.unique(classes_np[order], return_index=True)
        ends = np.append(starts[1:], len(order))
        order_x = xp.asarray(order)
        for c, s, e in zip(uniq, starts, ends):
            sel = order_x[s:e]
            r = rows[sel]
            if self.mode == "dense":
                z = rng.standard_normal((e - s, self.chol.shape[1]), dtype=xp.float32)
                contrib = z @ self.chol[c].T
            else:
                a, b = int(self.offsets[c]), int(self.offsets[c + 1])
                if b - a < 2:
                    continue
                z = rng.standard_normal((e - s, b - a), dtype=xp.float32)
                contrib = z @ self.centred[a:b]
            out[r] += coef[sel][:, None] * contrib


def choose_mode(mode: str, num_classes: int, dim: int, max_dense_bytes: float) -> str:
    """'dense' when ``C d^2`` float32 fits in ``max_dense_bytes``, else 'factor'; explicit modes pass through."""
    if mode not in MODES:
        raise GlagError(f"factor mode '{mode}' is invalid; choose one of: {', '.join(MODES)}")
    if mode != "auto":
        return mode
    return "dense" if num_classes * dim * dim * 4 <= max_dense_bytes else "factor"


def draw(factors: Factors, centers, support, weights, alpha_rows, alpha: float, dispersion: str, rng):
    """Draw one feature per row: ``centers`` [m, d], ``support``/``weights`` [m, k] (-1 / 0 padding),
    ``alpha_rows`` [m] bool (dispersion applies to calibrated tail draws only)."""
    xp = factors.xp
    out = xp.array(centers, dtype=xp.float32, copy=True)
    m, d = out.shape
    mask = (support >= 0) & (weights > 0)
    rows = xp.nonzero(mask)[0]
    factors.add_noise(out, rows, support[mask], xp.sqrt(weights[mask]).astype(xp.float32), rng)
    if alpha > 0:
        n_alpha = int(alpha_rows.sum())
        if n_alpha:
            idx = xp.nonzero(alpha_rows)[0]
            if dispersion == "identity":  # + alpha I
                out[idx] += np.sqrt(alpha) * rng.standard_normal((n_alpha, d), dtype=xp.float32)
            else:  # Free Lunch's + alpha on every entry: alpha 1 1^T = (sqrt(alpha) 1)(sqrt(alpha) 1)^T
                out[idx] += np.sqrt(alpha) * rng.standard_normal((n_alpha, 1), dtype=xp.float32)
    return out
