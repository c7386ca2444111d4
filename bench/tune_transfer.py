"""What a `glag tune` study's best settings give on other caches, paired against the recipe's defaults
(issue 37, docs/usage.md). Each cache runs the method twice, with the recipe's settings and with the
study's best ones, stage-two seed = the cache's stage-one seed, and reads its test split once per run:

    .venv/bin/python bench/tune_transfer.py STUDY CACHE [CACHE ...] [--score-pool] [--recipe R]

STUDY is a `glag tune --out` folder (its best.toml and tune.json). With ``--score-pool``, a cache's test
split is replaced by its leftover scoring pool (bench/heldout.py; the cache must hold the ``full`` split),
for caches of seeds that results/ does not report. Prints one JSON row per (cache, settings), then the
paired differences (tuned minus default) with a 95 % t-interval.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from heldout import _run, scored_view  # bench/heldout.py, beside this script

import glag
from glag.cache.format import FeatureCache
from glag.config import read_recipe
from glag.reporting import interval_text, paired_rows

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "cifar10-lt-500.toml"


def tuned_values(study: Path) -> dict:
    """The study's best settings, under the sections best.toml writes them in."""
    params = json.loads((study / "tune.json").read_text())["space"]
    best = read_recipe(study / "best.toml")
    return {
        k: best[sec][k]
        for sec in ("generator", "stage_two", "baselines")
        for k in best.get(sec, {})
        if k in params
    }


def run_one(cache: FeatureCache, recipe: Path, method: str, values: dict, scored: str = "test") -> dict:
    seed = int(cache.provenance.get("seed", 0))
    cfg = glag.load_config(recipe, {"stage_one.seed": seed, **values})
    res = _run(cache, cfg, method)["res"]
    return {
        "seed": seed,
        "val": round(100 * res["val"]["top1"], 2),
        scored: round(100 * res["test"]["top1"], 2),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", type=Path)
    p.add_argument("caches", nargs="+")
    p.add_argument("--recipe", type=Path, default=RECIPE, help="the defaults' recipe (stage-two settings)")
    p.add_argument("--score-pool", action="store_true", help="score on leftover rows instead of test")
    a = p.parse_args(argv)
    method = json.loads((a.study / "tune.json").read_text())["method"]
    tuned = tuned_values(a.study)
    scored = "score_pool" if a.score_pool else "test"
    rows = []
    for path in a.caches:
        cache = FeatureCache(path)
        if a.score_pool:
            cache = scored_view(cache)[0]
        for name, values in (("default", {}), ("tuned", tuned)):
            row = {
                "cache": Path(path).name,
                "settings": name,
                **run_one(cache, a.recipe, method, values, scored),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    for metric in ("val", scored):
        d = paired_rows(rows, "tuned", "default", metric, by="settings")
        print(json.dumps({"tuned_minus_default": metric, "text": interval_text(d, "tuned"), "diffs": d}))
    print(json.dumps({"tuned": tuned, "study": str(a.study), "score_pool": a.score_pool}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
