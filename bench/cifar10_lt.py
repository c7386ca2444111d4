"""CIFAR-10-LT on real images (an image folder, default ../shared/data/cifar10-jpg): ResNet-32, stage-one
losses GraLoss, CE, LA tau=1 (Balanced Softmax) and LDAM-DRW; on each cache every decoupled baseline, GLAG
with glag's defaults, GLAG with the paper's settings and GLAG ablations; several seeds, paired on the same
caches. Two protocols share this code:

    .venv/bin/python bench/reproduce.py cifar10-lt                 # n_max 5000, CPU budget (12 epochs)
    .venv/bin/python bench/reproduce.py cifar10-lt --full        # n_max 5000, 200 epochs (a GPU)
    .venv/bin/python bench/reproduce.py cifar10-lt-500           # n_max 500, 200 epochs + probe
    .venv/bin/python bench/reproduce.py <protocol> --report-only   # tables from finished cells

Each imbalance ratio's grid is `glag sweep` of the protocol's recipe into
results/runs/<protocol>/<budget>-<val rows>/im<IM>/, resumable cell by cell; cifar10-lt-500 runs one sweep per
seed (all its losses side by side), so that finished seeds are paired across losses. This script only runs
those sweeps and writes results/<protocol>.csv and .md from the finished run folders (--report-only works
while a sweep is still running).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

from protocol import ROOT, glag, literature, rel, shown

from glag.classify.results import load_run
from glag.config import default, tomllib
from glag.reporting import METRICS, interval_text, mean_std, paired_rows, run_row
from glag.sweep import run_folders

LOSSES = ["graloss", "ce", "la1", "ldam-drw"]  # GraLoss first: its seeds give the headline interval soonest
LOSS = {"la1": "la"}  # our loss names -> the config's (la at its default tau = 1.0)
DECOUPLED = ["crt", "lws", "tau-norm", "logit-adjust"]
COLUMNS = [
    "dataset",
    "imbalance",
    "stage_one",
    "method",
    "seed",
    "top1",
    "many",
    "medium",
    "few",
    "budget",
    "val_top1",
    "epochs",
    "val_rows",
]
LIT = literature()
LITERATURE, BESIDE = LIT["cifar10_lt"], LIT["cifar10_lt_beside"]  # bench/literature.toml
_ALL3 = {loss: [0, 1, 2] for loss in LOSSES}
PROTOCOLS = {
    "cifar10-lt": dict(
        config=ROOT / "configs" / "cifar10-lt-folder.toml",
        default_budget="cpu",
        per_seed=False,
        dataset="cifar10-lt (image folder)",
        budgets={
            # 12 caches (4 losses x 3 seeds) at IM 100 in about 3 h of a 2-core machine
            "cpu": dict(epochs=12, warmup=1.0, ims=[100], seeds=_ALL3),
            "full": dict(epochs=200, warmup=5.0, ims=[100, 10, 50, 200], seeds=_ALL3),
        },
        about="CIFAR-10-LT by LDAM-DRW's seeded rule over each class's files (IM 100: 5000 ... 50, 12,406 "
        "images "
        "before validation rows); no Few class at IM <= 100 (the smallest has 50 images).",
    ),
    "cifar10-lt-500": dict(
        config=ROOT / "configs" / "cifar10-lt-500.toml",
        default_budget="full",
        per_seed=True,
        dataset="cifar10-lt-500 (image folder)",
        budgets={
            "full": dict(
                epochs=200,
                warmup=5.0,
                ims=[100],
                seeds={
                    "graloss": [0, 1, 2, 3, 4],
                    "ce": [0, 1, 2, 3, 4],
                    "la1": [0, 1, 2],
                    "ldam-drw": [0, 1, 2],
                },
            )
        },
        about="CIFAR-10-LT-500 (SPEC section 5): the same rule with n_max 500, i.e. CIFAR-100-LT's "
        "per-class counts "
        "on 10 real classes (IM 100: 500, 299, 179, 107, 64, 38, 23, 13, 8, 5; 1,236 images; Many 4 / "
        "Medium 3 / "
        "Few 3). No published figures exist for it: methods are compared paired on the same caches. The "
        "probe "
        "(SPEC section 4) retrains a linear classifier on the features of all 50,000 balanced CIFAR-10 "
        "training "
        "images through each frozen stage-one backbone.",
    ),
}


def methods_of(p: dict) -> list[str]:
    return tomllib.loads(p["config"].read_text())["stage_two"]["method"]


def sweep_dir(results: Path, name: str, budget: str, val_rows: str, im) -> Path:
    return results / "runs" / name / f"{budget}-{val_rows}" / f"im{im:g}"


def sweep_args(args, p: dict, budget: dict, im, losses, seeds) -> list[str]:
    """``glag sweep`` of the recipe; --set only for what differs from it (the loss is always the grid
    axis)."""
    recipe = tomllib.loads(p["config"].read_text())
    sets = {
        "imbalance": f"{im:g}",
        "loss": ",".join(LOSS.get(x, x) for x in losses),
        "epochs": budget["epochs"],
        "warmup": f"{budget['warmup']:g}",
        "classifier_epochs": args.classifier_epochs,
        "val_rows": args.val_rows,
        "data_root": rel(args.data_root),
    }
    base = {**recipe["dataset"], **recipe["stage_one"], **recipe.get("stage_two", {})}
    base.setdefault("classifier_epochs", default("classifier_epochs"))
    base.setdefault("val_rows", "every-class")
    sets = {
        k: v
        for k, v in sets.items()
        if k == "loss"
        or str(v) != f"{base.get(k, '')}"
        and not (isinstance(base.get(k), (int, float)) and float(v) == float(base[k]))
    }
    out = [
        "sweep",
        rel(p["config"]),
        "--seeds",
        ",".join(map(str, seeds)),
        "--out",
        rel(sweep_dir(args.results, args.protocol, args.budget, args.val_rows, im)),
        *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
        *[a for x in args.set for a in ("--set", x)],
        "--cache-dir",
        rel(args.cache_dir),
        "-q",
    ]
    return out + (["--jobs", str(args.jobs)] if args.jobs > 1 else [])


def sweeps(args, p: dict, budget: dict, losses) -> list[list[str]]:
    """The sweeps of this budget: one per IM (all seeds), or with ``per_seed`` one per IM and seed, the losses
    with the most seeds first (cifar10-lt-500: GraLoss and CE seeds 0-4, then LA and LDAM-DRW seeds 0-2)."""
    out = []
    phases: dict[tuple, list] = {}
    for loss in losses:
        phases.setdefault(tuple(budget["seeds"][loss]), []).append(loss)
    for im in budget["ims"]:
        if not p["per_seed"]:
            seeds = sorted({s for loss in losses for s in budget["seeds"][loss]})
            out.append(sweep_args(args, p, budget, im, losses, seeds))
            continue
        for seeds, group in sorted(phases.items(), key=lambda kv: -len(kv[0])):
            out += [sweep_args(args, p, budget, im, group, [s]) for s in seeds]
    return out


def cells(folder: Path) -> list[tuple[dict, dict[str, Path]]]:
    """Every cell under a budget's folder: (its config, {method: finished run folder})."""
    return [
        (tomllib.loads(cfg.read_text()), run_folders(cfg.parent))
        for cfg in sorted(folder.glob("im*/cells/*/config.toml"))
    ]


def _loss(cfg: dict) -> str:
    ours = {v: k for k, v in LOSS.items()}
    return ours.get(cfg["stage_one"]["loss"], cfg["stage_one"]["loss"])


def collect(args, p: dict, b: dict) -> list[dict]:
    rows, methods = [], methods_of(p)
    folder = sweep_dir(args.results, args.protocol, args.budget, args.val_rows, 0).parent
    for cfg, found in cells(folder):
        im, loss, seed = cfg["dataset"]["imbalance"], _loss(cfg), cfg["stage_one"]["seed"]
        if im not in b["ims"] or loss not in b["seeds"] or seed not in b["seeds"][loss]:
            continue
        for m in methods:
            if m not in found:
                continue
            r = run_row(load_run(found[m]))
            rows.append(
                {
                    "dataset": p["dataset"],
                    "imbalance": im,
                    "stage_one": loss,
                    "method": m,
                    "seed": seed,
                    **{k: r[k] for k in METRICS},
                    "budget": args.budget,
                    "val_top1": r["val_top1"],
                    "epochs": b["epochs"],
                    "val_rows": args.val_rows,
                    "_per_class": r["per_class"],
                }
            )
    order = {m: i for i, m in enumerate(methods)}
    return sorted(
        rows, key=lambda r: (r["imbalance"], LOSSES.index(r["stage_one"]), r["seed"], order[r["method"]])
    )


def paired(rows, im, loss, a, b, metric):
    """Differences a - b over the seeds where both have the metric (same seed = same stage-one cache)."""
    return paired_rows(rows, a, b, metric, imbalance=im, stage_one=loss)


def paired_losses(rows, im, method, a, b):
    """``method``'s top-1 on loss a's cache minus on loss b's cache, paired by seed."""
    return paired_rows(rows, a, b, "top1", by="stage_one", imbalance=im, method=method)


def mean_of(rows, im, loss, m, metric="top1"):
    vals = [
        r[metric]
        for r in rows
        if r["imbalance"] == im and r["stage_one"] == loss and r["method"] == m and r[metric] is not None
    ]
    return statistics.fmean(vals) if vals else None


def best_baseline(rows, im, loss, metric="top1"):
    means = {m: mean_of(rows, im, loss, m, metric) for m in DECOUPLED}
    means = {m: v for m, v in means.items() if v is not None}
    return max(means, key=means.get) if means else None


def headline(rows) -> list[str]:
    """Per stage-one loss: GLAG against the best decoupled baseline on the same caches (test and val rows),
    and the generator's contribution (GLAG minus GLAG without generation) on the Few group."""
    out = []
    for im in sorted({r["imbalance"] for r in rows}):
        for loss in LOSSES:
            best = best_baseline(rows, im, loss)
            d = paired(rows, im, loss, "glag", best, "top1") if best else []
            if not d:
                continue
            dv = paired(rows, im, loss, "glag", best, "val_top1")
            groups = "; ".join(
                f"{g.capitalize()} {statistics.fmean(paired(rows, im, loss, 'glag', best, g)):+.2f}"
                for g in ("many", "medium", "few")
                if paired(rows, im, loss, "glag", best, g)
            )
            line = (
                f"* IM {im:g}, {loss} features: GLAG {mean_of(rows, im, loss, 'glag'):.2f} vs the best "
                f"decoupled "
                f"baseline, {best} {mean_of(rows, im, loss, best):.2f}: test top-1 {interval_text(d)}; on "
                f"validation rows {interval_text(dv)}; mean test difference by group: {groups}."
            )
            few = paired(rows, im, loss, "glag", "glag-no-gen", "few")
            if few:
                line += f" The generator on Few (GLAG minus GLAG without generation): {interval_text(few)}."
            out.append(line)
    return out


CANDIDATES = ["glag-ens", "glag-ens-no-kd", "glag-law", "glag-heldout", "glag-train-la"]  # issue 34
CONTROLS = ["glag-heldout-no-gen", "crt-heldout", "la-bias"]  # get the same validation rows as glag-heldout


def candidate_lines(rows) -> list[str]:
    """Issue 34: each candidate stage two against the best decoupled baseline on the cells it ran on, the
    controls that get the validation rows as training rows included; glag-heldout against each control."""
    out = []
    for im in sorted({r["imbalance"] for r in rows}):
        for loss in LOSSES:
            seeds = {
                r["seed"]
                for r in rows
                if r["imbalance"] == im and r["stage_one"] == loss and r["method"] in CANDIDATES
            }
            if not seeds:
                continue
            cell = [r for r in rows if r["seed"] in seeds]
            means = {m: mean_of(cell, im, loss, m) for m in DECOUPLED + CONTROLS}
            means = {m: v for m, v in means.items() if v is not None}
            best = max(means, key=means.get)
            for c in CANDIDATES:
                d = paired(cell, im, loss, c, best, "top1")
                if not d:
                    continue
                few = paired(cell, im, loss, c, "logit-adjust", "few")
                out.append(
                    f"* IM {im:g}, {loss} features: {c} {mean_of(cell, im, loss, c):.2f} vs the best "
                    f"decoupled baseline or control, {best} {means[best]:.2f}: {interval_text(d, c)}; "
                    f"Few minus logit-adjust {interval_text(few, c) if few else '—'}."
                )
            ctl = [
                f"{m} {interval_text(paired(cell, im, loss, 'glag-heldout', m, 'top1'), 'glag-heldout')}"
                for m in CONTROLS
                if paired(cell, im, loss, "glag-heldout", m, "top1")
            ]
            if ctl:
                out.append(f"* IM {im:g}, {loss}: glag-heldout minus its controls: " + "; ".join(ctl) + ".")
    return out


def largest_class_lines(rows, val_rows: str) -> list[str]:
    """Test accuracy of class 0 (the largest) under GLAG and under the best decoupled baseline: what a tuning
    that never sees the largest class (--val-rows leftovers at n_max = its pool) was measured to cost."""
    out = []
    rows = [r for r in rows if "_per_class" in r]  # CSV rows kept from run folders that are gone have none
    for im in sorted({r["imbalance"] for r in rows}):
        for loss in LOSSES:
            best = best_baseline(rows, im, loss)
            acc = {
                m: [
                    100 * r["_per_class"][0]
                    for r in rows
                    if r["imbalance"] == im and r["stage_one"] == loss and r["method"] == m
                ]
                for m in ("glag", best)
            }
            if best and acc["glag"] and acc[best]:
                d = paired(
                    [{**r, "c0": 100 * r["_per_class"][0]} for r in rows], im, loss, "glag", best, "c0"
                )
                out.append(
                    f"* IM {im:g}, {loss}: class 0's test accuracy {statistics.fmean(acc['glag']):.1f} "
                    f"under GLAG "
                    f"vs {statistics.fmean(acc[best]):.1f} under {best} (GLAG minus {best}: "
                    f"{interval_text(d)}; "
                    f"validation rows: {val_rows})."
                )
    return out


def probe_lines(rows) -> list[str]:
    """The probe (SPEC section 4; the paper's Table 1 'stage two' column): per stage-one loss, and paired
    by seed."""
    probe = [r for r in rows if r["method"] == "probe"]
    if not probe:
        return []
    out = [
        "| stage one | n | probe top-1 (full balanced train set) | stage-one top-1 (LT) |",
        "|---|---|---|---|",
    ]
    for im in sorted({r["imbalance"] for r in probe}):
        for loss in LOSSES:
            rs = [r["top1"] for r in probe if r["imbalance"] == im and r["stage_one"] == loss]
            if rs:
                s1 = [
                    r["top1"]
                    for r in rows
                    if r["imbalance"] == im and r["stage_one"] == loss and r["method"] == "stage-one"
                ]
                out.append(f"| {loss} | {len(rs)} | {mean_std(rs)} | {mean_std(s1)} |")
        out.append("")
        for other in ("ce", "la1", "ldam-drw"):
            d = paired_losses(probe, im, "probe", "graloss", other)
            if d:
                out.append(
                    f"* Probe, GraLoss features minus {other} features (same seed): "
                    f"{interval_text(d, 'GraLoss')}."
                )
    return out


def markdown(rows, args, p: dict, b: dict) -> str:
    import torch

    import glag as glag_pkg

    methods = methods_of(p)
    budget_line = (
        f"**Budget `{args.budget}`**: stage one {b['epochs']} epochs (warm-up {b['warmup']:g}), "
        + (
            "the literature's 200-epoch recipe."
            if b["epochs"] >= 200
            else "reduced from the literature's 200 so that the protocol fits a 2-core CPU; absolute "
            "numbers are "
            "therefore below the literature's, and only the paired comparisons on the same caches are the "
            "evidence here."
        )
    )
    val_line = (
        "Validation rows (`--val-rows every-class`, SPEC section 5): 20 per class, from each class's "
        "leftover "
        "files first; a class with fewer leftovers (class 0 at n_max 5000, which keeps all its files) gives "
        "the shortfall from the end of its training part, so everything tuned on validation (post-hoc tau, "
        "beta_c) sees every class."
        if args.val_rows == "every-class"
        else "Validation rows (`--val-rows leftovers`): 20 per class from each class's leftover files only; "
        "a class "
        "that keeps all its files (class 0 at n_max 5000) has none, so what is tuned on validation never "
        "sees it."
    )
    lines = [
        f"# Protocol `{args.protocol}`",
        "",
        f"Real CIFAR-10 images from the image folder `{rel(args.data_root)}` (JPEG; `glag data --dataset "
        f"folder` "
        f"prints its digest). {p['about']} ResNet-32, batch 128, lr 0.1 cosine, pad-4 crop + flip; stage two "
        f"{args.classifier_epochs} classifier epochs. The seed drives stage one and stage two.",
        "",
        budget_line,
        "",
        f"{'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU only (2 cores)'}; "
        f"glag {glag_pkg.__version__}, torch {torch.__version__}. Test top-1 and Many / Medium / Few (%), "
        "mean ± std over seeds.",
        "",
        "GLAG = glag's default stage two (beta_init 0, val-tuned post-hoc logit adjustment); `glag-paper` = "
        "`beta_init 0.6, posthoc_la false` (the paper's settings); `glag-no-gen`, `glag-no-kd` and "
        "`glag-no-la` "
        "are ablations. Tuning (beta_c, post-hoc tau) reads validation rows only; each run reads test once.",
        "",
        val_line,
        "",
        "<!-- readme:start -->",
        "## Headline",
        "",
        "Paired by seed on the same stage-one cache, 95 % t-interval:",
        "",
        *headline(rows),
        "",
    ]
    cand = candidate_lines(rows)
    if cand:
        lines += [
            "Issue 34's stage twos (docs/ablations.md: selected on validation and leftover rows of extra "
            "seeds; here each ran once on test), paired by seed, 95 % t-interval. The seeds that hold them "
            "were re-trained for this (stage one on 2 CPU threads is not bit-identical across thread "
            "counts, so their rows of every method replace the earlier ones); the other seeds' rows are "
            "the earlier caches' as reported:",
            "",
            *cand,
            "",
        ]
    big = largest_class_lines(rows, args.val_rows)
    if big:
        lines += ["The largest class (class 0), GLAG against the best decoupled baseline:", "", *big, ""]
    probe = probe_lines(rows)
    if probe:
        lines += [
            "## Probe: the stage-one features on the full balanced training set",
            "",
            "SPEC section 4 (the paper's Table 1 'stage two' column): each frozen stage-one backbone's "
            "features "
            "of all 50,000 CIFAR-10 training images, a fresh linear classifier, test top-1.",
            "",
            *probe,
            "",
        ]
    marked = False
    for im in b["ims"]:
        cell_rows = [r for r in rows if r["imbalance"] == im]
        if not cell_rows:
            continue
        lit = {name: v.get(im) for name, v in LITERATURE.items()} if args.protocol == "cifar10-lt" else {}
        lines += [
            f"## IM {im:g}",
            "",
            "| stage one | method | n | top-1 | many | medium | few | val top-1 | literature (200 ep.) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for loss in LOSSES:
            for m in methods:
                rs = [r for r in cell_rows if r["stage_one"] == loss and r["method"] == m]
                if rs:
                    name = BESIDE.get((loss, m))
                    beside = f"{name} {lit[name]}" if name and lit.get(name) else ""
                    if (loss, m) == ("la1", "stage-one") and lit.get("Logit adjustment (loss)"):
                        beside += f"; LA loss {lit['Logit adjustment (loss)']}"
                    lines.append(
                        f"| {loss} | {m} | {len(rs)} | "
                        + " | ".join(
                            mean_std([r[k] for r in rs])
                            for k in ("top1", "many", "medium", "few", "val_top1")
                        )
                        + f" | {beside} |"
                    )
        lines += [
            "",
            f"Paired differences at IM {im:g}: GLAG minus each method on the same cache, test top-1, "
            "validation top-1 and test Few, mean [95 % t-interval]:",
            "",
            "| stage one | GLAG minus | test top-1 | val top-1 | test Few |",
            "|---|---|---|---|---|",
        ]
        for loss in LOSSES:
            for m in methods:
                d, dv, df = (paired(rows, im, loss, "glag", m, k) for k in ("top1", "val_top1", "few"))
                if m not in ("glag", "probe") and d:
                    lines.append(
                        f"| {loss} | {m} | {interval_text(d)} | {interval_text(dv) if dv else '—'} | "
                        f"{interval_text(df) if df else '—'} |"
                    )
        if lit:
            lines += [
                "",
                "The literature's CIFAR-10-LT figures at this IM (SPEC §8; ResNet-32, 200 epochs, official "
                "pickles; papers' own recipes differ): "
                + ", ".join(f"{k} {v}" for k, v in lit.items() if v)
                + ".",
            ]
        lines.append("")
        if not marked:
            lines += ["<!-- readme:end -->", ""]
            marked = True
    if not marked:
        lines += ["<!-- readme:end -->", ""]
    return "\n".join(lines)


def file_stem(args, p: dict) -> str:
    return (
        args.protocol
        + ("" if args.budget == p["default_budget"] else f"-{args.budget}")
        + ("" if args.val_rows == "every-class" else "-leftovers")
    )


NUMERIC = ("top1", "many", "medium", "few", "val_top1")


def _number(text: str):
    """A CSV number as the run folders give it: 100, not 100.0."""
    v = float(text)
    return int(v) if v.is_integer() else v


def merge_kept_cells(old: list[dict], rows: list[dict], methods: list[str]) -> list[dict]:
    """``rows`` plus the CSV rows of every (IM, stage one, seed) cell they do not hold: a cell's run folders
    may be gone (a new machine) while its numbers stay reported, and a re-run replaces the cell whole."""
    fresh = {(float(r["imbalance"]), r["stage_one"], int(r["seed"])) for r in rows}
    kept = [
        {
            **r,
            "imbalance": _number(r["imbalance"]),
            "seed": int(r["seed"]),
            "epochs": int(r["epochs"]),
            **{k: float(r[k]) if r[k] not in ("", None) else None for k in NUMERIC},
        }
        for r in old
        if (float(r["imbalance"]), r["stage_one"], int(r["seed"])) not in fresh and r["method"] in methods
    ]
    order = {m: i for i, m in enumerate(methods)}
    return sorted(
        kept + rows,
        key=lambda r: (r["imbalance"], LOSSES.index(r["stage_one"]), r["seed"], order[r["method"]]),
    )


def write(args, p: dict, rows: list[dict], b: dict, commands=()) -> None:
    """CSV rows of every budget and validation rule run so far (this one's replaced), and this one's
    markdown."""
    csv_path = args.results / f"{args.protocol}.csv"
    old = []
    if csv_path.is_file():
        with open(csv_path, newline="") as f:  # rows from before the val_rows column used the leftovers rule
            old = [{**r, "val_rows": r.get("val_rows") or "leftovers"} for r in csv.DictReader(f)]
    this = (args.budget, args.val_rows)
    rows = merge_kept_cells([r for r in old if (r["budget"], r["val_rows"]) == this], rows, methods_of(p))
    old = [r for r in old if (r["budget"], r["val_rows"]) != this]
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(old)
        w.writerows({k: ("" if r[k] is None else r[k]) for k in COLUMNS} for r in rows)
    md = markdown(rows, args, p, b)
    folder = sweep_dir(args.results, args.protocol, args.budget, args.val_rows, 0).parent
    md += (
        f"\n## Commands\n\nThe recipe: {rel(p['config'])}; each cell's own config is "
        f"{rel(folder)}/im<IM>/cells/<cell>/config.toml. The sweeps:\n\n"
        + "\n".join(f"    {c}" for c in commands)
        + "\n"
    )
    (args.results / f"{file_stem(args, p)}.md").write_text(md)


def main(argv=None, protocol: str = "cifar10-lt"):
    p = PROTOCOLS[protocol]
    ap = argparse.ArgumentParser(
        prog=f"reproduce.py {protocol}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10-jpg")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "glag-cache")
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    if "full" in p["budgets"] and p["default_budget"] != "full":
        ap.add_argument(
            "--full", action="store_true", help="the literature's budget: 200 epochs, IM 100, 10, 50, 200"
        )
    ap.add_argument(
        "--val-rows",
        choices=["every-class", "leftovers"],
        default="every-class",
        help="validation rows for every class (SPEC section 5), or the leftovers only (the literature's set)",
    )
    ap.add_argument("--classifier-epochs", "--gen-epochs", type=int, default=default("classifier_epochs"))
    ap.add_argument("--ims", default=None, help="comma-separated imbalance ratios (default: the budget's)")
    ap.add_argument(
        "--epochs", type=int, default=None, help="override the budget's stage-one epochs (smoke runs)"
    )
    ap.add_argument(
        "--seeds", default=None, help="comma-separated seeds for every loss (default: the budget's)"
    )
    ap.add_argument(
        "--losses", default=None, help=f"comma-separated stage-one losses (default: {','.join(LOSSES)})"
    )
    ap.add_argument("--jobs", type=int, default=1, help="cells side by side (glag sweep --jobs)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed on to every sweep (toy-size smoke runs: --set n_max=12)",
    )
    ap.add_argument("--report-only", action="store_true", help="only write the tables from finished cells")
    args = ap.parse_args(argv)
    args.protocol = protocol
    args.budget = "full" if getattr(args, "full", False) else p["default_budget"]
    budget = dict(p["budgets"][args.budget])
    losses = args.losses.split(",") if args.losses else LOSSES
    if set(losses) - set(LOSSES):
        sys.exit(f"--losses {args.losses}: choose from {', '.join(LOSSES)}")
    if args.ims:
        budget["ims"] = [float(x) for x in args.ims.split(",")]
    seeds = budget["seeds"]
    if args.seeds:
        seeds = {loss: [int(x) for x in args.seeds.split(",")] for loss in LOSSES}
    budget["seeds"] = {loss: seeds[loss] for loss in losses}
    if args.epochs:
        budget["epochs"] = args.epochs
    if not (args.data_root / "train").is_dir():
        sys.exit(
            f"protocol '{protocol}' needs an image folder with train/ and test/: '{args.data_root}' has none"
        )
    args.results.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:7.0f}s] {msg}", file=sys.stderr, flush=True)

    log(f"budget {args.budget}: {budget}")
    todo = sweeps(args, p, budget, losses)
    commands = [shown(a) for a in todo]
    if not args.report_only:
        for a in todo:
            glag(a, log)
            rows = collect(args, p, budget)
            write(args, p, rows, budget, commands)
            log(f"{len(rows)} rows in results/{protocol}.csv")
    rows = collect(args, p, budget)
    if rows:
        write(args, p, rows, budget, commands)
        print(
            f"wrote results/{protocol}.csv ({len(rows)} rows of budget {args.budget}, val rows "
            f"{args.val_rows})"
        )
