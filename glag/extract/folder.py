"""Image-folder datasets: ``<root>/{train[,test][,val]}/<class>/<image>`` (torchvision's ImageFolder layout).

Classes are the sorted folder names; a class's images are its files sorted by name. Every file is
read once: its bytes feed the content digest (the dataset's identity) and are decoded to RGB. Small
images (at most ``SMALL_MAX`` px a side, all one size) are kept in memory as one uint8 array, so
training never decodes again; larger ones are kept as paths and decoded by the loader.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glag.errors import GlagError
from glag.extract.pixels import read_rgb

SPLITS = ("train", "val", "test")
SMALL_MAX = 64  # images up to this size get the CIFAR recipe (ResNet-32, pad-4 crop + flip)


@dataclass
class FolderSplit:
    """One split's files in order (class by class, names sorted) and their labels."""

    paths: list[str]  # relative to the data root, '/'-separated
    labels: np.ndarray


@dataclass
class FolderData:
    classes: list[str]
    splits: dict[str, FolderSplit]
    digest: str  # sha256 over sorted relative paths, each + NUL + sha256(file bytes)
    images: dict[str, np.ndarray] | None  # split -> uint8 [N, H, W, 3] for small images, else None
    image_size: int  # largest side of the largest image


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _check_name(p: Path) -> None:
    """Refuse a file or folder name that is not valid UTF-8 (it could not be recorded in --indices or a
    digest)."""
    try:
        p.name.encode("utf-8")
    except UnicodeEncodeError:
        raise GlagError(f"the name {p.name!r} in '{p.parent}' is not valid UTF-8; rename it") from None


def _class_dirs(split_dir: Path) -> list[str]:
    dirs = [p for p in split_dir.iterdir() if p.is_dir() and _visible(p)]
    for p in dirs:
        _check_name(p)
    return sorted(p.name for p in dirs)


def list_folder(root: Path) -> tuple[list[str], dict[str, FolderSplit]]:
    """Classes and per-split file lists, with one-line errors for layouts glag cannot use."""
    root = Path(root)
    if not root.is_dir():
        raise GlagError(f"data_root (--data-root) '{root}' does not exist or is not a folder")
    if not (root / "train").is_dir():  # test/ and val/ may be missing: the dataset decides (image_folder)
        raise GlagError(
            f"image folder '{root}' has no train/ sub-folder; expected <root>/train/<class>/* with "
            "<root>/test/<class>/* and/or <root>/val/<class>/*"
        )
    present = [s for s in SPLITS if (root / s).is_dir()]
    per_split = {s: _class_dirs(root / s) for s in present}
    classes = per_split["train"]
    if not classes:
        raise GlagError(f"'{root / 'train'}' holds no class folders; expected <root>/train/<class>/<image>")
    for s in present[1:]:
        # val/ may omit a class: a class with no validation images (the largest class of an exported subset)
        if per_split[s] != classes and not (s == "val" and set(per_split[s]) < set(classes)):
            only_train = sorted(set(classes) - set(per_split[s]))
            only_other = sorted(set(per_split[s]) - set(classes))
            parts = ([f"only in train/: {', '.join(only_train)}"] if only_train else []) + (
                [f"only in {s}/: {', '.join(only_other)}"] if only_other else []
            )
            raise GlagError(
                f"image folder '{root}': train/ and {s}/ hold different classes ({'; '.join(parts)})"
            )
    if "val" in per_split and not per_split["val"]:
        raise GlagError(
            f"'{root / 'val'}' holds no class folders; fill it (val/<class>/<image>) or remove it"
        )
    splits = {}
    for s in present:
        paths, labels = [], []
        for c, name in enumerate(classes):
            if s == "val" and name not in per_split[s]:
                continue
            files = []
            with os.scandir(root / s / name) as it:  # one directory read, file types without a stat each
                for e in it:
                    if not _visible(Path(e.name)):
                        continue
                    _check_name(Path(e.path))
                    if e.is_dir():
                        raise GlagError(
                            f"'{e.path}' is a folder inside class folder '{root / s / name}'; glag reads the "
                            "images directly in each class folder: move its images up or remove it"
                        )
                    if e.is_file():
                        files.append(e.name)
            files.sort()
            if not files:
                raise GlagError(
                    f"class '{name}' has no images in '{root / s / name}'; every class needs at least one"
                )
            paths += [f"{s}/{name}/{f}" for f in files]
            labels += [c] * len(files)
        splits[s] = FolderSplit(paths, np.asarray(labels, dtype=np.int64))
    return classes, splits


def _read(root: Path, rel: str) -> tuple[bytes, tuple, np.ndarray | None]:
    """(sha256 of the bytes, image shape, RGB uint8 pixels or None when larger than ``SMALL_MAX``).
    Every file is fully decoded, so a truncated, non-image or bomb file is named here, before any training."""
    data = (root / rel).read_bytes()
    arr = read_rgb(root / rel, data)
    return hashlib.sha256(data).digest(), arr.shape, (arr if max(arr.shape[:2]) <= SMALL_MAX else None)


def load_folder(root: Path, *, progress: bool = True, workers: int = 2) -> FolderData:
    """Read every image once: digest of the folder's content, and decoded pixels of small images."""
    from tqdm.auto import tqdm

    root = Path(root)
    classes, splits = list_folder(root)
    rels = [p for s in splits.values() for p in s.paths]
    digests: dict[str, bytes] = {}
    shapes, arrays = set(), []
    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL and hashlib release the GIL while they work
        for rel, (dig, shape, arr) in zip(
            rels,
            tqdm(
                pool.map(lambda r: _read(root, r), rels, chunksize=64),
                total=len(rels),
                desc="decoding images",
                unit="img",
                disable=None if progress else True,
            ),
            strict=False,
        ):
            digests[rel] = dig
            shapes.add(shape)
            arrays.append(arr)
    h = hashlib.sha256()
    for rel in sorted(rels):
        h.update(rel.encode() + b"\0" + digests[rel])
    size = max(max(sh[:2]) for sh in shapes)
    images = None
    if size <= SMALL_MAX and len(shapes) == 1:
        images, start = {}, 0
        for s, sp in splits.items():
            images[s] = np.stack(arrays[start : start + len(sp.paths)])
            start += len(sp.paths)
    elif size <= SMALL_MAX:
        raise GlagError(
            f"image folder '{root}' mixes image sizes {sorted({sh[:2] for sh in shapes})[:4]}; "
            f"images up to {SMALL_MAX} px must all have one size (resize them first)"
        )
    return FolderData(classes, splits, h.hexdigest(), images, size)
