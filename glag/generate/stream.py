"""Per-epoch blocks of shuffled rows mixing real Tukey-space train rows and fresh synthetic draws.

An epoch is a plan of int codes (``>= 0``: a tail sample's index, ``< 0``: a class to sample from
its own distribution) and one permutation of real rows + planned draws. The permutation is cut
into blocks of whole batches, at most ``block_mb`` of features each, so memory stays bounded at
any scale. Each block is a pure function of (seed, epoch, block index), so blocks can be made in
any order, ahead of training. Their draws do not depend on the epoch's confidences (beta): the
consumer adds the beta term with ``finish`` (``glag.generate.feed`` moves blocks to the trainer).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from glag.config import StageTwoSettings
from glag.errors import GlagError
from glag.generate.afg import AFG, Draws
from glag.generate.sampler import Normals


class Batch(NamedTuple):
    x: object  # [B, d] float32 Tukey-space features (NumPy or CuPy)
    y: np.ndarray  # [B] int64 labels
    synthetic: np.ndarray  # [B] bool
    rows: np.ndarray  # [B] int64 row of the cache's train split (-1 for synthetic rows)


class Block:
    """``R`` consecutive rows of one epoch's permutation, stored grouped: real head-class rows
    (``x[:n_head]``), other real rows, then synthetic rows (class-sorted, as the generator made
    them). ``mix`` [R] is the shuffled order: batch i is ``x[mix[i*B:(i+1)*B]]``. ``y``, ``rows``
    (cache row, -1: synthetic) follow ``x``; ``extra`` is what a feed's ``prepare`` attached.
    Synthetic tail rows lack their beta term until ``finish(beta)``."""

    def __init__(self, epoch: int, x, y, rows, n_head: int, mix, draws: Draws | None, xp):
        self.epoch, self.x, self.y, self.rows, self.n_head, self.mix = epoch, x, y, rows, n_head, mix
        self.draws, self.xp, self.extra = draws, xp, None

    def finish(self, beta) -> Block:
        if self.draws is not None:
            self.draws.finish(beta)
            self.draws = None
        return self

    def batches(self, batch_size: int):
        for b in range(0, len(self.y), batch_size):
            sel = self.mix[b : b + batch_size]
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

    def __init__(
        self,
        afg: AFG,
        sampling: StageTwoSettings = StageTwoSettings(),
        batch_size: int = 512,
        seed: int = 0,
        synthetic: bool = True,
        block_mb: float = 64.0,
        spread=(),
    ):
        """``sampling``: the [stage_two] settings the draws read (alpha, dispersion, n_target); ``spread``:
        per class, a factor on its tail draws' covariance (a held-out law's; empty: none)."""
        if len(spread) and not all(np.isfinite(v) and v > 0 for v in spread):
            raise GlagError(f"spread factors must be finite and > 0, got {list(spread)}")
        self.afg, self.sampling, self.batch_size, self.seed = afg, sampling, batch_size, seed
        self.spread = tuple(spread)
        d = afg.cache.feature_dim
        self.block_rows = batch_size * max(1, int(block_mb * 2**20 / (4 * d * batch_size)))
        self.synthetic = synthetic
        self.labels = afg.cache.split("train").labels
        self.n_target = sampling.n_target or int(afg.stats.counts.max())

    def rows_per_epoch(self) -> int:
        syn = np.maximum(self.n_target - self.afg.stats.counts, 0).sum() if self.synthetic else 0
        return len(self.labels) + int(syn)

    def blocks_per_epoch(self) -> int:
        return -(-self.rows_per_epoch() // self.block_rows)

    def blocks(self, e: int):
        """Epoch ``e``'s blocks without their beta term, in order; epoch e's plan and permutation
        come from (seed, e), block b's draws and batch order from (seed, e, b)."""
        afg, xp = self.afg, self.afg.xp
        rng = np.random.default_rng([self.seed, e])
        plan = epoch_plan(afg, self.n_target, rng) if self.synthetic else np.zeros(0, np.int64)
        n_real = len(self.labels)
        order = rng.permutation(n_real + len(plan))
        head = afg.stats.counts >= afg.cfg.tail_below
        for b, start in enumerate(range(0, len(order), self.block_rows)):
            block_rng = np.random.default_rng([self.seed, e, b])
            idx = order[start : start + self.block_rows]
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
                draws = afg.draws(
                    codes,
                    self.sampling,
                    Normals(xp, int(block_rng.integers(2**63))),
                    out=x[nr:],
                    spread=self.spread,
                )
                y[nr:] = draws.labels
            rows = np.concatenate([real, np.full(len(codes), -1, dtype=np.int64)])
            yield Block(e, x, y, rows, int(is_head.sum()), block_rng.permutation(len(idx)), draws, xp)

    def epoch(self, e: int, beta):
        """Epoch ``e``'s finished blocks, made here; ``beta`` [C] is each class's confidence."""
        beta = np.asarray(beta, dtype=np.float32)
        for block in self.blocks(e):
            yield block.finish(beta)
