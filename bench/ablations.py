"""Ablations for SPEC's "default, to be confirmed" choices, scored on the VALIDATION split only.

    .venv/bin/python bench/ablations.py graloss [--seeds 0,1,2]          # g and a of GraLoss, on digits
    .venv/bin/python bench/ablations.py stage-two --cache FILE [...]     # beta_init, alpha, covariance form
    .venv/bin/python bench/ablations.py glag-val --cache FILE [...]      # GLAG probes vs baselines, val only

Prints JSON rows; docs/ablations.md records what was run and measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

from glag.cache.format import FeatureCache
from glag.classify import baselines
from glag.classify.stage_two import train_glag
from glag.config import GeneratorSettings, StageTwoSettings, default
from glag.extract.datasets import DatasetSpec, load_dataset
from glag.extract.recipe import StageOne
from glag.extract.stage_one import stage_one
from glag.generate.afg import AFG

ROOT = Path(__file__).resolve().parents[1]


def graloss(args):
    data = load_dataset(DatasetSpec())
    rows = []
    grid = [("ce", 0.0, 1.0)] + [
        ("graloss", a, g) for a, g in itertools.product((0.5, 1.0, 1.5), (0.5, 1.0, 3.0, 5.0))
    ]
    for loss, a, g in grid:
        s1, crt = [], []
        for seed in args.seeds:
            cfg = StageOne.make(data.spec, loss=loss, a=a or 1.0, g=g, seed=seed, epochs=args.epochs)
            path, _, _ = stage_one(cfg, data, args.cache_dir, progress=False, log=lambda m: None)
            cache = FeatureCache(path)
            s1.append(baselines.stage_one(cache)["val"]["top1"])
            crt.append(baselines.crt(cache, seed=seed)["val"]["top1"])
        rows.append(
            {
                "loss": loss,
                "a": a,
                "g": g,
                "seeds": len(args.seeds),
                "val_stage_one_median": round(100 * statistics.median(s1), 2),
                "val_crt_median": round(100 * statistics.median(crt), 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def stage_two(args):
    rows = []
    for cache_path in args.cache:
        cache = FeatureCache(cache_path)
        for form, weighting in (
            ("identity", "count-distance"),
            ("all-entries", "count-distance"),
            ("identity", "uniform"),
        ):
            afg = AFG.build(cache, GeneratorSettings(weighting=weighting), device="cpu")
            for beta_init, alpha in itertools.product((0.4, 0.6), (0.0, 0.1)):
                if form == "all-entries" and alpha == 0.0:
                    continue  # identical to identity at alpha 0
                vals = [
                    train_glag(
                        afg,
                        StageTwoSettings(
                            beta_init=beta_init,
                            classifier_epochs=args.classifier_epochs,
                            alpha=alpha,
                            dispersion=form,
                        ),
                        seed=s,
                        progress=False,
                    )["val"]["top1"]
                    for s in args.seeds
                ]
                rows.append(
                    {
                        "cache": Path(cache_path).name,
                        "dispersion": form,
                        "weighting": weighting,
                        "beta_init": beta_init,
                        "alpha": alpha,
                        "seeds": len(args.seeds),
                        "val_top1_median": round(100 * statistics.median(vals), 2),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


# name -> (GeneratorSettings, StageTwoSettings, StageTwoSettings) overrides; all scored on val only.
GLAG_PROBES = {
    "default": ({}, {}, {}),
    "beta 0.0 fixed": ({}, {"beta_init": 0.0, "adaptive": False}, {}),
    "beta 0.2": ({}, {"beta_init": 0.2}, {}),
    "beta 0.6": ({}, {"beta_init": 0.6}, {}),
    "beta step 0.1": ({}, {"beta_delta": 0.1}, {}),
    "tail = Few only (n < 20)": ({"tail_below": 20}, {}, {}),
    "k 3": ({"k": 3}, {}, {}),
    "alpha 0.05": ({}, {}, {"alpha": 0.05}),
    "alpha 0.1": ({}, {}, {"alpha": 0.1}),
    "alpha 0.2": ({}, {}, {"alpha": 0.2}),
    "alpha 0.4": ({}, {}, {"alpha": 0.4}),
    "alpha 0.8": ({}, {}, {"alpha": 0.8}),
    "uniform support weights": ({"weighting": "uniform"}, {}, {}),
    "no Tukey (lt 1)": ({"lt": 1.0}, {}, {}),
    "n_target n_max/2": ({}, {}, {"n_target": -2}),
    "no KD": ({}, {"kd": False}, {}),
    "KD T 4": ({}, {"kd_temperature": 4.0}, {}),
    "KD weight linear (g2 1)": ({}, {"kd_g": 1.0}, {}),
    "lr 0.01": ({}, {"classifier_lr": 0.01}, {}),
    "20 epochs": ({}, {"classifier_epochs": 20}, {}),
    "80 epochs": ({}, {"classifier_epochs": 80}, {}),
    "no generation": ({}, {"generate": False}, {}),
    "beta 0.0 adaptive": ({}, {"beta_init": 0.0}, {}),
    "beta 0.0 fixed, 80 epochs": ({}, {"beta_init": 0.0, "adaptive": False, "classifier_epochs": 80}, {}),
    "beta 0.0 fixed, k 3": ({"k": 3}, {"beta_init": 0.0, "adaptive": False}, {}),
    "beta 0.0 fixed, no KD": ({}, {"beta_init": 0.0, "adaptive": False, "kd": False}, {}),
    "beta 0.0 fixed, KD T 4": ({}, {"beta_init": 0.0, "adaptive": False, "kd_temperature": 4.0}, {}),
    "beta 0.0 fixed, alpha 0.1": ({}, {"beta_init": 0.0, "adaptive": False}, {"alpha": 0.1}),
    "beta 0.0 fixed, tail = Few only": ({"tail_below": 20}, {"beta_init": 0.0, "adaptive": False}, {}),
    "beta 0.1 fixed": ({}, {"beta_init": 0.1, "adaptive": False}, {}),
}


def glag_val(args):
    """GLAG stage-two probes and the decoupled baselines, val top-1 and val Few, mean over caches.

    ``+LA`` rows add a post-hoc logit adjustment to the trained GLAG classifier, tau picked on val
    (so that val score is optimistic, as is the logit-adjust baseline's, picked the same way).
    """
    import numpy as np
    import torch

    from glag.classify.common import log_prior, pick_on_val, predict
    from glag.generate.stats import tukey
    from glag.metrics import evaluate

    cpu = torch.device("cpu")
    caches = [FeatureCache(p) for p in args.cache]
    names = args.probes or list(GLAG_PROBES)
    scores = {}

    def add(name, top1, few):
        scores.setdefault(name, []).append((100 * top1, 100 * few))

    for seed, cache in enumerate(caches):
        counts = cache.train_counts
        for b in ("crt", "lws", "logit-adjust"):
            fn = getattr(baselines, b.replace("-", "_"))
            res = fn(cache, seed=seed) if b in ("crt", "lws") else fn(cache)
            add(b, res["val"]["top1"], res["val"]["few"])
        val = cache.split("val")
        for name in names:
            gen_kw, st_kw, sam_kw = GLAG_PROBES[name]
            sam_kw = dict(sam_kw)
            if sam_kw.get("n_target") == -2:
                sam_kw["n_target"] = int(counts.max()) // 2
            afg = AFG.build(cache, GeneratorSettings(**gen_kw), device="cpu", save=False)
            # without stage two's own adjustment, so the '+LA' row below is the one adjustment
            res = train_glag(
                afg,
                StageTwoSettings(
                    **{"classifier_epochs": args.classifier_epochs, "posthoc_la": False, **st_kw}, **sam_kw
                ),
                seed=seed,
                progress=False,
            )
            add(name, res["val"]["top1"], res["val"]["few"])
            W, bias = torch.as_tensor(res["weight"]), torch.as_tensor(res["bias"])
            lp = log_prior(counts, cpu)
            x = tukey(np.asarray(val.features, dtype=np.float32), afg.cfg.tukey_power)
            make = lambda tau, W=W, bias=bias, lp=lp: lambda z: z @ W.T + bias - tau * lp  # noqa: E731
            tau, _ = pick_on_val(make, x, val.labels, cpu)
            best = evaluate(predict(make(tau), x, cpu), val.labels, counts)
            add(name + " +LA", best["top1"], best["few"])
            print(
                json.dumps(
                    {
                        "cache": cache.path.name,
                        "probe": name,
                        "val_top1": round(100 * res["val"]["top1"], 2),
                        "val_few": round(100 * res["val"]["few"], 2),
                        "val_top1_plus_la": round(100 * best["top1"], 2),
                        "la_tau": tau,
                    }
                ),
                file=sys.stderr,
                flush=True,
            )
    rows = [
        {
            "probe": k,
            "caches": len(v),
            "val_top1_mean": round(statistics.fmean(t for t, _ in v), 2),
            "val_few_mean": round(statistics.fmean(f for _, f in v), 2),
        }
        for k, v in scores.items()
    ]
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=["graloss", "stage-two", "glag-val"])
    ap.add_argument("--probes", nargs="*", default=None, help="glag-val: probe names (default: all)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=30, help="stage-one epochs (graloss)")
    ap.add_argument("--classifier-epochs", "--gen-epochs", type=int, default=default("classifier_epochs"))
    ap.add_argument("--cache", action="append", default=[], help="cache file(s) for stage-two ablations")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "glag-cache")
    args = ap.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.which in ("stage-two", "glag-val") and not args.cache:
        ap.error(f"{args.which} ablations need --cache FILE")
    rows = {"graloss": graloss, "stage-two": stage_two, "glag-val": glag_val}[args.which](args)
    print(
        json.dumps(
            {
                "bench": f"ablations-{args.which}",
                "command": " ".join(["python", "bench/ablations.py", *sys.argv[1:]]),
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
