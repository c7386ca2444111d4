"""CIFAR-10-LT on real images (an image folder, default ../shared/data/cifar10-jpg): ResNet-32, stage-one
losses CE, LDAM-DRW, LA tau=1 (Balanced Softmax) and GraLoss; on each cache every decoupled baseline,
GLAG with glag's defaults and GLAG with the paper's settings; several seeds, paired on the same caches.

    .venv/bin/python bench/reproduce.py cifar10-lt                 # CPU budget (reduced; see BUDGETS)
    .venv/bin/python bench/reproduce.py cifar10-lt --full          # the literature's 200 epochs (a GPU)
    .venv/bin/python bench/reproduce.py cifar10-lt --report-only   # tables from finished cells

The recipe is configs/cifar10-lt-folder.toml (its [variants] are the GLAG rows below); each imbalance
ratio's grid of losses x seeds is one `glag sweep` of it into results/runs/cifar10-lt/<budget>/im<IM>/,
resumable cell by cell (trained weights per epoch, caches and finished run folders are reused). This
script only runs those sweeps and writes results/cifar10-lt.csv and results/cifar10-lt.md from the
finished run folders (--report-only works while a sweep is still running).
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

from evidence import _mean_std, _num, paired
from glag.config import tomllib
from glag.metrics import t_interval, verdict
from glag.sweep import run_folders
from protocol import ROOT, glag, rel, shown

BUDGETS = {
    # The CPU budget: 12 caches (4 losses x 3 seeds) at IM 100 in about 3 h of a 2-core machine
    # (~50 s per ResNet-32 epoch channels-last, plus decode, dump and stage two per cell).
    "cpu": dict(epochs=12, warmup=1.0, ims=[100], seeds=[0, 1, 2]),
    "full": dict(epochs=200, warmup=5.0, ims=[100, 10, 50, 200], seeds=[0, 1, 2]),
}
CONFIG = ROOT / "configs" / "cifar10-lt-folder.toml"
LOSSES = ["graloss", "ce", "la1", "ldam-drw"]  # GraLoss first: its 3 seeds give the headline interval soonest
LOSS = {"la1": "la"}  # our loss names -> the config's (la at its default tau = 1.0)
DECOUPLED = ["crt", "lws", "tau-norm", "logit-adjust"]
METHODS = tomllib.loads(CONFIG.read_text())["stage_two"]["method"]
COLUMNS = ["dataset", "imbalance", "stage_one", "method", "seed", "top1", "many", "medium", "few", "budget",
           "val_top1", "epochs"]
# SPEC section 8: the literature's CIFAR-10-LT test top-1 (ResNet-32, 200 epochs); method -> {IM: top-1}
LITERATURE = {
    "CE": {100: 70.4, 50: 74.8, 10: 86.4}, "Focal": {100: 70.2, 10: 86.7}, "LDAM-DRW": {100: 77.0, 10: 88.2},
    "Logit adjustment (loss)": {100: 80.9}, "BBN": {100: 79.8, 50: 82.2, 10: 88.3}, "M2m (LDAM)": {100: 79.1, 10: 87.5},
    "Remix-DRW": {100: 79.8, 10: 89.0}, "RSG": {100: 80.0}, "MiSLAS": {100: 82.1, 50: 85.7, 10: 90.0},
    "Balanced Softmax": {100: 83.1, 10: 90.9}, "BALMS (extra augmentation)": {200: 82.2, 100: 84.9, 10: 91.3},
}
BESIDE = {("ce", "stage-one"): "CE", ("ldam-drw", "stage-one"): "LDAM-DRW", ("la1", "stage-one"): "Balanced Softmax"}
DATASET = "cifar10-lt (image folder)"


def sweep_dir(results: Path, budget: str, im) -> Path:
    return results / "runs" / "cifar10-lt" / budget / f"im{im:g}"


def sweep_args(args, budget: dict, im, losses) -> list[str]:
    recipe = tomllib.loads(CONFIG.read_text())
    sets = {"imbalance": f"{im:g}", "loss": ",".join(LOSS.get(x, x) for x in losses), "epochs": budget["epochs"],
            "warmup": f"{budget['warmup']:g}"}
    if args.gen_epochs != 40:  # the config's default
        sets["gen_epochs"] = args.gen_epochs
    if rel(args.data_root) != recipe["dataset"]["data_root"]:
        sets["data_root"] = rel(args.data_root)
    return ["sweep", rel(CONFIG), "--seeds", ",".join(map(str, budget["seeds"])),
            "--out", rel(sweep_dir(args.results, args.budget, im)), *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
            "--cache-dir", rel(args.cache_dir), "-q"]


def cells(results: Path, budget_name: str) -> list[tuple[dict, dict[str, Path]]]:
    """Every cell of this budget's sweeps: (its config, {method: finished run folder})."""
    out = []
    for cfg in sorted((results / "runs" / "cifar10-lt" / budget_name).glob("im*/cells/*/config.toml")):
        out.append((tomllib.loads(cfg.read_text()), run_folders(cfg.parent)))
    return out


def _loss(cfg: dict) -> str:
    ours = {v: k for k, v in LOSS.items()}
    return ours.get(cfg["stage_one"]["loss"], cfg["stage_one"]["loss"])


def collect(results: Path, budget_name: str, b: dict) -> list[dict]:
    rows = []
    for cfg, found in cells(results, budget_name):
        im, loss, seed = cfg["dataset"]["imbalance"], _loss(cfg), cfg["stage_one"]["seed"]
        if im not in b["ims"] or seed not in b["seeds"]:
            continue
        for m in METHODS:
            if m not in found:
                continue
            res = json.loads((found[m] / "result.json").read_text())
            s, v = res["summary"], res.get("val_summary", {})
            rows.append({"dataset": DATASET, "imbalance": im, "stage_one": loss, "method": m, "seed": seed,
                         **{k: _num(s.get(k)) for k in ("top1", "many", "medium", "few")},
                         "budget": budget_name, "val_top1": _num(v.get("top1")), "epochs": b["epochs"]})
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (r["imbalance"], LOSSES.index(r["stage_one"]), r["seed"], order[r["method"]]))


def interval_text(d) -> str:
    m, lo, hi = t_interval(d)
    if len(d) < 2:
        return f"{m:+.2f} (n=1, no interval yet)"
    return f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}] (n={len(d)}, {verdict(lo, hi)})"


def best_baseline(rows, im, loss, metric="top1"):
    means = {m: statistics.fmean([r[metric] for r in rows if r["imbalance"] == im and r["stage_one"] == loss
                                  and r["method"] == m and r[metric] is not None] or [float("nan")]) for m in DECOUPLED}
    means = {m: v for m, v in means.items() if v == v}
    return max(means, key=means.get) if means else None


def headline(rows) -> list[str]:
    """Per stage-one loss: GLAG against the best decoupled baseline on the same caches (test), and on val rows."""
    out = []
    for im in sorted({r["imbalance"] for r in rows}):
        for loss in LOSSES:
            best = best_baseline(rows, im, loss)
            d = paired(rows, im, loss, "glag", best, "top1") if best else []
            if not d:
                continue
            mean = lambda m: statistics.fmean(  # noqa: E731
                [r["top1"] for r in rows if r["imbalance"] == im and r["stage_one"] == loss and r["method"] == m])
            dv = paired(rows, im, loss, "glag", best, "val_top1")
            groups = "; ".join(f"{g.capitalize()} {statistics.fmean(paired(rows, im, loss, 'glag', best, g)):+.2f}"
                               for g in ("many", "medium") if paired(rows, im, loss, "glag", best, g))
            out.append(f"* IM {im:g}, {loss} features: GLAG {mean('glag'):.2f} vs the best decoupled baseline, {best} "
                       f"{mean(best):.2f}: test top-1 {interval_text(d)}; on validation rows {interval_text(dv)}; "
                       f"mean test difference by group: {groups}.")
    return out


def unseen_class_lines(results: Path, budget_name: str, rows) -> list[str]:
    """Test accuracy of the classes with no validation rows (what val-tuned settings never saw),
    GLAG against the best decoupled baseline, per cache (mean over seeds)."""
    out = []
    found_at = {(cfg["dataset"]["imbalance"], _loss(cfg), cfg["stage_one"]["seed"]): found
                for cfg, found in cells(results, budget_name)}
    for im in sorted({r["imbalance"] for r in rows}):
        for loss in LOSSES:
            best = best_baseline(rows, im, loss)
            accs = {"glag": [], best: []}
            unseen = None
            for seed in sorted({r["seed"] for r in rows if r["imbalance"] == im and r["stage_one"] == loss}):
                found = found_at.get((im, loss, seed), {})
                for m in accs:
                    if m not in found:
                        continue
                    res = json.loads((found[m] / "result.json").read_text())
                    unseen = [c for c, v in enumerate(res["val"]["per_class"]) if v is None]
                    if unseen:
                        accs[m].append(statistics.fmean(100 * res["test"]["per_class"][c] for c in unseen))
            if best and unseen and accs["glag"] and accs[best]:
                out.append(f"* IM {im:g}, {loss}: class(es) {unseen} have no validation rows; their test accuracy is "
                           f"{statistics.fmean(accs['glag']):.1f} under GLAG vs {statistics.fmean(accs[best]):.1f} under "
                           f"{best} (mean over {len(accs['glag'])} seeds).")
    return out


def markdown(rows, budget_name: str, b: dict, gen_epochs: int, data_root: Path, results: Path | None = None) -> str:
    import torch

    import glag as glag_pkg

    budget_line = (f"**Budget `{budget_name}`**: stage one {b['epochs']} epochs (warm-up {b['warmup']:g}), "
                   + ("the literature's 200-epoch recipe." if b["epochs"] >= 200 else
                      "reduced from the literature's 200 so that the whole protocol fits about 3 h of a 2-core CPU; "
                      "absolute numbers are therefore below the literature's, and only the paired comparisons on the "
                      "same caches are the evidence here."))
    lines = ["# Protocol `cifar10-lt`", "",
             f"Real CIFAR-10 images from the image folder `{rel(data_root)}` (JPEG; `glag data --dataset folder` "
             "prints its digest), CIFAR-10-LT by LDAM-DRW's seeded rule over each class's files (IM 100: 5000 ... 50, "
             f"12,406 images). ResNet-32, batch 128, lr 0.1 cosine, pad-4 crop + flip; stage two {gen_epochs} "
             "generation epochs. The seed drives stage one and stage two.", "", budget_line, "",
             f"{'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU only (2 cores)'}; "
             f"glag {glag_pkg.__version__}, torch {torch.__version__}. Test top-1 and Many / Medium / Few (%), "
             "mean ± std over seeds; Few is empty on CIFAR-10-LT at IM <= 100 (the smallest class has 50 images).",
             "", "GLAG = glag's default stage two (beta_init 0, val-tuned post-hoc logit adjustment); `glag-paper` = "
             "`--beta-init 0.6 --no-posthoc-la` (the paper's settings); `glag-no-gen` and `glag-no-la` are ablations. "
             "Tuning (beta_c, post-hoc tau) reads validation rows only; each run reads test once.", "",
             "Validation rows: 20 per class from each class's leftover files, except class 0 (airplane), which "
             "keeps all 5,000 of its files at n_max 5000 and so has none: everything tuned on validation (post-hoc "
             "tau, beta_c) is tuned without the largest class. The val top-1 column shows what that tuning saw.", "",
             "<!-- readme:start -->", "## Headline", "", "Paired by seed on the same stage-one cache, 95 % t-interval:",
             "", *headline(rows), ""]
    unseen = unseen_class_lines(results, budget_name, rows) if results else []
    if unseen:
        lines += ["Where a tie comes from, measured: GLAG's post-hoc tau and beta_c are tuned on validation rows, and "
                  "the largest class has none, so the tuning pushes towards the tail at that class's expense "
                  "(the group differences above), and the validation gain does not carry over to test:", "",
                  *unseen, ""]
    marked = False
    for im in b["ims"]:
        cell_rows = [r for r in rows if r["imbalance"] == im]
        if not cell_rows:
            continue
        lit = {name: v.get(im) for name, v in LITERATURE.items()}
        lines += [f"## IM {im:g}", "", "| stage one | method | n | top-1 | many | medium | val top-1 | literature (200 ep.) |",
                  "|---|---|---|---|---|---|---|---|"]
        for loss in LOSSES:
            for m in METHODS:
                rs = [r for r in cell_rows if r["stage_one"] == loss and r["method"] == m]
                if rs:
                    name = BESIDE.get((loss, m))
                    beside = f"{name} {lit[name]}" if name and lit.get(name) else ""
                    if (loss, m) == ("la1", "stage-one") and lit.get("Logit adjustment (loss)"):
                        beside += f"; LA loss {lit['Logit adjustment (loss)']}"
                    lines.append(f"| {loss} | {m} | {len(rs)} | " + " | ".join(
                        _mean_std([r[k] for r in rs]) for k in ("top1", "many", "medium", "val_top1")) + f" | {beside} |")
        lines += ["", f"Paired differences at IM {im:g}: GLAG minus each method on the same cache, test top-1 and "
                  "validation top-1, mean [95 % t-interval]:", "",
                  "| stage one | GLAG minus | test top-1 | val top-1 |", "|---|---|---|---|"]
        for loss in LOSSES:
            for m in METHODS:
                d, dv = (paired(rows, im, loss, "glag", m, k) for k in ("top1", "val_top1"))
                if m != "glag" and d:
                    lines.append(f"| {loss} | {m} | {interval_text(d)} | {interval_text(dv) if dv else '—'} |")
        lines += ["", "The literature's CIFAR-10-LT figures at this IM (SPEC §8; ResNet-32, 200 epochs, official "
                  "pickles; papers' own recipes differ): " + ", ".join(f"{k} {v}" for k, v in lit.items() if v) + ".", ""]
        if not marked:
            lines += ["<!-- readme:end -->", ""]
            marked = True
    if not marked:
        lines += ["<!-- readme:end -->", ""]
    return "\n".join(lines)


def write(results: Path, rows: list[dict], budget_name: str, b: dict, gen_epochs: int, data_root: Path,
          commands=()) -> None:
    """CSV rows of every budget run so far (this budget's replaced), and this budget's markdown."""
    csv_path = results / "cifar10-lt.csv"
    old = []
    if csv_path.is_file():
        with open(csv_path, newline="") as f:
            old = [r for r in csv.DictReader(f) if r["budget"] != budget_name]
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(old)
        w.writerows({k: ("" if r[k] is None else r[k]) for k in COLUMNS} for r in rows)
    md = markdown(rows, budget_name, b, gen_epochs, data_root, results)
    md += ("\n## Commands\n\nOne `glag sweep` per imbalance ratio (the recipe: configs/cifar10-lt-folder.toml; each "
           f"cell's own config is results/runs/cifar10-lt/{budget_name}/im<IM>/cells/<cell>/config.toml):\n\n" +
           "\n".join(f"    {c}" for c in commands) + "\n")
    name = "cifar10-lt.md" if budget_name == "cpu" else f"cifar10-lt-{budget_name}.md"
    (results / name).write_text(md)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="reproduce.py cifar10-lt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10-jpg")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "glag-cache")
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--full", action="store_true", help="the literature's budget: 200 epochs, IM 100, 10, 50, 200")
    ap.add_argument("--gen-epochs", type=int, default=40)
    ap.add_argument("--ims", default=None, help="comma-separated imbalance ratios (default: the budget's)")
    ap.add_argument("--epochs", type=int, default=None, help="override the budget's stage-one epochs (smoke runs)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the budget's)")
    ap.add_argument("--losses", default=None, help=f"comma-separated stage-one losses (default: {','.join(LOSSES)})")
    ap.add_argument("--report-only", action="store_true", help="only write the tables from finished cells")
    args = ap.parse_args(argv)
    args.budget = "full" if args.full else "cpu"
    budget = dict(BUDGETS[args.budget])
    if args.ims:
        budget["ims"] = [float(x) for x in args.ims.split(",")]
    if args.seeds:
        budget["seeds"] = [int(x) for x in args.seeds.split(",")]
    if args.epochs:
        budget["epochs"] = args.epochs
    losses = args.losses.split(",") if args.losses else LOSSES
    if set(losses) - set(LOSSES):
        sys.exit(f"--losses {args.losses}: choose from {', '.join(LOSSES)}")
    if not (args.data_root / "train").is_dir():
        sys.exit(f"protocol 'cifar10-lt' needs an image folder with train/ and test/: '{args.data_root}' has none")
    args.results.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:7.0f}s] {msg}", file=sys.stderr, flush=True)

    log(f"budget {args.budget}: {budget}")
    commands = [shown(sweep_args(args, budget, im, losses)) for im in budget["ims"]]
    if not args.report_only:
        for im in budget["ims"]:
            glag(sweep_args(args, budget, im, losses), log)
            rows = collect(args.results, args.budget, budget)
            write(args.results, rows, args.budget, budget, args.gen_epochs, args.data_root, commands)
            log(f"IM {im:g} done; {len(rows)} rows in results/cifar10-lt.csv")
    rows = collect(args.results, args.budget, budget)
    if rows:
        write(args.results, rows, args.budget, budget, args.gen_epochs, args.data_root, commands)
        print(f"wrote results/cifar10-lt.csv ({len(rows)} rows of budget {args.budget})")
