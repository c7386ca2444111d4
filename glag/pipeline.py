"""The library's entry point: a Config in, stage one (cache), stage two (run folders) out.

``glag.run(glag.load_config("configs/digits.toml", {"stage_one.epochs": 3}))`` is what ``glag run
--config configs/digits.toml --epochs 3`` does; the CLI only turns flags into overrides and prints.
"""

from __future__ import annotations

import os
import random
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from glag.cache.format import FeatureCache
from glag.cache.store import cache_folder
from glag.classify.methods import METHODS
from glag.classify.runner import run_methods
from glag.config import Config, check_methods, checked, config_from_dict, parse_config
from glag.errors import GlagError
from glag.extract.datasets import DatasetSpec, load_dataset
from glag.extract.dump import load_checkpoint
from glag.extract.recipe import StageOne
from glag.extract.stage_one import stage_one
from glag.extract.torchfile import safe_load
from glag.generate.afg import AFG, check_fit, check_for_cache
from glag.generate.backend import get_xp
from glag.options import check_writable
from glag.paths import missing_folders, remove_if_empty


def log(msg: str) -> None:
    """Log to stderr without breaking tqdm's progress bars."""
    from tqdm.auto import tqdm

    tqdm.write(msg, file=sys.stderr)


def load_config(
    path: Path | str | None = None, overrides: dict | None = None, *, source="override", labels=None
) -> Config:
    """Defaults <- the recipe at ``path`` <- ``overrides`` (``{"stage_one.epochs": 3}`` or ``{"epochs": 3}``),
    every value checked against its setting and the registered stage-two methods (glag.config)."""
    return parse_config(path, overrides, methods=tuple(METHODS), source=source, labels=labels)


def load_run_config(record: dict) -> Config:
    """The Config a run folder's result.json recorded (``run_config``)."""
    return config_from_dict(record["run_config"], methods=tuple(METHODS))


def resolved(cfg: Config) -> Config:
    """The config with the dataset's preset filled in where stage-one values are unset (what runs, as far
    as it is known before the data is read: an image folder's image size can still change the preset)."""
    job = StageOne.of(cfg)
    s = job.settings
    return cfg.with_values(
        {
            "imbalance": job.dataset.imbalance,
            "n_max": job.dataset.n_max,
            "backbone": s.backbone,
            "epochs": s.epochs,
            "batch_size": s.batch_size,
            "lr": float(s.lr),
            "warmup": float(s.warmup),
        }
    )


def run_stage_one(
    cfg: Config,
    cache_dir: Path | None = None,
    *,
    checkpoint: Path | None = None,
    views: int = 0,
    quiet: bool = False,
    resume: bool = True,
    download: bool = False,
    events_dir: Path | None = None,
    check=None,
):
    """Train (or reuse) the stage-one backbone and dump its cache: (cache path, report, reused), or None
    on a non-zero torchrun rank. ``check(data)`` runs once the data is read, before any training."""
    cache_dir = cache_folder(cache_dir)
    check_writable(cache_dir, "--cache-dir", folder=True)
    spec = DatasetSpec.from_config(cfg)
    StageOne.of(cfg, spec).identity()  # a missing weights file fails here, before any data is read
    weights = cfg.stage_one.weights
    if weights and Path(weights).expanduser().is_file():
        safe_load(Path(weights), "weights file")  # a foreign or unsafe file fails before the data is read
    if checkpoint is not None:
        load_checkpoint(checkpoint)
    data = load_dataset(spec, download=download, progress=not quiet)
    if data.rule and not quiet:
        log(f"dataset rule: {data.rule}")
    if check is not None:
        check(data)
    job = StageOne.of(cfg, data.spec)  # an image folder's spec is complete only once it is read
    return stage_one(
        job,
        data,
        cache_dir,
        checkpoint=checkpoint,
        views=views,
        resume=resume,
        progress=not quiet,
        log=(lambda m: None) if quiet else log,
        compile_model=cfg.stage_one.compile,
        events_dir=events_dir,
    )


def check_fits(cfg: Config, data, methods=None) -> None:
    """Every stage-two setting that depends on the data (the methods, k and n_target against its classes,
    the generator's device), for each method and variant that will run: checked before stage one trains,
    so a setting that cannot run is refused before hours of training and before any file is written."""
    methods = list(methods or cfg.stage_two.method)
    check_methods(methods, METHODS, cfg.variants)
    what = f"dataset '{data.spec.name}'"
    for name in dict.fromkeys(m if m in cfg.variants else "" for m in methods):
        c = replace(cfg, variants=cfg.variants).variant(name) if name else cfg
        where = f"{what} (variant '{name}')" if name else what
        check_fit(data.train_counts, c.generator, c.stage_two, where)
        get_xp(c.generator.device)  # --device gpu without CuPy or CUDA


def build_generator(cache_path: Path, cfg: Config) -> AFG:
    """The generator's statistics and support sets for a cache (computed once, then read from their file)."""
    cache = FeatureCache(cache_path)
    check_for_cache(cache, cfg.generator, cfg.stage_two)
    return AFG.build(cache, cfg.generator, device=cfg.generator.device)


def run_stage_two(
    cache_path: Path,
    cfg: Config,
    out: Path,
    *,
    methods=None,
    checkpoint: Path | None = None,
    quiet: bool = False,
) -> list[dict]:
    """The config's methods (or ``methods``) on a cache: plain methods first, then each variant named, with
    its own settings. Every result.json records the config it ran with (a variant's also its name)."""
    methods = list(methods or cfg.stage_two.method)
    check_methods(methods, METHODS, cfg.variants)
    ran = resolved(cfg).with_values({"method": tuple(methods)})
    plain = [m for m in methods if m not in cfg.variants]
    common = dict(checkpoint=checkpoint, progress=not quiet)
    records = []
    if plain:
        records += run_methods(
            cache_path, ran, out, methods=plain, record={"run_config": ran.to_dict()}, **common
        )
    for name in (m for m in methods if m in cfg.variants):
        v = replace(ran, variants=cfg.variants).variant(name)
        record = {"run_config": v.to_dict(), "variant": name}
        records += run_methods(cache_path, v, out, record=record, variant=name, **common)
    return records


def _what(value) -> str:
    return f"{type(value).__name__} {str(value)[:40]!r}"


@contextmanager
def caller_random_state():
    """The caller's global random generators (torch's, CUDA's, NumPy's legacy one, Python's) as they were
    before, whatever seeding happens inside: a library call must not reseed its caller."""
    np_state, py_state = np.random.get_state(), random.getstate()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def run(
    cfg: Config,
    *,
    out: Path | str = "glag-runs",
    cache_dir: Path | str | None = None,
    methods=None,
    quiet: bool = False,
    download: bool = False,
) -> list[dict]:
    """The whole pipeline: stage one (or its cache, reused), then the stage-two methods; returns one record
    per method: {method, dir (its run folder), test (metrics), seconds}."""
    cfg = checked(cfg, tuple(METHODS))
    if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
        raise GlagError(f"glag.run: out must be a folder path, got {_what(out)}")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise GlagError(f"glag.run: cache_dir must be a folder path or None, got {_what(cache_dir)}")
    if isinstance(methods, str):  # one name, not its letters
        methods = [methods]
    if methods is not None and (
        not isinstance(methods, (list, tuple)) or not all(isinstance(m, str) for m in methods)
    ):
        raise GlagError(f"glag.run: methods must be a list of method names, got {_what(methods)}")
    with caller_random_state():
        return _run(cfg, out=Path(out), cache_dir=cache_dir, methods=methods, quiet=quiet, download=download)


def _run(cfg: Config, *, out: Path, cache_dir, methods, quiet: bool, download: bool) -> list[dict]:
    check_writable(out, "--out", folder=True)  # before training, so no work is lost to a bad --out
    events = out / ".stage_one"
    if events.is_symlink() or (events.exists() and not events.is_dir()):
        raise GlagError(
            f"'{events}' is a link or a file; glag writes its stage-one events there itself (remove it)"
        )
    made = missing_folders(events)  # removed again (once empty) if this run stops in stage one
    try:
        done = run_stage_one(
            cfg,
            cache_dir,
            quiet=quiet,
            download=download,
            events_dir=events,
            check=lambda data: check_fits(cfg, data, methods),
        )
    except BaseException:
        remove_if_empty(made)
        raise
    if done is None:  # a non-zero rank under torchrun: rank 0 runs stage two
        return []
    path, _, reused = done
    if not quiet:
        log(f"cache {path} ({'reused' if reused else 'written'})")
    return run_stage_two(path, cfg, out, methods=methods, quiet=quiet)
