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

    return DatasetSpec(kw["dataset"], kw["imbalance"], kw["val_per_class"], kw["full_split"],
                       str(kw["data_root"]) if kw["data_root"] else None, profile=kw["profile"], n_max=kw["n_max"],
                       subset_seed=kw["subset_seed"]).resolved()


def build_train_config(spec, loss, a, g, tau, backbone, weights, epochs, batch_size, lr, warmup, seed):
    from glag.extract.train import TrainConfig

    return TrainConfig(dataset=spec, backbone=backbone or "", loss=loss, a=a, g=g, tau=tau,
                       epochs=-1 if epochs is None else epochs, batch_size=batch_size or 0, lr=lr or 0.0,
                       warmup=-1.0 if warmup is None else warmup, seed=seed, weights=weights or "").resolved()


def run_stage_one(kw: dict, cache_dir: Path, checkpoint=None, views=0, quiet=False, resume=True):
    from glag.extract.datasets import load_dataset
    from glag.extract.stage_one import stage_one

    check_writable(cache_dir, "--cache-dir", folder=True)
    spec = build_spec(kw)
    train_args = [kw[k] for k in TRAIN_KEYS]
    build_train_config(spec, *train_args).identity()  # a missing --weights file fails here, before any data is read
    from glag.extract.torchfile import safe_load

    if kw["weights"] and Path(kw["weights"]).expanduser().is_file():
        safe_load(Path(kw["weights"]), "--weights file")  # a foreign or unsafe file fails before the data is read
    if checkpoint is not None:
        from glag.extract.dump import load_checkpoint

        load_checkpoint(checkpoint)
    data = load_dataset(spec, download=kw["download"], progress=not quiet)
    cfg = build_train_config(data.spec, *train_args)  # an image folder's spec is complete only once it is read
    log_fn = (lambda m: None) if quiet else log
    return stage_one(cfg, data, cache_dir, checkpoint=checkpoint, views=views, resume=resume, progress=not quiet, log=log_fn,
                     compile_model=kw.get("compile_model", False))


def build_generator(cache_path, lt, k, tail_below, weighting, mode, max_dense_gb, device, n_target=0):
    from glag.cache.format import FeatureCache
    from glag.generate.afg import AFG, GeneratorConfig, SamplingConfig, check_for_cache

    cfg = GeneratorConfig(lt=lt, k=k, tail_below=tail_below, weighting=weighting, mode=mode, max_dense_gb=max_dense_gb)
    cache = FeatureCache(cache_path)
    check_for_cache(cache, cfg, SamplingConfig(n_target=n_target))
    return AFG.build(cache, cfg, device=device)


def stage_two_run(cache_path, methods, kw, checkpoint=None, quiet=False, record=None, variant=""):
    from glag.classify.runner import run_methods
    from glag.classify.stage_two import StageTwoConfig
    from glag.generate.afg import GeneratorConfig, SamplingConfig

    gen = GeneratorConfig(lt=kw["lt"], k=kw["k"], tail_below=kw["tail_below"], weighting=kw["weighting"],
                          mode=kw["mode"], max_dense_gb=kw["max_dense_gb"])
    st = StageTwoConfig(epochs=kw["gen_epochs"], batch_size=kw["gen_batch_size"], lr=kw["gen_lr"], kd=kw["kd"],
                        adaptive=kw["adaptive"], generate=kw["gen_features"], posthoc_la=kw["posthoc_la"], beta_init=kw["beta_init"], beta_delta=kw["beta_delta"], seed=kw["seed"])
    sampling = SamplingConfig(alpha=kw["alpha"], dispersion=kw["dispersion"], n_target=kw["n_target"])
    return run_methods(cache_path, methods, kw["out_base"], gen=gen, stage_two=st, sampling=sampling,
                       device=kw["device"], checkpoint=checkpoint, progress=not quiet, record=record,
                       variant=variant)
