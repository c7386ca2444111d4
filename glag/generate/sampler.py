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

import queue
import threading

import numpy as np
import torch

from glag.errors import GlagError

MODES = ("auto", "dense", "factor")
DISPERSIONS = ("identity", "all-entries")


class Normals:
    """Standard normal float32 arrays from one seeded stream; callers ``reserve(n)`` before taking.

    On NumPy the values are made by torch's vectorised sampler (about 3x faster than NumPy's
    ziggurat, measured) in chunks of ``min(CHUNK, reserved - made)``, optionally by a thread of
    its own up to ``ahead`` chunks in advance, so sampling overlaps the generator's GEMMs. Chunks
    depend only on the reservations, so the values are the same with or without the thread, and
    nothing is made that is not reserved. CuPy draws from its own generator on the device."""

    CHUNK = 1 << 20

    def __init__(self, xp, seed: int, ahead: int = 0):
        self.xp = xp
        self._thread = None
        if xp is not np:
            self._gen = xp.random.default_rng(int(seed) % 2**63)
            return
        self._gen = torch.Generator().manual_seed(int(seed) % 2**63)
        self._chunk, self._at = np.empty(0, dtype=np.float32), 0
        self._reserved = self._made = 0
        self._cv = threading.Condition()
        if ahead > 0:
            self._q: queue.Queue = queue.Queue(maxsize=ahead)
            self._stop = False
            self._thread = threading.Thread(target=self._fill, daemon=True)
            self._thread.start()

    def reserve(self, n: int) -> None:
        """Announce that ``n`` more values will be taken."""
        if self.xp is np and n > 0:
            with self._cv:
                self._reserved += int(n)
                self._cv.notify_all()

    def _make_chunk(self):
        """The next chunk (under the lock's bookkeeping); None when nothing more is reserved."""
        with self._cv:
            size = min(self.CHUNK, self._reserved - self._made)
            self._made += max(size, 0)
        if size <= 0:
            return None
        chunk = np.empty(size, dtype=np.float32)
        torch.from_numpy(chunk).normal_(generator=self._gen)
        return chunk

    def _fill(self) -> None:
        while True:
            with self._cv:
                while not self._stop and self._made >= self._reserved:
                    self._cv.wait()
                if self._stop:
                    return
            chunk = self._make_chunk()
            while True:
                try:
                    self._q.put(chunk, timeout=0.05)
                    break
                except queue.Full:
                    if self._stop:
                        return

    def _next_chunk(self) -> np.ndarray:
        chunk = self._q.get() if self._thread is not None else self._make_chunk()
        if chunk is None:
            raise RuntimeError("Normals: more values taken than reserved")
        return chunk

    def __call__(self, shape):
        if self.xp is not np:
            return self._gen.standard_normal(shape, dtype=self.xp.float32)
        n = int(np.prod(shape, dtype=np.int64))
        if self._at + n <= len(self._chunk):  # a fresh view of unused values: no copy
            out = self._chunk[self._at:self._at + n]
            self._at += n
            return out.reshape(shape)
        out = np.empty(n, dtype=np.float32)
        done = 0
        while done < n:
            if self._at == len(self._chunk):
                self._chunk, self._at = self._next_chunk(), 0
            take = min(n - done, len(self._chunk) - self._at)
            out[done:done + take] = self._chunk[self._at:self._at + take]
            done += take
            self._at += take
        return out.reshape(shape)

    def close(self) -> None:
        if self._thread is not None:
            with self._cv:
                self._stop = True
                self._cv.notify_all()
            self._thread.join()
            self._thread = None


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

    def normals_per_pair(self, cls: np.ndarray) -> np.ndarray:
        """How many normals one draw's pair with class ``cls`` takes: d (dense) or n_cls (factor)."""
        if self.mode == "dense":
            return np.full(len(cls), self.dim(), dtype=np.int64)
        return self.offsets[cls + 1] - self.offsets[cls]

    def noise(self, support, coef, normals: Normals, out=None, reserve_extra: int = 0):
        """``sum_s coef[m, s] * A_{support[m, s]} z_{m, s}`` for every row m, written to ``out`` [m, d].

        ``support`` [m, k] int (-1: no class) and ``coef`` [m, k] are NumPy arrays (index bookkeeping
        stays on the host), with rows sorted by ``support[:, 0]``: slot 0's products are then
        written straight into ``out``, and only later slots are added back by index. All normals
        this takes (plus ``reserve_extra``, for the caller's next use) are reserved first."""
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
                rows = rows[np.argsort(cls[rows].astype(np.int32), kind="stable")]
            else:
                if len(rows) < m:
                    out[xp.asarray(np.flatnonzero(~ok))] = 0.0
            slots.append((rows, cls[rows], c[rows]))
        normals.reserve(int(sum(self.normals_per_pair(cls).sum() for _, cls, _ in slots)) + reserve_extra)
        rows, cls, c = slots[0]
        self._products(cls, c, rows, normals, out, direct=True)
        for rows, cls, c in slots[1:]:
            if len(rows):
                res = xp.empty((len(rows), out.shape[1]), dtype=xp.float32)
                self._products(cls, c, None, normals, res, direct=False)
                out[xp.asarray(rows)] += res  # each row once per slot: a plain indexed add
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


def dispersion_normals(m: int, d: int, alpha: float, dispersion: str) -> int:
    """How many normals ``dispersion_noise`` takes."""
    return 0 if alpha <= 0 else m * (d if dispersion == "identity" else 1)


def dispersion_noise(m: int, d: int, alpha: float, dispersion: str, normals: Normals):
    """The ``alpha`` term of Eq. 9 for ``m`` draws: ``alpha I`` (identity) or Free Lunch's
    ``alpha 1 1^T`` (all-entries: one normal per row, added to every coordinate)."""
    if dispersion == "identity":
        return np.float32(np.sqrt(alpha)) * normals((m, d))
    return np.float32(np.sqrt(alpha)) * normals((m, 1))
