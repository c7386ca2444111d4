"""Where unseen features fall, and what a stage two that knows it can buy (issue 34). Validation and
leftover rows only: the test split is never read (every method runs on a view whose test split is a
scoring pool of leftover rows).

    .venv/bin/python bench/heldout.py diagnose CACHE [CACHE ...]   # shift / spread split, 20-row estimates
    .venv/bin/python bench/heldout.py select CACHE [CACHE ...]     # oracle + candidates, scored on leftovers

CACHE must hold the ``full`` split (``--full-split``): its rows that are neither train nor val rows are
the leftovers, images no stage ever saw. Per class they are split once (seed 0) into a scoring pool
(SCORE_PER_CLASS rows) and an oracle pool (the rest).

``select`` runs every candidate with the recipe's settings (configs/cifar10-lt-500.toml, the cache's
seed), each tuning on the cache's 20 validation rows per class as it would in use, and scores it on the
scoring pool (about 10,000 rows, so one image is 0.01 points) and on the validation rows. The oracles
replace the training rows by oracle-pool rows: ``oracle-matched`` with the same count per class
(un-memorised seeds and statistics), ``oracle-balanced`` with n_max rows of every class (what a perfect
generator would give); with ``--oracle-share F``, also ``oracle-shareF-d<i>``: F of each class's count (at
least one row), a random draw each (what one backbone of a 1/F-fold cross-fit gets, from a stronger one).
Prints one JSON object per (cache, method); docs/ablations.md has the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import glag
from glag.cache.derived import derive, leftover_mask, rows_of
from glag.cache.format import FeatureCache
from glag.classify.methods import MethodRun
from glag.classify.runner import METHODS
from glag.generate.stats import tukey
from glag.metrics import group_masks

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "cifar10-lt-500.toml"
SCORE_PER_CLASS = 1000
POOL_SEED = 0
CANDIDATES = [
    "stage-one",
    "logit-adjust",
    "crt",
    "glag",
    "glag-no-kd",
    "glag-train-la",
    "glag-ens",
    "glag-ens-no-kd",
    "glag-law",
    "glag-heldout",
    "glag-heldout-no-gen",
    "crt-heldout",
    "la-bias",
]


def pools(cache: FeatureCache, score_per_class: int = SCORE_PER_CLASS):
    """(scoring pool, oracle pool) row positions of the full split, per class split once by POOL_SEED."""
    full = cache.split("full")
    left = np.flatnonzero(leftover_mask(cache))
    rng = np.random.default_rng(POOL_SEED)
    score, oracle = [], []
    for c in range(cache.num_classes):
        mine = rng.permutation(left[full.labels[left] == c])
        score.append(mine[:score_per_class])
        oracle.append(mine[score_per_class:])
    return np.concatenate(score), oracle


def scored_view(cache: FeatureCache, score_per_class: int = SCORE_PER_CLASS):
    """(the cache with its test split replaced by the leftover scoring pool, the oracle pool per class)."""
    score, oracle = pools(cache, score_per_class)
    return derive(cache, "score", test=rows_of(cache.split("full"), score)), oracle


def _tk(x):
    return tukey(np.asarray(x, np.float64), glag.config.default("tukey_power"))


def _shift_est(rows, mu, noise: float) -> tuple[float, float]:
    """Unbiased ``||mean(rows) - mu_train||^2`` (minus both means' errors) and the rows' spread (trace of
    their unbiased covariance)."""
    s = float(((rows - rows.mean(0)) ** 2).sum(1).sum() / (len(rows) - 1))
    return float(((rows.mean(0) - mu) ** 2).sum() - s / len(rows) - noise), s


def diagnose_one(path: str) -> dict:
    """Per class, in the generator's Tukey space: training spread, held-out spread, shift of the held-out
    mean, the shift's cosine with the direction to the nearest larger class's mean; from the leftover pool
    (thousands of rows) and from the 20 validation rows (unbiased shift); and how well 20-row subsets of
    the pool (200 draws) estimate the pool's shift and spread."""
    c = FeatureCache(path)
    tr, va, full = c.split("train"), c.split("val"), c.split("full")
    left = leftover_mask(c)
    xt, yt = _tk(tr.features), tr.labels
    xv, yv = _tk(va.features), va.labels
    xl, yl = _tk(np.asarray(full.features)[left]), full.labels[left]
    counts = c.train_counts
    means = np.stack([xt[yt == k].mean(0) for k in range(c.num_classes)])
    rng = np.random.default_rng(0)
    classes = []
    for k in range(c.num_classes):
        t, v, pool = xt[yt == k], xv[yv == k], xl[yl == k]
        mu = means[k]
        tr_spread = float(((t - mu) ** 2).sum(1).mean())
        ho_spread = float(((pool - pool.mean(0)) ** 2).sum(1).mean())
        shift = pool.mean(0) - mu
        larger = np.flatnonzero(counts > counts[k])
        cos = None
        if len(larger):
            near = larger[np.argmin(((means[larger] - mu) ** 2).sum(1))]
            to = means[near] - mu
            cos = float(shift @ to / (np.linalg.norm(shift) * np.linalg.norm(to) + 1e-12))
        tr_var = float(((t - mu) ** 2).sum(1).sum() / max(len(t) - 1, 1))

        noise = tr_var / len(t)  # the training mean's own error
        val_shift, val_spread = _shift_est(v, mu, noise) if len(v) > 1 else (None, None)
        boot = [
            _shift_est(pool[rng.choice(len(pool), 20, replace=False)], mu, noise)
            for _ in range(200 if len(pool) >= 40 else 0)  # 20 of at least 40: subsets that differ
        ] or [(np.nan, np.nan)]
        bs, bv = np.array([b[0] for b in boot]), np.array([b[1] for b in boot])
        classes.append(
            {
                "class": k,
                "n_train": int(counts[k]),
                "n_leftover": int(len(pool)),
                "train_spread": round(tr_spread, 3),
                "heldout_spread": round(ho_spread, 3),
                "shift2": round(float(shift @ shift), 3),
                "shift2_over_spread": round(float(shift @ shift) / ho_spread, 3),
                "cos_to_nearest_larger": None if cos is None else round(cos, 3),
                "val_shift2": None if val_shift is None else round(val_shift, 3),
                "val_spread": None if val_spread is None else round(val_spread, 3),
                "boot20_shift2_q10_q50_q90": [round(float(q), 3) for q in np.quantile(bs, [0.1, 0.5, 0.9])],
                "boot20_spread_q10_q50_q90": [round(float(q), 3) for q in np.quantile(bv, [0.1, 0.5, 0.9])],
            }
        )
    return {"cache": Path(path).name, "classes": classes}


def laws(rows: list[dict]) -> dict:
    """Least-squares laws in log n over every (cache, class): log shift^2 and log(held-out / train spread),
    from the pool and from the val rows."""
    n = np.log([r["n_train"] for r in rows])
    out = {}
    for name, ys in (
        ("log_shift2_pool", [r["shift2"] for r in rows]),
        ("log_spread_ratio_pool", [r["heldout_spread"] / r["train_spread"] for r in rows]),
        ("log_shift2_val", [max(r["val_shift2"], 1e-3) for r in rows]),
        ("log_spread_ratio_val", [r["val_spread"] / r["train_spread"] for r in rows]),
    ):
        a, b = np.linalg.lstsq(np.stack([np.ones_like(n), n], 1), np.log(ys), rcond=None)[0]
        out[name] = {"a": round(float(a), 3), "b_per_log_n": round(float(b), 3)}
    return out


def _run(cache, cfg, name: str) -> dict:
    """A registered method, or one of the recipe's variants (a method with stage-two settings changed)."""
    changes = dict(cfg.variants.get(name, {"method": (name,)}))
    method = changes.pop("method")[0]
    if changes:
        cfg = replace(cfg, stage_two=replace(cfg.stage_two, **changes))
    run = MethodRun(cfg, torch.device("cpu"), "cpu", progress=False)
    t0 = time.perf_counter()
    res = METHODS[method].fn(cache, run)
    return {"res": res, "seconds": round(time.perf_counter() - t0, 2)}


def _metrics(m: dict, counts) -> dict:
    """Top-1 and the groups of the real training counts (an oracle view's own counts differ)."""
    acc = np.array([np.nan if a is None else a for a in m["per_class"]], dtype=np.float64)
    out = {"top1": round(100 * m["top1"], 2)}
    for g, mask in group_masks(counts).items():
        out[g] = round(100 * float(np.nanmean(acc[mask])), 2) if mask.any() else None
    return out


def result_row(cache: FeatureCache, seed: int, train_rows: str, method: str, r: dict) -> dict:
    """One selection row: a run (``_run``) scored on the pool (its view's test) and on validation."""
    return {
        "cache": cache.path.name,
        "seed": seed,
        "train_rows": train_rows,
        "method": method,
        "score_pool": _metrics(r["res"]["test"], cache.train_counts),
        "val": _metrics(r["res"]["val"], cache.train_counts),
        "seconds": r["seconds"],
    }


def select_one(
    path: str, methods: list[str], score_per_class: int = SCORE_PER_CLASS, share: float = 0.0, draws: int = 3
) -> list[dict]:
    cache = FeatureCache(path)
    seed = int(cache.provenance.get("seed", 0))
    cfg = glag.load_config(RECIPE, {"stage_one.seed": seed})
    full = cache.split("full")
    scored, oracle = scored_view(cache, score_per_class)  # test := leftover scoring pool
    counts = cache.train_counts
    views = {"": scored}
    oracle_train = {
        "oracle-matched": np.concatenate([o[: counts[k]] for k, o in enumerate(oracle)]),
        "oracle-balanced": np.concatenate([o[: counts.max()] for o in oracle]),
    }
    short = [k for k, o in enumerate(oracle) if len(o) < counts.max()]
    if short:
        print(
            f"no oracle: class(es) {short} have fewer than {counts.max()} oracle-pool rows", file=sys.stderr
        )
    for d in range(draws if share else 0):  # each fold's share of un-memorised rows (brief's candidate 12)
        rng = np.random.default_rng(1000 + d)
        n = np.maximum(1, np.rint(share * counts)).astype(int)
        oracle_train[f"oracle-share{share:g}-d{d}"] = np.concatenate(
            [rng.permutation(o)[: n[k]] for k, o in enumerate(oracle)]
        )
    for name, at in oracle_train.items() if not short else ():
        views[name] = derive(scored, name, train=rows_of(full, at))
    out = []
    for view_name, view in views.items():
        names = methods if not view_name else ["crt", "glag", "glag-no-kd", "glag-no-gen"]
        for m in names:
            r = _run(view, cfg, m)
            row = result_row(cache, seed, view_name or "train", m, r)
            for k in ("ens_weight", "la_tau", "posthoc_tau", "tau"):
                if k in r["res"]:
                    row[k] = r["res"][k]
            if "laws" in r["res"]:
                row["laws"] = {k: r["res"]["laws"][k] for k in ("kappa_law", "beta_law")}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["diagnose", "select"])
    p.add_argument("caches", nargs="+")
    p.add_argument("--methods", default=",".join(CANDIDATES), help="comma-separated (select)")
    p.add_argument("--score-per-class", type=int, default=SCORE_PER_CLASS, help="scoring-pool rows per class")
    p.add_argument(
        "--oracle-share",
        type=float,
        default=0.0,
        help="also an oracle with this share of each class's count (at least 1 row), --oracle-draws draws",
    )
    p.add_argument("--oracle-draws", type=int, default=3, help="random draws of the --oracle-share oracle")
    a = p.parse_args(argv)
    if a.what == "diagnose":
        per = [diagnose_one(c) for c in a.caches]
        rows = [r for d in per for r in d["classes"]]
        print(json.dumps({"bench": "heldout-diagnose", "caches": per, "laws": laws(rows)}, indent=1))
    else:
        for c in a.caches:
            select_one(c, a.methods.split(","), a.score_per_class, a.oracle_share, a.oracle_draws)
    return 0


if __name__ == "__main__":
    sys.exit(main())
