"""Run folders: ``result.json`` (metrics, config, cache key, beta history) and ``per_class.csv``."""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from glag.cache.format import FeatureCache
from glag.errors import GlagError
from glag.metrics import FEW_BELOW, MANY_ABOVE, group_of, summary_row


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


def claim_dir(base: Path) -> Path:
    """Create and return ``base``, or ``base-2``, ``base-3``, ... : the first name nobody holds.

    ``mkdir`` is atomic, so concurrent runs to the same --out each get their own folder."""
    path, i = Path(base), 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            i += 1
            path = Path(f"{base}-{i}")


def write_run(
    out: Path,
    cache: FeatureCache,
    method: str,
    result: dict,
    extra: dict | None = None,
    model_writer: Callable[[Path], object] | None = None,
    groups: tuple[int, int] = (MANY_ABOVE, FEW_BELOW),
) -> Path:
    """Write a run folder at ``out`` (or ``out-2``, ...) and return it. Weights (if any) go to
    ``classifier.npz``; ``model_writer(folder)`` adds the exported model.

    Everything, the model included, is written under a unique hidden temporary name first, and the
    folder appears under its final name only when complete; a failure or Ctrl-C removes the temporary one.
    """
    final = Path(out)
    final.parent.mkdir(parents=True, exist_ok=True)
    # a unique name made with mkdir, not mkdtemp: the umask decides the mode (mkdtemp's 0700 hid results
    # from everyone else on a shared cluster)
    tmp = final.parent / f".{final.name}.tmp-{secrets.token_hex(8)}"
    tmp.mkdir()
    try:
        counts = cache.train_counts
        record = {
            "method": method,
            "cache": str(cache.path),
            "cache_key": cache.key,
            "dataset": cache.dataset,
            "dataset_spec": cache.config.get("dataset", {}),  # the subset rule applied (profile, ...)
            "stage_one_precision": cache.provenance.get("precision", ""),  # '' for caches made before
            "summary": summary_row(result["test"]),
            "val_summary": summary_row(result["val"]),
            "train_counts": counts,
            **{k: v for k, v in result.items() if k not in ("weight", "bias")},
            **(extra or {}),
        }
        (tmp / "result.json").write_text(json.dumps(_clean(record), indent=2))
        pd.DataFrame(
            {
                "class": np.arange(cache.num_classes),
                "name": cache.class_names,
                "train_count": counts,
                "group": group_of(counts, *groups),
                "test_acc": result["test"]["per_class"],
                "val_acc": result["val"]["per_class"],
            }
        ).to_csv(tmp / "per_class.csv", index=False)
        if "weight" in result:
            np.savez(tmp / "classifier.npz", weight=result["weight"], bias=result["bias"])
        if model_writer is not None:
            model_writer(tmp)
        dest = claim_dir(final)
        os.replace(tmp, dest)  # onto the empty folder just claimed: atomic, and never onto another run
        return dest
    except OSError as exc:  # disk full, quota: name the folder; the temporary one goes in `finally`
        raise GlagError(
            f"could not write run folder '{final}': {exc.strerror or exc}; nothing was left of it"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_run(path: Path) -> dict:
    f = Path(path) / "result.json" if Path(path).is_dir() else Path(path)
    if ".tmp-" in f.parent.name and f.parent.name.startswith("."):
        raise GlagError(f"'{path}' is an unfinished run folder (a run still writing, or one that was killed)")
    if not f.is_file():
        raise GlagError(f"'{path}' is not a run folder (no result.json)")
    try:
        rec = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GlagError(f"'{f}' is not valid JSON ({exc}); it is not a glag run's result") from None
    if (
        not isinstance(rec, dict)
        or not isinstance(rec.get("summary"), dict)
        or "method" not in rec
        or not {"top1", "many", "medium", "few"} <= set(rec["summary"])
    ):
        raise GlagError(f"'{f}' is not a glag run's result.json (it lacks method or summary metrics)")
    rec["_dir"] = str(f.parent)
    return rec


def label(rec: dict) -> str:
    """A run's name in tables: its config variant's name, else its method."""
    return rec.get("variant") or rec["method"]
