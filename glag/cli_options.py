"""The option groups the ``glag`` commands share (dataset, training, generator, stage two, cache folder)."""

from __future__ import annotations

from pathlib import Path

import click

from glag.cache.store import default_cache_dir
from glag.options import Number


def _apply(options, f):
    """Decorate ``f`` with click options so they list in the order given."""
    for o in reversed(options):
        f = o(f)
    return f


def cache_dir_option(f):
    # the default reads $GLAG_CACHE_DIR itself (not click's envvar), so an empty value means unset
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=lambda: str(default_cache_dir()),
        show_default="$GLAG_CACHE_DIR or ~/.cache/glag",
        help="Folder of feature caches.",
    )(f)


def dataset_options(f):
    from glag.extract.datasets import DATASETS, VAL_ROWS
    from glag.extract.profile import PROFILES

    opts = [
        click.option(
            "--dataset",
            type=click.Choice(DATASETS),
            default="digits",
            show_default=True,
            help="Long-tailed dataset; 'digits' is bundled and needs no download; 'folder' reads an "
            "image folder (--data-root).",
        ),
        click.option(
            "--imbalance",
            "-im",
            type=Number(float, 0, extra="0 = the default, else >= 1"),
            default=0.0,
            help="Imbalance ratio n_max/n_min (>= 1); 0 = 100 (20 for digits).",
        ),
        click.option(
            "--profile",
            type=click.Choice(PROFILES),
            default="exp",
            show_default=True,
            help="Class-size profile: exp (n_max * IM^(-c/(C-1))), step (first C/2 classes n_max, the rest "
            "n_max/IM), "
            "or all (an image folder that is already the subset: every image, val/ for validation).",
        ),
        click.option(
            "--n-max",
            type=Number(int, 0),
            default=0,
            help="Images of the largest class (0 = dataset default: 5000 CIFAR-10, 500 CIFAR-100, 6000 "
            "Fashion-MNIST, "
            "110 digits; an image folder's smallest class).",
        ),
        click.option(
            "--subset-seed",
            type=Number(int, 0, 2**32, hi_open=True),
            default=0,
            show_default=True,
            help="Seed of the per-class shuffle that picks the LT subset (LDAM-DRW's rule; 0 = the "
            "literature's subset).",
        ),
        click.option(
            "--val-per-class",
            type=Number(int, 0),
            default=20,
            show_default=True,
            help="Validation images per class (never test images; a val/ folder or list file gives its own).",
        ),
        click.option(
            "--val-rows",
            type=click.Choice(VAL_ROWS),
            default="every-class",
            show_default=True,
            help="every-class: each class gets --val-per-class rows, from the images left outside the LT "
            "subset first, the shortfall from the end of its training part (CIFAR-10-LT's class 0: "
            "4,980 training images); leftovers: only those left outside (the literature's exact "
            "training set; a class with none left has no validation rows).",
        ),
        click.option(
            "--data-root",
            type=click.Path(path_type=Path),
            default=None,
            help="Folder holding the dataset files (cifar-*-python, Fashion-MNIST IDX files, list files), "
            "or for --dataset folder the image folder: train/<class>/*, test/<class>/* (val/<class>/*).",
        ),
        click.option(
            "--download", is_flag=True, help="Download the dataset into --data-root first (needs a network)."
        ),
        click.option(
            "--full-split", is_flag=True, help="Also dump the full balanced training set (probe protocol)."
        ),
    ]
    return _apply(opts, f)


def train_options(f):
    from glag.extract.losses import LOSSES
    from glag.extract.models import BACKBONES

    opts = [
        click.option(
            "--loss", type=click.Choice(LOSSES), default="graloss", show_default=True, help="Stage-one loss."
        ),
        click.option(
            "--a",
            "a",
            type=Number(float),
            default=1.0,
            show_default=True,
            help="GraLoss scale a in lam(t) = a (t/T)^g.",
        ),
        click.option(
            "--g",
            "g",
            type=Number(float, 0),
            default=3.0,
            show_default=True,
            help="GraLoss exponent g (<1 concave, 1 linear, >1 convex).",
        ),
        click.option(
            "--tau",
            type=Number(float, 0),
            default=1.0,
            show_default=True,
            help="Fixed strength for --loss la.",
        ),
        click.option(
            "--backbone",
            default=None,
            help=f"Backbone: {', '.join(sorted(BACKBONES))}, or torchvision:NAME (e.g. torchvision:resnet18; "
            "penultimate features, the weights' own preprocessing). Default: the dataset's preset.",
        ),
        click.option(
            "--weights",
            default="",
            help="Initial backbone weights: a state-dict or checkpoint file, or torchvision:DEFAULT "
            "(torchvision's pretrained weights; downloaded once, needs a network).",
        ),
        click.option(
            "--epochs",
            type=Number(int, 0),
            default=None,
            help="Stage-one epochs (default: preset; 200 for CIFAR). 0: no training; dump the initial "
            "weights' features and fit a linear CE head on them.",
        ),
        click.option("--batch-size", type=Number(int, 1), default=None, help="Batch size (default: preset)."),
        click.option(
            "--lr",
            type=Number(float, 0, lo_open=True),
            default=None,
            help="Peak learning rate (default: preset).",
        ),
        click.option(
            "--warmup",
            type=Number(float, 0),
            default=None,
            help="Linear lr warm-up epochs before the cosine decay (default: preset; 5 for CIFAR).",
        ),
        click.option(
            "--seed",
            type=Number(int, 0, 2**32, hi_open=True),
            default=0,
            show_default=True,
            help="Random seed.",
        ),
        click.option(
            "--compile/--no-compile",
            "compile_model",
            default=False,
            show_default=True,
            help="Train stage one through torch.compile (falls back to eager, with a log line, where it "
            "cannot compile). On 2 CPU cores: steps 1.10x faster for ResNet-32, after a one-off "
            "compile (docs/benchmarks.md). Not part of the cache key.",
        ),
    ]
    return _apply(opts, f)


def generator_options(f):
    from glag.generate.backend import DEVICES
    from glag.generate.sampler import MODES
    from glag.generate.support import WEIGHTINGS

    opts = [
        click.option(
            "--lt",
            type=Number(float, 0, 1, lo_open=True),
            default=0.5,
            show_default=True,
            help="Tukey power in (0, 1]; 1 = no transform.",
        ),
        click.option(
            "--k",
            "k",
            type=Number(int, 1),
            default=2,
            show_default=True,
            help="Support classes per tail sample.",
        ),
        click.option(
            "--tail-below",
            type=Number(int, 1),
            default=100,
            show_default=True,
            help="Classes with fewer train rows are tail.",
        ),
        click.option(
            "--weighting",
            type=click.Choice(WEIGHTINGS),
            default="count-distance",
            show_default=True,
            help="Support weights: n_i/d_i (GLAG) or uniform (Free Lunch).",
        ),
        click.option(
            "--mode",
            type=click.Choice(MODES),
            default="auto",
            show_default=True,
            help="Covariance factors. auto: per class the cheaper exact one (Cholesky, d^2 memory, "
            "when the class has more rows than dimensions; else its centred rows); "
            "dense: Cholesky for every class; factor: centred rows for every class.",
        ),
        click.option(
            "--max-dense-gb",
            type=Number(float, 0, lo_open=True),
            default=1.0,
            show_default=True,
            help="Cap on the Cholesky factors' memory for --mode auto.",
        ),
        click.option(
            "--device",
            type=click.Choice(DEVICES),
            default="auto",
            show_default=True,
            help="NumPy (cpu) or CuPy (gpu).",
        ),
    ]
    return _apply(opts, f)


def stage_two_options(f):
    opts = [
        click.option(
            "--gen-epochs",
            type=Number(int, 1),
            default=40,
            show_default=True,
            help="Stage-two (generation) epochs.",
        ),
        click.option(
            "--gen-batch-size",
            type=Number(int, 1),
            default=512,
            show_default=True,
            help="Stage-two batch size.",
        ),
        click.option(
            "--gen-lr",
            type=Number(float, 0, 10, lo_open=True),
            default=0.1,
            show_default=True,
            help="Stage-two peak learning rate (cosine).",
        ),
        click.option(
            "--kd/--no-kd",
            default=True,
            show_default=True,
            help="Knowledge distillation on real head-class rows.",
        ),
        click.option(
            "--adaptive/--fixed-beta",
            default=True,
            show_default=True,
            help="Adapt beta_c on validation accuracy.",
        ),
        click.option(
            "--generate/--no-generate",
            "gen_features",
            default=True,
            show_default=True,
            help="Mix generated features into stage two (--no-generate: real rows only, an ablation).",
        ),
        click.option(
            "--beta-init",
            type=Number(float, 0, 0.9, extra="beta_c is clipped to [0, 0.9]"),
            default=0.0,
            show_default=True,
            help="Initial confidence beta_c of tail classes (0: samples centred on the real tail sample).",
        ),
        click.option(
            "--posthoc-la/--no-posthoc-la",
            default=True,
            show_default=True,
            help="Logit-adjust the final classifier, z - tau log(pi), with tau picked on val (0..2).",
        ),
        click.option(
            "--beta-delta",
            type=Number(float, 0, 0.9),
            default=0.05,
            show_default=True,
            help="Step of the beta_c update.",
        ),
        click.option(
            "--alpha",
            type=Number(float, 0, 100),
            default=0.0,
            show_default=True,
            help="Dispersion added to calibrated covariances.",
        ),
        click.option(
            "--dispersion",
            type=click.Choice(["identity", "all-entries"]),
            default="identity",
            show_default=True,
            help="alpha * I (GLAG) or alpha on every entry (Free Lunch).",
        ),
        click.option(
            "--n-target",
            type=Number(int, 0),
            default=0,
            help="Rows per class after top-up (0 = largest class).",
        ),
        click.option(
            "--out",
            "out_base",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path("glag-runs"),
            show_default=True,
            help="Folder for run folders (result.json, per_class.csv, model.pt).",
        ),
    ]
    return _apply(opts, f)
