"""Run stage-two methods on a cache and write their run folders."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from glag import events
from glag.cache.format import FeatureCache
from glag.classify import heldout  # noqa: F401  (registers the held-out stage twos)
from glag.classify.common import torch_device
from glag.classify.export import checkpoint_of, export
from glag.classify.methods import METHODS, MethodRun
from glag.classify.results import write_run
from glag.classify.stage_two import StageTwoConfig
from glag.config import Config
from glag.errors import GlagError
from glag.generate.afg import GeneratorConfig, SamplingConfig, check_for_cache
from glag.generate.backend import get_xp
from glag.paths import check_inside


def check_finite(res: dict, method: str) -> None:
    """Refuse diverged weights: a run folder never holds a NaN or infinite classifier."""
    for name in ("weight", "bias"):
        if name in res and not np.isfinite(np.asarray(res[name])).all():
            raise GlagError(
                f"stage two '{method}' diverged (non-finite classifier weights); nothing was written; "
                "lower the stage-two classifier_lr or check the cache's features ('glag cache verify')"
            )


def run_methods(
    cache_path: Path,
    config: Config,
    out_base: Path,
    *,
    methods=None,
    checkpoint: Path | None = None,
    progress: bool = True,
    variant: str = "",
    log=None,
    record: dict | None = None,
) -> list[dict]:
    """Run each method (default: the config's), write ``out_base/<cache>-<method or variant>``; return
    their records. ``record`` is stored in every result.json as it is (e.g. the run config); ``variant``
    names a config's stage-two variant (one method with changed settings)."""
    methods = list(methods or config.stage_two.method)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise GlagError(f"unknown method(s) {', '.join(unknown)}; choose from: {', '.join(METHODS)}")
    cache = FeatureCache(cache_path)
    gen, sampling = GeneratorConfig.from_config(config), SamplingConfig.from_config(config).check()
    StageTwoConfig.from_config(config).check()
    check_for_cache(cache, gen, sampling)
    backend = config.generator.device
    run = MethodRun(config, torch_device(get_xp(backend)), backend, progress, log)
    records = []
    for method in methods:
        t0 = time.perf_counter()
        res = METHODS[method].fn(cache, run)
        check_finite(res, method)
        extra = {**(record or {}), "seconds": round(time.perf_counter() - t0, 3)}
        cache.ensure_sound()  # checked while the method ran; a damaged cache writes no run folder
        exports = METHODS[method].exports_model and (checkpoint or checkpoint_of(cache))

        def writer(folder, r=res, method=method, exports=exports):
            events.stage_two_run(folder / "tensorboard", method, r)
            if exports:
                export(folder, cache, r["weight"], r["bias"], config.generator.tukey_power, checkpoint)

        folder = check_inside(
            out_base, Path(out_base) / f"{cache.path.stem}-{variant or method}", "run folder"
        )
        out = write_run(folder, cache, method, res, extra, model_writer=writer)
        records.append(
            {"method": variant or method, "dir": str(out), "test": res["test"], "seconds": extra["seconds"]}
        )
    return records
