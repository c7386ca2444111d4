"""`glag tune`'s overhead and its --workers scaling, on the digits cache, in one run (issue 37).

* overhead: a whole `glag tune` of N `glag` trials (study, storage, the best trial's re-run, plots) against
  N `glag classify` runs of the same settings in one process (``run_methods``: one run folder each, as
  `glag classify` writes it): ``ratio = tune_s / plain_s``, target at most 1.3. Pruning is off.
* workers: trials per minute with ``--workers 2`` against 1 (target at least 1.6x on 2 cores), pruning off:
  of the whole command, and of the trial phase alone (first trial's start to last trial's end).
* pruning: the same study with the median pruner on and off: wall time, pruned trials, best validation top-1.

    OMP_NUM_THREADS=1 .venv/bin/python bench/tune_speed.py [--trials 100] \
        [--out bench/results/tune_speed.json]

Needs nothing else running: the machine's cores are what is measured.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import emit

ROOT = Path(__file__).resolve().parents[1]


def digits_cache(cache_dir: Path) -> Path:
    import glag
    from glag.pipeline import run_stage_one

    return run_stage_one(glag.load_config(ROOT / "configs" / "digits.toml"), cache_dir, quiet=True)[0]


def plain_runs(cache_path: Path, cfg, params_list, out: Path) -> float:
    """The same stage-two runs as the study's trials, as `glag classify` makes them, in one process."""
    from glag.classify.runner import run_methods

    t0 = time.perf_counter()
    for i, params in enumerate(params_list):
        run_methods(cache_path, cfg.with_values(params), out / str(i), methods=["glag"], progress=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import csv

    import glag
    from glag.tuning import tune

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = digits_cache(tmp / "cache")
        cfg = glag.load_config(ROOT / "configs" / "digits.toml")
        t0 = time.perf_counter()
        tune(cfg, path, tmp / "one", trials=args.trials, prune=False, progress=False, log=lambda m: None)
        tune_s = time.perf_counter() - t0
        with open(tmp / "one" / "trials.csv", newline="") as f:
            trials = list(csv.DictReader(f))
        params = [
            {k[len("params_") :]: _typed(v) for k, v in t.items() if k.startswith("params_")} for t in trials
        ]
        plain_s = plain_runs(path, cfg, params, tmp / "plain")
        rows.append(
            {
                "what": "overhead",
                "trials": len(trials),
                "tune_s": round(tune_s, 2),
                "plain_s": round(plain_s, 2),
                "ratio": round(tune_s / plain_s, 3),
                "target": "<= 1.3",
            }
        )
        per_min, phase = {}, {}
        for workers in (1, 2):
            t0 = time.perf_counter()
            res = tune(
                cfg,
                path,
                tmp / f"w{workers}",
                trials=args.trials,
                prune=False,
                workers=workers,
                progress=False,
                log=lambda m: None,
            )
            per_min[workers] = res["trials"] / (time.perf_counter() - t0) * 60
            phase[workers] = res["trials"] / trial_phase_s(tmp / f"w{workers}" / "trials.csv") * 60
        rows.append(
            {
                "what": "workers",
                "trials_per_min_1": round(per_min[1], 1),
                "trials_per_min_2": round(per_min[2], 1),
                "speedup": round(per_min[2] / per_min[1], 3),
                # the trials alone (first start to last finish), without start-up and the final re-run
                "trial_phase_per_min_1": round(phase[1], 1),
                "trial_phase_per_min_2": round(phase[2], 1),
                "trial_phase_speedup": round(phase[2] / phase[1], 3),
                "target": ">= 1.6",
            }
        )
        runs = {}
        for prune in (False, True):
            t0 = time.perf_counter()
            res = tune(
                cfg,
                path,
                tmp / f"p{prune}",
                trials=args.trials,
                prune=prune,
                progress=False,
                log=lambda m: None,
            )
            with open(tmp / f"p{prune}" / "trials.csv", newline="") as f:
                pruned = sum(r["state"] == "PRUNED" for r in csv.DictReader(f))
            runs[prune] = (time.perf_counter() - t0, pruned, res["best_value"])
        rows.append(
            {
                "what": "pruning",
                "off_s": round(runs[False][0], 2),
                "on_s": round(runs[True][0], 2),
                "saved": round(1 - runs[True][0] / runs[False][0], 3),
                "pruned_trials": runs[True][1],
                "best_val_off": runs[False][2],
                "best_val_on": runs[True][2],
            }
        )
    emit("tune_speed", rows, f"OMP_NUM_THREADS=1 python bench/tune_speed.py --trials {args.trials}", args.out)


def trial_phase_s(trials_csv: Path) -> float:
    import pandas as pd

    t = pd.read_csv(trials_csv, parse_dates=["datetime_start", "datetime_complete"])
    return (t["datetime_complete"].max() - t["datetime_start"].min()).total_seconds()


def _typed(v: str):
    if v in ("True", "False"):
        return v == "True"
    f = float(v)
    return int(f) if f.is_integer() and "." not in v else f


if __name__ == "__main__":
    main()
