"""Per-epoch blocks of shuffled rows mixing real Tukey-space train rows and fresh synthetic draws.

An epoch is a plan of int codes (``>= 0``: a tail sample's index, ``< 0``: a class to sample from
its own distribution) and one permutation of real rows + planned draws. The permutation is cut
into blocks of whole batches, at most ``block_mb`` of features each, so memory stays bounded at
any scale. A block's draws are made before the epoch's confidences (beta) are known (noise does
not depend on them); ``finish`` adds the beta term. ``Pipeline`` makes blocks in a background
thread, one block ahead, across epoch boundaries, so generation overlaps training.
"""
from __future__ import annotations

import queue
import threading
from typing import NamedTuple

import numpy as np

from glag.generate.afg import AFG, Draws, SamplingConfig
from glag.generate.sampler import Normals


class Batch(NamedTuple):
    x: object            # [B, d] float32 Tukey-space features (NumPy or CuPy)
    y: np.ndarray        # [B] int64 labels
    synthetic: np.ndarray  # [B] bool
    rows: np.ndarray     # [B] int64 row of the cache's train split (-1 for synthetic rows)


class Block:
    """Rows ``start:start+R`` of one epoch's permutation, stored grouped: real head-class rows
    (``x[:n_head]``), other real rows, then synthetic rows (class-sorted, as the generator made
    them). ``mix`` [R] is the shuffled order: batch i is ``x[mix[i*B:(i+1)*B]]``. ``y``, ``rows``
    (cache row, -1: synthetic) follow ``x``; ``extra`` is what ``prepare`` attached."""

    def __init__(self, epoch: int, start: int, x, y, rows, n_head: int, mix, draws: Draws | None, xp):
        self.epoch, self.start, self.x, self.y, self.rows, self.n_head, self.mix = epoch, start, x, y, rows, n_head, mix
        self._draws, self.xp, self.extra = draws, xp, None

    def finish(self, beta) -> "Block":
        if self._draws is not None:
            self._draws.finish(beta)
            self._draws = None
        return self

    def batches(self, batch_size: int):
        for b in range(0, len(self.y), batch_size):
            sel = self.mix[b:b + batch_size]
            yield Batch(self.x[self.xp.asarray(sel)], self.y[sel], self.rows[sel] < 0, self.rows[sel])


def epoch_plan(afg: AFG, n_target: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic draws of one epoch: every class topped up to ``n_target`` rows.

    A tail class's draws are spread evenly over its real samples (the remainder to a random
    subset); head classes, and tail classes without larger classes, draw from their own distribution.
    """
    counts = np.asarray(afg.stats.counts, dtype=np.int64)
    sup = afg.supports
    C = len(counts)
    q = np.maximum(n_target - counts, 0)
    has = (sup.support >= 0).any(axis=1)
    j = np.flatnonzero(has)
    cls = sup.classes[j]
    per_class = np.bincount(cls, minlength=C)
    # each supported tail sample: q // n draws, plus one for a random (q % n) of its class's samples
    rank = np.empty(len(j), dtype=np.int64)
    order = np.lexsort((rng.random(len(j)), cls))
    first = np.concatenate([[0], np.cumsum(per_class)])[cls[order]]
    rank[order] = np.arange(len(j)) - first
    n = np.maximum(per_class, 1)
    per = q[cls] // n[cls] + (rank < q[cls] % n[cls])
    own = np.flatnonzero((per_class == 0) & (q > 0))
    codes = np.concatenate([np.repeat(j, per), np.repeat(-(own + 1), q[own])]) if C else np.zeros(0)
    return codes.astype(np.int64)


class FeatureStream:
    """Blocks for stage two: Tukey-space real train rows plus a fresh synthetic set each epoch."""

    def __init__(self, afg: AFG, sampling: SamplingConfig = SamplingConfig(), batch_size: int = 512,
                 seed: int = 0, synthetic: bool = True, block_mb: float = 64.0, normals_ahead: int = 0):
        self.afg, self.sampling, self.batch_size, self.seed = afg, sampling.check(), batch_size, seed
        d = afg.cache.feature_dim
        self.block_rows = batch_size * max(1, int(block_mb * 2**20 / (4 * d * batch_size)))
        self.synthetic, self.normals_ahead = synthetic, normals_ahead  # chunks of normals made ahead by a thread
        self.labels = afg.cache.split("train").labels
        self.n_target = sampling.n_target or int(afg.stats.counts.max())

    def rows_per_epoch(self) -> int:
        syn = np.maximum(self.n_target - self.afg.stats.counts, 0).sum() if self.synthetic else 0
        return len(self.labels) + int(syn)

    def _blocks(self, e: int):
        """Epoch ``e``'s unfinished blocks, in order; the randomness is fixed by (seed, e)."""
        afg, xp = self.afg, self.afg.xp
        rng = np.random.default_rng([self.seed, e])
        normals = Normals(xp, int(rng.integers(2**63)), ahead=self.normals_ahead)
        try:
            yield from self._epoch_blocks(e, rng, normals)
        finally:
            normals.close()

    def _epoch_blocks(self, e: int, rng, normals):
        afg, xp = self.afg, self.afg.xp
        plan = epoch_plan(afg, self.n_target, rng) if self.synthetic else np.zeros(0, np.int64)
        n_real = len(self.labels)
        order = rng.permutation(n_real + len(plan))
        head = afg.stats.counts >= afg.cfg.tail_below
        for start in range(0, len(order), self.block_rows):
            idx = order[start:start + self.block_rows]
            real = idx[idx < n_real]
            is_head = head[self.labels[real]]
            real = np.concatenate([real[is_head], real[~is_head]])  # head rows first: the KD rows
            codes = plan[idx[idx >= n_real] - n_real]
            nr = len(real)
            x = xp.empty((len(idx), afg.rows.shape[1]), dtype=xp.float32)
            x[:nr] = afg.rows[xp.asarray(real)]
            y = np.empty(len(idx), dtype=np.int64)
            y[:nr] = self.labels[real]
            draws = None
            if len(codes):
                draws = afg.draws(codes, self.sampling, normals, out=x[nr:])
                y[nr:] = draws.labels
            rows = np.concatenate([real, np.full(len(codes), -1, dtype=np.int64)])
            yield Block(e, start, x, y, rows, int(is_head.sum()), rng.permutation(len(idx)), draws, xp)

    def epoch(self, e: int, beta):
        """Epoch ``e``'s finished blocks, made here (no thread); ``beta`` [C] is each class's confidence."""
        beta = np.asarray(beta, dtype=np.float32)
        for block in self._blocks(e):
            yield block.finish(beta)

    def pipeline(self, epochs: int, prepare=None) -> "Pipeline":
        """Blocks of epochs ``0..epochs-1`` made in a background thread; ``prepare(block)`` runs
        there too and its result is attached as ``block.extra``."""
        return Pipeline(self, epochs, prepare)


class Pipeline:
    """A producer thread making blocks one ahead of the consumer; a block of epoch e waits only for
    beta_e (its draws are made before). Use as ``for block in pipe.epoch(e, beta)``, then ``close()``."""

    _END = object()

    def __init__(self, stream: FeatureStream, epochs: int, prepare=None, depth: int = 1):
        self.stream, self.epochs, self.prepare = stream, epochs, prepare
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._beta: dict[int, np.ndarray] = {}
        self._beta_set = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _beta_of(self, e: int):
        with self._beta_set:
            while e not in self._beta and not self._stop.is_set():
                self._beta_set.wait(0.05)
            return self._beta.pop(e, None)

    def _work(self) -> None:
        try:
            for e in range(self.epochs):
                beta = None
                for block in self.stream._blocks(e):
                    if self.prepare is not None:
                        block.extra = self.prepare(block)
                    if beta is None:
                        beta = self._beta_of(e)
                        if beta is None:
                            return
                    if not self._put(block.finish(beta)):
                        return
                if not self._put(self._END):
                    return
        except BaseException as exc:  # re-raised in the consumer
            self._put(exc)

    def epoch(self, e: int, beta):
        """Epoch ``e``'s finished blocks; epochs must be asked for in order."""
        with self._beta_set:
            self._beta[e] = np.asarray(beta, dtype=np.float32).copy()
            self._beta_set.notify_all()
        while True:
            item = self._q.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
