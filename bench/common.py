"""Helpers for benchmarks: synthetic caches of a given shape, timing, JSON output."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from glag.cache.format import key_payload, write_cache
from glag.extract.profile import exponential_counts


def synthetic_splits(counts, dim: int, seed: int = 0, val_per_class: int = 20, test_per_class: int = 100):
    """Non-negative class-clustered features with the given train counts: (splits, (weight, bias))."""
    rng = np.random.default_rng(seed)
    C = len(counts)
    centers = rng.gamma(2.0, 0.5, (C, dim)).astype(np.float32)
    splits = {}
    for split, cnt in (("train", counts), ("val", [val_per_class] * C), ("test", [test_per_class] * C)):
        labels = np.repeat(np.arange(C), cnt)
        f = np.maximum(centers[labels] + 0.6 * rng.standard_normal((len(labels), dim), dtype=np.float32), 0)
        splits[split] = (f, labels, np.arange(len(labels)))
    return splits, (centers, -0.5 * (centers**2).sum(1))


def synthetic_cache(
    path: Path, counts, dim: int, seed: int = 0, val_per_class: int = 20, test_per_class: int = 100
) -> Path:
    """A cache of ``synthetic_splits``."""
    if path.is_file():
        return path
    C = len(counts)
    splits, (w, b) = synthetic_splits(counts, dim, seed, val_per_class, test_per_class)
    return write_cache(
        path,
        key_parts=key_payload({"synthetic": list(map(int, counts)), "dim": dim, "seed": seed}, "0" * 64, {}),
        dataset=f"synthetic-C{C}-d{dim}",
        num_classes=C,
        class_names=[str(i) for i in range(C)],
        splits=splits,
        classifier=(w, b),
    )


def cifar100_lt_counts():
    return exponential_counts(500, 100, 100)


def timed(fn, repeats: int = 3):
    """Median wall time of ``repeats`` calls, and all times."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def emit(name: str, rows: list[dict], command: str, out: Path | None = None) -> None:
    """Print the bench's JSON (and write it to ``out``, if given)."""
    text = json.dumps(
        {
            "bench": name,
            "command": command,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "results": rows,
        },
        indent=2,
    )
    print(text)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
