"""Where stage two's time goes: cProfile of GLAG stage two and of the generator's batches alone,
on a CIFAR-100-LT-shaped synthetic cache (d = 64, C = 100, 50,000 rows per epoch).

    .venv/bin/python bench/profile_stage_two.py [--epochs 10] [--top 15]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from common import cifar100_lt_counts, synthetic_cache

from glag.cache.format import FeatureCache
from glag.classify.stage_two import train_glag
from glag.config import GeneratorSettings, StageTwoSettings
from glag.generate.afg import AFG
from glag.generate.stream import FeatureStream


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(synthetic_cache(Path(tmp) / "c100.h5", cifar100_lt_counts(), 64))
        afg = AFG.build(cache, GeneratorSettings(), device="cpu", save=False)
        train_glag(afg, StageTwoSettings(classifier_epochs=1), progress=False)  # warm-up
        stream = FeatureStream(afg, StageTwoSettings(), 512, seed=0)

        def blocks_only():
            for e in range(args.epochs):
                for _ in stream.blocks(e):
                    pass

        for name, fn in (
            (
                "stage two",
                lambda: train_glag(afg, StageTwoSettings(classifier_epochs=args.epochs), progress=False),
            ),
            ("generator blocks alone", blocks_only),
        ):
            prof = cProfile.Profile()
            t = time.perf_counter()
            prof.runcall(fn)
            print(f"== {name}: {args.epochs} epochs in {time.perf_counter() - t:.2f} s (under the profiler)")
            pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
