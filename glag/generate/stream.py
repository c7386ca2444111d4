"""Per-epoch streams of shuffled (features, labels, is_synthetic) batches mixing real and synthetic rows.

Only a plan of int codes is held per epoch (``>= 0``: a tail sample's index, ``< 0``: a class to
sample from its own distribution); features are made batch by batch, so memory stays bounded.
"""
from __future__ import annotations

import queue
import threading
from typing import NamedTuple

import numpy as np

from glag.generate.afg import AFG, SamplingConfig
from glag.generate.stats import tukey


class Batch(NamedTuple):
    x: object            # [B, d] float32 Tukey-space features (NumPy or CuPy)
    y: np.ndarray        # [B] int64 labels
    synthetic: np.ndarray  # [B] bool
    rows: np.ndarray     # [B] int64 row of the cache's train split (-1 for synthetic rows)


def epoch_plan(afg: AFG, n_target: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic draws of one epoch: every class topped up to ``n_target`` rows.

    A tail class's draws are spread evenly over its real samples (the remainder to a random
    subset); head classes, and tail classes without larger classes, draw from their own distribution.
    """
    counts = afg.stats.counts
    sup = afg.supports
    has_support = (sup.support >= 0).any(axis=1)
    codes = []
    for c in range(len(counts)):
        q = int(n_target - counts[c])
        if q <= 0:
            continue
        rows = np.flatnonzero((sup.classes == c) & has_support)
        if len(rows):
            per = np.full(len(rows), q // len(rows))
            per[rng.permutation(len(rows))[: q % len(rows)]] += 1
            codes.append(np.repeat(rows, per))
        else:
            codes.append(np.full(q, -(c + 1), dtype=np.int64))
    return np.concatenate(codes).astype(np.int64) if codes else np.zeros(0, np.int64)


class FeatureStream:
    """Batches for stage two: Tukey-space real train rows plus a fresh synthetic set each epoch."""

    def __init__(self, afg: AFG, sampling: SamplingConfig = SamplingConfig(), batch_size: int = 512,
                 seed: int = 0, prefetch: int = 2, synthetic: bool = True, block_mb: float = 64.0):
        self.afg, self.sampling, self.batch_size, self.seed = afg, sampling.check(), batch_size, seed
        # Features are made a block of whole batches at a time (one GEMM per class per block), a
        # block holding at most block_mb of features, so memory stays bounded at any scale.
        d = afg.cache.feature_dim
        self.block_rows = batch_size * max(1, int(block_mb * 2**20 / (4 * d * batch_size)))
        self.prefetch, self.synthetic = prefetch, synthetic
        train = afg.cache.split("train")
        self.real, self.labels = train.features, train.labels
        self.n_target = sampling.n_target or int(afg.stats.counts.max())

    def rows_per_epoch(self) -> int:
        syn = np.maximum(self.n_target - self.afg.stats.counts, 0).sum() if self.synthetic else 0
        return len(self.labels) + int(syn)

    def epoch(self, e: int, beta: np.ndarray):
        """Iterator over epoch ``e``'s batches; ``beta`` [C] is each class's confidence."""
        gen = self._batches(e, np.asarray(beta, dtype=np.float32))
        return _prefetched(gen, self.prefetch) if self.prefetch > 0 else gen

    def _batches(self, e: int, beta: np.ndarray):
        afg, xp = self.afg, self.afg.xp
        rng = np.random.default_rng([self.seed, e])
        xrng = xp.random.default_rng(int(rng.integers(2**63)))
        plan = epoch_plan(afg, self.n_target, rng) if self.synthetic else np.zeros(0, np.int64)
        n_real = len(self.labels)
        order = rng.permutation(n_real + len(plan))
        for start in range(0, len(order), self.block_rows):
            idx = order[start:start + self.block_rows]
            real_idx = np.sort(idx[idx < n_real])  # sorted: sequential reads from the memory-mapped cache
            codes = plan[idx[idx >= n_real] - n_real]
            tail_j, head_c = codes[codes >= 0], -codes[codes < 0] - 1
            parts = [tukey(xp.asarray(np.asarray(self.real[real_idx]), dtype=xp.float32), afg.cfg.lt, xp)]
            labels, rows = [self.labels[real_idx]], [real_idx]
            if len(tail_j):
                parts.append(afg.sample_tail(tail_j, beta, self.sampling, xrng))
                labels.append(afg.supports.classes[tail_j])
            if len(head_c):
                parts.append(afg.sample_class(head_c, xrng))
                labels.append(head_c)
            x = xp.concatenate(parts)
            y = np.concatenate(labels).astype(np.int64)
            row = np.concatenate(rows + [np.full(len(y) - len(real_idx), -1, np.int64)])
            mix = rng.permutation(len(y))  # parts are grouped; mix them before cutting batches
            mix_x = xp.asarray(mix)
            for b in range(0, len(y), self.batch_size):
                sel = mix[b:b + self.batch_size]
                yield Batch(x[mix_x[b:b + self.batch_size]], y[sel], row[sel] < 0, row[sel])


def _prefetched(gen, depth: int):
    """Run ``gen`` in a background thread, ``depth`` batches ahead (NumPy/CuPy release the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in gen:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)
        q.put(done)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)
