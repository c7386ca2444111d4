"""Exact calibrated sampling (Eq. 8-9) batched as one matrix product per support class.

A draw is ``x = center + sum_i sqrt(w_i) A_i z_i + noise``, where ``A_i A_i^T = Sigma_i``.
``A_i`` is the Cholesky factor of ``Sigma_i + eps I`` (dense mode, ``C d^2`` memory) or the
centred class data ``(X_i - mu_i)^T / sqrt(n_i - 1)`` (factor mode). In factor mode the
Tukey-space train rows themselves are the factor: ``A_i^T z = (X_i^T z - (1^T z) mu_i) / sqrt(n_i - 1)``,
so no centred copy is made and the same rows serve as the stream's real features.

All normals of a call come from one RNG call, the (draw, support class) pairs are sorted by
class, each class's segment is one GEMM into a class-ordered buffer, and the results are added
back to their draws slot by slot (no scatter with repeated indices).
"""
from __future__ import annotations

import numpy as np
import torch

from glag.errors import GlagError

MODES = ("auto", "dense", "factor")
DISPERSIONS = ("identity", "all-entries")


def sort_key(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Class indices as the narrowest signed int: NumPy's stable sort of 16-bit keys is a radix sort."""
    return classes.astype(np.int16 if num_classes < 2**15 else np.int32)


def take_rows(xp, a, idx):
    """``a[idx]`` along rows (``np.take`` is about 2x NumPy's fancy indexing, measured)."""
    return np.take(a, idx, axis=0) if xp is np else a[idx]


def add_rows(xp, out, idx, vals) -> None:
    """``out[idx] += vals`` for distinct ``idx`` (NumPy arrays through torch's ``index_add_``,
    about 2x NumPy's fancy-indexed add at random rows, measured)."""
    if xp is np:
        torch.from_numpy(out).index_add_(0, torch.from_numpy(np.asarray(idx, dtype=np.int64)), torch.from_numpy(vals))
    else:
        out[idx] += vals


class Normals:
    """Standard normal float32 arrays from one seeded stream: on NumPy filled by torch's vectorised
    sampler (about 3x faster than NumPy's ziggurat, measured), on CuPy by its own generator."""

    def __init__(self, xp, seed: int):
        self.xp = xp
        if xp is np:
            self._gen = torch.Generator().manual_seed(int(seed) % 2**63)
        else:
            self._gen = xp.random.default_rng(int(seed) % 2**63)

    def __call__(self, shape):
        if self.xp is not np:
            return self._gen.standard_normal(shape, dtype=self.xp.float32)
        out = np.empty(shape, dtype=np.float32)
        if out.size:
            torch.from_numpy(out).normal_(generator=self._gen)
        return out


class Factors:
    """Square-root factors ``A_i`` of every class covariance, in dense or factor mode."""

    def __init__(self, mode: str, xp, *, chol_t=None, rows=None, offsets=None, means=None):
        self.mode, self.xp, self.chol_t, self.rows, self.means = mode, xp, chol_t, rows, means
        self.offsets = None if offsets is None else np.asarray(offsets, dtype=np.int64)
        if mode == "dense":
            self.usable = np.ones(len(chol_t), dtype=bool)
        else:
            n = np.diff(self.offsets)
            self.usable = n > 1  # one sample: zero covariance, no noise
            self.inv_scale = np.where(self.usable, 1.0 / np.sqrt(np.maximum(n - 1, 1)), 0.0).astype(np.float32)

    @classmethod
    def dense(cls, covs, xp, eps: float) -> "Factors":
        d = covs.shape[-1]
        jitter = eps * xp.eye(d, dtype=xp.float64)
        chol = xp.linalg.cholesky(covs.astype(xp.float64) + jitter).astype(xp.float32)
        return cls("dense", xp, chol_t=xp.ascontiguousarray(chol.transpose(0, 2, 1)))

    @classmethod
    def factor(cls, tukey_rows, offsets, means, xp) -> "Factors":
        """``tukey_rows`` [N, d] grouped by class with ``offsets`` [C+1]; held, not copied."""
        return cls("factor", xp, rows=tukey_rows, offsets=offsets, means=means)

    def nbytes(self) -> int:
        """Memory held for the factors alone (factor mode shares the Tukey rows: none)."""
        return int(self.chol_t.nbytes) if self.mode == "dense" else 0

    def cov(self, c: int) -> np.ndarray:
        """``Sigma_c`` (float64, NumPy), from the factor."""
        from glag.generate.backend import to_numpy

        if self.mode == "dense":
            Lt = to_numpy(self.chol_t[c]).astype(np.float64)
            return Lt.T @ Lt
        a, b = self.offsets[c], self.offsets[c + 1]
        if b - a < 2:
            return np.zeros((self.rows.shape[1],) * 2)
        X = to_numpy(self.rows[a:b]).astype(np.float64)
        Xc = X - X.mean(0)
        return Xc.T @ Xc / (b - a - 1)

    def dim(self) -> int:
        return int(self.chol_t.shape[1] if self.mode == "dense" else self.rows.shape[1])

    def noise(self, support, coef, normals: Normals, out=None):
        """``sum_s coef[m, s] * A_{support[m, s]} z_{m, s}`` for every row m, written to ``out`` [m, d].

        ``support`` [m, k] int (-1: no class) and ``coef`` [m, k] are NumPy arrays (index bookkeeping
        stays on the host), with rows sorted by ``support[:, 0]``: slot 0's products are then
        written straight into ``out``, and only later slots are added back by index."""
        xp = self.xp
        m, k = support.shape
        out = xp.empty((m, self.dim()), dtype=xp.float32) if out is None else out
        if m and np.any(np.diff(support[:, 0]) < 0):
            raise ValueError("noise(): rows must be sorted by their first support class")
        slots = []
        for sl in range(k):
            cls, c = support[:, sl], coef[:, sl]
            ok = (cls >= 0) & (c > 0)
            ok[ok] = self.usable[cls[ok]]
            rows = np.flatnonzero(ok)
            if sl > 0:
                rows = rows[np.argsort(sort_key(cls[rows], len(self.usable)), kind="stable")]
            else:
                if len(rows) < m:
                    out[xp.asarray(np.flatnonzero(~ok))] = 0.0
            slots.append((rows, cls[rows], c[rows]))
        rows, cls, c = slots[0]
        self._products(cls, c, rows, normals, out, direct=True)
        for rows, cls, c in slots[1:]:
            if len(rows):
                res = xp.empty((len(rows), out.shape[1]), dtype=xp.float32)
                self._products(cls, c, None, normals, res, direct=False)
                add_rows(xp, out, xp.asarray(rows), res)  # each row once per slot
        return out

    def _products(self, cls, coef, rows, normals: Normals, out, direct: bool) -> None:
        """``coef_p A_{cls_p} z_p`` for class-sorted pairs p, one GEMM per class segment, into
        ``out[rows[p]]`` (``direct``: ``rows`` is a run of sorted segments of out) or ``out[p]``."""
        xp = self.xp
        if len(cls) == 0:
            return
        bounds = np.flatnonzero(np.diff(cls)) + 1
        starts = np.concatenate([[0], bounds]).tolist()
        ends = np.concatenate([bounds, [len(cls)]]).tolist()
        if direct:  # rows of one segment are contiguous unless earlier rows were skipped (zeroed)
            contiguous = bool(np.all(np.diff(rows) == 1))
            if not contiguous:
                tmp = xp.empty((len(cls), out.shape[1]), dtype=xp.float32)
                self._products(cls, coef, None, normals, tmp, direct=False)
                out[xp.asarray(rows)] = tmp
                return
            out = out[int(rows[0]):int(rows[0]) + len(rows)]
        coef = coef.astype(np.float32)
        if self.mode == "dense":
            z = normals((len(cls), out.shape[1]))
            z *= xp.asarray(coef)[:, None]
            for s, e in zip(starts, ends):
                xp.matmul(z[s:e], self.chol_t[cls[s]], out=out[s:e])
            return
        sizes = (self.offsets[cls[starts] + 1] - self.offsets[cls[starts]]).tolist()
        zs = normals((sum((e - s) * n for s, e, n in zip(starts, ends, sizes)),))
        scale = xp.asarray(coef * self.inv_scale[cls])
        at = 0
        for s, e, n in zip(starts, ends, sizes):
            c = int(cls[s])
            z = zs[at:at + (e - s) * n].reshape(e - s, n)
            at += (e - s) * n
            z *= scale[s:e, None]
            a = int(self.offsets[c])
            xp.matmul(z, self.rows[a:a + n], out=out[s:e])
            out[s:e] -= z.sum(axis=1)[:, None] * self.means[c]  # centring, folded in


def choose_mode(mode: str, num_classes: int, dim: int, max_dense_bytes: float) -> str:
    """'dense' when ``C d^2`` float32 fits in ``max_dense_bytes``, else 'factor'; explicit modes pass through."""
    if mode not in MODES:
        raise GlagError(f"factor mode '{mode}' is invalid; choose one of: {', '.join(MODES)}")
    if mode != "auto":
        return mode
    return "dense" if num_classes * dim * dim * 4 <= max_dense_bytes else "factor"


def dispersion_noise(m: int, d: int, alpha: float, dispersion: str, normals: Normals):
    """The ``alpha`` term of Eq. 9 for ``m`` draws: ``alpha I`` (identity) or Free Lunch's
    ``alpha 1 1^T`` (all-entries: one normal per row, added to every coordinate)."""
    if dispersion == "identity":
        return np.float32(np.sqrt(alpha)) * normals((m, d))
    return np.float32(np.sqrt(alpha)) * normals((m, 1))
