"""Stage-two methods by name. A method is one function ``fn(cache, run) -> result`` registered with
``@register("name")``; ``run`` (a MethodRun) carries the config and the device. The result holds ``val``
and ``test`` metrics (``classify.common.split_metrics``), optionally the classifier's ``weight`` and
``bias``, and anything else the run folder's result.json should record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from glag.cache.format import FeatureCache
from glag.classify import baselines
from glag.classify.stage_two import train_glag
from glag.config import Config
from glag.generate.afg import AFG
from glag.registry import add


@dataclass(frozen=True)
class MethodRun:
    """What a method may use besides the cache."""

    config: Config
    device: torch.device  # where classifiers train
    backend: str = "auto"  # the generator's array backend (auto, cpu, gpu)
    progress: bool = True
    log: Callable | None = None
    on_epoch: Callable[[int, dict], None] | None = None  # stage two's record after each epoch (glag tune)


@dataclass(frozen=True)
class Method:
    fn: Callable[[FeatureCache, MethodRun], dict]
    exports_model: bool = (
        False  # its classifier works on Tukey-space features: export backbone -> Tukey -> it
    )


METHODS: dict[str, Method] = {}


def register(name: str, *, exports_model: bool = False):
    """Decorator: make ``fn(cache, run) -> result`` the stage-two method ``name``."""

    def deco(fn):
        add(
            METHODS,
            name,
            Method(fn, exports_model),
            "stage-two method",
            fn=fn,
            args=2,
            builtins="glag.classify.heldout",
        )
        return fn

    return deco


@register("glag", exports_model=True)
def glag(cache: FeatureCache, run: MethodRun) -> dict:
    """GLAG stage two: real + generated Tukey-space features, KD on head classes, adaptive beta_c."""
    gen = run.config.generator
    afg = AFG.build(cache, gen, device=run.backend)
    res = train_glag(
        afg,
        run.config.stage_two,
        seed=run.config.stage_one.seed,
        progress=run.progress,
        log=run.log,
        on_epoch=run.on_epoch,
    )
    return {**res, "generator": asdict(gen)}


@register("stage-one")
def stage_one(cache: FeatureCache, run: MethodRun) -> dict:
    return baselines.stage_one(cache, device=run.device)


@register("crt")
def crt(cache: FeatureCache, run: MethodRun) -> dict:
    return baselines.crt(cache, run.config.baselines, seed=run.config.stage_one.seed, device=run.device)


@register("lws")
def lws(cache: FeatureCache, run: MethodRun) -> dict:
    return baselines.lws(cache, run.config.baselines, seed=run.config.stage_one.seed, device=run.device)


@register("tau-norm")
def tau_norm(cache: FeatureCache, run: MethodRun) -> dict:
    return baselines.tau_norm(cache, device=run.device)


@register("logit-adjust")
def logit_adjust(cache: FeatureCache, run: MethodRun) -> dict:
    return baselines.logit_adjust(cache, device=run.device)


@register("probe")
def probe(cache: FeatureCache, run: MethodRun) -> dict:
    return baselines.probe(cache, run.config.baselines, seed=run.config.stage_one.seed, device=run.device)
