"""The dataset registry: each dataset registers its reader under its name, with its defaults (largest
class, imbalance, stage-one recipe). Adding a dataset is one decorated function (see
``glag.extract.datasets`` for the built-in ones)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from glag.config import CHOICES
from glag.errors import GlagError
from glag.registry import add

# Stage-one recipe defaults (SPEC section 1: ResNet-32, 200 epochs, batch 128, lr 0.1, 5 warm-up for
# CIFAR); a recipe or flag overrides each.
CIFAR_RECIPE = dict(backbone="resnet32", epochs=200, batch_size=128, lr=0.1, warmup=5, pad=4, flip=True)
IMAGENET_RECIPE = dict(backbone="resnet10", epochs=200, batch_size=256, lr=0.1, warmup=5, pad=0, flip=True)
KINDS = ("array", "list", "folder")  # a profile picks the subset / list files fix it / an image folder


@dataclass(frozen=True)
class DatasetKind:
    """A registered dataset. ``read(spec, root, progress) -> LTData`` builds it from the files under
    ``root`` (None for a bundled one)."""

    name: str
    read: Callable
    kind: str = "array"
    n_max: int = 0  # the largest class's default size; 0: none (list files) or from the data (folders)
    imbalance: float = 100.0  # the default imbalance ratio
    recipe: dict = field(default_factory=lambda: dict(CIFAR_RECIPE))
    bundled: bool = False  # ships with a library: reads no data_root


DATASET_KINDS: dict[str, DatasetKind] = {}


def register_dataset(name: str, **info):
    """Decorator: make ``read(spec, root, progress) -> LTData`` the dataset ``name`` (its name becomes a
    value of the ``dataset`` setting); ``info``: the DatasetKind fields after ``read``."""

    def deco(read):
        kind = DatasetKind(name, read, **info)
        if kind.kind not in KINDS:
            raise GlagError(f"dataset '{name}': kind '{kind.kind}' is not one of {', '.join(KINDS)}")
        add(
            DATASET_KINDS,
            name,
            kind,
            "dataset",
            setting="dataset",
            fn=read,
            args=3,
            builtins="glag.extract.datasets",
        )
        if kind.kind == "array" and (not isinstance(kind.n_max, int) or kind.n_max < 1):
            DATASET_KINDS.pop(name)  # after add's own checks (a duplicate is named as one), then taken back
            CHOICES["dataset"] = tuple(c for c in CHOICES["dataset"] if c != name)
            raise GlagError(
                f"dataset '{name}': an array dataset picks its subset from n_max (its largest class's "
                f"size), so register it with n_max >= 1, not {kind.n_max!r}"
            )
        return read

    return deco


def kind_of(name: str) -> DatasetKind:
    """The registered dataset ``name``, or one line naming the setting and the allowed names."""
    if name not in DATASET_KINDS:
        raise GlagError(f"unknown dataset '{name}'; choose one of: {', '.join(CHOICES['dataset'])}")
    return DATASET_KINDS[name]
