"""Support sets (Eq. 7) and their weights for every real tail sample.

Candidates of a class c are the classes with more training samples. Sorting classes
by count (descending) makes every candidate set a *prefix* of that order, so each
group of tail classes with the same count is one exact brute-force k-NN search
(``faiss.knn`` on CPU, ``faiss.knn_gpu`` on a GPU) against a contiguous slice of means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glag.config import CHOICES
from glag.errors import GlagError

WEIGHTINGS = CHOICES["weighting"]


@dataclass
class SupportSets:
    """For each tail sample (a row of the train split): its class, support classes ``[M, k]``
    (-1 where fewer than k candidates exist) and weights ``[M, k]`` (0 there, rows sum to 1)."""

    rows: np.ndarray
    classes: np.ndarray
    support: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def _knn(queries: np.ndarray, base: np.ndarray, k: int, use_gpu: bool):
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    base = np.ascontiguousarray(base, dtype=np.float32)
    if use_gpu:
        res = faiss.StandardGpuResources()
        return faiss.knn_gpu(res, queries, base, k)
    return faiss.knn(queries, base, k)


def faiss_gpu_available() -> bool:
    try:
        import faiss

        return hasattr(faiss, "knn_gpu") and faiss.get_num_gpus() > 0
    except Exception:
        return False


def support_sets(
    tukey_rows: np.ndarray,
    labels: np.ndarray,
    counts: np.ndarray,
    means: np.ndarray,
    *,
    k: int = 2,
    tail_below: int = 100,
    weighting: str = "count-distance",
    use_gpu: bool = False,
) -> SupportSets:
    """Support sets for the rows of tail classes (``counts < tail_below``).

    ``tukey_rows`` [N, d] are the Tukey-space train features with ``labels`` [N]; ``means`` [C, d].
    A tail class with fewer than ``k`` larger classes gets as many as there are (padded with -1);
    one with none (it is the largest class) gets an empty support set and is sampled as a head class.
    """
    if k < 1:
        raise GlagError(f"support size k={k} is invalid; it must be >= 1 (the paper uses 2 or 3)")
    if weighting not in WEIGHTINGS:
        raise GlagError(f"weighting '{weighting}' is invalid; choose one of: {', '.join(WEIGHTINGS)}")
    counts = np.asarray(counts, dtype=np.int64)
    means = np.asarray(means, dtype=np.float32)
    order = np.argsort(-counts, kind="stable")
    sorted_counts = counts[order]
    tail_classes = np.flatnonzero(counts < tail_below)
    row_idx = np.flatnonzero(np.isin(labels, tail_classes))
    M = len(row_idx)
    support = np.full((M, k), -1, dtype=np.int64)
    weights = np.zeros((M, k), dtype=np.float64)
    row_classes = np.asarray(labels)[row_idx]
    row_counts = counts[row_classes]
    for n in np.unique(row_counts):
        p = int(np.searchsorted(-sorted_counts, -n, side="left"))  # classes with count > n
        if p == 0:
            continue
        sel = np.flatnonzero(row_counts == n)
        kk = min(k, p)
        dist2, idx = _knn(tukey_rows[row_idx[sel]], means[order[:p]], kk, use_gpu)
        support[sel, :kk] = order[idx]
        if weighting == "uniform":
            weights[sel, :kk] = 1.0 / kk
        else:
            dist = np.sqrt(np.maximum(dist2.astype(np.float64), 0.0))
            # d = 0 means the sample sits on that mean: give it (almost) all the weight, never divide by 0
            score = counts[order[idx]] / np.maximum(dist, 1e-12)
            weights[sel, :kk] = score / score.sum(axis=1, keepdims=True)
    return SupportSets(row_idx, row_classes, support, weights)
