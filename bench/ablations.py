"""Ablations for SPEC's "default, to be confirmed" choices, scored on the VALIDATION split only.

    .venv/bin/python bench/ablations.py graloss [--seeds 0,1,2]          # g and a of GraLoss, on digits
    .venv/bin/python bench/ablations.py stage-two --cache FILE [...]     # beta_init, alpha, covariance form

Prints JSON rows; docs/ablations.md records what was run and measured.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from glag.cache.format import FeatureCache  # noqa: E402
from glag.classify import baselines  # noqa: E402
from glag.classify.stage_two import StageTwoConfig, train_glag  # noqa: E402
from glag.extract.datasets import DatasetSpec, load_dataset  # noqa: E402
from glag.extract.stage_one import stage_one  # noqa: E402
from glag.extract.train import TrainConfig  # noqa: E402
from glag.generate.afg import AFG, GeneratorConfig, SamplingConfig  # noqa: E402


def graloss(args):
    data = load_dataset(DatasetSpec())
    rows = []
    grid = [("ce", 0.0, 1.0)] + [("graloss", a, g) for a, g in itertools.product((0.5, 1.0, 1.5), (0.5, 1.0, 3.0, 5.0))]
    for loss, a, g in grid:
        s1, crt = [], []
        for seed in args.seeds:
            cfg = TrainConfig(dataset=data.spec, loss=loss, a=a or 1.0, g=g, seed=seed, epochs=args.epochs)
            path, _, _ = stage_one(cfg, data, args.cache_dir, progress=False, log=lambda m: None)
            cache = FeatureCache(path)
            s1.append(baselines.stage_one(cache)["val"]["top1"])
            crt.append(baselines.crt(cache, seed=seed)["val"]["top1"])
        rows.append({"loss": loss, "a": a, "g": g, "seeds": len(args.seeds),
                     "val_stage_one_median": round(100 * statistics.median(s1), 2),
                     "val_crt_median": round(100 * statistics.median(crt), 2)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def stage_two(args):
    rows = []
    for cache_path in args.cache:
        cache = FeatureCache(cache_path)
        for form, weighting in (("identity", "count-distance"), ("all-entries", "count-distance"), ("identity", "uniform")):
            afg = AFG.build(cache, GeneratorConfig(weighting=weighting), device="cpu")
            for beta_init, alpha in itertools.product((0.4, 0.6), (0.0, 0.1)):
                if form == "all-entries" and alpha == 0.0:
                    continue  # identical to identity at alpha 0
                vals = [train_glag(afg, StageTwoConfig(beta_init=beta_init, seed=s, epochs=args.gen_epochs),
                                   SamplingConfig(alpha=alpha, dispersion=form), progress=False)["val"]["top1"]
                        for s in args.seeds]
                rows.append({"cache": Path(cache_path).name, "dispersion": form, "weighting": weighting,
                             "beta_init": beta_init, "alpha": alpha, "seeds": len(args.seeds),
                             "val_top1_median": round(100 * statistics.median(vals), 2)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=["graloss", "stage-two"])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=30, help="stage-one epochs (graloss)")
    ap.add_argument("--gen-epochs", type=int, default=40)
    ap.add_argument("--cache", action="append", default=[], help="cache file(s) for stage-two ablations")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "glag-cache")
    args = ap.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.which == "stage-two" and not args.cache:
        ap.error("stage-two ablations need --cache FILE")
    rows = graloss(args) if args.which == "graloss" else stage_two(args)
    print(json.dumps({"bench": f"ablations-{args.which}", "command": " ".join(["python", "bench/ablations.py", *sys.argv[1:]]),
                      "results": rows}))


if __name__ == "__main__":
    main()
