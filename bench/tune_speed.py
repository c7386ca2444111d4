"""`glag tune`'s overhead and its --workers scaling, on the digits cache, in one run (issue 37).

* overhead: a whole `glag tune` of N `glag` trials (study, storage, the best trial's re-run, plots) against
  N `glag classify` runs of the same settings in one process (``run_methods``: one run folder each, as
  `glag classify` writes it): ``ratio = tune_s / plain_s``, target at most 1.3. Pruning is off.
* workers: trials per minute with ``--workers 2`` against 1 (target at least 1.6x on 2 cores), pruning off:
  of the whole command, and of the trial phase alone (first trial's start to last trial's end).
* pruning: the same study with the median pruner on and off: wall time, pruned trials, best validation top-1.

    OMP_NUM_THREADS=1 .venv/bin/python bench/tune_speed.py [--trials 100] \
        [--out bench/results/tune_speed.json]
    # the same on another cache (longer trials), with its recipe's stage-two settings, some parts only
    OMP_NUM_THREADS=1 .venv/bin/python bench/tune_speed.py --cache CACHE.h5 \
        --recipe configs/cifar10-lt-500.toml --parts workers --trials 60

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
    ap.add_argument("--cache", type=Path, default=None, help="an existing cache instead of the digits one")
    ap.add_argument(
        "--recipe", type=Path, default=ROOT / "configs" / "digits.toml", help="stage-two settings"
    )
    ap.add_argument("--parts", default="overhead,workers,pruning", help="comma-separated: which to measure")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    import glag

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = args.cache or digits_cache(tmp / "cache")
        cfg = glag.load_config(args.recipe)
        if "overhead" in parts:
            rows.append(overhead(cfg, path, tmp, args.trials))
        if "workers" in parts:
            rows.append(workers_speedup(cfg, path, tmp, args.trials))
        if "pruning" in parts:
            rows.append(pruning(cfg, path, tmp, args.trials))
    command = f"OMP_NUM_THREADS=1 python bench/tune_speed.py --trials {args.trials}"
    if args.cache:
        command += f" --cache {args.cache.name} --recipe {args.recipe} --parts {args.parts}"
    emit("tune_speed", rows, command, args.out)


def overhead(cfg, path: Path, tmp: Path, trials: int) -> dict:
    """A whole study against the same runs as `glag classify` makes them, in one process."""
    from glag.tuning import tune

    t0 = time.perf_counter()
    tune(cfg, path, tmp / "one", trials=trials, prune=False, progress=False, log=lambda m: None)
    tune_s = time.perf_counter() - t0
    params = trial_params(tmp / "one" / "trials.csv")
    plain_s = plain_runs(path, cfg, params, tmp / "plain")
    return {
        "what": "overhead",
        "trials": len(params),
        "tune_s": round(tune_s, 2),
        "plain_s": round(plain_s, 2),
        "ratio": round(tune_s / plain_s, 3),
        "target": "<= 1.3",
    }


def workers_speedup(cfg, path: Path, tmp: Path, trials: int) -> dict:
    """Trials per minute with 2 local workers against 1: the whole command, and the trial phase alone; beside
    it the hardware's floor, the same runs without a study split over 2 processes against 1."""
    from glag.tuning import tune

    per_min, phase = {}, {}
    for workers in (1, 2):
        t0 = time.perf_counter()
        res = tune(
            cfg,
            path,
            tmp / f"w{workers}",
            trials=trials,
            prune=False,
            workers=workers,
            progress=False,
            log=lambda m: None,
        )
        per_min[workers] = res["trials"] / (time.perf_counter() - t0) * 60
        phase[workers] = res["trials"] / trial_phase_s(tmp / f"w{workers}" / "trials.csv") * 60
    # the floor: the 1-worker study's trials as plain runs, in 1 process and split over 2 (no study at all)
    params = trial_params(tmp / "w1" / "trials.csv")
    one_s = plain_parallel(path, cfg, params, tmp / "f1", 1)
    two_s = plain_parallel(path, cfg, params, tmp / "f2", 2)
    return {
        "what": "workers",
        "trials_per_min_1": round(per_min[1], 1),
        "trials_per_min_2": round(per_min[2], 1),
        "speedup": round(per_min[2] / per_min[1], 3),
        # the trials alone (first start to last finish), without start-up and the final re-run
        "trial_phase_per_min_1": round(phase[1], 1),
        "trial_phase_per_min_2": round(phase[2], 1),
        "trial_phase_speedup": round(phase[2] / phase[1], 3),
        "plain_runs_2_processes_speedup": round(one_s / two_s, 3),
        "speedup_vs_floor": round(per_min[2] / per_min[1] / (one_s / two_s), 3),
        "target": ">= 1.6",
    }


def pruning(cfg, path: Path, tmp: Path, trials: int) -> dict:
    """The same study with the median pruner off and on: wall time, pruned trials, best validation."""
    import csv

    from glag.tuning import tune

    runs = {}
    for prune in (False, True):
        t0 = time.perf_counter()
        res = tune(
            cfg, path, tmp / f"p{prune}", trials=trials, prune=prune, progress=False, log=lambda m: None
        )
        with open(tmp / f"p{prune}" / "trials.csv", newline="") as f:
            pruned = sum(r["state"] == "PRUNED" for r in csv.DictReader(f))
        runs[prune] = (time.perf_counter() - t0, pruned, res["best_value"])
    return {
        "what": "pruning",
        "off_s": round(runs[False][0], 2),
        "on_s": round(runs[True][0], 2),
        "saved": round(1 - runs[True][0] / runs[False][0], 3),
        "pruned_trials": runs[True][1],
        "best_val_off": runs[False][2],
        "best_val_on": runs[True][2],
    }


def trial_params(trials_csv: Path) -> list[dict]:
    """Each trial's settings, typed, from a study's trials.csv."""
    import csv

    with open(trials_csv, newline="") as f:
        return [
            {k[len("params_") :]: _typed(v) for k, v in t.items() if k.startswith("params_")}
            for t in csv.DictReader(f)
        ]


def _warm(_) -> None:
    import glag.classify.runner  # noqa: F401 -- the imports, before the clock starts

    time.sleep(1)  # so that each process takes one of these


def plain_parallel(path: Path, cfg, params_list: list, out: Path, n: int) -> float:
    """Seconds for the runs split over ``n`` warmed-up processes (one thread each; start-up not timed)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as ex:
        list(ex.map(_warm, range(n)))
        t0 = time.perf_counter()
        jobs = [ex.submit(plain_runs, path, cfg, params_list[i::n], out / str(i)) for i in range(n)]
        for j in jobs:
            j.result()
        return time.perf_counter() - t0


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
