"""What a stage-one training is: the config's ``[stage_one]`` section resolved once against the dataset's
preset, and the key of its training folder, built from an explicit list of the settings that change the
trained weights."""

from __future__ import annotations

from dataclasses import dataclass, replace

from glag.config import Config, StageOneSettings
from glag.errors import GlagError
from glag.extract.dataset_kinds import IMAGENET_RECIPE, kind_of
from glag.extract.datasets import DatasetSpec
from glag.extract.folder import SMALL_MAX
from glag.extract.models import BACKBONES
from glag.extract.precision import resolve_precision
from glag.extract.pretrained import is_torchvision, model_name, weights_identity

MOMENTUM = 0.9  # stage-one SGD momentum: not a setting, but keyed (as it always was)
FOCAL_GAMMA = 1.0  # the focal loss's gamma: likewise

# The [stage_one] settings that change the trained weights, and so the features: each is in the key.
KEYED = (
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
    "mixup",
    "seed",
    "weights",
    "precision",
)
# The ones that do not, with the reason. A new setting goes in one of the two lists; the test
# (tests/test_stage_one_key.py) fails until it does, and shows that these leave every key as it is.
NOT_KEYED = {"compile": "torch.compile trains to the same weights, or falls back to eager"}
# Keyed numbers that are floats whatever way they were typed (a preset's warmup 5, a recipe's 5.0).
FLOAT_FIELDS = ("a", "g", "tau", "gamma", "lr", "warmup", "momentum", "weight_decay", "mixup")


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
        return cls(s, ds, p["pad"], p["flip"])

    @classmethod
    def make(cls, spec: DatasetSpec | None = None, **settings) -> StageOne:
        """The training of these ``[stage_one]`` settings (the rest at their defaults) on ``spec`` (default:
        the default dataset), e.g. ``StageOne.make(epochs=3, seed=1)``."""
        return cls.of(Config().with_values(settings), spec)

    @property
    def amp(self) -> bool:
        """bf16 autocast: the loss, optimizer and BatchNorm statistics stay fp32."""
        return self.settings.precision == "bf16"

    def identity(self, legacy: bool = False) -> dict:
        """What keys the training folder: the KEYED settings, the fixed momentum and focal gamma, the
        preset's augmentation and the dataset. Float fields are floats however they were typed; ``legacy``
        keeps them as typed, as glag did before, so folders trained then are still found."""
        s = self.settings
        d = {k: getattr(s, k) for k in KEYED}
        d.update(momentum=MOMENTUM, gamma=FOCAL_GAMMA, pad=self.pad, flip=self.flip)
        if not legacy:
            d.update({k: float(d[k]) for k in FLOAT_FIELDS})
        # Each left out at its old value, so the folders trained before it existed keep their keys.
        d["weights"] = weights_identity(s.weights)  # the file's content, not its path
        for k in ("weights", "mixup"):
            if not d[k]:
                del d[k]
        if d["precision"] == "fp32":
            del d["precision"]
        # Training never reads the full balanced split, so asking to dump it must not retrain.
        d["dataset"] = {**self.dataset.identity(), "full_split": False}
        return d


def canonical(identity: dict) -> dict:
    """A stored identity (a checkpoint's ``config``) with float fields as floats, as ``identity()`` gives
    them."""
    return {**identity, **{k: float(identity[k]) for k in FLOAT_FIELDS if k in identity}}
