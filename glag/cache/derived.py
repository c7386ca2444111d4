"""Views of a feature cache with some splits replaced by other rows of it, in memory and never written.

Held-out work needs the same stage-one head with different rows in a split: train plus some
validation rows (held-out-seeded generation and its controls), validation folds (cross-fitting),
leftover rows of the full balanced split as a scoring set (selection without touching test). A view
behaves as a read-only ``FeatureCache`` for every stage-two method; its key is the parent's key plus
a digest of the rows it holds, and nothing derived from it (generator statistics) is stored.
"""

from __future__ import annotations

import copy
import hashlib

import numpy as np

from glag.cache.format import FeatureCache, SplitView, group_by_class
from glag.errors import GlagError


def split_of(features, labels, index, num_classes: int) -> SplitView:
    """A split from rows in any order: grouped by class as the cache stores them."""
    feats, labels, index, offsets = group_by_class(
        np.asarray(features, dtype=np.float32),
        np.asarray(labels, dtype=np.int64),
        np.asarray(index, dtype=np.int64),
        num_classes,
    )
    return SplitView(feats, labels, index, offsets)


def rows_of(split: SplitView, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features, labels, index)`` of the rows of ``split`` where ``mask`` (bool or positions) holds."""
    mask = np.asarray(mask)
    return np.asarray(split.features)[mask], split.labels[mask], split.index[mask]


def no_rows(cache: FeatureCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features, labels, index)`` of no row: a split emptied in a view (e.g. test, never to be read)."""
    d = cache.feature_dim
    return np.zeros((0, d), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)


def concat(*parts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise concatenation of ``(features, labels, index)`` tuples."""
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def derive(cache: FeatureCache, label: str, **splits) -> FeatureCache:
    """A view of ``cache`` whose named splits hold the given ``(features, labels, index)`` rows (or a
    SplitView); the other splits are the parent's. ``label`` names the view in its path and messages."""
    view = copy.copy(cache)
    view._splits = dict(cache._splits)
    digest = hashlib.sha256(cache.key.encode())
    for name, rows in sorted(splits.items()):
        split = rows if isinstance(rows, SplitView) else split_of(*rows, cache.num_classes)
        if len(split) and split.features.shape[1] != cache.feature_dim:
            raise GlagError(
                f"split '{name}' of view '{label}' has {split.features.shape[1]} features per row; the cache "
                f"has {cache.feature_dim}"
            )
        view._splits[name] = split
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(split.index).tobytes())
        digest.update(np.ascontiguousarray(split.labels).tobytes())
    view.split_names = list(view._splits)
    view.key = digest.hexdigest()
    view.path = cache.path.with_name(f"{cache.path.stem}+{label}{cache.path.suffix}")
    view.persistent = False
    return view


def leftover_mask(cache: FeatureCache) -> np.ndarray:
    """Rows of the cache's ``full`` split that are neither train nor val rows (the images no stage saw)."""
    if not cache.has_split("full"):
        raise GlagError(
            f"cache '{cache.path}' has no 'full' split, so no leftover rows; re-extract it with full_split "
            "(--full-split)"
        )
    used = np.concatenate([cache.split("train").index, cache.split("val").index])
    return ~np.isin(cache.split("full").index, used)


def class_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number per row: each class's rows shuffled by ``seed`` and dealt round-robin, so every fold
    holds each class's rows within one."""
    labels = np.asarray(labels)
    out = np.empty(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        at = rng.permutation(np.flatnonzero(labels == c))
        out[at] = np.arange(len(at)) % folds
    return out
