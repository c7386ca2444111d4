"""``glag sweep``: a recipe's grid of stage-one caches (seeds x ``--set`` values) x its stage-two methods,
run cell by cell and resumable, summarised with paired intervals (GLAG minus each method, same cache).

A cell is one stage-one cache: its folder holds the cell's effective config (``config.toml``) and one run
folder per stage-two method. A cell whose every method has a finished run folder is never run again; a
killed sweep re-runs only the missing methods of unfinished cells (stage one resumes from its checkpoint).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import shutil
from pathlib import Path

from glag.cache.format import json_hash
from glag.classify.results import label, load_run
from glag.config import (
    RENAMED,
    RULES,
    SECTION_OF,
    SECTIONS,
    Config,
    check_value,
    to_toml,
    toml_value,
    tomllib,
)
from glag.errors import GlagError
from glag.extract.datasets import DatasetSpec, load_dataset
from glag.paths import atomic_path, check_safe_name
from glag.pipeline import check_fits, load_config, resolved
from glag.reporting import (
    METRICS,
    groups_header,
    mean_std,
    num,
    ref_minus_each,
    run_row,
    t_interval,
    verdict,
)
from glag.sweep_cell import CellFailed, error_of, run_cell
from glag.sweep_folder import claim, describe, recipe_and_variants, record_sweep
from glag.sweep_slurm import SubmitRefused, check_cluster, job_of, run_on_slurm
from glag.sweep_slurm import _record as _record_job

MAX_SEEDS = 10_000  # cells are trainings: a longer list is a typo, not a plan


def parse_seeds(text: str) -> list[int]:
    """'0-4' or '0,2,5' (or a mix: '0-2,7') -> sorted unique seeds, each in [0, 2^32), at most MAX_SEEDS."""
    usage = f"use a range like 0-4 or a list like 0,1,2 of seeds in [0, 2^32), at most {MAX_SEEDS:,} of them"
    seeds = set()
    for part in str(text).split(","):
        part = part.strip()
        try:
            lo, hi = (int(x) for x in part.split("-", 1)) if "-" in part[1:] else (int(part), int(part))
        except ValueError:
            raise GlagError(f"--seeds '{text}' is invalid; {usage}") from None
        if lo < 0 or hi < lo or hi >= 2**32 or hi - lo + 1 + len(seeds) > MAX_SEEDS:
            raise GlagError(f"--seeds '{text}' is invalid; {usage}")
        seeds.update(range(lo, hi + 1))
    if not seeds or len(seeds) > MAX_SEEDS:
        raise GlagError(f"--seeds '{text}' is invalid; {usage}")
    return sorted(seeds)


def _same(key: str, v) -> object:
    """A --set value as a run sees it: 1 and 1.0 of a number key are one value, and so are 'f3', './f3',
    '~/f3' and a link to it of a path key (one folder read twice would be fake replicates)."""
    if RULES[key].kind is Path and isinstance(v, str):
        return os.path.realpath(os.path.expanduser(v))
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def parse_sets(items) -> dict[str, list]:
    """``key=v1,v2`` pairs -> {key: [values]}; keys are config keys (any section). A key given twice, or a
    value listed twice, is refused: a repeated value would run the same cell twice as fake replicates."""
    allowed = [
        k for s, keys in SECTIONS.items() for k in keys if k not in ("seed", "method") and s != "slurm"
    ]
    keys = [item.partition("=")[0].strip() for item in items]
    for key in keys:
        if keys.count(key) > 1:  # before any value is read: a later value must not hide an earlier one
            raise GlagError(f"--set {key} is given twice; give its values once: --set {key}=v1,v2")
    out = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise GlagError(f"--set '{item}' is invalid; use --set key=value1,value2")
        if key in RENAMED:
            raise GlagError(f"--set '{key}' is now called '{RENAMED[key]}'")
        if key in ("seed", "seeds"):
            raise GlagError(f"--set '{key}': seeds are swept with --seeds (0-4 or 0,1,2), not --set")
        if key not in allowed:
            raise GlagError(f"--set '{key}' is not a config key; allowed: {', '.join(allowed)}")
        vals = [toml_value(v.strip()) for v in values.split(",")]
        seen = []
        for v in vals:
            check_value(key, v, f"--set {key}={values}")  # typed first: true and 1 are not one value
            if _same(key, v) in seen:
                raise GlagError(
                    f"--set {key}={values} lists {v!r} twice; each value makes its own cells "
                    "(use --seeds for replicates)"
                )
            seen.append(_same(key, v))
        out[key] = vals
    return out


def _legacy_cell_name(seed: int, setting: dict) -> str:
    """The cell folder name glag used before names were made safe ('/' and ' ' replaced, nothing else)."""
    parts = [f"{k}={v}" for k, v in setting.items()] + [f"seed={seed}"]
    return "_".join(p.replace("/", "-").replace(" ", "") for p in parts)


def cell_name(seed: int, setting: dict) -> str:
    """A safe folder name for the cell: its settings and seed, readable; where that text had to be changed
    (a path, an odd character) or shortened, a digest of the exact values keeps distinct cells apart."""
    exact = "_".join([f"{k}={v}" for k, v in setting.items()] + [f"seed={seed}"])
    name = re.sub(r"\.{2,}", "-", re.sub(r"[^A-Za-z0-9._=+-]", "-", exact)).lstrip(".-") or "cell"
    if name != exact or len(name) > 100:
        digest = json_hash({"seed": seed, "setting": {k: str(v) for k, v in setting.items()}})[:10]
        name = f"{name[:88]}-{digest}"
    return check_safe_name(name, "cell folder name")


def plan(seeds: list[int], sets: dict[str, list]) -> list[dict]:
    """Every cell: its name, seed and --set values, seeds innermost."""
    keys = list(sets)
    cells = []
    for combo in itertools.product(*(sets[k] for k in keys)):
        setting = dict(zip(keys, combo, strict=False))
        for seed in seeds:
            cells.append({"name": cell_name(seed, setting), "seed": seed, "setting": setting})
    return cells


def run_folders(cell_dir: Path) -> dict[str, Path]:
    """method -> its finished run folder in a cell (hidden temporary folders are never finished)."""
    found = {}
    runs = cell_dir / "runs"
    for res in sorted(runs.glob("*/result.json")) if runs.is_dir() else []:
        if res.parent.name.startswith("."):  # a run killed while writing: never counted as finished
            continue
        try:
            method = label(json.loads(res.read_text()))
        except (ValueError, KeyError, OSError):
            continue
        found.setdefault(method, res.parent)
    return found


def cell_config(config: Path, cell: dict) -> Config:
    """The cell's typed recipe: the sweep's config with the cell's --set values and seed."""
    return load_config(config, {**cell["setting"], "seed": cell["seed"]}, source="--set")


def locate(out: Path, cells: list[dict], config: Path) -> list[dict]:
    """Each cell with its folder (``dir``) and config text. A folder of the name glag used before names were
    made safe is used when it holds this very cell; a folder holding another cell's config is refused."""
    for cell in cells:
        typed = cell_config(config, cell).to_dict()
        text = to_toml(typed)
        cell["config"], cell["dir"] = text, out / "cells" / cell["name"]
        legacy = out / "cells" / _legacy_cell_name(cell["seed"], cell["setting"])
        if not cell["dir"].exists() and legacy != cell["dir"] and (legacy / "config.toml").is_file():
            cell["dir"] = legacy
        cfg = cell["dir"] / "config.toml"
        if cfg.is_file():
            try:
                # the recipe without its method list and variants (which an extended sweep may grow), as the
                # typed config holds it: a cell an older glag wrote (raw keys, old spellings) is the same
                old = tomllib.loads(cfg.read_text(encoding="utf-8"))
                same = recipe_and_variants(old)[0] == recipe_and_variants(typed)[0]
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, GlagError):
                same = False
            if not same:
                if cell["dir"] != out / "cells" / cell["name"]:  # a legacy name that another cell mapped onto
                    cell["dir"] = out / "cells" / cell["name"]
                    continue
                raise GlagError(
                    f"cell folder '{cell['dir']}' holds another recipe's cell (its config.toml differs "
                    "from this sweep's); sweep into a new --out"
                )
    return cells


def _remove(made: list[Path]) -> None:
    """Remove what this command made (the first the outermost), and nothing else."""
    for p in made:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()


def run_sweep(
    config: Path,
    seeds: list[int],
    out: Path,
    sets: dict[str, list],
    *,
    cache_dir: Path,
    quiet: bool = False,
    jobs: int = 1,
    executor: str = "local",
    slurm: dict | None = None,
    log=None,
) -> list[dict]:
    """Run every unfinished cell; returns the rows of cells.csv (every cell the folder holds). Every cell's
    config and the folder's record (sweep.json) are checked first, so a bad --set value or a different
    sweep into the same --out is refused before anything is written. With ``jobs`` > 1, cells run side by
    side in separate processes (packed on one GPU); cells that share a stage-one cache run in one
    worker, one after another, so no cache is trained twice. ``executor="slurm"`` submits them as one SLURM
    job array instead (glag.sweep_slurm), with the recipe's [slurm] settings and ``slurm`` ({key: value})
    over them."""
    import sys

    from tqdm.auto import tqdm

    log = log or (lambda m: print(m, file=sys.stderr))
    base = load_config(config, slurm or {}, source="--executor slurm option")
    methods = list(base.stage_two.method)
    if executor == "slurm":
        check_cluster(base.slurm)
    cells = plan(seeds, sets)
    check_cells(config, cells, methods)
    made = [
        p for p in (out, out / "sweep.json", out / "slurm") if not p.exists()
    ]  # what this command makes: removed again if sbatch refuses
    earlier = (out / "sweep.json").read_bytes() if (out / "sweep.json").is_file() else None
    record = claim(out, describe(base, methods, seeds, sets), log)
    every = locate(out, plan(record["seeds"], record["sets"]), config)
    mine = {c["name"] for c in cells}
    out.mkdir(parents=True, exist_ok=True)
    record_sweep(out, record)
    todo = unfinished([c for c in every if c["name"] in mine], methods, executor, made)
    bar = tqdm(
        total=len(cells),
        initial=len(cells) - len(todo),
        desc="sweep cells",
        unit="cell",
        disable=True if quiet else None,
    )

    def finished():
        gone(out)
        write_outputs(out, record["methods"], every, record["sets"])
        bar.update()

    try:
        failed = run_cells(todo, executor, jobs, out, cache_dir, base.slurm, finished, log, quiet, methods)
    except SubmitRefused:
        bar.close()
        _remove(made)  # nothing was submitted: leave --out as this command found it
        if earlier is not None:
            with atomic_path(out / "sweep.json") as t:
                t.write_bytes(earlier)
        raise
    bar.close()
    gone(out)
    rows = write_outputs(out, record["methods"], every, record["sets"])
    if failed:  # one story on every executor
        raise GlagError(
            f"{len(failed)} cell(s) failed (the others are kept; each failed cell's folder holds its log; "
            f"run the same command to re-run only them): {failed[0]}"
        )
    return rows


def check_cells(config: Path, cells: list[dict], methods) -> None:
    """What `glag run --print-config` checks, then what depends on the data, for every cell, before any
    runs: a late cell must not fail after hours of others. Each dataset is read once."""
    names = [c["name"] for c in cells]
    if len(set(names)) != len(names):  # cannot happen with digests; a last guard against merged cells
        raise GlagError("two cells of this sweep map to one folder name; give distinct --set values")
    data = {}
    for cell in cells:
        cfg = cell_config(config, cell)
        resolved(cfg)
        spec = DatasetSpec.from_config(cfg)
        key = (spec, spec.data_root)  # data_root is not part of a spec's identity, but it is read here
        if key not in data:
            data[key] = load_dataset(spec, progress=False)
        try:
            check_fits(cfg, data[key], methods)
        except GlagError as exc:
            raise GlagError(f"cell {cell['name']}: {exc}") from None


def unfinished(cells: list[dict], methods, executor: str, made: list[Path]) -> list[dict]:
    """The cells with a method still missing (``cell["missing"]``), each with its folder and config.toml
    written (re-written when this sweep's methods grew); new folders are added to ``made``."""
    todo = []
    for cell in cells:
        cell_dir = cell["dir"]
        missing = [m for m in methods if m not in run_folders(cell_dir)]
        if not missing:
            continue
        if not cell_dir.exists():
            made.append(cell_dir)
        cell_dir.mkdir(parents=True, exist_ok=True)
        cfg_file = cell_dir / "config.toml"
        if not cfg_file.is_file() or cfg_file.read_text(encoding="utf-8") != cell["config"]:
            with atomic_path(cfg_file) as t:
                t.write_text(cell["config"], encoding="utf-8")
        cell["missing"] = missing
        if executor == "local":
            _record_job(cell_dir, {"executor": "local", "job_id": ""})
        todo.append(cell)
    return todo


def run_cells(todo, executor, jobs, out, cache_dir, slurm, finished, log, quiet, methods) -> list[str]:
    """Run the cells on the executor (in this process, ``jobs`` worker processes, or a SLURM job array),
    calling ``finished()`` after each; returns the failed cells, each with its one line."""
    if executor == "slurm":
        return run_on_slurm(
            by_stage_one(todo),
            out,
            cache_dir,
            slurm,
            finished=finished,
            log=log,
            is_done=lambda c: all(m in run_folders(c["dir"]) for m in methods),
            quiet=quiet,
        )
    if jobs > 1:
        return _run_packed(todo, jobs, cache_dir, finished)
    failed = []
    for cell in todo:
        try:
            run_cell(cell["dir"], cell["missing"], cache_dir, cell["setting"])
        except CellFailed as exc:  # the others go on; the same command re-runs only this one
            failed.append(str(exc))
            continue
        finished()
    return failed


def gone(out: Path) -> None:
    """Refuse to write a sweep's tables into an --out that vanished while it ran (never re-create it)."""
    if not (out / "sweep.json").is_file():
        raise GlagError(
            f"--out '{out}' (its sweep.json) vanished while the sweep ran; nothing more was written (run the "
            "same command to start again)"
        )


def stage_one_group(cell: dict) -> tuple:
    """What decides a cell's stage-one cache: its seed and its dataset and stage-one --set values."""
    return cell["seed"], tuple(
        (k, str(v)) for k, v in cell["setting"].items() if SECTION_OF[k] in ("dataset", "stage_one")
    )


def by_stage_one(cells: list[dict]) -> list[list[dict]]:
    """The cells in groups that share a stage-one cache (run one after another, so none is trained twice)."""
    groups: dict[tuple, list] = {}
    for cell in cells:
        groups.setdefault(stage_one_group(cell), []).append(cell)
    return list(groups.values())


def _run_packed(todo, jobs: int, cache_dir: Path, finished) -> list[str]:
    """Cells in ``jobs`` worker processes (``python -m glag.sweep_cell``) at a time; a group sharing a
    stage-one cache stays in one worker. Returns the failed cells, each with its one line."""
    import subprocess
    import sys
    import threading
    from concurrent.futures import ThreadPoolExecutor

    lock, failed = threading.Lock(), []

    def work(group):
        for cell in group:
            setting = json.dumps(cell["setting"])
            args = [str(cell["dir"]), str(cache_dir), setting, *cell["missing"]]
            r = subprocess.run(
                [sys.executable, "-m", "glag.sweep_cell", *args], capture_output=True, text=True
            )
            with lock:
                if r.returncode != 0:
                    why = (
                        error_of(cell["dir"])
                        or (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
                    )
                    failed.append(f"{cell['name']}: {why}")
                    continue  # the group's other cells still run (their stage one may be theirs alone)
                finished()

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(work, by_stage_one(todo)))
    return failed


def collect(out: Path, methods, cells: list[dict], sets) -> list[dict]:
    """cells.csv's rows: each cell's finished runs (glag.reporting.run_row) with the cell's name, seed,
    --set values and job; a failed cell's missing methods as rows with no numbers and its error line in
    ``status``, so a failure never just vanishes from the tables."""
    rows = []
    for cell in cells:
        cell_dir = cell.get("dir") or out / "cells" / cell["name"]
        found, job, error = run_folders(cell_dir), job_of(cell_dir), error_of(cell_dir)
        base = {"cell": cell["name"], "seed": cell["seed"], **{k: cell["setting"][k] for k in sets}}
        where = {"executor": job.get("executor", "local"), "job_id": job.get("job_id", "")}
        for m in methods:
            if m in found:
                r = run_row(load_run(found[m]))
                rows.append(
                    {
                        **base,
                        "method": m,
                        **{k: r[k] for k in (*METRICS, "val_top1")},
                        "run": str(found[m].relative_to(out)),
                        **where,
                        "status": "done",
                    }
                )
            elif error:
                rows.append({**base, "method": m, "run": "", **where, "status": f"failed: {error}"})
    return rows


def summary(rows: list[dict], methods, sets, header: str = "") -> str:
    keys = list(sets)
    failed = {r["cell"]: r["status"] for r in rows if r["status"] != "done"}
    rows = [r for r in rows if r["status"] == "done"]
    groups = sorted({tuple(r[k] for k in keys) for r in rows}, key=str)
    lines = [
        "# Sweep summary",
        "",
        "Mean ± std over seeds; paired differences are GLAG minus each method on the same "
        "stage-one cache (same seed), mean [95 % t-interval]; 'tie' when the interval holds 0."
        + (f" Many/Medium/Few: {header}." if header else ""),
        "",
    ]
    for g in groups:
        rs = [r for r in rows if tuple(r[k] for k in keys) == g]
        title = ", ".join(f"{k}={v}" for k, v in zip(keys, g, strict=False)) or "all cells"
        lines += [
            f"## {title}",
            "",
            "| method | n | " + " | ".join(METRICS) + " | val top1 |",
            "|---|---|" + "---|" * (len(METRICS) + 1),
        ]
        for m in methods:
            mr = [r for r in rs if r["method"] == m]
            if mr:
                cells = [mean_std([num(r[k]) for r in mr]) for k in (*METRICS, "val_top1")]
                lines.append(f"| {m} | {len(mr)} | " + " | ".join(cells) + " |")
        if "glag" in methods:
            lines += ["", "| GLAG minus | top-1 | verdict |", "|---|---|---|"]
            diffs = ref_minus_each(rs, "seed")
            for m in methods:
                if m in diffs and m != "probe":  # the probe trains on another (the full balanced) set
                    mean, lo, hi = t_interval(diffs[m])
                    lines.append(
                        f"| {m} | {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] (n={len(diffs[m])}) | "
                        f"{verdict(lo, hi)} |"
                    )
        lines.append("")
    if failed:  # named, never silently missing from the tables
        lines += ["## Failed cells (run the same command to re-run only them)", ""]
        lines += [f"* {cell}: {status}" for cell, status in failed.items()] + [""]
    lines += ["![Many / Medium / Few per method](groups.png)", ""]
    return "\n".join(lines)


def plot_groups(rows: list[dict], methods, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        vals = [[num(r[g]) for r in rows if r["method"] == m and num(r[g]) is not None] for g in METRICS[1:]]
        ax.bar(
            np.arange(3) + (i - len(methods) / 2 + 0.5) * width,
            [np.mean(v) if v else np.nan for v in vals],
            width,
            yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals],
            capsize=2,
            label=m,
        )
    ax.set_xticks(range(3), ["Many", "Medium", "Few"])
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8, ncol=4)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(out: Path, methods, cells: list[dict], sets) -> list[dict]:
    """cells.csv, summary.md and groups.png from the finished run folders (each written whole, then
    renamed)."""
    rows = collect(out, methods, cells, sets)
    cols = ["cell", "seed", *sets, "method", *METRICS, "val_top1", "run", "executor", "job_id", "status"]
    with atomic_path(out / "cells.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    done = [r for r in rows if r["status"] == "done"]  # a failed cell's rows have no run folder
    with atomic_path(out / "summary.md") as tmp:
        recs = [load_run(out / done[0]["run"])] if done else []
        tmp.write_text(summary(rows, methods, sets, groups_header(recs)))
    if done:
        with atomic_path(out / "groups.png") as tmp:
            plot_groups(done, methods, Path(str(tmp) + ".png"))
            Path(str(tmp) + ".png").rename(tmp)
    return rows
