"""Reporting, once: finished run folders as table rows, paired differences (GLAG minus each method on the
same stage-one cache) with 95 % t-intervals, and the table cells that ``glag report``, the sweep summary and
every bench protocol print."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import pandas as pd

from glag.classify.results import label
from glag.errors import GlagError
from glag.metrics import FEW_BELOW, MANY_ABOVE, groups_line

METRICS = ("top1", "many", "medium", "few")


def t_interval(values) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of paired differences (nan bounds for fewer than 2 values)."""
    from scipy.stats import t  # here: scipy is slow to import

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


def num(v) -> float | None:
    """A table cell as a float, None for a missing or NaN value."""
    return None if v is None or v == "" or (isinstance(v, float) and math.isnan(v)) else float(v)


def mean_std(vals) -> str:
    """'mean ± std' over the values present (one value: itself; none: '—')."""
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


def run_row(rec: dict) -> dict:
    """One run (a loaded result.json): its name in tables, cache, dataset, stage-one loss and seed, test
    metrics and validation top-1 (percent; None where missing), and test per-class accuracy."""
    cfg = rec.get("run_config") or {}
    s, v = rec["summary"], rec.get("val_summary") or {}
    return {
        "run": Path(rec.get("_dir", "")).name,
        "method": label(rec),
        "cache_key": rec.get("cache_key", ""),
        "dataset": rec.get("dataset", ""),
        "loss": cfg.get("stage_one", {}).get("loss"),
        "seed": cfg.get("stage_one", {}).get("seed"),
        **{k: num(s.get(k)) for k in METRICS},
        "val_top1": num(v.get("top1")),
        "per_class": (rec.get("test") or {}).get("per_class"),
    }


def runs_frame(recs: list[dict]) -> pd.DataFrame:
    """Every run's row (``run_row``) in one frame."""
    return pd.DataFrame([run_row(r) for r in recs])


def read_cells(path: Path) -> list[dict]:
    """A sweep's cells.csv, typed: seed an int, metrics and val_top1 floats (None where missing)."""
    with open(path, newline="") as f:  # a failed cell's rows (status 'failed: ...') carry no numbers
        rows = [r for r in csv.DictReader(f) if not r.get("status", "").startswith("failed")]
    for r in rows:
        r["seed"] = int(r["seed"])
        r.update({k: num(r.get(k)) for k in (*METRICS, "val_top1")})
    return rows


def summary_table(recs: list[dict]) -> pd.DataFrame:
    """``glag report``'s table: one line per run."""
    df = runs_frame(recs)
    df["cache"] = df["cache_key"].str[:12]
    return df[["run", "method", "dataset", *METRICS, "cache"]]


def ref_minus_each(rows: list[dict], pair: str, metric: str = "top1", ref: str = "glag") -> dict[str, list]:
    """``ref`` minus every other method over the pairs (``pair``: a column naming the stage-one cache)
    where both have ``metric``; methods in first-seen order."""
    return paired_differences({(r["method"], r[pair]): num(r[metric]) for r in rows}, ref=ref)


def paired_table(recs: list[dict], metric: str = "top1") -> pd.DataFrame:
    """GLAG minus every other method, paired on the same cache (its key), with 95 % t-intervals."""
    rows = runs_frame(recs).drop_duplicates(["method", "cache_key"]).to_dict("records")
    if not any(r["method"] == "glag" for r in rows):
        raise GlagError("--paired needs GLAG run folders (method 'glag') among RUNS")
    out = []
    for method, d in sorted(ref_minus_each(rows, "cache_key", metric).items()):
        mean, lo, hi = t_interval(d)
        out.append(
            {
                "GLAG minus": method,
                "caches": len(d),
                f"mean {metric}": round(mean, 2),
                "95% low": round(lo, 2),
                "95% high": round(hi, 2),
                "verdict": verdict(lo, hi),
            }
        )
    if not out:
        raise GlagError(
            "--paired found no method run on the same cache as a GLAG run; pass both runs of each cache"
        )
    return pd.DataFrame(out)


def groups_header(recs: list[dict]) -> str:
    """The Many/Medium/Few thresholds the runs were reported with (result.json's ``groups``; the
    literature's 100 and 20 for runs from before the setting), for a report's header."""
    given = [r.get("groups") or {} for r in recs]
    seen = sorted({(g.get("many_above", MANY_ABOVE), g.get("few_below", FEW_BELOW)) for g in given})
    if len(seen) <= 1:
        return groups_line(*(seen[0] if seen else (MANY_ABOVE, FEW_BELOW)))
    return "groups differ between these runs (" + "; ".join(groups_line(*g) for g in seen) + ")"
