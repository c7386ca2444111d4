"""Stage two's wall time against the floor the hardware allows, per shape, in one run.

The floor is plain minibatch SGD (momentum, weight decay, cosine lr) of the same linear layer on
the same number of pre-made rows per epoch, same batch size and epochs: the arithmetic stage two
cannot avoid. ``ratio = median_s / floor_s``.

    .venv/bin/python bench/stage_two_speed.py [--repeats 3] [--shapes cifar100-lt imagenet-lt inat2018]

* cifar100-lt: C 100, d 64, 500 -> 5 (10,847 rows), 40 epochs of 50,000 rows.
* imagenet-lt: C 1000, d 512, exponential 1280 -> 5, 1 epoch of 1.28 M rows (CPU: a few epochs are enough).
* inat2018: C 8,142, d 2048, n_max 1,000, factor mode, about 8.1 M rows per epoch, on a full-size
  cache with iNat 2018's group sizes (made first, 4.6 GB on disk, 9 GB of memory to write): an epoch is too
  long for CPU,
  so blocks are timed and multiplied by the blocks per epoch; peak memory is measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import emit, synthetic_cache, timed

from glag.cache.format import FeatureCache
from glag.classify.common import cosine_lr
from glag.classify.stage_two import train_glag
from glag.config import GeneratorSettings, StageTwoSettings
from glag.extract.profile import exponential_counts
from glag.generate.afg import AFG
from glag.generate.stream import FeatureStream

SHAPES = {
    "cifar100-lt": dict(C=100, d=64, n_max=500, im=100, epochs=40),
    "imagenet-lt": dict(C=1000, d=512, n_max=1280, im=256, epochs=1),
}
INAT = dict(C=8142, d=2048, n_max=1000, train_rows=437_513)


def floor_time(
    rows: int,
    d: int,
    C: int,
    epochs: int,
    batch: int = 512,
    max_batches: int | None = None,
    device: str = "cpu",
) -> float:
    """Seconds of plain minibatch SGD of a linear layer over ``rows`` pre-made rows per epoch, on
    ``device``."""
    torch.manual_seed(0)
    x = torch.randn(
        min(rows, 262_144), d, device=device
    )  # rows are reused cyclically: the arithmetic is the same
    y = torch.randint(0, C, (len(x),), device=device)
    g = torch.nn.Linear(d, C).to(device)
    opt = torch.optim.SGD(g.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    steps = -(-rows // batch)
    n = steps if max_batches is None else min(steps, max_batches)
    t = time.perf_counter()
    for e in range(epochs if max_batches is None else 1):
        perm = torch.randperm(len(x), device=device)
        for s in range(n):
            idx = perm[(s * batch) % len(x) : (s * batch) % len(x) + batch]
            for grp in opt.param_groups:
                grp["lr"] = cosine_lr(0.1, e + s / steps, epochs)
            loss = torch.nn.functional.cross_entropy(g(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if device != "cpu":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return dt if max_batches is None else dt * steps / n * epochs


def measured_shape(name, spec, repeats, tmp, device="cpu"):
    counts = exponential_counts(spec["n_max"], spec["C"], spec["im"])
    cache = FeatureCache(synthetic_cache(Path(tmp) / f"{name}.h5", counts, spec["d"], test_per_class=5))
    t = time.perf_counter()
    afg = AFG.build(cache, GeneratorSettings(), device=device, save=False)
    stats_s = time.perf_counter() - t
    cfg = StageTwoSettings(classifier_epochs=spec["epochs"])
    rows = FeatureStream(afg, StageTwoSettings(), cfg.classifier_batch_size).rows_per_epoch()
    if name == "cifar100-lt":  # warm-up
        train_glag(afg, StageTwoSettings(classifier_epochs=1), progress=False)
    stage, floor = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine state
        stage.append(timed(lambda: train_glag(afg, cfg, progress=False), 1)[0])
        floor.append(
            floor_time(
                rows, spec["d"], spec["C"], spec["epochs"], device="cuda" if device == "gpu" else "cpu"
            )
        )
    med, fl = statistics.median(stage), statistics.median(floor)
    return {
        "shape": name,
        "device": device,
        "C": spec["C"],
        "d": spec["d"],
        "train_rows": int(counts.sum()),
        "rows_per_epoch": rows,
        "epochs": spec["epochs"],
        "mode": afg.factors.mode,
        "statistics_s": round(stats_s, 2),
        "median_s": round(med, 2),
        "floor_s": round(fl, 2),
        "ratio": round(med / fl, 2),
        "times_s": [round(x, 2) for x in stage],
        "floor_times_s": [round(x, 2) for x in floor],
    }


def current_rss_mb(field: str = "VmRSS") -> float:
    """Resident memory (``VmRSS``) or its peak so far (``VmHWM``) from /proc, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def inat_counts() -> np.ndarray:
    """iNaturalist 2018's group sizes: 842 Many (1,000 -> 100 images), 4,076 Medium (99 -> 20) and
    3,224 Few (19 -> 2) classes, each an exponential profile: 556k train rows (iNat has 437,513;
    more rows make the memory figure conservative)."""

    def segment(hi, lo, n):
        return np.floor(hi * (lo / hi) ** (np.arange(n) / (n - 1))).astype(np.int64)

    return np.concatenate([segment(1000, 100, 842), segment(99, 20, 4076), segment(19, 2, 3224)])


def make_inat_cache(path: Path) -> Path:
    """A full-size iNat-shaped cache (d 2048, one val and one test row per class), written a
    chunk at a time. Run in its own process: it needs about twice the features' size."""
    if path.is_file():
        return path
    from glag.cache.format import key_payload, write_cache

    counts, d = inat_counts(), INAT["d"]
    rng = np.random.default_rng(0)
    centers = rng.gamma(2.0, 0.5, (len(counts), d)).astype(np.float32)
    splits = {}
    for split, cnt in (("train", counts), ("val", np.ones_like(counts)), ("test", np.ones_like(counts))):
        labels = np.repeat(np.arange(len(counts)), cnt)
        f = np.empty((len(labels), d), dtype=np.float32)
        for a in range(0, len(labels), 65536):
            lab = labels[a : a + 65536]
            f[a : a + len(lab)] = np.maximum(
                centers[lab] + 0.6 * rng.standard_normal((len(lab), d), dtype=np.float32), 0
            )
        splits[split] = (f, labels, np.arange(len(labels)))
    return write_cache(
        path,
        key_parts=key_payload({"inat-shaped": int(counts.sum()), "dim": d}, "0" * 64, {}),
        dataset="synthetic-inat2018-shaped",
        num_classes=len(counts),
        class_names=[str(i) for i in range(len(counts))],
        splits=splits,
        classifier=(centers, -0.5 * (centers**2).sum(1)),
    )


def inat_shape(path, blocks: int = 3):
    """Stage two's pieces at full iNat scale in a fresh process: the generator (factor mode), the
    teacher, the classifier and the block feed; ``blocks`` blocks made and trained on. An epoch
    (~8.1 M rows, ~1,000 blocks) is too long for CPU, so its time is the measured per-block time
    times the blocks per epoch; peak memory is measured (VmHWM), not scaled."""
    import torch

    from glag.classify.common import as_tensor
    from glag.classify.linear_sgd import LinearSGD
    from glag.classify.stage_two import cpu_threads_beside_generator, kd_targets
    from glag.generate.feed import feed

    rss0 = current_rss_mb()
    cache = FeatureCache(path)
    t = time.perf_counter()
    afg = AFG.build(cache, GeneratorSettings(mode="factor"), device="cpu", save=False)
    stats_s = time.perf_counter() - t
    C, d = cache.num_classes, cache.feature_dim
    stream = FeatureStream(afg, StageTwoSettings(), 512)
    gen = stream.blocks(0)
    t = time.perf_counter()
    made = [next(gen) for _ in range(2)]
    gen_block_s = (time.perf_counter() - t) / 2
    del made, gen
    prepare = kd_targets(afg, cache.head_fn(), 512, 2.0, "cpu")
    g = LinearSGD(d, C, momentum=0.9, weight_decay=5e-4, device="cpu", seed=0)
    beta = np.zeros(C, dtype=np.float32)
    times = []
    with cpu_threads_beside_generator(np, 512 * d * C):
        fed = feed(stream, 1, prepare)
        for i in range(blocks):
            block = next(fed).finish(beta)
            kd_rows, bounds, kd_p, kd_ne = block.extra
            nb = -(-len(block.y) // 512)
            t = time.perf_counter()
            g.steps(
                as_tensor(block.x, "cpu"),
                torch.as_tensor(block.mix),
                torch.as_tensor(block.y[block.mix]),
                [0.1] * nb,
                [0.5] * nb,
                kd_rows,
                bounds.tolist(),
                kd_p,
                kd_ne,
            )
            if i:  # the first block also waited for the generator's first block
                times.append(time.perf_counter() - t)
        del fed
    peak = current_rss_mb("VmHWM")
    per_epoch = stream.blocks_per_epoch()
    floor_block = floor_time(stream.block_rows, d, C, 1, max_batches=6)
    train_block = statistics.median(times)
    return {
        "shape": "inat2018",
        "C": C,
        "d": d,
        "train_rows": int(cache.train_counts.sum()),
        "rows_per_epoch": stream.rows_per_epoch(),
        "mode": afg.factors.mode,
        "statistics_s": round(stats_s, 1),
        "block_rows": stream.block_rows,
        "blocks_per_epoch": per_epoch,
        "generation_s_per_block": round(gen_block_s, 2),
        "train_s_per_block": round(train_block, 2),
        "floor_s_per_block": round(floor_block, 2),
        "median_s": round(per_epoch * max(train_block, gen_block_s)),
        "floor_s": round(per_epoch * floor_block),
        "ratio": round(max(train_block, gen_block_s) / floor_block, 2),
        "ratio_note": "per block: max(training beside the generator, generation alone) / floor; "
        "times blocks per epoch",
        "peak_rss_GB": round(peak / 1024, 2),
        "peak_rss_increase_GB": round((peak - rss0) / 1024, 2),
        "tukey_rows_GB": round(afg.rows.nbytes / 2**30, 2),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shapes", nargs="+", default=[*SHAPES, "inat2018"], choices=[*SHAPES, "inat2018"])
    ap.add_argument(
        "--device",
        choices=["cpu", "gpu"],
        default="cpu",
        help="gpu: CuPy generator and CUDA classifier, against a CUDA floor (not the inat2018 shape)",
    )
    ap.add_argument("--epochs", type=int, default=None, help="override the shapes' epochs (dry runs)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shapes:
            if name == "inat2018":
                import multiprocessing as mp

                path = Path(tmp) / "inat.h5"
                for fn in (
                    make_inat_cache,
                    inat_shape,
                ):  # each in a fresh process: the peak is stage two's own
                    with mp.get_context("spawn").Pool(1) as pool:
                        out = pool.apply(fn, (path,))
                rows.append(out)
            else:
                shape = {**SHAPES[name], **({"epochs": args.epochs} if args.epochs else {})}
                rows.append(measured_shape(name, shape, args.repeats, tmp, args.device))
    for r in rows:
        r.update(torch_threads=torch.get_num_threads(), cpus=os.cpu_count())

    emit("stage_two_speed", rows, "python bench/stage_two_speed.py " + " ".join(sys.argv[1:]), args.out)


if __name__ == "__main__":
    main()
