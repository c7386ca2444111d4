"""Long-tailed datasets: CIFAR-10/100-LT, Fashion-MNIST-LT, digits-LT, image folders and list-file datasets.

A dataset is held as image *sources* (uint8 arrays in memory, or file paths for
list-file datasets) plus index *splits* into them: ``train`` (the LT subset),
``val`` (held-out training images, never test), ``test`` and optionally ``full``
(the whole balanced training source, for the probe protocol).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from glag.config import CHOICES, Config, default
from glag.errors import GlagError, user_code
from glag.extract import sources
from glag.extract.dataset_kinds import CIFAR_RECIPE, IMAGENET_RECIPE, kind_of, register_dataset
from glag.extract.folder import load_folder
from glag.extract.profile import PROFILES, check_imbalance, class_counts, profile_counts

FOLDER = "folder"  # <root>/{train,test[,val]}/<class>/<image>: glag.extract.folder
DIGITS_TEST_PER_CLASS = 40
# Where validation rows come from when no val/ folder or list file gives them (SPEC section 5).
# every-class: val_per_class rows for every class, the leftovers first, the shortfall from the end of the
#   class's shuffled training part (so everything tuned on validation sees the largest class too);
# leftovers: only the leftovers (the literature's exact training set; a class without leftovers has none).
VAL_ROWS = CHOICES["val_rows"]


@dataclass(frozen=True)
class DatasetSpec:
    """What identifies a long-tailed dataset; ``data_root`` is where it is read from, not part of its
    identity."""

    name: str = default("dataset")
    imbalance: float = default("imbalance")  # 0 = the dataset's default (100, or 20 for digits)
    val_per_class: int = default("val_per_class")
    full_split: bool = default("full_split")
    data_root: str | None = field(default=None, compare=False)
    profile: str = default(
        "profile"
    )  # exp: n_max * IM^(-c/(C-1)); step: first C/2 classes n_max, the rest n_max/IM;
    #                        all: an image folder that is the subset already (every image, its val/ folder)
    n_max: int = default("n_max")  # 0 = the dataset's default (its registered n_max)
    subset_seed: int = default("subset_seed")  # seeds LDAM-DRW's per-class shuffle that picks the LT subset
    # Names the rule that picks the subset, so caches made by the old "first n_c in file order" rule
    # (which had no such field) can never share a key with caches made by this one.
    subset_rule: str = "ldam-shuffle"
    # Image folders only, filled in when the folder is read: the sha256 digest of its content (part of
    # the identity, so a changed, added or removed image gives new keys) and its largest image side.
    content: str = ""
    image_size: int = 0
    # VAL_ROWS; '' where it does not apply (list files and val/ folders give their own validation rows).
    # 'leftovers' and '' are left out of the identity, so caches made before the field keep their keys.
    val_rows: str = default("val_rows")
    # An image folder without test/: the fraction of each class's training images carved as the test split
    # (0, left out of the identity, keeps every existing key).
    test_fraction: float = default("test_fraction")

    @classmethod
    def from_config(cls, cfg: Config) -> DatasetSpec:
        """The resolved spec of a run config's [dataset]."""
        d = cfg.dataset
        return cls(
            d.dataset,
            d.imbalance,
            d.val_per_class,
            d.full_split,
            d.data_root or None,
            profile=d.profile,
            n_max=d.n_max,
            subset_seed=d.subset_seed,
            val_rows=d.val_rows,
            test_fraction=d.test_fraction,
        ).resolved()

    def resolved(self) -> DatasetSpec:
        kind = kind_of(self.name)
        if self.val_per_class < 0:
            raise GlagError(
                f"val_per_class (--val-per-class) {self.val_per_class} is invalid; it must be >= 0"
            )
        if self.val_rows not in VAL_ROWS + ("",):
            raise GlagError(
                f"val_rows (--val-rows) '{self.val_rows}' is unknown; choose one of: {', '.join(VAL_ROWS)}"
            )
        if kind.kind == "list":  # subset fixed by the published lists
            return replace(
                self,
                imbalance=0.0,
                profile="list",
                n_max=0,
                subset_seed=0,
                subset_rule="list-file",
                val_rows="",
            )
        if self.profile not in PROFILES:
            raise GlagError(
                f"profile (--profile) '{self.profile}' is unknown; choose one of: {', '.join(PROFILES)}"
            )
        if self.test_fraction and self.name != FOLDER:
            raise GlagError(
                f"test_fraction (--test-fraction) {self.test_fraction:g} applies to dataset 'folder' only "
                f"(an image folder without test/), not '{self.name}'; drop it"
            )
        if self.profile == "auto" and (self.name != FOLDER or self.imbalance or self.n_max):
            return replace(self, profile="exp").resolved()  # a formula was asked for, or no folder to look at
        if self.profile == "all":  # the folder is the subset: its digest identifies it, no formula picks
            if self.name != FOLDER:
                raise GlagError(
                    f"profile 'all' (--profile) applies to dataset 'folder' only (a folder that is already "
                    f"long-tailed), not '{self.name}'; use profile 'exp' or 'step'"
                )
            # subset_seed and val_rows stay: they pick validation rows when the folder has no val/ for them
            # (the reader clears val_rows when a val/ folder gives them, as every key before had it)
            return replace(self, imbalance=0.0, n_max=0, subset_seed=int(self.subset_seed))
        if (
            isinstance(self.subset_seed, bool)
            or not isinstance(self.subset_seed, (int, np.integer))
            or not 0 <= self.subset_seed < 2**32
        ):
            raise GlagError(
                f"subset_seed (--subset-seed) {self.subset_seed} is invalid; it must be an integer in "
                "[0, 2^32)"
            )
        if self.profile == "auto":  # an image folder: decided once its class sizes are read (image_folder)
            return replace(self, subset_seed=int(self.subset_seed))
        if (
            self.name == FOLDER and not self.n_max
        ):  # the default needs the folder's class sizes: set by load_dataset
            im = check_imbalance(self.imbalance or 100.0)
            return replace(self, imbalance=im, subset_seed=int(self.subset_seed))
        n_max = self.n_max or kind.n_max
        if n_max < 1:
            default = "the smallest class" if self.name == FOLDER else kind.n_max
            raise GlagError(
                f"n_max (--n-max) {self.n_max} is invalid; it must be >= 1 (0 = the dataset's default, "
                f"{default})"
            )
        im = check_imbalance(self.imbalance or kind.imbalance)
        return replace(self, imbalance=im, n_max=int(n_max), subset_seed=int(self.subset_seed))

    def identity(self) -> dict:
        d = asdict(self.resolved())
        d.pop("data_root")
        if d["val_rows"] in ("", "leftovers"):
            d.pop("val_rows")
        if not d["test_fraction"]:
            d.pop("test_fraction")
        if self.name != FOLDER:  # datasets from before the folder fields keep their keys
            d.pop("content")
            d.pop("image_size")
        return d

    def label(self) -> str:
        r = self.resolved()
        if kind_of(r.name).kind == "list":
            return r.name
        extra = "" if r.profile == "exp" else f"-{r.profile}"
        if r.name == FOLDER and r.profile in ("all", "auto"):
            return f"folder-{r.content[:8] or 'unread'}-{r.profile}"
        if r.name == FOLDER:
            return f"folder-{r.content[:8] or 'unread'}-im{r.imbalance:g}{extra}-n{r.n_max}" + (
                "" if r.subset_seed == 0 else f"-s{r.subset_seed}"
            )
        extra += "" if r.n_max == kind_of(r.name).n_max else f"-n{r.n_max}"
        extra += "" if r.subset_seed == 0 else f"-s{r.subset_seed}"
        return f"{r.name}-im{r.imbalance:g}{extra}"


@dataclass
class Split:
    """Rows of one split: labels and their positions in the named source."""

    source: str
    index: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class LTData:
    spec: DatasetSpec
    num_classes: int
    class_names: list[str]
    sources: dict  # source name -> uint8 image array, or list of file paths
    splits: dict[str, Split]
    root: Path | None = None
    paths: dict | None = None  # source name -> image paths relative to ``root`` (image folders)
    # per class, the rows its LT training part gave to validation (--val-rows every-class); None: none given
    lent: np.ndarray | None = None
    rule: str = ""  # which subset and split rule an image folder got, in words (glag data, glag run)

    @property
    def train_counts(self) -> np.ndarray:
        return class_counts(self.splits["train"].labels, self.num_classes)

    @property
    def is_array(self) -> bool:
        return isinstance(next(iter(self.sources.values())), np.ndarray)

    def images(self, split: str):
        """uint8 images of a split (array datasets) or their file paths (list datasets)."""
        s = self.splits[split]
        src = self.sources[s.source]
        if isinstance(src, np.ndarray):
            return src[s.index]
        return [src[i] for i in s.index]

    def summary(self) -> dict:
        return {
            "dataset": self.spec.label(),
            "num_classes": self.num_classes,
            **{f"{k}_rows": len(v) for k, v in self.splits.items()},
        }


def lt_indices(
    labels: np.ndarray,
    counts: np.ndarray,
    val_per_class: int,
    seed: int = 0,
    class_names=None,
    val_rows: str = "leftovers",
):
    """LDAM-DRW's subset rule: one legacy MT19937 stream seeded with ``seed``; for each class c in
    order, shuffle its indices and keep the first ``counts[c]`` for train and up to ``val_per_class``
    of the rest (the leftovers) for validation. With ``val_rows='every-class'`` a class with fewer
    leftovers than ``val_per_class`` also gives the shortfall ``s`` from the end of its training part,
    ``idx[counts[c] - s : counts[c]]`` (SPEC section 5). Returns (train, val, lent): index arrays class by
    class in shuffled order, and each class's ``s``."""
    # RandomState(seed) is the stream np.random.seed(seed) gives the legacy global functions, without
    # touching the caller's global state.
    rng = np.random.RandomState(seed)
    train, val, lent = [], [], []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        name = f"class {c}" if class_names is None else f"class {c} ('{class_names[c]}')"
        if len(idx) < n:
            raise GlagError(
                f"{name} has {len(idx)} training images but the profile asks for {n}; "
                "lower n_max or raise the imbalance ratio"
            )
        short = max(0, val_per_class - (len(idx) - n)) if val_rows == "every-class" else 0
        if short >= n:
            raise GlagError(
                f"{name} keeps {n} training images with {len(idx) - n} left over, so {val_per_class} "
                f"validation rows would leave it no training image; lower val_per_class or use "
                "val_rows 'leftovers'"
            )
        keep = n - short  # the validation rows are the next val_per_class after the training part
        train.append(idx[:keep])
        val.append(idx[keep : keep + val_per_class])
        lent.append(short)
    return np.concatenate(train), np.concatenate(val), np.asarray(lent, dtype=np.int64)


def check_n_max(n_max: int, labels: np.ndarray, num_classes: int) -> None:
    """Refuse an ``n_max`` larger than the smallest class's pool of training images."""
    avail = class_counts(labels, num_classes)
    c = int(np.argmin(avail))
    if n_max > avail[c]:
        raise GlagError(
            f"n_max (--n-max) {n_max} is larger than the {avail[c]} training images of class {c}; "
            f"use n_max <= {avail[c]}"
        )


def _split(source: str, index: np.ndarray, labels: np.ndarray) -> Split:
    index = np.asarray(index, dtype=np.int64)
    return Split(source, index, labels[index].astype(np.int64))


def _need_root(spec: DatasetSpec, root: Path | None) -> Path:
    if root is None:
        raise GlagError(f"dataset '{spec.name}' needs data_root (--data-root): a folder holding its files")
    if not root.is_dir():
        raise GlagError(f"data root '{root}' does not exist or is not a folder")
    return root


def array_dataset(spec, root, train, test, train_pool=None, test_rows=None) -> LTData:
    """The profile's LT subset of ``train`` = (images, labels, class names) drawn from ``train_pool`` (all
    rows by default), validation rows by ``spec.val_rows``, and ``test``'s ``test_rows`` (all)."""
    (train_images, train_labels, names), (test_images, test_labels, _) = train, test
    train_pool = np.arange(len(train_labels)) if train_pool is None else train_pool
    test_rows = np.arange(len(test_labels)) if test_rows is None else test_rows
    num_classes = len(names)
    pool_labels = train_labels[train_pool]
    check_n_max(spec.n_max, pool_labels, num_classes)
    counts = profile_counts(spec.profile, spec.n_max, num_classes, spec.imbalance)
    tr, va, lent = lt_indices(
        pool_labels, counts, spec.val_per_class, spec.subset_seed, val_rows=spec.val_rows
    )
    splits = {
        "train": _split("train", train_pool[tr], train_labels),
        "val": _split("train", train_pool[va], train_labels),
        "test": _split("test", test_rows, test_labels),
    }
    if spec.full_split:
        splits["full"] = _split("train", train_pool, train_labels)
    srcs = {"train": train_images, "test": test_images}
    return LTData(spec, num_classes, names, srcs, splits, root, lent=lent if lent.any() else None)


@register_dataset(
    "digits",
    n_max=110,
    imbalance=20.0,
    bundled=True,
    recipe=dict(backbone="cnn", epochs=30, batch_size=64, lr=0.05, warmup=2, pad=1, flip=False),
)
def digits(spec: DatasetSpec, root: Path | None, progress: bool) -> LTData:
    """scikit-learn's 8x8 digits: the last 40 images of each class are the test split."""
    images, labels, names = sources.read_digits()
    test = np.concatenate([np.flatnonzero(labels == c)[-DIGITS_TEST_PER_CLASS:] for c in range(10)])
    pool = np.setdiff1d(np.arange(len(labels)), test)
    data = (images, labels, names)
    return array_dataset(spec, None, data, data, train_pool=pool, test_rows=test)


@register_dataset("cifar10-lt", n_max=5000)
def cifar10_lt(spec: DatasetSpec, root: Path | None, progress: bool) -> LTData:
    root = _need_root(spec, root)
    return array_dataset(spec, root, *(sources.read_cifar(root, 10, train=t) for t in (True, False)))


@register_dataset("cifar100-lt", n_max=500)
def cifar100_lt(spec: DatasetSpec, root: Path | None, progress: bool) -> LTData:
    root = _need_root(spec, root)
    return array_dataset(spec, root, *(sources.read_cifar(root, 100, train=t) for t in (True, False)))


@register_dataset("fashion-mnist-lt", n_max=6000)
def fashion_mnist_lt(spec: DatasetSpec, root: Path | None, progress: bool) -> LTData:
    root = _need_root(spec, root)
    return array_dataset(spec, root, *(sources.read_fashion(root, train=t) for t in (True, False)))


def read_list_file(path: Path) -> tuple[list[str], np.ndarray]:
    """``<relative path> <label>`` per line; blank lines ignored."""
    if not path.is_file():
        raise GlagError(f"list file '{path}' not found")
    paths, labels = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
            raise GlagError(f"{path}:{lineno}: expected '<relative path> <label>', got {line.strip()!r}")
        paths.append(parts[0])
        labels.append(int(parts[1]))
    if not paths:
        raise GlagError(f"list file '{path}' has no entries")
    return paths, np.asarray(labels, dtype=np.int64)


def _list_dataset(spec: DatasetSpec, root: Path | None, files: tuple[str, str, str]) -> LTData:
    """The train, val and test list files under ``root`` (``<relative path> <label>`` per line)."""
    if root is None or not root.is_dir():
        raise GlagError(
            f"dataset '{spec.name}' needs data_root (--data-root) pointing at an existing folder, "
            f"got '{root}'"
        )
    srcs, splits = {}, {}
    for split, fname in zip(("train", "val", "test"), files, strict=False):
        paths, labels = read_list_file(root / fname)
        srcs[split] = [str(root / p) for p in paths]
        splits[split] = Split(split, np.arange(len(paths), dtype=np.int64), labels)
    num_classes = int(max(s.labels.max() for s in splits.values())) + 1
    names_file = root / "class_names.json"
    class_names = (
        json.loads(names_file.read_text()) if names_file.is_file() else [str(i) for i in range(num_classes)]
    )
    return LTData(spec, num_classes, class_names, srcs, splits, root)


@register_dataset("imagenet-lt", kind="list", recipe=IMAGENET_RECIPE)
def imagenet_lt(spec: DatasetSpec, root: Path | None, progress: bool) -> LTData:
    return _list_dataset(spec, root, ("ImageNet_LT_train.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt"))


@register_dataset("places-lt", kind="list", recipe=IMAGENET_RECIPE)
def places_lt(spec: DatasetSpec, root: Path | None, progress: bool) -> LTData:
    return _list_dataset(spec, root, ("Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt"))


@register_dataset("inat2018", kind="list", recipe=dict(IMAGENET_RECIPE, backbone="resnet50", epochs=90))
def inat2018(spec: DatasetSpec, root: Path | None, progress: bool) -> LTData:
    files = ("iNaturalist18_train.txt", "iNaturalist18_val_split.txt", "iNaturalist18_val.txt")
    return _list_dataset(spec, root, files)


# Images up to folder.SMALL_MAX px get the CIFAR recipe, larger ones ImageNet-LT's (extract.train).
@register_dataset(FOLDER, kind="folder", recipe=CIFAR_RECIPE)
def image_folder(spec: DatasetSpec, root: Path | None, progress: bool) -> LTData:
    if root is None:
        raise GlagError(
            "dataset 'folder' needs data_root (--data-root): a folder holding train/<class>/* and "
            "test/<class>/* (or val/<class>/*)"
        )
    fd = load_folder(root, progress=progress)
    test, pool, val_folder, where = _evaluation(spec, root, fd)
    spec, rule = _profile_of(spec, fd, pool)
    splits, spec, lent = (_whole_folder if spec.profile == "all" else _lt_subset)(
        spec, root, fd, pool, val_folder
    )
    splits["test"] = test
    train_labels = fd.splits["train"].labels
    if spec.full_split:
        splits["full"] = _split("train", np.arange(len(train_labels)), train_labels)
    paths = {s: sp.paths for s, sp in fd.splits.items()}
    srcs = fd.images if fd.images is not None else {s: [str(root / p) for p in ps] for s, ps in paths.items()}
    return LTData(
        spec,
        len(fd.classes),
        list(fd.classes),
        srcs,
        splits,
        root,
        paths=paths,
        lent=lent,
        rule=f"{rule}; {where}",
    )


def _evaluation(spec: DatasetSpec, root: Path, fd) -> tuple[Split, np.ndarray, bool, str]:
    """The split a folder is evaluated on, the training rows left to pick from, whether a val/ folder gives
    the validation rows, and where the evaluation images come from, in words: test/; else val/ (then
    validation rows come from train/); else ``test_fraction`` of each class carved from train/."""
    train_labels = fd.splits["train"].labels
    everything = np.arange(len(train_labels))
    f = spec.test_fraction
    for name in ("test", "val"):
        if name not in fd.splits:
            continue
        if f:
            raise GlagError(
                f"image folder '{root}' has its own {name}/ to evaluate on; drop test_fraction "
                f"(--test-fraction {f:g}), which carves a test split from train/ only where there is none"
            )
        labels = fd.splits[name].labels
        if name == "test":
            return (
                _split("test", np.arange(len(labels)), labels),
                everything,
                "val" in fd.splits,
                "tested on test/",
            )
        return (
            _split("val", np.arange(len(labels)), labels),
            everything,
            False,
            "no test/: tested on val/, validation rows from train/",
        )
    if not f:
        raise GlagError(
            f"image folder '{root}' has train/ but neither test/ nor val/ to evaluate on; carve a seeded, "
            "stratified test split from train/ with test_fraction (--test-fraction 0.2), or add "
            "test/<class>/*"
        )
    test, pool = carve(train_labels, len(fd.classes), f, spec.subset_seed)
    where = (
        f"no test/ or val/: tested on {f:g} of each class carved from train/ (subset_seed {spec.subset_seed})"
    )
    return _split("train", test, train_labels), pool, False, where


def split_each_class(labels: np.ndarray, rows: np.ndarray, num_classes: int, take, rng):
    """Each class's rows among ``rows``, shuffled by ``rng`` class by class, split into (kept, taken, how
    many each class gave): the last ``take(n)`` of a class of ``n`` rows are taken."""
    kept, taken, counts = [], [], []
    for c in range(num_classes):
        idx = rows[labels[rows] == c]
        rng.shuffle(idx)
        k = take(len(idx))
        kept.append(idx[: len(idx) - k])
        taken.append(idx[len(idx) - k :])
        counts.append(k)
    return np.concatenate(kept), np.concatenate(taken), np.asarray(counts, dtype=np.int64)


def carve(labels: np.ndarray, num_classes: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, stratified split of each class's rows: (round(fraction * n_c) rows, the rest), at least one
    row on each side for a class of two or more; the same on every run with the same seed."""
    rng = np.random.RandomState(np.random.SeedSequence([int(seed), 0x7E57]).generate_state(1))
    rest, out, _ = split_each_class(
        labels,
        np.arange(len(labels)),
        num_classes,
        lambda n: min(max(int(round(fraction * n)), 1), n - 1) if n >= 2 else 0,
        rng,
    )
    return out, rest


IMBALANCED_ABOVE = 1.5  # largest over smallest training class: above this a folder is already long-tailed


def _profile_of(spec: DatasetSpec, fd, pool: np.ndarray) -> tuple[DatasetSpec, str]:
    """The profile an image folder gets, and why, in words: 'auto' is 'all' when its training classes are
    already imbalanced (largest over smallest above ``IMBALANCED_ABOVE``), else the literature's 'exp'."""
    if spec.profile != "auto":
        return spec, f"profile '{spec.profile}' (as given)"
    counts = class_counts(fd.splits["train"].labels[pool], len(fd.classes))
    ratio = counts.max() / max(counts.min(), 1)
    sizes = f"classes of {counts.max()} ... {counts.min()} training images, ratio {ratio:.3g}"
    if ratio > IMBALANCED_ABOVE:
        why = (
            f"profile 'all' (auto): already long-tailed ({sizes} > {IMBALANCED_ABOVE}), used as it is; "
            "--profile exp, --imbalance or --n-max picks the literature's subset instead"
        )
        return replace(spec, profile="all").resolved(), why
    spec = replace(spec, profile="exp").resolved()
    why = f"profile 'exp' (auto): balanced ({sizes} <= {IMBALANCED_ABOVE}), the literature's subset rule"
    return spec, why


def _lt_subset(
    spec: DatasetSpec, root: Path, fd, pool: np.ndarray, val_folder: bool
) -> tuple[dict, DatasetSpec, np.ndarray | None]:
    """The profile's subset of each class's files in ``pool`` (LDAM-DRW's rule); validation from a val/
    folder, or by ``val_rows`` from the training files (a val/ folder makes ``val_rows`` not apply: '')."""
    num_classes = len(fd.classes)
    all_labels = fd.splits["train"].labels
    train_labels = np.full_like(
        all_labels, -1
    )  # rows outside the pool (a carved test split) are never picked
    train_labels[pool] = all_labels[pool]
    avail = class_counts(all_labels[pool], num_classes)
    defaulted = not spec.n_max
    n_max = spec.n_max or int(avail.min())
    if n_max > avail.max():
        c = int(np.argmax(avail))
        raise GlagError(
            f"n_max (--n-max) {n_max} is larger than the largest class ('{fd.classes[c]}', {avail[c]} "
            f"training images); use n_max <= {avail[c]}"
        )
    val_rows = "" if val_folder else spec.val_rows
    spec = replace(
        spec, n_max=int(n_max), content=fd.digest, image_size=int(fd.image_size), val_rows=val_rows
    ).resolved()
    counts = profile_counts(spec.profile, spec.n_max, num_classes, spec.imbalance)
    try:
        tr, va, lent = lt_indices(
            train_labels, counts, spec.val_per_class, spec.subset_seed, fd.classes, val_rows
        )
    except GlagError as e:
        if defaulted:  # the cause is the smallest class, whichever class the refusal names
            c = int(np.argmin(avail))
            raise GlagError(
                f"{e} (n_max defaulted to {n_max}, the {avail[c]} training images of the smallest class "
                f"'{fd.classes[c]}'; set n_max (--n-max), or profile 'all' to keep the folder as it is)"
            ) from None
        raise
    splits = {"train": _split("train", tr, all_labels)}
    if val_folder:  # a val folder is used whole; without one, validation comes from the leftovers
        splits["val"] = _split("val", np.arange(len(fd.splits["val"].labels)), fd.splits["val"].labels)
    else:
        splits["val"] = _split("train", va, all_labels)
    return splits, spec, (lent if lent.any() else None)


def _whole_folder(
    spec: DatasetSpec, root: Path, fd, pool: np.ndarray, val_folder: bool
) -> tuple[dict, DatasetSpec, np.ndarray | None]:
    """Profile 'all': every training image of ``pool`` as it is. Validation from the val/ folder; without
    one, ``val_per_class`` rows of each class from the end of its shuffled training images (the
    every-class rule), at most half of a class, so that no class is left without training images."""
    labels = fd.splits["train"].labels
    if val_folder:
        spec = replace(spec, content=fd.digest, image_size=int(fd.image_size), val_rows="").resolved()
        val = fd.splits["val"].labels
        return (
            {"train": _split("train", pool, labels), "val": _split("val", np.arange(len(val)), val)},
            spec,
            None,
        )
    spec = replace(spec, content=fd.digest, image_size=int(fd.image_size), val_rows="every-class").resolved()
    rng = np.random.RandomState(spec.subset_seed)
    take = lambda n: min(spec.val_per_class, n // 2)  # noqa: E731
    train, val, lent = split_each_class(labels, pool, len(fd.classes), take, rng)
    splits = {"train": _split("train", train, labels), "val": _split("train", val, labels)}
    return splits, spec, lent


def load_dataset(spec: DatasetSpec, download: bool = False, progress: bool = True) -> LTData:
    """Build the long-tailed dataset that ``spec`` names, reading from ``spec.data_root``.

    The returned data's ``spec`` is complete (an image folder's digest and default ``n_max`` filled in)."""
    spec = spec.resolved()
    kind = kind_of(spec.name)
    root = Path(spec.data_root).expanduser() if spec.data_root else None
    if kind.bundled and root is not None:  # silently ignored, two data roots would be one dataset
        raise GlagError(
            f"dataset '{spec.name}' is bundled with its library and reads no data_root (--data-root), "
            f"but '{spec.data_root}' was given; drop it, or choose a dataset that reads files"
        )
    if download and not kind.bundled:
        if kind.kind == "folder":
            raise GlagError(
                f"download does not apply to dataset '{spec.name}' (its images are already on disk)"
            )
        if root is None:
            raise GlagError("download needs data_root (--data-root): where to put the files")
        sources.download(spec.name, root)  # refuses a dataset torchvision cannot fetch
    with user_code(f"dataset '{spec.name}'", kind.read):
        data = kind.read(spec, root, progress)
    if not isinstance(data, LTData):
        raise GlagError(
            f"dataset '{spec.name}' read {type(data).__name__}, not the LTData glag trains on (array_dataset "
            "builds one); see 'Add your own' in docs/usage.md"
        )
    return data
