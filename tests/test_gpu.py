"""GPU paths against the CPU result, within stated tolerances. They skip where no CUDA device is
(bench/device_check.py runs them on a lent GPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from glag.extract.batches import ArrayBatches, Augment

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@needs_cuda
def test_device_resident_batches_match_cpu():
    """Images kept on the GPU and augmented there give the CPU's batches: same crops, flips and order."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 300)
    kw = dict(shuffle=True, augment=Augment(4, True), seed=5)
    cpu = list(ArrayBatches(images, labels, 64, [0.5] * 3, [0.25] * 3, **kw))
    gpu = list(ArrayBatches(images, labels, 64, [0.5] * 3, [0.25] * 3, device="cuda", **kw))
    assert len(cpu) == len(gpu) == 5
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=False):
        assert xg.is_cuda and torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-5)


def _extract(tmp: Path, env: dict) -> dict:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "glag.cli",
            "extract",
            "--dataset",
            "digits",
            "--epochs",
            "15",
            "--cache-dir",
            str(tmp),
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@needs_cuda
def test_bf16_stage_one_matches_cpu(tmp_path):
    """bf16 autocast + channels-last on the GPU against float32 on the CPU, same seed and recipe: the
    trajectories differ in rounding, so the stated tolerance is on the outcome, 5 points of test top-1."""
    gpu = _extract(tmp_path / "gpu", {})
    cpu = _extract(tmp_path / "cpu", {"CUDA_VISIBLE_DEVICES": ""})
    assert abs(gpu["top1"] - cpu["top1"]) <= 5.0, (gpu, cpu)


@needs_cuda
def test_stage_two_on_gpu_matches_cpu(tmp_path):
    """CuPy generator + GPU classifier against NumPy + CPU on one cache: their random streams differ, so the
    stated tolerance is 3 points of test top-1."""
    pytest.importorskip("cupy")
    from conftest import mixture_cache

    from glag.cache.format import FeatureCache
    from glag.classify.stage_two import train_glag
    from glag.config import GeneratorSettings, StageTwoSettings
    from glag.generate.afg import AFG

    cache = FeatureCache(mixture_cache(tmp_path / "mix.h5", counts=(300, 150, 80, 30, 10, 3)))
    top1 = {}
    for device in ("cpu", "gpu"):
        afg = AFG.build(cache, GeneratorSettings(mode="factor"), device=device, save=False)
        res = train_glag(
            afg,
            StageTwoSettings(classifier_epochs=8, classifier_batch_size=128, alpha=0.1),
            progress=False,
        )
        top1[device] = 100 * res["test"]["top1"]
    assert abs(top1["gpu"] - top1["cpu"]) <= 3.0, top1


@needs_cuda
def test_cupy_generator_statistics_match_numpy(tmp_path):
    """The CuPy generator's Tukey-space class means and covariances, support sets and calibrated
    distributions equal NumPy's (float32 accumulated in float64 on both: tolerance 1e-5 relative)."""
    pytest.importorskip("cupy")
    from conftest import mixture_cache

    from glag.cache.format import FeatureCache
    from glag.config import GeneratorSettings
    from glag.generate.afg import AFG
    from glag.generate.backend import to_numpy

    cache = FeatureCache(mixture_cache(tmp_path / "mix.h5", counts=(300, 150, 80, 30, 10, 3)))
    afg = {
        dev: AFG.build(cache, GeneratorSettings(mode="dense"), device=dev, save=False)
        for dev in ("cpu", "gpu")
    }
    assert afg["gpu"].xp is not np
    for field in ("means", "covs"):
        np.testing.assert_allclose(
            to_numpy(getattr(afg["gpu"].stats, field)), getattr(afg["cpu"].stats, field), rtol=1e-5, atol=1e-6
        )
    assert np.array_equal(afg["gpu"].supports.support, afg["cpu"].supports.support)
    for j in (0, len(afg["cpu"].supports.rows) - 1):
        for a, b in zip(afg["gpu"].calibrated(j, 0.6, 0.1), afg["cpu"].calibrated(j, 0.6, 0.1), strict=False):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
