"""Readers for raw dataset files: CIFAR pickles, IDX (MNIST-style) and bundled digits.

Each reader returns ``(images uint8 [N, H, W] or [N, H, W, 3], labels int64 [N])``
in file order.  torchvision is used only to download (``--download``).
"""

from __future__ import annotations

import gzip
import hashlib
import warnings
from pathlib import Path

import numpy as np

from glag.errors import GlagError
from glag.extract.safe_unpickle import load_data_pickle

# md5s from torchvision's dataset classes, checked so that a corrupt copy is noticed.
CIFAR_MD5 = {
    "cifar-10-batches-py": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
    "cifar-100-python": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    },
}
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _warn_md5(path: Path, expected: str) -> None:
    if _md5(path) != expected:
        warnings.warn(
            f"{path}: md5 differs from the official release ({expected}); results may not be comparable",
            stacklevel=2,
        )


def find_cifar_dir(root: Path, num_classes: int) -> Path:
    """The ``cifar-10-batches-py`` / ``cifar-100-python`` folder under (or at) ``root``."""
    name = "cifar-100-python" if num_classes == 100 else "cifar-10-batches-py"
    for cand in (root / name, root):
        if cand.is_dir() and all((cand / f).is_file() for f in CIFAR_MD5[name]):
            return cand
    raise GlagError(
        f"no {name} folder with files {sorted(CIFAR_MD5[name])} under data root '{root}'; "
        f"point data_root (--data-root) at its parent, or pass --download"
    )


def read_cifar(root: Path, num_classes: int, train: bool, check_md5: bool = True):
    """CIFAR-10/100 images ``[N, 32, 32, 3]`` uint8 and labels, plus class names."""
    folder = find_cifar_dir(root, num_classes)
    name = (
        folder.name
        if folder.name in CIFAR_MD5
        else ("cifar-100-python" if num_classes == 100 else "cifar-10-batches-py")
    )
    files = [f for f in CIFAR_MD5[name] if (f.startswith("test") != train)]
    images, labels = [], []
    for f in sorted(files):
        entry = load_data_pickle(folder / f)  # a crafted file is refused here and runs nothing
        if check_md5:
            _warn_md5(folder / f, CIFAR_MD5[name][f])
        if not isinstance(entry, dict) or "data" not in entry or not ({"labels", "fine_labels"} & set(entry)):
            raise GlagError(
                f"'{folder / f}' is not a CIFAR batch (expected a dict with 'data' and 'labels' or "
                "'fine_labels')"
            )
        data, lab = (
            np.asarray(entry["data"]),
            entry["fine_labels"] if "fine_labels" in entry else entry["labels"],
        )
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(lab):
            raise GlagError(
                f"'{folder / f}' is not a CIFAR batch: 'data' is {data.dtype} {list(data.shape)} for "
                f"{len(lab)} labels, expected uint8 [{len(lab)}, 3072]"
            )
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(lab)
    meta_file = folder / ("meta" if num_classes == 100 else "batches.meta")
    names = [str(i) for i in range(num_classes)]
    if meta_file.is_file():
        meta = load_data_pickle(meta_file)
        if isinstance(meta, dict):
            names = [str(n) for n in (meta.get("fine_label_names") or meta.get("label_names") or names)]
    return np.ascontiguousarray(np.concatenate(images)), np.asarray(labels, dtype=np.int64), names


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise GlagError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find_fashion_dir(root: Path) -> Path:
    """Folder holding the four Fashion-MNIST IDX files: ``root`` itself or a known sub-folder."""
    wanted = [f for pair in FASHION_FILES.values() for f in pair]
    for cand in (root, root / "fashion-mnist", root / "FashionMNIST" / "raw"):
        if all((cand / f).is_file() or (cand / f[:-3]).is_file() for f in wanted):
            return cand
    raise GlagError(
        f"no Fashion-MNIST IDX files ({', '.join(wanted)}) under data root '{root}'; "
        f"point data_root (--data-root) at their folder, or pass --download"
    )


def read_fashion(root: Path, train: bool):
    """Fashion-MNIST images ``[N, 28, 28]`` uint8, labels and class names."""
    folder = find_fashion_dir(root)
    paths = []
    for f in FASHION_FILES["train" if train else "test"]:
        p = folder / f
        paths.append(p if p.is_file() else folder / f[:-3])
    images, labels = _read_idx(paths[0]), _read_idx(paths[1]).astype(np.int64)
    if len(images) != len(labels):
        raise GlagError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
    return np.ascontiguousarray(images), labels, list(FASHION_CLASSES)


def read_digits():
    """scikit-learn's bundled 8x8 digits as uint8 ``[1797, 8, 8]`` (values 0..16 rescaled to 0..255)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return images, d.target.astype(np.int64), [str(i) for i in range(10)]


def download(name: str, root: Path) -> None:
    """Fetch a dataset with torchvision into ``root`` (needs a network)."""
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    cls = {"cifar10-lt": tvd.CIFAR10, "cifar100-lt": tvd.CIFAR100, "fashion-mnist-lt": tvd.FashionMNIST}.get(
        name
    )
    if cls is None:
        raise GlagError(f"--download is not available for '{name}'; fetch its files by hand")
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # network errors come in many types
        raise GlagError(f"download of {name} into '{root}' failed: {exc}") from exc
