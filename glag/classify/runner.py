"""Run stage-two methods on a cache and write their run folders."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from glag.cache.format import FeatureCache
from glag.classify import baselines
from glag.classify.common import torch_device
from glag.classify.export import checkpoint_of, export
from glag.classify.results import write_run
from glag.classify.stage_two import StageTwoConfig, train_glag
from glag.errors import GlagError
from glag.generate.afg import AFG, GeneratorConfig, SamplingConfig, check_for_cache
from glag.generate.backend import get_xp
from glag.paths import check_inside


def check_finite(res: dict, method: str) -> None:
    """Refuse diverged weights: a run folder never holds a NaN or infinite classifier."""
    for name in ("weight", "bias"):
        if name in res and not np.isfinite(np.asarray(res[name])).all():
            raise GlagError(
                f"stage two '{method}' diverged (non-finite classifier weights); nothing was written; "
                "lower --gen-lr or check the cache's features ('glag cache verify')"
            )


METHODS = ("glag", "stage-one", "crt", "lws", "tau-norm", "logit-adjust", "probe")


def run_methods(
    cache_path: Path,
    methods,
    out_base: Path,
    *,
    gen: GeneratorConfig,
    stage_two: StageTwoConfig,
    sampling: SamplingConfig,
    device: str = "auto",
    checkpoint: Path | None = None,
    progress: bool = True,
    variant: str = "",
    log=None,
    record: dict | None = None,
) -> list[dict]:
    """Run each method, write ``out_base/<cache>-<method or variant>``; return their records.
    ``record`` is stored in every result.json as it is (e.g. the effective run config); ``variant`` names
    a config's stage-two variant (one method with changed settings)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise GlagError(f"unknown method(s) {', '.join(unknown)}; choose from: {', '.join(METHODS)}")
    cache = FeatureCache(cache_path)
    sampling.check()
    stage_two.check()
    check_for_cache(cache, gen, sampling)
    records = []
    for method in methods:
        t0 = time.perf_counter()
        extra = dict(record or {})
        if method == "glag":
            afg = AFG.build(cache, gen, device=device)
            res = train_glag(afg, stage_two, sampling, progress=progress, log=log)
            extra["generator"] = asdict(gen)
        else:
            kw = {"seed": stage_two.seed} if method in ("crt", "lws", "probe") else {}
            res = baselines.BASELINES[method](cache, device=torch_device(get_xp(device)), **kw)
        check_finite(res, method)
        extra["seconds"] = round(time.perf_counter() - t0, 3)
        cache.ensure_sound()  # checked while the method ran; a damaged cache writes no run folder
        writer = None
        if method == "glag" and (checkpoint or checkpoint_of(cache)):
            writer = lambda folder, r=res: export(folder, cache, r["weight"], r["bias"], gen.lt, checkpoint)  # noqa: E731
        folder = check_inside(
            out_base, Path(out_base) / f"{cache.path.stem}-{variant or method}", "run folder"
        )
        out = write_run(folder, cache, method, res, extra, model_writer=writer)
        records.append(
            {"method": variant or method, "dir": str(out), "test": res["test"], "seconds": extra["seconds"]}
        )
    return records
