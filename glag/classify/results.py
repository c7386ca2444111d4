"""Run folders: ``result.json`` (metrics, config, cache key, beta history) and ``per_class.csv``."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from glag.cache.format import FeatureCache
from glag.metrics import summary_row
from glag.errors import GlagError
from glag.metrics import group_of


def _clean(obj):
    """JSON-safe: NaN -> null, numpy scalars/arrays -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def unique_dir(base: Path) -> Path:
    path, i = Path(base), 1
    while path.exists():
        i += 1
        path = Path(f"{base}-{i}")
    return path


def write_run(out: Path, cache: FeatureCache, method: str, result: dict, extra: dict | None = None) -> Path:
    """Write a run folder; returns ``out``. Weights (if any) go to ``classifier.npz``.

    The folder is filled under a temporary name and renamed into place, so a killed run leaves no half folder.
    """
    final = Path(out)
    final.parent.mkdir(parents=True, exist_ok=True)
    out = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    counts = cache.train_counts
    record = {"method": method, "cache": str(cache.path), "cache_key": cache.key, "dataset": cache.dataset,
              "summary": summary_row(result["test"]), "val_summary": summary_row(result["val"]),
              "train_counts": counts, **{k: v for k, v in result.items() if k not in ("weight", "bias")},
              **(extra or {})}
    (out / "result.json").write_text(json.dumps(_clean(record), indent=2))
    pd.DataFrame({"class": np.arange(cache.num_classes), "name": cache.class_names, "train_count": counts,
                  "group": group_of(counts), "test_acc": result["test"]["per_class"],
                  "val_acc": result["val"]["per_class"]}).to_csv(out / "per_class.csv", index=False)
    if "weight" in result:
        np.savez(out / "classifier.npz", weight=result["weight"], bias=result["bias"])
    os.rename(out, final)
    return final


def load_run(path: Path) -> dict:
    f = Path(path) / "result.json" if Path(path).is_dir() else Path(path)
    if not f.is_file():
        raise GlagError(f"'{path}' is not a run folder (no result.json)")
    try:
        rec = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise GlagError(f"'{f}' is not valid JSON: {exc}")
    rec["_dir"] = str(f.parent)
    return rec


def summary_table(runs: list[dict]) -> pd.DataFrame:
    rows = []
    for r in runs:
        s = r["summary"]
        rows.append({"run": Path(r["_dir"]).name, "method": r["method"], "dataset": r.get("dataset", ""),
                     "top1": s["top1"], "many": s["many"], "medium": s["medium"], "few": s["few"],
                     "cache": r.get("cache_key", "")[:12]})
    return pd.DataFrame(rows)
