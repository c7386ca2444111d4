"""What the commands run, behind the CLI: dataset and training configs from options, stage one, stage two."""

from __future__ import annotations

import sys
from pathlib import Path

from glag.options import check_writable


def log(msg: str) -> None:
    """Log to stderr without breaking tqdm's progress bars."""
    from tqdm.auto import tqdm

    tqdm.write(msg, file=sys.stderr)


TRAIN_KEYS = ("loss", "a", "g", "tau", "backbone", "weights", "epochs", "batch_size", "lr", "warmup", "seed")


def build_spec(kw: dict):
    """The resolved DatasetSpec of the dataset options in ``kw``."""
    from glag.extract.datasets import DatasetSpec

    return DatasetSpec(
        kw["dataset"],
        kw["imbalance"],
        kw["val_per_class"],
        kw["full_split"],
        str(kw["data_root"]) if kw["data_root"] else None,
        profile=kw["profile"],
        n_max=kw["n_max"],
        subset_seed=kw["subset_seed"],
        val_rows=kw["val_rows"],
    ).resolved()


def build_train_config(spec, loss, a, g, tau, backbone, weights, epochs, batch_size, lr, warmup, seed):
    from glag.extract.train import TrainConfig

    return TrainConfig(
        dataset=spec,
        backbone=backbone or "",
        loss=loss,
        a=a,
        g=g,
        tau=tau,
        epochs=-1 if epochs is None else epochs,
        batch_size=batch_size or 0,
        lr=lr or 0.0,
        warmup=-1.0 if warmup is None else warmup,
        seed=seed,
        weights=weights or "",
    ).resolved()


def run_stage_one(kw: dict, cache_dir: Path, checkpoint=None, views=0, quiet=False, resume=True):
    from glag.extract.datasets import load_dataset
    from glag.extract.stage_one import stage_one

    check_writable(cache_dir, "--cache-dir", folder=True)
    spec = build_spec(kw)
    train_args = [kw[k] for k in TRAIN_KEYS]
    build_train_config(
        spec, *train_args
    ).identity()  # a missing --weights file fails here, before any data is read
    from glag.extract.torchfile import safe_load

    if kw["weights"] and Path(kw["weights"]).expanduser().is_file():
        safe_load(
            Path(kw["weights"]), "--weights file"
        )  # a foreign or unsafe file fails before the data is read
    if checkpoint is not None:
        from glag.extract.dump import load_checkpoint

        load_checkpoint(checkpoint)
    data = load_dataset(spec, download=kw["download"], progress=not quiet)
    cfg = build_train_config(
        data.spec, *train_args
    )  # an image folder's spec is complete only once it is read
    log_fn = (lambda m: None) if quiet else log
    return stage_one(
        cfg,
        data,
        cache_dir,
        checkpoint=checkpoint,
        views=views,
        resume=resume,
        progress=not quiet,
        log=log_fn,
        compile_model=kw.get("compile_model", False),
    )


def build_generator(cache_path, lt, k, tail_below, weighting, mode, max_dense_gb, device, n_target=0):
    from glag.cache.format import FeatureCache
    from glag.generate.afg import AFG, GeneratorConfig, SamplingConfig, check_for_cache

    cfg = GeneratorConfig(
        lt=lt, k=k, tail_below=tail_below, weighting=weighting, mode=mode, max_dense_gb=max_dense_gb
    )
    cache = FeatureCache(cache_path)
    check_for_cache(cache, cfg, SamplingConfig(n_target=n_target))
    return AFG.build(cache, cfg, device=device)


def stage_two_run(cache_path, methods, kw, checkpoint=None, quiet=False, record=None, variant=""):
    from glag.classify.runner import run_methods
    from glag.classify.stage_two import StageTwoConfig
    from glag.generate.afg import GeneratorConfig, SamplingConfig

    gen = GeneratorConfig(
        lt=kw["lt"],
        k=kw["k"],
        tail_below=kw["tail_below"],
        weighting=kw["weighting"],
        mode=kw["mode"],
        max_dense_gb=kw["max_dense_gb"],
    )
    st = StageTwoConfig(
        epochs=kw["gen_epochs"],
        batch_size=kw["gen_batch_size"],
        lr=kw["gen_lr"],
        kd=kw["kd"],
        adaptive=kw["adaptive"],
        generate=kw["gen_features"],
        posthoc_la=kw["posthoc_la"],
        beta_init=kw["beta_init"],
        beta_delta=kw["beta_delta"],
        seed=kw["seed"],
    )
    sampling = SamplingConfig(alpha=kw["alpha"], dispersion=kw["dispersion"], n_target=kw["n_target"])
    return run_methods(
        cache_path,
        methods,
        kw["out_base"],
        gen=gen,
        stage_two=st,
        sampling=sampling,
        device=kw["device"],
        checkpoint=checkpoint,
        progress=not quiet,
        record=record,
        variant=variant,
    )


def run_config_of(kw: dict, methods, variants: dict) -> tuple[dict, dict]:
    """(the options with presets resolved, the effective config) of a ``glag run``; the config lists the
    variants too, so it says what runs (batch size, lr, epochs)."""
    from glag.config import effective_config, variant_table

    spec = build_spec(kw)
    cfg = build_train_config(spec, *(kw[k] for k in TRAIN_KEYS))
    resolved = {
        **kw,
        "imbalance": spec.imbalance,
        "n_max": spec.n_max,
        "backbone": cfg.backbone,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": float(cfg.lr),
        "warmup": float(cfg.warmup),
    }
    run_config = effective_config({**resolved, "methods": methods})
    if variants:
        run_config["variants"] = {name: variant_table(v) for name, v in variants.items()}
    return resolved, run_config


def run_stage_two(
    cache_path, methods, kw: dict, variants_kw: dict, resolved: dict, run_config: dict, quiet: bool
):
    """The plain methods on the cache, then each variant named in ``methods`` with its own options;
    every result.json records the config it ran with (a variant's also its name)."""
    from glag.config import effective_config

    plain = [m for m in methods if m not in variants_kw]
    records = (
        stage_two_run(cache_path, plain, kw, quiet=quiet, record={"run_config": run_config}) if plain else []
    )
    for name in (m for m in methods if m in variants_kw):
        vkw = variants_kw[name]
        record = {"run_config": effective_config({**resolved, **vkw}), "variant": name}
        records += stage_two_run(cache_path, vkw["methods"], vkw, quiet=quiet, record=record, variant=name)
    return records
