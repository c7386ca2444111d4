"""Do unseen-augmentation views of training images fall where unseen images do? (issue 34, the research
brief's candidate 6; docs/ablations.md has the pre-registered rule.) Validation and leftover rows only.

    .venv/bin/python bench/views_diagnose.py CACHE [CACHE ...] --data-root ../shared/data/cifar10-jpg \
        [--views 10] [--stage1 DIR]

CACHE must hold the ``full`` split (its leftover rows are the unseen images). Its stage-one checkpoint is
found under --stage1 (default: the cache's folder/stage1) by the weights hash the cache records. Each
training image is featurised under ``--views`` strong views (random-resized crop at scale 0.35-1, colour
jitter, flip) and, as the control, as many views of the memorised pad-4 crop + flip. Per class, in the
generator's Tukey space: the held-out shift (leftover mean minus training mean), each view kind's shift,
their squared-length ratio and cosine, and spread ratios. Prints one JSON object per cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from heldout import RECIPE, _run, _tk, result_row, scored_view  # bench/heldout.py, beside this script

import glag
from glag.cache.derived import concat, derive, leftover_mask, rows_of
from glag.cache.format import FeatureCache
from glag.extract.datasets import DatasetSpec, load_dataset
from glag.extract.dump import features_of, load_checkpoint, weights_hash
from glag.extract.models import Classifier

FEW_BELOW = 20


def checkpoint_of(cache: FeatureCache, stage1: Path) -> dict:
    """The final stage-one checkpoint whose weights the cache was dumped from."""
    for path in sorted(stage1.glob("*/final.pt")):
        state = load_checkpoint(path)
        if weights_hash(state["model"]) == cache.config["weights"]:
            return state
    sys.exit(f"no checkpoint under {stage1} has the weights of {cache.path.name}")


def views(images: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    """One view of every uint8 image [N, C, H, W] as float [0, 1]: 'strong' or the memorised 'weak'."""
    import torchvision.transforms.v2 as T

    torch.manual_seed(seed)
    size = images.shape[-1]
    tf = (
        T.Compose(
            [
                T.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
                T.RandomHorizontalFlip(),
                T.ColorJitter(0.4, 0.4, 0.4, 0.1),
            ]
        )
        if kind == "strong"
        else T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()])
    )
    return torch.stack([tf(x) for x in images]).float() / 255.0


def view_features(state: dict, images: np.ndarray, labels: np.ndarray, kind: str, n: int) -> np.ndarray:
    model = Classifier(
        state["backbone"], state["num_classes"], state["in_channels"], state.get("head", "linear")
    )
    model.load_state_dict(state["model"])
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in state["norm"])
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):  # NHWC -> NCHW
        x = x.permute(0, 3, 1, 2)
    out = []
    for v in range(n):
        xv = (views(x, kind, 1_000 + v) - mean) / std
        batches = [(xv[i : i + 256], torch.from_numpy(labels[i : i + 256])) for i in range(0, len(xv), 256)]
        out.append(features_of(model, batches, torch.device("cpu"), f"{kind} view {v + 1}", False)[0])
    return np.concatenate(out)


def all_views(cache: FeatureCache, data_root: str, n: int, stage1: Path | None) -> dict:
    """{kind: (features, labels, index)} of ``n`` views of every training image, raw (not Tukey)."""
    state = checkpoint_of(cache, stage1 or cache.path.parent / "stage1")
    data = load_dataset(DatasetSpec(**cache.config["dataset"], data_root=data_root), progress=False)
    tr = data.splits["train"]
    if not np.array_equal(np.sort(tr.index), np.sort(cache.split("train").index)):
        sys.exit(f"the dataset's training rows are not {cache.path.name}'s")
    return {
        k: (
            view_features(state, data.images("train"), tr.labels, k, n),
            np.tile(tr.labels, n),
            np.tile(tr.index, n),
        )
        for k in ("strong", "weak")
    }


def diagnose(cache: FeatureCache, vs: dict, n: int) -> dict:
    tr, full = cache.split("train"), cache.split("full")
    xt = _tk(tr.features)
    left = leftover_mask(cache)
    xl, yl = _tk(np.asarray(full.features)[left]), full.labels[left]
    kinds = {k: _tk(v[0]) for k, v in vs.items()}
    y_views = vs["strong"][1]
    rows = []
    for c in range(cache.num_classes):
        mu = xt[tr.labels == c].mean(0)
        pool = xl[yl == c]
        ho = pool.mean(0) - mu
        row = {
            "class": c,
            "n_train": int((tr.labels == c).sum()),
            "heldout_shift2": round(float(ho @ ho), 3),
            "heldout_spread": round(float(((pool - pool.mean(0)) ** 2).sum(1).mean()), 3),
        }
        for k, xv in kinds.items():
            mine = xv[y_views == c]
            s = mine.mean(0) - mu
            row[f"{k}_shift2_ratio"] = round(float(s @ s) / float(ho @ ho), 3)
            row[f"{k}_cos"] = round(float(s @ ho / (np.linalg.norm(s) * np.linalg.norm(ho) + 1e-12)), 3)
            row[f"{k}_spread_ratio"] = round(
                float(((mine - mine.mean(0)) ** 2).sum(1).mean()) / row["heldout_spread"], 3
            )
        rows.append(row)
    few = [r for r in rows if r["n_train"] < FEW_BELOW]
    summary = {
        f"few_{k}_{m}": round(float(np.mean([r[f"{k}_{m}"] for r in few])), 3)
        for k in ("strong", "weak")
        for m in ("shift2_ratio", "cos", "spread_ratio")
    }
    return {
        "cache": cache.path.name,
        "seed": cache.provenance.get("seed"),
        "views": n,
        "few": summary,
        "classes": rows,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("caches", nargs="+")
    p.add_argument("--data-root", required=True)
    p.add_argument("--views", type=int, default=10)
    p.add_argument(
        "--stage1", type=Path, default=None, help="folder of stage-one runs (default: beside the cache)"
    )
    p.add_argument("--select", action="store_true", help="also the pre-registered selection run")
    p.add_argument("--methods", default=",".join(VIEW_METHODS), help="--select: methods on the views rows")
    p.add_argument(
        "--rows",
        default="train,views,train+views",
        help="--select: which training rows (also head-real+tail-views)",
    )
    a = p.parse_args(argv)
    for c in a.caches:
        cache = FeatureCache(c)
        vs = all_views(cache, a.data_root, a.views, a.stage1)
        print(json.dumps(diagnose(cache, vs, a.views)), flush=True)
        if a.select:
            select(cache, vs["strong"], a.methods.split(","), a.rows.split(","))
    return 0


VIEW_METHODS = ["crt", "glag", "glag-no-kd", "glag-no-gen"]
# the ensemble of a stage two on views with LA (run 2); its control is the same ensemble without generation
EXTRA_VARIANTS = {"glag-ens-no-gen": {"method": ("glag-ens",), "generate": False}}


def head_real_tail_views(cache: FeatureCache, cfg, strong: tuple) -> tuple:
    """The real training rows of classes with at least ``tail_below`` images, the strong views of the rest."""
    tr = cache.split("train")
    tail = np.flatnonzero(cache.train_counts < cfg.generator.tail_below)
    keep = np.isin(strong[1], tail)
    return concat(rows_of(tr, ~np.isin(tr.labels, tail)), tuple(a[keep] for a in strong))


def select(cache: FeatureCache, strong: tuple, methods=VIEW_METHODS, rows=("train", "views", "train+views")):
    """Every method scored on the leftover pool (bench/heldout.py's), with the strong views as training
    rows (``views``) or beside them (``train+views``); the real rows' LA, crt and glag beside."""
    seed = int(cache.provenance.get("seed", 0))
    cfg = glag.load_config(RECIPE, {"stage_one.seed": seed})
    cfg = replace(cfg, variants={**cfg.variants, **EXTRA_VARIANTS})
    scored = scored_view(cache)[0]
    tr = cache.split("train")
    real = (np.asarray(tr.features), tr.labels, tr.index)
    variants = {
        "train": (scored, ["logit-adjust", "crt", "glag"]),
        "views": (derive(scored, "views", train=strong), methods),
        "train+views": (derive(scored, "train+views", train=concat(real, strong)), methods),
        # run 3: strong views stand in for the tail classes only (n_c < tail_below), where they reproduce
        # the held-out shift; the head classes, which they overshoot, keep their real rows
        "head-real+tail-views": (
            derive(scored, "tail-views", train=head_real_tail_views(cache, cfg, strong)),
            methods,
        ),
    }
    for name, (view, names) in variants.items():
        for m in names if name in rows else ():
            print(json.dumps(result_row(cache, seed, name, m, _run(view, cfg, m))), flush=True)


if __name__ == "__main__":
    sys.exit(main())
