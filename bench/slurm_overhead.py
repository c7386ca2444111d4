"""Per-cell overhead of `glag sweep --executor slurm` against the local sweep, on the digits recipe's
2-seed sweep (stage one 2 epochs, stage two 2 epochs), each with fresh caches, timed in the same run.

    SLURM_CONF=/tmp/glag-local-slurm/slurm.conf .venv/bin/python bench/slurm_overhead.py [--repeats 3]

Prints one JSON object: wall seconds per sweep (median of the repeats), and the slurm/local ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sweep_seconds(executor: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GLAG_CACHE_DIR": str(Path(tmp) / "cache")}
        cmd = [
            sys.executable,
            "-m",
            "glag.cli",
            "sweep",
            str(ROOT / "configs" / "digits.toml"),
            "--seeds",
            "0-1",
        ]
        cmd += ["--out", str(Path(tmp) / "sw"), "--set", "epochs=2", "--set", "classifier_epochs=2", "-q"]
        cmd += ["--executor", executor]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    times = {"local": [], "slurm": []}
    for _ in range(args.repeats):  # interleaved, so load changes hit both alike
        for ex in times:
            times[ex].append(sweep_seconds(ex))
    med = {ex: statistics.median(v) for ex, v in times.items()}
    print(
        json.dumps(
            {
                "bench": "slurm-overhead",
                "command": " ".join(["python", "bench/slurm_overhead.py", *sys.argv[1:]]),
                "cells": 2,
                "seconds": {ex: [round(x, 2) for x in v] for ex, v in times.items()},
                "median_seconds": {ex: round(v, 2) for ex, v in med.items()},
                "slurm_over_local": round(med["slurm"] / med["local"], 2),
                "overhead_per_cell_s": round((med["slurm"] - med["local"]) / 2, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
