"""Wall time of GLAG stage two (default 40 generation epochs) on a CIFAR-100-LT-shaped cache:
10,847 real train rows, d = 64, C = 100, 50,000 rows per epoch after top-up. Target: < 20 s on 2 CPU cores.

    .venv/bin/python bench/stage_two_speed.py [--epochs 40] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from common import cifar100_lt_counts, emit, synthetic_cache, timed

from glag.cache.format import FeatureCache
from glag.classify.stage_two import StageTwoConfig, train_glag
from glag.generate.afg import AFG, GeneratorConfig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(synthetic_cache(Path(tmp) / "c100.h5", cifar100_lt_counts(), 64))
        assert len(cache.split("train")) == 10847
        rows = []
        t_stats, _ = timed(lambda: AFG.build(cache, GeneratorConfig(), device="cpu", save=False), 1)
        afg = AFG.build(cache, GeneratorConfig(), device="cpu", save=False)
        cfg = StageTwoConfig(epochs=args.epochs)
        train_glag(afg, StageTwoConfig(epochs=1), progress=False)  # warm-up: torch's lazy imports
        med, times = timed(lambda: train_glag(afg, cfg, progress=False), args.repeats)
        rows.append({"epochs": args.epochs, "train_rows": 10847, "d": 64, "C": 100, "rows_per_epoch": 50000,
                     "statistics_s": round(t_stats, 3), "median_s": round(med, 2), "times_s": [round(t, 2) for t in times],
                     "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "target_s": 20})
    emit("stage_two_speed", rows, f"python bench/stage_two_speed.py --epochs {args.epochs} --repeats {args.repeats}")


if __name__ == "__main__":
    main()
