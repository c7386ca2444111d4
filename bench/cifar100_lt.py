"""CIFAR-100-LT: the paper's tables (SPEC section 7) as `glag sweep`s of the shipped recipes.

    .venv/bin/python bench/reproduce.py cifar100-lt --data-root DIR [--ims 10,50,100,200] [--seeds 0-2] \
        [--set k=v ...]
    .venv/bin/python bench/reproduce.py cifar100-lt-probe --data-root DIR [--seeds 0-2] [--set k=v ...]

cifar100-lt: per imbalance ratio, one sweep of configs/cifar100-lt-im<IM>.toml over the stage-one losses CE,
LA tau=1 (Balanced Softmax) and GraLoss; each cache gets stage-one, cRT, LWS, GLAG and GLAG's Table 7
ablations (the recipe's variants). cifar100-lt-probe: configs/cifar100-lt-probe.toml, one sweep per loss
family of Table 1 (CE; LA tau 0.5, 1, 1.5; GraLoss g 0.5, 1, 3), each cache probed on the full training set.
DIR holds cifar-100-python/. Every sweep resumes cell by cell; ``--set key=value`` (repeatable) overrides a
recipe key in every sweep (``--set epochs=30`` for a reduced budget; it is in the recorded commands).
Writes results/<protocol>.csv (every cell) and results/<protocol>.md (mean ± std over seeds beside the
paper's figure, paired intervals of GLAG against each method, and the commands).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from protocol import ROOT, check_data, glag, literature, rel, shown

from glag.reporting import METRICS, mean_std, paired_differences, read_cells, t_interval, verdict
from glag.sweep import parse_seeds

LIT = literature()  # bench/literature.toml
PAPER, PAPER_GROUPS, PAPER_PROBE = LIT["cifar100_lt"], LIT["cifar100_lt_groups"], LIT["cifar100_lt_probe"]
GRALOSS_SHAPE = {3.0: "graloss", 1.0: "graloss-linear", 0.5: "graloss-concave"}
PROBE = "configs/cifar100-lt-probe.toml"


def sweeps(protocol: str, ims: list[float]) -> list[tuple[str, float, str, dict]]:
    """(name, IM, recipe, --set values) of each sweep of a protocol."""
    if protocol == "cifar100-lt":
        return [
            (f"im{im:g}", im, f"configs/cifar100-lt-im{im:g}.toml", {"loss": "ce,la,graloss"}) for im in ims
        ]
    return [
        ("probe-ce", 100, PROBE, {"loss": "ce"}),
        ("probe-la", 100, PROBE, {"loss": "la", "tau": "0.5,1,1.5"}),
        ("probe-graloss", 100, PROBE, {"loss": "graloss", "g": "0.5,1,3"}),
    ]


def stage_one_label(row: dict) -> str:
    """The paper's name of a cell's stage one: ce, la<tau>, graloss (g 3), graloss-linear, graloss-concave."""
    loss = row.get("loss") or "graloss"
    if loss == "la":
        return f"la{float(row.get('tau') or 1.0):g}"
    if loss == "graloss":
        g = float(row.get("g") or 3.0)
        return GRALOSS_SHAPE.get(g, f"graloss-g{g:g}")
    return loss


def sweep_args(args, name: str, recipe: str, sets: dict) -> list[str]:
    sets = {**sets, "data_root": rel(args.data_root), **dict(s.split("=", 1) for s in args.set)}
    return [
        "sweep",
        recipe,
        "--seeds",
        args.seeds,
        "--out",
        rel(args.results / "runs" / args.protocol / name),
        *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
        "--cache-dir",
        rel(args.cache_dir),
        "-q",
    ]


def collect(args) -> list[dict]:
    """Every finished cell of the protocol's sweeps, with its IM and stage-one label."""
    rows = []
    for name, im, _, _ in sweeps(args.protocol, args.ims):
        path = args.results / "runs" / args.protocol / name / "cells.csv"
        if path.is_file():
            for r in read_cells(path):
                rows.append(
                    {
                        "sweep": name,
                        "im": im,
                        "stage_one": stage_one_label(r),
                        **{k: r[k] for k in ("method", "seed", *METRICS, "val_top1")},
                    }
                )
    return rows


def paper_figure(protocol: str, im: float, loss: str, method: str) -> str:
    if protocol == "cifar100-lt-probe":
        return f"{PAPER_PROBE[loss]}" if loss in PAPER_PROBE else ""
    top = PAPER.get((loss, method), {}).get(int(im))
    groups = PAPER_GROUPS.get((loss, method)) if im == 100 else None
    return "" if top is None else f"{top}" + (f" ({groups})" if groups else "")


def markdown(args, rows: list[dict], commands: list[str]) -> str:
    keys = list(dict.fromkeys((r["im"], r["stage_one"], r["method"]) for r in rows))
    lines = [
        f"# Protocol `{args.protocol}`",
        "",
        "CIFAR-100-LT (SPEC section 5: LDAM-DRW's seeded subset), ResNet-32, the recipes in configs/; mean "
        "± std "
        f"over seeds {args.seeds}; the paper's single-run figure beside (SPEC section 7; Many / Medium / "
        f"Few in "
        "brackets where it gives them).",
        "",
        "| IM | stage one | stage two | n | top-1 | many | medium | few | paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for im, loss, method in keys:
        rs = [r for r in rows if (r["im"], r["stage_one"], r["method"]) == (im, loss, method)]
        lines.append(
            f"| {im:g} | {loss} | {method} | {len(rs)} | "
            + " | ".join(mean_std([r[k] for r in rs]) for k in ("top1", "many", "medium", "few"))
            + f" | {paper_figure(args.protocol, im, loss, method)} |"
        )
    paired = []
    for im, loss in dict.fromkeys((k[0], k[1]) for k in keys):
        values = {
            (r["method"], r["seed"]): r["top1"] for r in rows if (r["im"], r["stage_one"]) == (im, loss)
        }
        for method, d in paired_differences(values).items():
            m, lo, hi = t_interval(d)
            paired.append(
                f"| {im:g} | {loss} | {method} | {m:+.2f} [{lo:+.2f}, {hi:+.2f}] (n={len(d)}) | "
                f"{verdict(lo, hi)} |"
            )
    if paired:
        lines += [
            "",
            "GLAG minus each method on the same stage-one cache (same seed), test top-1, mean [95 % "
            "t-interval]:",
            "",
            "| IM | stage one | GLAG minus | difference | verdict |",
            "|---|---|---|---|---|",
            *paired,
        ]
    lines += ["", "## Commands", "", *(f"    {c}" for c in commands), ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="reproduce.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("protocol", choices=["cifar100-lt", "cifar100-lt-probe"])
    ap.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "glag-cache")
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--ims", default="10,50,100,200", help="comma-separated imbalance ratios (cifar100-lt)")
    ap.add_argument("--seeds", default="0-2", help="seeds of every cell: 0-2 or 0,1,2")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key in every sweep (repeatable), e.g. epochs=30",
    )
    ap.add_argument("--report-only", action="store_true", help="only write the tables from finished cells")
    args = ap.parse_args(argv)
    args.ims = [float(x) for x in args.ims.split(",")]
    parse_seeds(args.seeds)  # a bad --seeds stops here, before any sweep
    if any("=" not in s for s in args.set):
        sys.exit(f"--set {[s for s in args.set if '=' not in s][0]!r}: use KEY=VALUE")
    check_data(args.protocol, "cifar100-lt", args.data_root)
    args.results.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:7.0f}s] {msg}", file=sys.stderr, flush=True)

    plan = [
        (name, sweep_args(args, name, recipe, sets))
        for name, _, recipe, sets in sweeps(args.protocol, args.ims)
    ]
    commands = [shown(a) for _, a in plan]
    for name, a in [] if args.report_only else plan:
        glag(a, log)
        log(f"sweep {name} done")
    rows = collect(args)
    if not rows:
        sys.exit(f"no finished cells under {rel(args.results / 'runs' / args.protocol)}")
    with open(args.results / f"{args.protocol}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (args.results / f"{args.protocol}.md").write_text(markdown(args, rows, commands))
    print(f"wrote {rel(args.results / args.protocol)}.csv and .md ({len(rows)} rows)")
