"""What a stage-one training is: the config's ``[stage_one]`` section resolved once against the dataset's
preset, and the key of its training folder, built from an explicit list of the settings that change the
trained weights."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from glag.config import Config, StageOneSettings
from glag.errors import GlagError
from glag.extract.dataset_kinds import IMAGENET_RECIPE, kind_of
from glag.extract.datasets import DatasetSpec
from glag.extract.folder import SMALL_MAX
from glag.extract.losses import FOCAL_GAMMA, loss_params
from glag.extract.models import BACKBONES
from glag.extract.precision import resolve_precision
from glag.extract.pretrained import is_torchvision, model_name, weights_identity

MOMENTUM = 0.9  # stage-one SGD momentum: not a setting, but keyed (as it always was)

# The [stage_one] settings in every key, at whatever value: those that keyed trainings from the start.
ALWAYS_KEYED = (
    "backbone",
    "loss",
    "a",
    "g",
    "tau",
    "epochs",
    "batch_size",
    "lr",
    "warmup",
    "weight_decay",
    "seed",
)


def newer_keyed(settings) -> dict:
    """The keyed settings newer than ALWAYS_KEYED that are not at their old value: each as its declaration
    in config.py says (Rule.keyed, Rule.unkeyed_at), so a new setting leaves every earlier key as it is."""
    out = {}
    for f in fields(settings):
        rule = f.metadata["rule"]
        old = rule.unkeyed_at if rule.unkeyed_at is not None else f.default
        if rule.keyed and f.name not in ALWAYS_KEYED and getattr(settings, f.name) != old:
            out[f.name] = getattr(settings, f.name)
    return out


_RULES = {f.name: f.metadata["rule"] for f in fields(StageOneSettings)}
KEYED = ALWAYS_KEYED + tuple(n for n, r in _RULES.items() if r.keyed and n not in ALWAYS_KEYED)
NOT_KEYED = tuple(n for n, r in _RULES.items() if not r.keyed)
# Keyed numbers that are floats whatever way they were typed (a preset's warmup 5, a recipe's 5.0).
FLOAT_FIELDS = ("gamma", "momentum") + tuple(n for n in KEYED if _RULES[n].kind is float)


def preset_for(ds: DatasetSpec) -> dict:
    """The stage-one recipe defaults of a resolved dataset spec (registered with the dataset); an image
    folder of images over folder.SMALL_MAX px gets ImageNet-LT's."""
    if ds.name == "folder" and ds.image_size > SMALL_MAX:
        return IMAGENET_RECIPE
    return kind_of(ds.name).recipe


def check_backbone(name: str) -> None:
    if is_torchvision(name):
        model_name(name)  # unknown names fail here, before any data is read
    elif name not in BACKBONES:
        raise GlagError(
            f"backbone (--backbone) '{name}' is unknown; choose one of: {', '.join(sorted(BACKBONES))}, "
            "or torchvision:NAME"
        )


def check_sam(s: StageOneSettings) -> StageOneSettings:
    """ImbSAM's settings as they key the training: its tail threshold only counts when it is on, and it is
    not combined with mixup (the reference splits a batch's loss by each image's one label)."""
    if s.sam_rho == 0:
        return replace(s, sam_tail_below=StageOneSettings.sam_tail_below)
    if s.mixup > 0:
        raise GlagError(
            f"sam_rho (--sam-rho) {s.sam_rho:g} with mixup (--mixup) {s.mixup:g}: ImbSAM splits the loss by "
            "each image's label, which mixup blends; set one of them to 0"
        )
    return s


@dataclass(frozen=True)
class StageOne:
    """``[stage_one]`` with every unset value filled from the dataset's preset, the resolved dataset, and
    the preset's augmentation (pad, flip)."""

    settings: StageOneSettings
    dataset: DatasetSpec
    pad: int
    flip: bool

    @classmethod
    def of(cls, cfg: Config, spec: DatasetSpec | None = None) -> StageOne:
        """The training a config asks for on ``spec`` (default: its [dataset], as far as known unread)."""
        ds = (spec or DatasetSpec.from_config(cfg)).resolved()
        p, s = preset_for(ds), cfg.stage_one
        epochs = p["epochs"] if s.epochs is None else s.epochs
        warmup = p["warmup"] if s.warmup is None else s.warmup
        s = replace(
            s,
            backbone=s.backbone or p["backbone"],
            epochs=epochs,
            batch_size=s.batch_size or p["batch_size"],
            lr=s.lr or p["lr"],
            warmup=min(warmup, epochs),
            precision=resolve_precision(s.precision),
        )
        check_backbone(s.backbone)
        return cls(check_sam(s), ds, p["pad"], p["flip"])

    @classmethod
    def make(cls, spec: DatasetSpec | None = None, **settings) -> StageOne:
        """The training of these ``[stage_one]`` settings (the rest at their defaults) on ``spec`` (default:
        the default dataset), e.g. ``StageOne.make(epochs=3, seed=1)``."""
        return cls.of(Config().with_values(settings), spec)

    def loss_params(self) -> dict:
        """What the stage-one loss's builder is given: every setting declared loss_param, and gamma."""
        return {**{k: getattr(self.settings, k) for k in loss_params(self.settings)}, "gamma": FOCAL_GAMMA}

    @property
    def amp(self) -> bool:
        """bf16 autocast: the loss, optimizer and BatchNorm statistics stay fp32."""
        return self.settings.precision == "bf16"

    def identity(self, legacy: bool = False) -> dict:
        """What keys the training folder: the KEYED settings, the fixed momentum and focal gamma, the
        preset's augmentation and the dataset. Float fields are floats however they were typed; ``legacy``
        keeps them as typed, as glag did before, so folders trained then are still found."""
        s = self.settings
        d = {k: getattr(s, k) for k in ALWAYS_KEYED} | newer_keyed(s)
        d.update(momentum=MOMENTUM, gamma=FOCAL_GAMMA, pad=self.pad, flip=self.flip)
        if not legacy:
            d.update({k: float(d[k]) for k in FLOAT_FIELDS if k in d})
        if "weights" in d:
            d["weights"] = weights_identity(s.weights)  # the file's content, not its path
        # Training never reads the full balanced split, so asking to dump it must not retrain.
        d["dataset"] = {**self.dataset.identity(), "full_split": False}
        return d


def canonical(identity: dict) -> dict:
    """A stored identity (a checkpoint's ``config``) with float fields as floats, as ``identity()`` gives
    them."""
    return {**identity, **{k: float(identity[k]) for k in FLOAT_FIELDS if k in identity}}
