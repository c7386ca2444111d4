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
from glag.config import Config, check_methods
from glag.errors import GlagError, user_code
from glag.generate.afg import check_for_cache
from glag.generate.backend import get_xp
from glag.metrics import regroup
from glag.paths import check_inside


def check_result(res, method: str, cache: FeatureCache, exports: bool) -> None:
    """What a stage-two method returns, checked before anything is written (the contract in docs/usage.md):
    a dict with ``val`` and ``test`` metrics (a top-1 in [0, 1], finite where the split has rows, and one
    per-class entry per class), and a ``weight`` [C, d] with a ``bias`` [C], if any, that fit the cache."""
    C = cache.num_classes

    def bad(why: str):
        return GlagError(f"stage-two method '{method}' returned {why}; see 'Add your own' in docs/usage.md")

    if not isinstance(res, dict):
        raise bad(f"{type(res).__name__} {str(res)[:40]!r}, not a dict with 'val' and 'test' metrics")
    for split in ("val", "test"):
        m = res.get(split)
        if not isinstance(m, dict) or "top1" not in m:
            raise bad(f"no '{split}' metrics (a dict with 'top1', as classify.common.split_metrics makes)")
        top1, rows = m["top1"], len(cache.split(split))
        if (
            not isinstance(top1, (int, float))
            or isinstance(top1, bool)
            or not (0 <= top1 <= 1 or (top1 != top1 and not rows))
        ):
            raise bad(f"'{split}' top1 {top1!r}; it must be a number in [0, 1]")
        per = m.get("per_class")
        if not isinstance(per, (list, tuple)) or len(per) != C:
            raise bad(
                f"'{split}' per_class of length {len(per) if hasattr(per, '__len__') else per!r}; "
                f"it must list the {C} classes"
            )
    if ("weight" in res) != ("bias" in res):
        raise bad("a weight without a bias, or a bias without a weight")
    if "weight" in res:
        w, b = np.asarray(res["weight"]), np.asarray(res["bias"])
        d = f", {cache.feature_dim}" if exports else ", d"
        if w.ndim != 2 or len(w) != C or b.shape != (C,) or (exports and w.shape[1] != cache.feature_dim):
            raise bad(f"a weight {list(w.shape)} and bias {list(b.shape)}; they must be [{C}{d}] and [{C}]")
        if not (np.issubdtype(w.dtype, np.number) and np.issubdtype(b.dtype, np.number)):
            raise bad(f"a weight of {w.dtype} and a bias of {b.dtype}; they must be numbers")


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
    check_methods(methods, METHODS, ())  # a variant runs as its method, so only registered names here
    cache = FeatureCache(cache_path)
    check_for_cache(cache, config.generator, config.stage_two)
    backend = config.generator.device
    run = MethodRun(config, torch_device(get_xp(backend)), backend, progress, log)
    records = []
    groups = (config.dataset.many_above, config.dataset.few_below)  # how results are reported, nothing else
    for method in methods:
        t0 = time.perf_counter()
        fn = METHODS[method].fn
        with user_code(f"stage-two method '{method}'", fn):
            res = fn(cache, run)
        check_result(res, method, cache, METHODS[method].exports_model)
        check_finite(res, method)
        res = {**res, **{s: regroup(res[s], cache.train_counts, *groups) for s in ("val", "test")}}
        extra = {
            **(record or {}),
            "seconds": round(time.perf_counter() - t0, 3),
            "groups": dict(zip(("many_above", "few_below"), groups, strict=True)),
        }
        cache.ensure_sound()  # checked while the method ran; a damaged cache writes no run folder
        exports = METHODS[method].exports_model and (checkpoint or checkpoint_of(cache))

        def writer(folder, r=res, method=method, exports=exports):
            events.stage_two_run(folder / "tensorboard", method, r)
            if exports:
                export(folder, cache, r["weight"], r["bias"], config.generator.tukey_power, checkpoint)

        folder = check_inside(
            out_base, Path(out_base) / f"{cache.path.stem}-{variant or method}", "run folder"
        )
        out = write_run(folder, cache, method, res, extra, model_writer=writer, groups=groups)
        records.append(
            {
                "method": variant or method,
                "dir": str(out),
                "test": res["test"],
                "seconds": extra["seconds"],
                "groups": extra["groups"],
            }
        )
    return records
