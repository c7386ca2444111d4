"""The run configuration: one typed tree, the only place where a setting, its default, its allowed range
and its help text live.

``load_config(path, overrides)`` merges a recipe file (TOML, sections as below), overrides
(``{"stage_one.epochs": 3}`` or bare unique keys) and the defaults, and checks every value; a bad one is
refused in one line naming the recipe key. The command line's flags are generated from this tree
(``glag.cli_options``), and every run folder's result.json records the tree that ran
(``Config.to_dict``; ``config_from_dict`` loads it back).

Named stage-two variants (ablations) are ``[variants.<name>]`` tables of [generator] and [stage_two]
keys; a variant runs ``method`` (default ``glag``) with those keys changed, and ``[stage_two] method``
may list it by name, beside the plain methods.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from glag.errors import GlagError
from glag.paths import check_safe_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

MAX_CONFIG_BYTES = 1 << 20
U32 = 2**32
# Sane upper bounds: far above any real run, low enough that a typo is refused before work starts.
MAX_EPOCHS = 10_000
MAX_BATCH = 1 << 20
MAX_ROWS = 10**8
MAX_LR = 10


@dataclass(frozen=True)
class Rule:
    """What a setting allows, how its flag is spelt, and its help text."""

    help: str
    kind: type = str  # int, float, str, bool, list (of names), Path
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    extra: str = ""  # said after the range in messages
    choices: Callable[[], tuple] | None = None  # lazy: the registries import torch
    flag: str = ""  # click's declaration when not --key-with-dashes ("--kd/--no-kd", "-im")
    optional: bool = False  # None allowed: the dataset's preset decides
    # [stage_one] only (glag.extract.recipe): whether the setting changes the trained weights and so keys
    # the training; a keyed setting newer than recipe.ALWAYS_KEYED is left out of the key at
    # ``unkeyed_at`` (default: its default), so adding one keeps every earlier key
    keyed: bool = True
    unkeyed_at: object = None
    loss_param: bool = False  # [stage_one]: passed to the stage-one loss's builder by name

    def allowed(self) -> str:
        if self.choices:
            return "one of: " + ", ".join(self.choices())
        if self.kind in (int, float):
            parts = [f"{'>' if self.lo_open else '>='} {_fmt(self.lo)}"] if self.lo is not None else []
            parts += [f"{'<' if self.hi_open else '<='} {_fmt(self.hi)}"] if self.hi is not None else []
            what = "a finite " + ("integer" if self.kind is int else "number")
            return (
                what
                + (" " + " and ".join(parts) if parts else "")
                + (f" ({self.extra})" if self.extra else "")
            )
        return {bool: "true or false", list: "a name or a list of names", Path: "a path"}.get(
            self.kind, "text"
        )

    def check(self, value):
        """The value as the run uses it, or ValueError with what is wrong and what is allowed."""
        if value is None and self.optional:
            return None
        if self.kind in (int, float):
            return self._number(value)
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{value!r} is not true or false")
            return value
        if self.kind is list:
            value = [value] if isinstance(value, str) else value
            if (
                not isinstance(value, (list, tuple))
                or not all(isinstance(v, str) for v in value)
                or not value
            ):
                raise ValueError(f"{value!r} is not {self.allowed()}")
            twice = sorted({v for v in value if list(value).count(v) > 1})
            if twice:  # the same method twice would be two runs of one thing
                raise ValueError(f"{list(value)!r} lists '{twice[0]}' twice; name each once")
            return tuple(value)
        if not isinstance(value, (str, Path)):
            raise ValueError(f"{value!r} is not {self.allowed()}")
        value = str(value)
        if self.choices and value not in self.choices():
            raise ValueError(f"'{value}' is not allowed; {self.allowed()}")
        return value

    def _number(self, value):
        shown = value
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number; allowed: {self.allowed()}")
        if isinstance(value, (int, float)):
            if self.kind is int and isinstance(value, float):
                if not value.is_integer():
                    raise ValueError(f"{value!r} is not an integer; allowed: {self.allowed()}")
                value = int(value)
            v = value
        else:
            try:
                v = self.kind(str(value).strip())
            except ValueError:
                what = "an integer" if self.kind is int else "a number"
                raise ValueError(
                    f"{_show(value, quote=True)} is not {what}; allowed: {self.allowed()}"
                ) from None
        if isinstance(v, int) and abs(v) >= 2**63:  # math.isfinite and float() overflow on these
            raise ValueError(f"{_show(shown)} is out of range; allowed: {self.allowed()}")
        # the declared kind, so a recipe's `warmup = 1` keys a cache as the flag's `--warmup 1` does
        v = self.kind(v) if math.isfinite(v) else v
        bad = not math.isfinite(v)
        if not bad and self.lo is not None:
            bad = v <= self.lo if self.lo_open else v < self.lo
        if not bad and self.hi is not None:
            bad = v >= self.hi if self.hi_open else v > self.hi
        if bad:
            why = "is not finite" if not math.isfinite(v) else "is out of range"
            raise ValueError(f"{_show(shown)} {why}; allowed: {self.allowed()}")
        return v


def _show(value, quote: bool = False) -> str:
    """A value for a one-line message (text quoted where asked): long ones shortened."""
    text = repr(value) if quote and isinstance(value, str) else str(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _fmt(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def setting(default, help: str, kind=None, **rule):
    """A dataclass field carrying its Rule."""
    kind = kind or (type(default) if default is not None else str)
    return field(default=default, metadata={"rule": Rule(help, kind, **rule)})


# The allowed names of every choice setting; the modules that act on them import these tuples.
CHOICES = {
    "dataset": (
        "cifar10-lt",
        "cifar100-lt",
        "digits",
        "fashion-mnist-lt",
        "folder",
        "imagenet-lt",
        "inat2018",
        "places-lt",
    ),
    # all: every training image of an image folder, as it is; auto: 'all' for an image folder whose
    # training classes are already imbalanced, 'exp' for everything else (glag.extract.datasets)
    "profile": ("auto", "exp", "step", "all"),
    "val_rows": ("every-class", "leftovers"),
    "loss": ("ce", "focal", "ldam", "ldam-drw", "balanced-softmax", "la", "graloss"),
    "weighting": ("count-distance", "uniform"),
    "mode": ("auto", "dense", "factor"),
    "dispersion": ("identity", "all-entries"),
    "device": ("auto", "cpu", "gpu"),
    "precision": ("auto", "fp32", "bf16"),
}


def _choices(key: str) -> Callable[[], tuple]:
    return lambda: CHOICES[key]


@dataclass(frozen=True)
class DatasetSettings:
    dataset: str = setting(
        "digits",
        "Long-tailed dataset; 'digits' is bundled and needs no download; 'folder' reads an image folder "
        "(--data-root).",
        choices=_choices("dataset"),
    )
    imbalance: float = setting(
        0.0,
        "Imbalance ratio n_max/n_min (>= 1); 0 = 100 (20 for digits).",
        lo=0,
        hi=1e6,
        extra="0 = the default, else >= 1",
        flag="-im",
    )
    profile: str = setting(
        "auto",
        "Class-size profile: exp (n_max * IM^(-c/(C-1))), step (first C/2 classes n_max, the rest n_max/IM), "
        "all (an image folder used as it is: every training image), or auto: all for an image folder whose "
        "training classes are already imbalanced (largest/smallest above 1.5) and no --imbalance or "
        "--n-max is given, else exp.",
        choices=_choices("profile"),
    )
    n_max: int = setting(
        0,
        "Images of the largest class (0 = dataset default: 5000 CIFAR-10, 500 CIFAR-100, 6000 Fashion-MNIST, "
        "110 digits; an image folder's smallest class).",
        lo=0,
        hi=MAX_ROWS,
    )
    subset_seed: int = setting(
        0,
        "Seed of the per-class shuffle that picks the LT subset (LDAM-DRW's rule; 0 = the literature's "
        "subset).",
        lo=0,
        hi=U32,
        hi_open=True,
    )
    val_per_class: int = setting(
        20,
        "Validation images per class (never test images; a val/ folder or list file gives its own).",
        lo=0,
        hi=MAX_ROWS,
    )
    val_rows: str = setting(
        "every-class",
        "every-class: each class gets --val-per-class rows, from the images left outside the LT subset "
        "first, the shortfall from the end of its training part (CIFAR-10-LT's class 0: 4,980 training "
        "images); leftovers: only those left outside (the literature's exact training set; a class with "
        "none left has no validation rows).",
        choices=_choices("val_rows"),
    )
    data_root: str | None = setting(
        None,
        "Folder holding the dataset files (cifar-*-python, Fashion-MNIST IDX files, list files), or for "
        "--dataset folder the image folder: train/<class>/*, test/<class>/* (val/<class>/*).",
        kind=Path,
        optional=True,
    )
    full_split: bool = setting(False, "Also dump the full balanced training set (probe protocol).")
    many_above: int = setting(
        100,
        "Many-shot classes have more training images than this (the literature's 100); reports only: "
        "never part of a cache key.",
        lo=0,
        hi=MAX_ROWS,
    )
    few_below: int = setting(
        20,
        "Few-shot classes have fewer training images than this (the literature's 20), at most "
        "--many-above + 1; reports only.",
        lo=1,
        hi=MAX_ROWS,
    )
    test_fraction: float = setting(
        0.0,
        "An image folder with train/ only: carve this fraction of each class's training images as the "
        "test split (seeded by --subset-seed, part of the cache key); 0 = the folder's test/ (or val/).",
        lo=0,
        hi=0.9,
    )


@dataclass(frozen=True)
class StageOneSettings:
    loss: str = setting("graloss", "Stage-one loss.", choices=_choices("loss"))
    a: float = setting(1.0, "GraLoss scale a in lam(t) = a (t/T)^g.", lo=0, hi=10, loss_param=True)
    g: float = setting(
        3.0, "GraLoss exponent g (<1 concave, 1 linear, >1 convex).", lo=0, hi=100, loss_param=True
    )
    tau: float = setting(1.0, "Fixed strength for --loss la.", lo=0, hi=10, loss_param=True)
    backbone: str | None = setting(
        None,
        "Backbone: cnn, resnet10, resnet32, resnet50, or torchvision:NAME (e.g. torchvision:resnet18; "
        "penultimate features, the weights' own preprocessing). Default: the dataset's preset.",
        optional=True,
    )
    weights: str = setting(
        "",
        "Initial backbone weights: a state-dict or checkpoint file, or torchvision:DEFAULT (torchvision's "
        "pretrained weights; downloaded once, needs a network).",
    )
    epochs: int | None = setting(
        None,
        "Stage-one epochs (default: preset; 200 for CIFAR). 0: no training; dump the initial weights' "
        "features and fit a linear CE head on them.",
        kind=int,
        lo=0,
        hi=MAX_EPOCHS,
        optional=True,
    )
    batch_size: int | None = setting(
        None, "Batch size (default: preset).", kind=int, lo=1, hi=MAX_BATCH, optional=True
    )
    lr: float | None = setting(
        None,
        "Peak learning rate (default: preset).",
        kind=float,
        lo=0,
        hi=MAX_LR,
        lo_open=True,
        optional=True,
    )
    warmup: float | None = setting(
        None,
        "Linear lr warm-up epochs before the cosine decay (default: preset; 5 for CIFAR).",
        kind=float,
        lo=0,
        hi=MAX_EPOCHS,
        optional=True,
    )
    weight_decay: float = setting(5e-4, "Stage-one SGD weight decay.", lo=0, hi=1)
    mixup: float = setting(
        0.0,
        "Input mixup in stage one (MiSLAS's): alpha of Beta(alpha, alpha), 0 = off; part of the cache key.",
        lo=0,
        hi=100,
    )
    sam_rho: float = setting(
        0.0,
        "ImbSAM in stage one (Zhou et al., ICCV 2023): the radius rho of a sharpness-aware step on the "
        "tail classes' loss only, the head classes' gradient taken plainly (the reference's rho: 0.05); "
        "0 = off. A step that holds a tail image costs about 2.7x a plain one. Part of the cache key.",
        lo=0,
        hi=10,
    )
    sam_tail_below: int = setting(
        20,
        "ImbSAM's tail: classes with fewer training images than this (the reference's eta, 20). Read only "
        "with sam_rho > 0.",
        kind=int,
        lo=1,
        hi=MAX_ROWS,
    )
    precision: str = setting(
        "auto",
        "Stage-one arithmetic: bf16 autocast (the loss, optimizer state, BatchNorm statistics and the dumped "
        "features stay fp32) or fp32. auto: bf16 on CUDA; on CPU fp32 until bf16's accuracy parity is "
        "measured (docs/benchmarks.md). bf16 is part of the cache key; fp32 keeps every earlier key.",
        choices=_choices("precision"),
        unkeyed_at="fp32",  # as resolved: fp32 trained every folder before the setting existed
    )
    seed: int = setting(0, "Random seed (stage one and stage two).", lo=0, hi=U32, hi_open=True)
    compile: bool = setting(
        False,
        "Train stage one through torch.compile (falls back to eager, with a log line, where it cannot "
        "compile). On 2 CPU cores: steps 1.10x faster for ResNet-32, after a one-off compile "
        "(docs/benchmarks.md). Not part of the cache key.",
        flag="--compile/--no-compile",
        keyed=False,  # compiled steps train to the same weights, or fall back to eager
    )


@dataclass(frozen=True)
class GeneratorSettings:
    tukey_power: float = setting(
        0.5,
        "Tukey power lambda in [0.01, 1]; 1 = no transform (below 0.01, x^lambda of float32 features "
        "overflows on the way back).",
        lo=0.01,
        hi=1,
    )
    k: int = setting(2, "Support classes per tail sample.", lo=1, hi=1000)
    tail_below: int = setting(100, "Classes with fewer train rows are tail.", lo=1, hi=MAX_ROWS)
    weighting: str = setting(
        "count-distance",
        "Support weights: n_i/d_i (GLAG) or uniform (Free Lunch).",
        choices=_choices("weighting"),
    )
    mode: str = setting(
        "auto",
        "Covariance factors. auto: per class the cheaper exact one (Cholesky, d^2 memory, when the class has "
        "more rows than dimensions; else its centred rows); dense: Cholesky for every class; factor: centred "
        "rows for every class.",
        choices=_choices("mode"),
    )
    max_dense_gb: float = setting(
        1.0, "Cap on the Cholesky factors' memory for --mode auto.", lo=0, hi=1e6, lo_open=True
    )
    device: str = setting("auto", "NumPy (cpu) or CuPy (gpu).", choices=_choices("device"))


@dataclass(frozen=True)
class StageTwoSettings:
    method: list = setting(
        ("stage-one", "crt", "glag"),
        "Stage-two methods to run on the cache (a config's variants by name too); repeat for several.",
        kind=list,
    )
    classifier_epochs: int = setting(40, "Stage-two classifier epochs.", lo=1, hi=MAX_EPOCHS)
    classifier_batch_size: int = setting(512, "Stage-two classifier batch size.", lo=1, hi=MAX_BATCH)
    classifier_lr: float = setting(
        0.1, "Stage-two classifier peak learning rate (cosine).", lo=0, hi=MAX_LR, lo_open=True
    )
    kd: bool = setting(True, "Knowledge distillation on real head-class rows.", flag="--kd/--no-kd")
    adaptive: bool = setting(True, "Adapt beta_c on validation accuracy.", flag="--adaptive/--fixed-beta")
    generate: bool = setting(
        True,
        "Mix generated features into stage two (--no-generate: real rows only, an ablation).",
        flag="--generate/--no-generate",
    )
    beta_init: float = setting(  # measured: docs/ablations.md (SPEC's 0.6 was "to be confirmed")
        0.0,
        "Initial confidence beta_c of tail classes (0: samples centred on the real tail sample).",
        lo=0,
        hi=0.9,
        extra="beta_c is clipped to [0, 0.9]",
    )
    posthoc_la: bool = setting(  # measured: docs/ablations.md
        True,
        "Logit-adjust the final classifier, z - tau log(pi), with tau picked on val (0..2).",
        flag="--posthoc-la/--no-posthoc-la",
    )
    train_la_tau: float = setting(
        0.0,
        "Logit-adjusted CE inside stage two: the CE term reads z + tau log(pi_train) (0: plain CE; 1: "
        "Balanced Softmax with the training prior). A control for post-hoc adjustment (docs/ablations.md).",
        lo=0,
        hi=10,
    )
    beta_delta: float = setting(0.05, "Step of the beta_c update.", lo=0, hi=0.9)
    alpha: float = setting(0.0, "Dispersion added to calibrated covariances.", lo=0, hi=100)
    dispersion: str = setting(
        "identity",
        "alpha * I (GLAG) or alpha on every entry (Free Lunch).",
        choices=_choices("dispersion"),
    )
    n_target: int = setting(0, "Rows per class after top-up (0 = largest class).", lo=0, hi=MAX_ROWS)


@dataclass(frozen=True)
class BaselineSettings:
    """The decoupled baselines' own training (cRT, LWS, probe); tau-norm and logit adjustment pick tau on
    validation rows and have nothing to set."""

    crt_epochs: int = setting(
        10, "cRT: epochs of the fresh linear classifier (class-balanced batches).", lo=1, hi=MAX_EPOCHS
    )
    crt_lr: float = setting(0.1, "cRT: peak learning rate.", lo=0, hi=MAX_LR, lo_open=True)
    lws_epochs: int = setting(10, "LWS: epochs of the per-class logit scales.", lo=1, hi=MAX_EPOCHS)
    lws_lr: float = setting(0.1, "LWS: peak learning rate.", lo=0, hi=MAX_LR, lo_open=True)
    probe_epochs: int = setting(
        30, "Probe: epochs of the linear classifier on the full balanced split.", lo=1, hi=MAX_EPOCHS
    )
    probe_lr: float = setting(0.1, "Probe: peak learning rate.", lo=0, hi=MAX_LR, lo_open=True)
    baseline_batch_size: int = setting(512, "Batch size of cRT, LWS and the probe.", lo=1, hi=MAX_BATCH)
    baseline_weight_decay: float = setting(5e-4, "Weight decay of cRT and the probe.", lo=0, hi=1)


@dataclass(frozen=True)
class SlurmSettings:
    """How ``glag sweep --executor slurm`` asks for each cell (one job array per sweep)."""

    partition: str = setting("", "SLURM partition of the cells' jobs ('' = the cluster's default).")
    time_limit: int = setting(24 * 60, "Time limit of one cell's job, in minutes.", lo=1, hi=366 * 24 * 60)
    gpus_per_cell: int = setting(
        0, "GPUs per cell; above 1, one task per GPU (torch.distributed).", lo=0, hi=1024
    )
    tasks_per_cell: int = setting(
        0,
        "Processes per cell (0 = one per GPU, at least one); above 1, stage one runs under torch.distributed "
        "with that many tasks, as under torchrun (gloo on CPU).",
        lo=0,
        hi=4096,
    )
    cpus_per_cell: int = setting(1, "CPUs per cell.", lo=1, hi=4096)
    mem_gb: float = setting(4.0, "Memory per cell, in GB.", lo=0, hi=1e6, lo_open=True)
    array_parallelism: int = setting(64, "How many of the sweep's cells run at once.", lo=1, hi=100_000)
    sbatch_args: str = setting("", "Extra sbatch arguments, e.g. '--qos=short --account=lab'.")
    lost_after_s: int = setting(
        600,
        "Seconds a job may stay COMPLETING, or on a node that is down or not responding, before the sweep "
        "stops waiting for it and counts its unfinished cells as failed (a re-run resubmits them).",
        lo=5,
        hi=7 * 24 * 3600,
    )


SECTION_TYPES = {
    "dataset": DatasetSettings,
    "stage_one": StageOneSettings,
    "generator": GeneratorSettings,
    "stage_two": StageTwoSettings,
    "baselines": BaselineSettings,
    "slurm": SlurmSettings,
}
SECTIONS = {s: [f.name for f in fields(t)] for s, t in SECTION_TYPES.items()}
SECTION_OF = {k: s for s, keys in SECTIONS.items() for k in keys}  # keys are unique across sections
RULES = {f.name: f.metadata["rule"] for t in SECTION_TYPES.values() for f in fields(t)}
VARIANT_KEYS = SECTIONS["generator"] + SECTIONS["stage_two"]
RENAMED = {  # old recipe key -> its name now; an old spelling is refused with the new one
    "lt": "tukey_power",
    "gen_epochs": "classifier_epochs",
    "gen_lr": "classifier_lr",
    "gen_batch_size": "classifier_batch_size",
}


def default(key: str):
    """A setting's default (the one place it is written)."""
    section = SECTION_TYPES[SECTION_OF[key]]
    f = next(f for f in fields(section) if f.name == key)
    return list(f.default) if isinstance(f.default, tuple) else f.default


@dataclass(frozen=True)
class Config:
    """Everything a ``glag run`` uses. Unset (None) stage-one values take the dataset's preset."""

    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    stage_one: StageOneSettings = field(default_factory=StageOneSettings)
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    stage_two: StageTwoSettings = field(default_factory=StageTwoSettings)
    baselines: BaselineSettings = field(default_factory=BaselineSettings)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    variants: dict = field(default_factory=dict)  # name -> {generator/stage_two key: value}, 'method' set
    # [tune]: the search space of `glag tune` as written (checked by glag.tuning.parse_space); not part of
    # what a run is, so not in to_dict
    tune: dict = field(default_factory=dict)

    def flat(self) -> dict:
        """{key: value} of every setting (keys are unique across sections)."""
        return {k: getattr(getattr(self, s), k) for s, keys in SECTIONS.items() for k in keys}

    def with_values(self, values: dict) -> Config:
        """A copy with ``{key: value}`` set (values already checked)."""
        by_section: dict[str, dict] = {}
        for k, v in values.items():
            by_section.setdefault(SECTION_OF[k], {})[k] = v
        return replace(self, **{s: replace(getattr(self, s), **kv) for s, kv in by_section.items()})

    def variant(self, name: str) -> Config:
        """The config a variant runs: this one with the variant's keys, its one method."""
        return replace(self.with_values(self.variants[name]), variants={})

    def to_dict(self) -> dict:
        """``{section: {key: value}}`` of the values set (an unset optional value is left out), variants
        last; the form recipes, ``--print-config`` and result.json use."""
        out = {}
        for section in SECTIONS:
            body = {}
            for k, v in vars(getattr(self, section)).items():
                if v is None or v == "":
                    continue
                body[k] = list(v) if isinstance(v, tuple) else v
            out[section] = body
        if self.variants:
            out["variants"] = {
                n: {k: (v[0] if k == "method" else v) for k, v in kv.items()}
                for n, kv in self.variants.items()
            }
        return out


def _err(where: str, msg: str) -> GlagError:
    return GlagError(f"{where}: {msg}")


def check_value(key: str, value, where: str):
    """``value`` as the run uses it, or one line naming ``where`` (a recipe key, an override)."""
    try:
        return RULES[key].check(value)
    except ValueError as exc:
        raise _err(where, str(exc)) from None


def _known(key: str, where: str, allowed, section: str = "") -> None:
    if key in allowed:
        return
    if key in RENAMED:
        raise _err(where, f"'{key}' is now called '{RENAMED[key]}'; rename it")
    inside = f" in [{section}]" if section else ""
    raise _err(where, f"unknown key '{key}'{inside}; allowed: " + ", ".join(allowed))


def _variants(where: str, body, methods) -> dict[str, dict]:
    """``[variants.<name>]`` tables -> {name: {key: checked value}}, each with its one 'method'."""
    if not isinstance(body, dict) or not all(isinstance(v, dict) for v in body.values()):
        raise _err(where, "variants must be [variants.<name>] tables of keys")
    out = {}
    for name, keys in body.items():
        check_safe_name(name, f"{where}: variant name")  # it names run folders
        if name in methods:
            raise _err(where, f"variant name '{name}' is a method's name; choose another")
        values = {}
        for key, value in keys.items():
            _known(key, f"{where} [variants.{name}]", VARIANT_KEYS)
            values[key] = check_value(key, value, f"{where} [variants.{name}] {key}")
        method = values.get("method", ("glag",))
        if len(method) != 1 or method[0] not in methods:
            raise _err(
                where,
                f"[variants.{name}] method '{', '.join(method)}' is not a method; choose from: "
                + ", ".join(methods),
            )
        out[name] = {"method": method} | values
    return out


def read_recipe(path: Path) -> dict:
    """A recipe file as ``{section: {key: value}}`` (TOML), read bounded; not yet checked."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file():
            raise GlagError(f"--config '{path}' is not a regular file; give a TOML recipe file")
        with open(path, "rb") as fh:  # bounded: a recipe is a few KB, /dev/zero or a huge file is refused
            data = fh.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise GlagError(
                f"--config '{path}' is over {MAX_CONFIG_BYTES // 1024} KiB; a recipe is a small TOML file"
            )
        return tomllib.loads(data.decode("utf-8"))
    except OSError as exc:
        raise GlagError(f"--config '{path}' cannot be read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GlagError(f"--config '{path}' is not valid TOML ({exc})") from None


def recipe_values(raw: dict, where: str) -> tuple[dict, dict]:
    """({key: checked value}, raw variants) of a recipe's ``{section: {key: value}}``."""
    values, variants = {}, {}
    for section, body in raw.items():
        if section == "variants":
            variants = body
            continue
        if section == "tune":  # read by parse_config, checked by glag.tuning
            continue
        if section not in SECTIONS:
            raise _err(
                where,
                f"unknown section [{section}]; allowed: "
                + ", ".join(f"[{s}]" for s in SECTIONS)
                + ", [variants.<name>], [tune]",
            )
        if not isinstance(body, dict):
            raise _err(where, f"'{section}' must be a [section] of keys")
        for key, value in body.items():
            _known(key, where, SECTIONS[section], section)
            if isinstance(value, str) and RULES[key].kind in (int, float):  # a TOML string is not a number
                raise _err(
                    f"{where} [{section}] {key}",
                    f"{_show(value, quote=True)} is text, not a number; write it without quotes",
                )
            values[key] = check_value(key, value, f"{where} [{section}] {key}")
    return values, variants


def parse_config(
    path: Path | str | None = None,
    overrides: dict | None = None,
    *,
    methods=(),
    source: str = "override",
    labels: dict | None = None,
) -> Config:
    """Defaults <- the recipe at ``path`` <- ``overrides`` (``{"stage_one.epochs": 3}`` or ``{"epochs": 3}``),
    every value checked. ``methods``: the stage-two method names (glag.load_config passes the
    registry's); ``source`` names the overrides in messages (``--set``), ``labels`` single ones (a flag)."""
    values, raw_variants, tune = {}, {}, {}
    if path is not None:
        raw = read_recipe(Path(path))
        values, raw_variants = recipe_values(raw, f"--config '{path}'")
        tune = raw.get("tune", {})
        if not isinstance(tune, dict):
            raise _err(f"--config '{path}'", "'tune' must be a [tune] section of keys")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.rpartition(".")
        where = (labels or {}).get(dotted) or f"{source} '{dotted}'"
        _known(key, where, SECTIONS.get(section, RULES) if section else RULES)
        if section and SECTION_OF[key] != section:
            raise _err(where, f"'{key}' is in [{SECTION_OF[key]}], not [{section}]")
        values[key] = check_value(key, value, where)
    cfg = Config().with_values(values)
    _check_groups(cfg)
    variants = _variants(f"--config '{path}'", raw_variants, methods) if raw_variants else {}
    check_methods(cfg.stage_two.method, methods, variants, "method ")
    return replace(cfg, variants=variants, tune=tune)


def _check_groups(cfg) -> None:
    """Few below Medium below Many: the two thresholds must leave the groups in that order."""
    d = cfg.dataset
    if d.few_below > d.many_above + 1:
        raise GlagError(
            f"few_below (--few-below) {d.few_below} is above many_above (--many-above) {d.many_above} + 1; "
            "a class cannot be both Few and Many: lower few_below or raise many_above"
        )


def check_methods(names, methods, variants, lead: str = "method ") -> None:
    """Refuse a stage-two method that is neither registered nor a variant, in one line led by ``lead``."""
    bad = [m for m in names if m not in methods and m not in variants]
    if bad:
        allowed = ", ".join([*methods, *variants])
        raise GlagError(f"{lead}'{bad[0]}' is not a method; choose from: {allowed}")


def checked(cfg, methods=()) -> Config:
    """``cfg`` with every value checked against its setting's rule, whatever built it (a
    ``dataclasses.replace`` bypasses the checks a recipe gets), or one line naming the setting."""
    if not isinstance(cfg, Config):
        raise GlagError(f"the config must be a glag Config (glag.load_config(...)), got {type(cfg).__name__}")
    values = {}
    for section in SECTION_TYPES:
        body = getattr(cfg, section)
        if not isinstance(body, SECTION_TYPES[section]):
            raise GlagError(f"config section '{section}' is a {type(body).__name__}, not its settings")
        for key in SECTIONS[section]:
            values[key] = check_value(key, getattr(body, key), f"config {section}.{key}")
    if methods:
        check_methods(values["method"], methods, cfg.variants, "config stage_two.method: ")
    cfg = cfg.with_values(values)
    _check_groups(cfg)
    return cfg


def config_from_dict(d: dict, *, methods=()) -> Config:
    """The Config a ``Config.to_dict`` (a result.json's ``run_config``) describes."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "config.toml"
        p.write_text(to_toml(d), encoding="utf-8")
        return parse_config(p, methods=methods)


def sweep_identity(recipe: dict, methods=()) -> dict:
    """A recipe (``{section: {key: value}}``, as a TOML file or ``Config.to_dict`` gives it; old spellings
    allowed) as the typed config holds it: every setting with defaults filled, each variant with its
    method; without what a sweep may grow or where it runs (the method list, [slurm]). Two recipes that
    run the same cells give the same dict, whichever form they were written in."""

    def renamed(body):
        return {RENAMED.get(k, k): v for k, v in body.items()} if isinstance(body, dict) else body

    raw = {s: renamed(b) for s, b in recipe.items() if s != "variants"}
    values, _ = recipe_values(raw, "recipe")
    body = recipe.get("variants") or {}
    variants = _variants("recipe", {n: renamed(v) for n, v in body.items()}, methods) if body else {}
    d = replace(Config().with_values(values), variants=variants).to_dict()
    d.pop("slurm", None)
    d["stage_two"].pop("method", None)
    return d


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, (int, float)):
        return repr(v)
    return toml_string(str(v))


def toml_string(text: str) -> str:
    """A TOML basic string: characters as they are (a JSON \\u escape of a character beyond the BMP is a
    surrogate pair, which TOML refuses), with the control characters TOML needs escaped."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def to_toml(cfg: dict) -> str:
    """TOML of ``{section: {key: value}}``; a value that is itself a table becomes ``[section.key]``."""
    lines = []
    for section, body in cfg.items():
        plain = {k: v for k, v in body.items() if not isinstance(v, dict)}
        if plain or not body:  # an empty section still prints its header
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in plain.items()]
            lines.append("")
        for name, table in body.items():
            if isinstance(table, dict):
                lines.append(
                    f"[{section}.{name if re.fullmatch(r'[A-Za-z0-9_-]+', name) else toml_string(name)}]"
                )
                lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
                lines.append("")
    return "\n".join(lines)


def toml_value(text: str):
    """A value typed on the command line: a TOML number, boolean, string or list; anything else is taken
    as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(item: str) -> tuple[str, object]:
    """``--set key=value`` -> (key, value); the key is checked when the config is loaded."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise GlagError(f"--set '{item}' is invalid; use --set key=value (a config key, e.g. crt_epochs=20)")
    return key.strip(), toml_value(value.strip())
