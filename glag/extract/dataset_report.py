"""What a long-tailed dataset holds before any training: per-class counts and groups, and the
source position of every image in each split (to check a subset against another codebase)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from glag.extract.datasets import LTData
from glag.extract.profile import class_counts
from glag.extract.subset_export import export_subset
from glag.metrics import FEW_BELOW, MANY_ABOVE, group_of, groups_line
from glag.paths import atomic_path

INDEX_SPLITS = ("train", "val", "test")


def class_table(data: LTData, groups: tuple[int, int] = (MANY_ABOVE, FEW_BELOW)) -> list[dict]:
    """One row per class: its name, train/val/test counts and Many/Medium/Few group (by train count, with
    the ``groups`` thresholds: many above, few below)."""
    counts = {s: class_counts(data.splits[s].labels, data.num_classes) for s in INDEX_SPLITS}
    groups = group_of(counts["train"], *groups)
    return [
        {
            "class": c,
            "name": data.class_names[c],
            **{s: int(counts[s][c]) for s in INDEX_SPLITS},
            "group": str(groups[c]),
        }
        for c in range(data.num_classes)
    ]


def lent_rows(data: LTData) -> dict[str, int]:
    """{class name: training rows it gave to validation} for the classes that gave any (--val-rows
    every-class)."""
    if data.lent is None:
        return {}
    return {data.class_names[c]: int(n) for c, n in enumerate(data.lent) if n}


def totals(rows: list[dict]) -> dict:
    """Rows per split and classes per group."""
    out = {s: sum(r[s] for r in rows) for s in INDEX_SPLITS}
    for g in ("many", "medium", "few"):
        out[f"{g}_classes"] = sum(r["group"] == g for r in rows)
    return out


def write_indices(data: LTData, path: Path) -> int:
    """Write ``split,index,label`` for every train, val and test image; ``index`` is the image's
    position in its source file order, and image folders add ``path`` (relative to the data root).
    Written atomically; returns the number of rows."""
    n = 0
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["split", "index", "label"] + (["path"] if data.paths else []))
            for s in INDEX_SPLITS:
                split = data.splits[s]
                cols = [[s] * len(split), split.index.tolist(), np.asarray(split.labels).tolist()]
                if data.paths:
                    cols.append([data.paths[split.source][i] for i in split.index])
                w.writerows(zip(*cols, strict=False))
                n += len(split)
    return n


def describe(
    data: LTData,
    indices: Path | None = None,
    export: Path | None = None,
    groups: tuple[int, int] = (MANY_ABOVE, FEW_BELOW),
) -> dict:
    """What ``glag data`` reports: the classes, totals, where validation rows came from, and the
    ``indices`` CSV and ``export`` folder it writes."""
    spec = data.spec
    rows = class_table(data, groups)
    out = {
        "dataset": spec.label(),
        "groups": dict(zip(("many_above", "few_below"), groups, strict=True)),
        "spec": spec.identity(),
        "totals": totals(rows),
        "val_rows": {"rule": spec.val_rows or "given", "from_train": lent_rows(data)},
    }
    if data.rule:
        out["rule"] = data.rule
    if spec.content:
        out["digest"] = spec.content
    if indices:
        out["indices"] = {"file": str(indices), "rows": write_indices(data, indices)}
    if export:
        out["export"] = {"folder": str(export), "files": export_subset(data, export)}
    return {**out, "classes": rows}


def describe_lines(summary: dict) -> list[str]:
    """The lines ``glag data`` prints under its class table."""
    t = summary["totals"]
    lines = [
        f"{summary['dataset']}: train {t['train']}, val {t['val']}, test {t['test']} images; "
        f"{t['many_classes']} many / {t['medium_classes']} medium / {t['few_classes']} few classes"
    ]
    lines.append(groups_line(**summary["groups"]))
    if "rule" in summary:
        lines.append(f"rule: {summary['rule']}")
    lent = summary["val_rows"]["from_train"]
    if lent:
        lines.append(
            "validation rows taken from the end of the training part (--val-rows every-class): "
            + ", ".join(f"{name} {n}" for name, n in lent.items())
        )
    elif summary["val_rows"]["rule"] == "leftovers":
        lines.append(
            "validation rows: leftovers only (--val-rows leftovers); classes without leftovers have none"
        )
    if "digest" in summary:
        lines.append(f"content digest (sha256): {summary['digest']}")
    if "indices" in summary:
        lines.append(f"wrote {summary['indices']['rows']} rows to {summary['indices']['file']}")
    if "export" in summary:
        lines.append(
            f"exported {sum(summary['export']['files'].values())} images to {summary['export']['folder']} "
            "(use: --dataset folder --data-root <it>; a long-tailed folder is used as it is)"
        )
    return lines
