"""Stage two's wall time against the floor the hardware allows, per shape, in one run.

The floor is plain minibatch SGD (momentum, weight decay, cosine lr) of the same linear layer on
the same number of pre-made rows per epoch, same batch size and epochs: the arithmetic stage two
cannot avoid. ``ratio = median_s / floor_s``.

    .venv/bin/python bench/stage_two_speed.py [--repeats 3] [--shapes cifar100-lt imagenet-lt inat2018]

* cifar100-lt: C 100, d 64, 500 -> 5 (10,847 rows), 40 epochs of 50,000 rows.
* imagenet-lt: C 1000, d 512, exponential 1280 -> 5, 1 epoch of 1.28 M rows (CPU: a few epochs are enough).
* inat2018: C 8,142, d 2048, n_max 1,000, factor mode, about 8.1 M rows per epoch: too large to run
  here, so one block of generated rows (factor mode, d 2048, support classes of up to 1,000 rows)
  and a few floor batches are timed on a smaller cache and scaled to an epoch; peak memory is
  measured for that cache and scaled by the train features' size (437,513 rows, as iNat 2018).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import emit, synthetic_cache, timed

from glag.cache.format import FeatureCache
from glag.classify.common import cosine_lr
from glag.classify.stage_two import StageTwoConfig, train_glag
from glag.extract.profile import exponential_counts
from glag.generate.afg import AFG, GeneratorConfig, SamplingConfig
from glag.generate.stream import FeatureStream

SHAPES = {
    "cifar100-lt": dict(C=100, d=64, n_max=500, im=100, epochs=40),
    "imagenet-lt": dict(C=1000, d=512, n_max=1280, im=256, epochs=1),
}
INAT = dict(C=8142, d=2048, n_max=1000, train_rows=437_513)


def floor_time(rows: int, d: int, C: int, epochs: int, batch: int = 512, max_batches: int | None = None) -> float:
    """Seconds of plain minibatch SGD of a linear layer over ``rows`` pre-made rows per epoch."""
    torch.manual_seed(0)
    x = torch.randn(min(rows, 262_144), d)  # rows are reused cyclically: the arithmetic is the same
    y = torch.randint(0, C, (len(x),))
    g = torch.nn.Linear(d, C)
    opt = torch.optim.SGD(g.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    steps = -(-rows // batch)
    n = steps if max_batches is None else min(steps, max_batches)
    t = time.perf_counter()
    for e in range(epochs if max_batches is None else 1):
        perm = torch.randperm(len(x))
        for s in range(n):
            idx = perm[(s * batch) % len(x):(s * batch) % len(x) + batch]
            for grp in opt.param_groups:
                grp["lr"] = cosine_lr(0.1, e + s / steps, epochs)
            loss = torch.nn.functional.cross_entropy(g(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    dt = time.perf_counter() - t
    return dt if max_batches is None else dt * steps / n * epochs


def measured_shape(name, spec, repeats, tmp):
    counts = exponential_counts(spec["n_max"], spec["C"], spec["im"])
    cache = FeatureCache(synthetic_cache(Path(tmp) / f"{name}.h5", counts, spec["d"], test_per_class=5))
    t = time.perf_counter()
    afg = AFG.build(cache, GeneratorConfig(), device="cpu", save=False)
    stats_s = time.perf_counter() - t
    cfg = StageTwoConfig(epochs=spec["epochs"])
    rows = FeatureStream(afg, SamplingConfig(), cfg.batch_size).rows_per_epoch()
    train_glag(afg, StageTwoConfig(epochs=1), progress=False) if name == "cifar100-lt" else None  # warm-up
    stage, floor = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine state
        stage.append(timed(lambda: train_glag(afg, cfg, progress=False), 1)[0])
        floor.append(floor_time(rows, spec["d"], spec["C"], spec["epochs"]))
    med, fl = statistics.median(stage), statistics.median(floor)
    return {"shape": name, "C": spec["C"], "d": spec["d"], "train_rows": int(counts.sum()), "rows_per_epoch": rows,
            "epochs": spec["epochs"], "mode": afg.factors.mode, "statistics_s": round(stats_s, 2),
            "median_s": round(med, 2), "floor_s": round(fl, 2), "ratio": round(med / fl, 2),
            "times_s": [round(x, 2) for x in stage], "floor_times_s": [round(x, 2) for x in floor]}


INAT_SMALL_CLASSES = 200


def current_rss_mb() -> float:
    """Resident memory now (Linux /proc), sampled: the peak is the largest sample."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def inat_small_counts():
    return np.maximum(exponential_counts(INAT["n_max"], INAT_SMALL_CLASSES, 500), 2)


def inat_shape(path):
    """Factor-mode generation at d 2048 on a smaller cache, scaled to iNat's 8.1 M rows per epoch.
    Run in a fresh process: its peak RSS increase is stage two's own (the cache is made beforehand)."""
    C, d, n_max = INAT["C"], INAT["d"], INAT["n_max"]
    classes, counts = INAT_SMALL_CLASSES, inat_small_counts()
    rss0 = current_rss_mb()
    cache = FeatureCache(path)
    afg = AFG.build(cache, GeneratorConfig(mode="factor"), device="cpu", save=False)
    stream = FeatureStream(afg, SamplingConfig(), 512, prefetch=0)
    beta = np.zeros(classes, np.float32)
    gen = stream.epoch(0, beta)
    next(gen)  # the first block is made here
    t = time.perf_counter()
    made = 512
    peak = current_rss_mb()
    for b in gen:  # the rest of the epoch, block by block
        made += len(b.y)
        peak = max(peak, current_rss_mb())
        if time.perf_counter() - t > 60:
            break
    gen_rate = made / (time.perf_counter() - t)
    peak_mb = peak - rss0
    rows_epoch = C * n_max
    train_mb_small = int(counts.sum()) * d * 4 / 2**20
    train_mb_inat = INAT["train_rows"] * d * 4 / 2**20
    floor_epoch = floor_time(rows_epoch, d, C, 1, max_batches=6)
    gen_epoch = rows_epoch / gen_rate
    return {"shape": "inat2018", "C": C, "d": d, "rows_per_epoch": rows_epoch, "mode": "factor",
            "measured_on": f"{classes} classes, {int(counts.sum())} train rows (n_max {n_max})",
            "generated_rows_per_s": round(gen_rate), "generation_s_per_epoch_est": round(gen_epoch),
            "floor_s_per_epoch_est": round(floor_epoch), "median_s": None, "floor_s": round(floor_epoch),
            "ratio": round((gen_epoch + floor_epoch) / floor_epoch, 2),
            "ratio_note": "(generation + floor) / floor per epoch; the stream overlaps them on spare cores",
            "peak_rss_increase_MB_sampled": round(peak_mb), "train_features_MB_measured": round(train_mb_small),
            "peak_rss_GB_est": round(peak_mb / train_mb_small * train_mb_inat / 1024, 1),
            "peak_note": "scaled by train features' size (437,513 x 2048 float32 = 3.4 GB)"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shapes", nargs="+", default=[*SHAPES, "inat2018"], choices=[*SHAPES, "inat2018"])
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shapes:
            if name == "inat2018":
                import multiprocessing as mp

                path = synthetic_cache(Path(tmp) / "inat-small.h5", inat_small_counts(), INAT["d"], val_per_class=2,
                                       test_per_class=2)
                with mp.get_context("spawn").Pool(1) as pool:
                    rows.append(pool.apply(inat_shape, (path,)))
            else:
                rows.append(measured_shape(name, SHAPES[name], args.repeats, tmp))
    for r in rows:
        r.update(torch_threads=torch.get_num_threads(), cpus=os.cpu_count())

    emit("stage_two_speed", rows, f"python bench/stage_two_speed.py --repeats {args.repeats} --shapes {' '.join(args.shapes)}")


if __name__ == "__main__":
    main()
