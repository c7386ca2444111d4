"""Top-1 accuracy overall, per Many/Medium/Few group (by training count) and per class.

Below extract, generate and classify: it imports nothing from them."""

from __future__ import annotations

import numpy as np

GROUPS = ("many", "medium", "few")


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class (NaN for a class with no rows)."""
    labels = np.asarray(labels)
    hits = np.bincount(labels, weights=(np.asarray(pred) == labels), minlength=num_classes)
    n = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, hits / np.maximum(n, 1), np.nan)


def evaluate(pred: np.ndarray, labels: np.ndarray, train_counts: np.ndarray) -> dict:
    """``top1`` over all rows, the mean per-class accuracy of each group (NaN if the group is empty), per
    class."""
    train_counts = np.asarray(train_counts)
    acc = per_class_accuracy(pred, labels, len(train_counts))
    out = {"top1": float(np.mean(np.asarray(pred) == np.asarray(labels))) if len(labels) else float("nan")}
    for name, mask in group_masks(train_counts).items():
        vals = acc[mask & ~np.isnan(acc)]
        out[name] = float(vals.mean()) if vals.size else float("nan")
    out["per_class"] = [None if np.isnan(a) else float(a) for a in acc]
    return out


def summary_row(metrics: dict, scale: float = 100.0) -> dict:
    """The headline numbers (in percent) for a results table."""
    return {k: round(metrics[k] * scale, 2) for k in ("top1", *GROUPS)}


def group_of(counts: np.ndarray) -> np.ndarray:
    """Group name per class: many (n > 100), medium (20 <= n <= 100), few (n < 20)."""
    counts = np.asarray(counts)
    return np.where(counts > 100, "many", np.where(counts >= 20, "medium", "few"))


def group_masks(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean class mask for each of the three groups."""
    g = group_of(counts)
    return {name: g == name for name in GROUPS}


def t_interval(values) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of paired differences (nan bounds for fewer than 2 values)."""
    import math
    import statistics

    from scipy.stats import t

    values = list(values)
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, float("nan"), float("nan")
    half = t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def verdict(lo: float, hi: float, subject: str = "GLAG") -> str:
    """How a paired interval of ``subject`` (GLAG) minus another method reads."""
    if lo != lo:
        return "n < 2"
    return f"{subject} better" if lo > 0 else (f"{subject} worse" if hi < 0 else "tie")


def paired_differences(values: dict, ref: str = "glag") -> dict[str, list[float]]:
    """``{(method, pair): value}`` -> ``{method: [ref - method for each pair where both have a value]}``,
    methods in first-seen order; a pair is one stage-one cache (same cache, same seed)."""
    pairs = sorted({p for (m, p) in values if m == ref and values[(m, p)] is not None}, key=str)
    out = {}
    for method in dict.fromkeys(m for (m, _) in values if m != ref):
        d = [values[(ref, p)] - values[(method, p)] for p in pairs if values.get((method, p)) is not None]
        if d:
            out[method] = d
    return out


# Reporting: one set of helpers for `glag report`, the sweep summary and every bench protocol.


def num(v) -> float | None:
    """A table cell as a float, None for a missing or NaN value."""
    import math

    return None if v is None or v == "" or (isinstance(v, float) and math.isnan(v)) else float(v)


def mean_std(vals) -> str:
    """'mean ± std' over the values present (one value: itself; none: '—')."""
    import statistics

    vals = [v for v in vals if v is not None]
    if not vals:
        return "—"
    return (
        f"{statistics.fmean(vals):.2f} ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else f"{vals[0]:.2f}"
    )


def paired_rows(rows, a: str, b: str, metric: str, *, by: str = "method", pair: str = "seed", **where):
    """``a - b`` of ``metric`` over the pairs (seeds: same seed = same stage-one cache) where both rows have
    it; rows are dicts, ``by`` names the column holding a and b, ``where`` filters the other columns."""
    vals = {(r[by], r[pair]): r[metric] for r in rows if all(r.get(k) == v for k, v in where.items())}
    return [
        vals[(a, p)] - vals[(b, p)]
        for p in sorted({p for _, p in vals})
        if vals.get((a, p)) is not None and vals.get((b, p)) is not None
    ]


def interval_text(d, subject: str = "GLAG") -> str:
    """'+m [lo, hi] (n=N, verdict)' of paired differences of ``subject`` minus another."""
    m, lo, hi = t_interval(d)
    if len(d) < 2:
        return f"{m:+.2f} (n=1, no interval yet)"
    return f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}] (n={len(d)}, {verdict(lo, hi, subject)})"
