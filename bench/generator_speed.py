"""Batched calibrated sampler vs the Free-Lunch reference (one np.random.multivariate_normal per
tail sample), same statistics and number of features; plus dense vs factor memory at d=2048.

    .venv/bin/python bench/generator_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit, synthetic_cache

from glag.cache.format import FeatureCache
from glag.config import GeneratorSettings, StageTwoSettings
from glag.extract.profile import exponential_counts
from glag.generate.afg import AFG


def reference(afg: AFG, js, per_sample: int, beta: float, rng) -> int:
    """Free-Lunch style: each sample's calibrated (mean, cov) from precomputed class statistics,
    then one ``multivariate_normal`` call (an SVD of the d x d covariance) per tail sample."""
    means, covs = np.asarray(afg.stats.means, np.float64), np.asarray(afg.stats.covs, np.float64)
    eye = np.eye(means.shape[1])
    n = 0
    for j in js:
        s, w = afg.supports.support[j], afg.supports.weights[j]
        keep = s >= 0
        mu = (1 - beta) * np.asarray(afg.rows[afg.supports.rows[j]], np.float64) + beta * (
            w[keep] @ means[s[keep]]
        )
        sigma = np.tensordot(w[keep], covs[s[keep]], axes=1) + 0.1 * eye
        rng.multivariate_normal(mu, sigma, size=per_sample)
        n += per_sample
    return n


def one_dim(dim: int, C: int, n_ref_samples: int, per_sample: int, tmp: Path) -> dict:
    counts = exponential_counts(200, C, 50)
    cache = FeatureCache(synthetic_cache(tmp / f"g{dim}.h5", counts, dim))
    afg = AFG.build(cache, GeneratorSettings(mode="dense"), device="cpu", save=False)
    rng = np.random.default_rng(0)
    js = rng.choice(len(afg.supports), n_ref_samples)
    t = time.perf_counter()
    n_ref = reference(afg, js, per_sample, 0.6, rng)
    ref_s = time.perf_counter() - t
    # batched: the same number of features, the same tail samples, repeated to time a larger run
    reps = max(1, int(20000 // n_ref))
    jj = np.repeat(js, per_sample * reps)
    beta = np.full(C, 0.6)
    t = time.perf_counter()
    for s in range(0, len(jj), 8192):
        afg.sample_tail(jj[s : s + 8192], beta, StageTwoSettings(alpha=0.1), seed=s)
    bat_s = time.perf_counter() - t
    ref_fps, bat_fps = n_ref / ref_s, len(jj) / bat_s
    return {
        "d": dim,
        "classes": C,
        "tail_samples_timed": n_ref_samples,
        "features_reference": n_ref,
        "features_batched": len(jj),
        "reference_features_per_s": round(ref_fps, 1),
        "batched_features_per_s": round(bat_fps, 1),
        "speedup": round(bat_fps / ref_fps, 1),
    }


MEM_SNIPPET = """
import sys, numpy as np
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from common import synthetic_cache
from glag.cache.format import FeatureCache
from glag.config import GeneratorSettings
from glag.generate.afg import AFG
from pathlib import Path
def hwm():  # peak resident KB; getrusage's ru_maxrss lags (updated on unmap and exit), /proc does not
    return int([l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1])
cache = FeatureCache(Path({path!r}))
base = hwm()
afg = AFG.build(cache, GeneratorSettings(mode={mode!r}), device="cpu", save=False)
print(hwm() - base, afg.factors.nbytes())
"""


def memory(C: int, mode: str, dim: int, rows_per_class: int, tmp: Path) -> dict:
    path = synthetic_cache(
        tmp / f"m{C}-{dim}-{rows_per_class}.h5",
        [rows_per_class] * (C // 2) + [20] * (C - C // 2),
        dim,
        val_per_class=1,
        test_per_class=1,
    )
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            MEM_SNIPPET.format(root=root, bench=str(Path(__file__).parent), path=str(path), mode=mode),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {
        "mode": mode,
        "C": C,
        "d": dim,
        "train_rows": FeatureCache(path).train_counts.sum().item(),
        "peak_rss_increase_MB": round(int(out[0]) / 1024, 1),
        "factor_MB": round(int(out[1]) / 2**20, 1),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer reference samples")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for dim, C, nref in ((64, 100, 400), (512, 100, 60), (2048, 30, 8)):
            rows.append(one_dim(dim, C, max(4, nref // (4 if args.quick else 1)), 10, tmp))
        # memory at d = 2048: factor mode measured at C = 1000 (ImageNet-LT-like 116 rows/class on
        # average); dense measured at C = 50 and extrapolated linearly in C (C d^2 floats).
        mem = [memory(1000, "factor", 2048, 212, tmp), memory(50, "dense", 2048, 212, tmp)]
        dense_per_class = mem[1]["factor_MB"] / 50
        mem.append(
            {
                "mode": "dense (extrapolated)",
                "C": 1000,
                "d": 2048,
                "factor_MB": round(dense_per_class * 1000, 1),
                "note": "C*d^2*4 bytes; Cholesky runs in float64, so its peak is about 3x this",
            }
        )
    emit(
        "generator_speed", rows + mem, "python bench/generator_speed.py" + (" --quick" if args.quick else "")
    )


if __name__ == "__main__":
    main()
