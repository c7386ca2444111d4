"""The multi-seed evidence protocol: Fashion-MNIST-LT with CIFAR-100-LT's class sizes (--n-max 500),
several stage-one losses and seeds, every decoupled baseline and GLAG ablation on each cache, and
paired comparisons (same seed, same cache) with 95 % t-intervals.

    .venv/bin/python bench/reproduce.py evidence [--epochs 30]
    .venv/bin/python bench/reproduce.py evidence --report-only     # tables and plot from finished cells

The recipe is configs/fashion-mnist-lt-evidence.toml, and each imbalance ratio's grid is one
`glag sweep` of it (resumable cell by cell) into results/runs/evidence/im<IM>/. This script only runs
those sweeps and turns their cells.csv into results/evidence.csv, results/evidence.md and
results/evidence.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

from protocol import ROOT, glag, rel

from glag.reporting import METRICS, mean_std, paired_rows, read_cells, t_interval, verdict

DATASET = "fashion-mnist-lt"
N_MAX = 500
BACKBONE = "resnet32"
CONFIG = ROOT / "configs" / "fashion-mnist-lt-evidence.toml"
CELLS = {  # imbalance -> (stage-one losses, seeds)
    100: (["ce", "la1", "ldam-drw", "graloss"], [0, 1, 2, 3, 4]),
    10: (["ce", "graloss"], [0, 1, 2]),
    200: (["ce", "graloss"], [0, 1, 2]),
}
LOSS = {"la1": "la"}  # our loss names -> the config's (la at its default tau = 1.0)
BASELINES = ["stage-one", "crt", "lws", "tau-norm", "logit-adjust"]
METHODS = BASELINES + ["glag", "glag-fixed-beta", "glag-no-kd", "glag-no-gen", "glag-no-la"]
COLUMNS = ["dataset", "imbalance", "stage_one", "method", "seed", "top1", "many", "medium", "few"]


def sweep_args(im: int, args) -> list[str]:
    losses, seeds = CELLS[im]
    return [
        "sweep",
        rel(CONFIG),
        "--seeds",
        ",".join(map(str, seeds)),
        "--out",
        rel(sweep_dir(args.results, im)),
        "--set",
        f"imbalance={im}",
        "--set",
        "loss=" + ",".join(LOSS.get(x, x) for x in losses),
        "--set",
        f"epochs={args.epochs}",
        "--cache-dir",
        rel(args.cache_dir),
        "-q",
    ]


def sweep_dir(results: Path, im: int) -> Path:
    return results / "runs" / "evidence" / f"im{im}"


def collect(results: Path) -> list[dict]:
    """evidence.csv's rows from each sweep's cells.csv."""
    ours = {v: k for k, v in LOSS.items()}
    rows = []
    for im in CELLS:
        f = sweep_dir(results, im) / "cells.csv"
        if not f.is_file():
            continue
        for r in read_cells(f):
            rows.append(
                {
                    "dataset": DATASET,
                    "imbalance": im,
                    "stage_one": ours.get(r["loss"], r["loss"]),
                    "method": r["method"],
                    "seed": r["seed"],
                    **{k: r[k] for k in METRICS},
                }
            )
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(
        rows,
        key=lambda r: (
            list(CELLS).index(r["imbalance"]),
            CELLS[r["imbalance"]][0].index(r["stage_one"]),
            r["seed"],
            order.get(r["method"], len(order)),
        ),
    )


def paired(rows, im, loss, a, b, metric):
    """Differences a - b over the seeds where both have the metric (same seed = same stage-one cache)."""
    return paired_rows(rows, a, b, metric, imbalance=im, stage_one=loss)


DECOUPLED = ["crt", "lws", "tau-norm", "logit-adjust"]


def headline(rows) -> list[str]:
    """Per imbalance ratio, on GraLoss features: GLAG against the best decoupled baseline (by mean top-1)."""
    out = []
    for im in CELLS:
        rs = [r for r in rows if r["imbalance"] == im and r["stage_one"] == "graloss"]
        means = {
            m: statistics.fmean([r["top1"] for r in rs if r["method"] == m])
            for m in DECOUPLED + ["glag"]
            if any(r["method"] == m for r in rs)
        }
        if "glag" not in means or len(means) < 2:
            continue
        best = max((m for m in means if m != "glag"), key=means.get)
        parts = []
        for metric in ("top1", "few"):
            d = paired(rows, im, "graloss", "glag", best, metric)
            if d:
                m, lo, hi = t_interval(d)
                parts.append(
                    f"{'top-1' if metric == 'top1' else 'Few'} {m:+.2f} [{lo:+.2f}, {hi:+.2f}] "
                    f"({verdict(lo, hi)})"
                )
        n = len({r["seed"] for r in rs})
        out.append(
            f"* IM {im}, GraLoss features, {n} seeds: GLAG {means['glag']:.2f} vs the best decoupled "
            f"baseline, "
            f"{best} {means[best]:.2f}: " + "; ".join(parts) + "."
        )
    by_loss = []
    for loss in CELLS[100][0]:
        rs = [r for r in rows if r["imbalance"] == 100 and r["stage_one"] == loss]
        vals = {m: [r["top1"] for r in rs if r["method"] == m] for m in ("stage-one", "glag")}
        if all(vals.values()):
            by_loss.append(
                f"{loss} {statistics.fmean(vals['stage-one']):.2f} -> {statistics.fmean(vals['glag']):.2f}"
            )
    if by_loss:
        out.append(
            "* IM 100, stage one -> GLAG on each stage-one loss (mean top-1): "
            + ", ".join(by_loss)
            + ". Stage-one losses are not paired (different caches); on this dataset and budget GraLoss's "
            "stage one is not the best one (see docs/ablations.md on g)."
        )
    return out


def markdown(rows, epochs, gen_epochs) -> str:
    import numpy
    import torch

    import glag as glag_pkg

    lines = [
        "# Protocol `evidence`",
        "",
        f"Fashion-MNIST-LT with `--n-max {N_MAX}` (CIFAR-100-LT's class sizes: at IM 100 the counts are "
        "500, 299, 179, 107, 64, 38, 23, 13, 8, 5, so Many, Medium and Few classes are all present), "
        f"{BACKBONE}, stage one {epochs} epochs, stage two {gen_epochs} generation epochs; the seed drives "
        f"stage "
        f"one and stage two. CPU only; glag {glag_pkg.__version__}, torch {torch.__version__}, "
        f"numpy {numpy.__version__}. Test top-1 and Many / Medium / Few (%), mean ± std over seeds.",
        "",
        "Made by `python bench/reproduce.py evidence`, which runs the `glag sweep` commands listed at the "
        "end; "
        "each cell's config is in its folder under results/runs/evidence. GLAG here is glag's default stage "
        "two: beta_init 0.0 "
        "and a val-tuned post-hoc logit adjustment, both chosen on validation splits only "
        "(docs/ablations.md); `glag-no-la` is the same without the adjustment.",
        "",
        "Headline (paired by seed on the same stage-one cache, 95 % t-interval):",
        "",
        *headline(rows),
        "",
    ]
    for im, (losses, seeds) in CELLS.items():
        cell_rows = [r for r in rows if r["imbalance"] == im]
        if not cell_rows:
            continue
        if im == 100:
            lines.append("<!-- readme:start -->")
        lines += [
            f"## IM {im} ({len(seeds)} seeds)",
            "",
            "| stage one | method | n | top-1 | many | medium | few |",
            "|---|---|---|---|---|---|---|",
        ]
        for loss in losses:
            for m in METHODS:
                rs = [r for r in cell_rows if r["stage_one"] == loss and r["method"] == m]
                if rs:
                    lines.append(
                        f"| {loss} | {m} | {len(rs)} | "
                        + " | ".join(mean_std([r[k] for r in rs]) for k in ("top1", "many", "medium", "few"))
                        + " |"
                    )
        lines += [
            "",
            f"Paired differences at IM {im}: GLAG minus each other method on the same stage-one cache "
            "(same seed), mean [95 % t-interval], in points.",
            "",
            "| stage one | GLAG minus | top-1 | verdict | few | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for loss in losses:
            for b in METHODS:
                if b == "glag":
                    continue
                cells = []
                for metric in ("top1", "few"):
                    d = paired(rows, im, loss, "glag", b, metric)
                    if not d:
                        cells += ["—", "—"]
                        continue
                    m, lo, hi = t_interval(d)
                    cells += [f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}] (n={len(d)})", verdict(lo, hi)]
                if any(c != "—" for c in cells):
                    lines.append(f"| {loss} | {b} | " + " | ".join(cells) + " |")
        if im == 100:
            lines += [
                "",
                "![Many / Medium / Few per method, GraLoss stage one, IM 100](evidence.png)",
                "",
                "Real and generated features of the three smallest classes and the classes they draw on "
                "(GraLoss, seed 0; `glag report "
                "results/runs/evidence/im100/cells/imbalance=100_loss=graloss_epochs=30_seed=0/runs/*-glag "
                "--tsne results/evidence_tsne.png`):",
                "",
                "![t-SNE of real and generated tail features](evidence_tsne.png)",
                "<!-- readme:end -->",
            ]
        lines.append("")
    return "\n".join(lines)


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rs = [r for r in rows if r["imbalance"] == 100 and r["stage_one"] == "graloss"]
    if not rs:
        return
    groups = ("many", "medium", "few")
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / len(METHODS)
    for i, m in enumerate(METHODS):
        vals = [[r[g] for r in rs if r["method"] == m and r[g] is not None] for g in groups]
        means = [np.mean(v) if v else np.nan for v in vals]
        stds = [np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals]
        ax.bar(
            np.arange(3) + (i - len(METHODS) / 2 + 0.5) * width, means, width, yerr=stds, capsize=2, label=m
        )
    ax.set_xticks(range(3), ["Many", "Medium", "Few"])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fashion-MNIST-LT (n_max 500) IM 100, GraLoss stage one: mean ± std over seeds")
    ax.legend(ncol=5, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.07))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_val_curves(cache_dir: Path, path: Path, epochs: int) -> None:
    """Stage-one validation accuracy per epoch of every IM 100 run of the protocol (from train logs); nothing
    is written when no log is found."""
    logs = sorted(Path(cache_dir).glob(f"stage1/{DATASET}-im100-n{N_MAX}-*/train_log.jsonl"))
    if not logs:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colours = dict(
        zip(CELLS[100][0], plt.get_cmap("tab10").colors, strict=False)
    )  # a colour per stage-one loss
    seen = set()
    for log in logs:
        recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if len(recs) != epochs:
            continue
        loss = next((k for k in ("ldam-drw", "graloss", "la", "ce") if f"-{k}-" in log.parent.name), "?")
        loss = "la1" if loss == "la" else loss
        ax.plot(
            [r["epoch"] for r in recs],
            [100 * r["val_acc"] for r in recs],
            color=colours.get(loss),
            alpha=0.6,
            lw=1,
            label=None if loss in seen else loss,
        )
        seen.add(loss)
    ax.set_xlabel("stage-one epoch")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(
        f"Fashion-MNIST-LT n_max {N_MAX} IM 100, {BACKBONE}: stage-one val top-1, every seed", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: Path, rows: list[dict], epochs: int, gen_epochs: int, commands=()) -> None:
    with open(results / "evidence.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows({k: ("" if r[k] is None else r[k]) for k in COLUMNS} for r in rows)
    md = markdown(rows, epochs, gen_epochs)
    md += (
        "\n## Commands\n\nOne `glag sweep` per imbalance ratio (the recipe: "
        "configs/fashion-mnist-lt-evidence.toml; "
        "each cell's own config is results/runs/evidence/im<IM>/cells/<cell>/config.toml):\n\n"
        + "\n".join(f"    {c}" for c in commands)
        + "\n"
    )
    (results / "evidence.md").write_text(md)
    plot(rows, results / "evidence.png")


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="reproduce.py evidence",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "glag-cache")
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument(
        "--epochs", type=int, default=30, help="stage-one epochs (docs/ablations.md: the val curve)"
    )
    ap.add_argument(
        "--report-only", action="store_true", help="only write the tables and plot from finished cells"
    )
    args = ap.parse_args(argv)
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:7.0f}s] {msg}", file=sys.stderr, flush=True)

    from protocol import shown

    commands = [shown(sweep_args(im, args)) for im in CELLS]
    if not args.report_only:
        for im in CELLS:
            glag(sweep_args(im, args), log)
    rows = collect(args.results)
    if rows:
        write(args.results, rows, args.epochs, 40, commands)
        plot_val_curves(args.cache_dir, ROOT / "docs" / "evidence_val_curve.png", args.epochs)
        print(f"wrote results/evidence.csv ({len(rows)} rows), results/evidence.md, results/evidence.png")
