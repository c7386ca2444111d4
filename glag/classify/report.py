"""Plots comparing runs: per-class accuracy against training count, and beta_c over epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from glag.paths import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_class(runs: list[dict], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        counts = np.asarray(r["train_counts"])
        acc = np.array([np.nan if a is None else a for a in r["test"]["per_class"]], dtype=float)
        order = np.argsort(-counts, kind="stable")
        ax.plot(
            counts[order],
            100 * acc[order],
            "o-",
            ms=3,
            lw=1,
            alpha=0.8,
            label=f"{Path(r['_dir']).name} ({r['summary']['top1']:.1f})",
        )
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_beta(runs: list[dict], path: Path) -> Path | None:
    runs = [r for r in runs if r.get("history") and r["history"] and "beta" in r["history"][0]]
    if not runs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), squeeze=False)
    for ax, r in zip(axes[0], runs, strict=False):
        beta = np.array([h["beta"] for h in r["history"]])
        counts = np.asarray(r["train_counts"])[r["tail_classes"]]
        cmap = plt.get_cmap("viridis")
        for i in range(beta.shape[1]):
            ax.plot(np.arange(1, len(beta) + 1), beta[:, i], color=cmap(i / max(beta.shape[1] - 1, 1)), lw=1)
        ax.set_title(
            f"{Path(r['_dir']).name}: beta_c of {beta.shape[1]} tail classes\n(dark = most samples, "
            f"n={counts.max() if len(counts) else 0})",
            fontsize=8,
        )
        ax.set_xlabel("stage-two epoch")
        ax.set_ylabel("beta_c")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_stage_one_curves(run: dict) -> Path | None:
    """``stage_one_curves.png`` in the run folder: loss, val accuracy, lambda(t) and lr per stage-one
    epoch, from the training log of the checkpoint that made the run's cache. None without a log."""
    import json

    out = Path(run["_dir"]) / "stage_one_curves.png"
    report = Path(str(run.get("cache", ""))).with_suffix(".stage1.json")
    try:
        ckpt = json.loads(report.read_text()).get("checkpoint")
        log = Path(ckpt).parent / "train_log.jsonl"
        recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    # a record from another tool, or with a field missing, is skipped, not a KeyError
    num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    recs = [r for r in recs if isinstance(r, dict) and num(r.get("epoch"))]
    recs = [
        {**r, **{k: (r[k] if num(r.get(k)) else None) for k in ("loss", "val_acc", "lam", "lr")}}
        for r in recs
    ]
    if out.is_file() or not recs:
        return out if out.is_file() else None
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(14, 3))
    ep = [r["epoch"] for r in recs]
    for ax, key, label in zip(
        axes, ("loss", "val_acc", "lam", "lr"), ("train loss", "val top-1", "lambda(t)", "lr"), strict=False
    ):
        ax.plot(ep, [r.get(key) for r in recs], "o-", ms=2)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(f"stage one: {Path(ckpt).parent.name}", fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return out
