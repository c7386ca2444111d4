"""The HDF5 feature cache (SPEC section 6): atomic writes, checked reads, per-class views."""
from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from glag.errors import GlagError

FORMAT_VERSION = 1
SUFFIX = ".h5"
HEADS = ("linear", "cosine")


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def json_hash(obj) -> str:
    """sha256 hex digest of ``obj``'s canonical JSON: every content key in glag is one of these."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def content_key(dataset: dict, weights_hash: str, extraction: dict) -> str:
    """sha256 over (dataset spec, backbone weights hash, extraction config)."""
    return json_hash(key_payload(dataset, weights_hash, extraction))


def key_payload(dataset: dict, weights_hash: str, extraction: dict) -> dict:
    return {"dataset": dataset, "weights": weights_hash, "extraction": extraction}


def cache_filename(dataset_label: str, key: str) -> str:
    return f"{dataset_label}-{key[:16]}{SUFFIX}"


def group_by_class(features: np.ndarray, labels: np.ndarray, index: np.ndarray, num_classes: int):
    """Rows sorted stably by label, and ``class_offsets`` [C+1]."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise GlagError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    order = np.argsort(labels, kind="stable")
    offsets = np.zeros(num_classes + 1, dtype=np.int64)
    np.cumsum(np.bincount(labels, minlength=num_classes), out=offsets[1:])
    return (np.ascontiguousarray(features[order], dtype=np.float32), labels[order],
            np.asarray(index, dtype=np.int64)[order], offsets)


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_cache(path: Path, *, key_parts: dict, dataset: str, num_classes: int, class_names: list[str],
                splits: dict[str, tuple], classifier: tuple[np.ndarray, np.ndarray], provenance: dict | None = None,
                head: dict | None = None, _fail_after_split: str | None = None) -> Path:
    """Write a complete cache file atomically.

    ``splits`` maps split name to ``(features [N, d], labels [N], index [N])``; rows are grouped by class here.
    ``key_parts`` is ``key_payload(...)``; the key is derived from it and stored. ``provenance`` (the
    training recipe, for people reading ``glag cache ls``) is stored beside it, outside the key.
    ``head`` says how ``classifier`` turns features into logits: ``{"head": "linear"}`` (the default,
    ``W f + b``) or ``{"head": "cosine", "scale": s}`` (``s * cos(f, w_c)``, LDAM's classifier).
    """
    head = {"head": "linear", "scale": 1.0, **(head or {})}
    if head["head"] not in HEADS:
        raise GlagError(f"classifier head '{head['head']}' is unknown; choose one of: {', '.join(HEADS)}")
    weight, bias = (np.asarray(a, dtype=np.float32) for a in classifier)
    dims = {np.asarray(f).shape[1] for f, _, _ in splits.values()} | {weight.shape[1]}
    if len(dims) != 1:
        raise GlagError(f"feature dimensions disagree across splits and classifier: {sorted(dims)}")
    if weight.shape[0] != num_classes or bias.shape != (num_classes,):
        raise GlagError(f"classifier shapes {weight.shape}, {bias.shape} do not match {num_classes} classes")
    key = json_hash(key_parts)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({
                "format_version": FORMAT_VERSION, "key": key, "dataset": dataset,
                "num_classes": num_classes, "feature_dim": dims.pop(),
                "class_names": canonical_json(list(class_names)), "config": canonical_json(key_parts),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "complete": False,
                "provenance": canonical_json(provenance or {}),
            })
            for name, (feats, labels, index) in splits.items():
                feats, labels, index, offsets = group_by_class(np.asarray(feats), labels, index, num_classes)
                g = f.create_group(name)
                g.create_dataset("features", data=feats)
                g.create_dataset("labels", data=labels)
                g.create_dataset("index", data=index)
                g.create_dataset("class_offsets", data=offsets)
                if name == _fail_after_split:  # test hook: simulate a crash mid-write
                    raise RuntimeError(f"simulated failure after writing split '{name}'")
            g = f.create_group("classifier")
            g.create_dataset("weight", data=weight)
            g.create_dataset("bias", data=bias)
            g.attrs.update({"head": head["head"], "scale": float(head["scale"])})
            f.attrs["complete"] = True  # last: a file without it was never finished
    return Path(path)


@dataclass
class SplitView:
    """One split of a cache; ``features`` is memory-mapped from the file when possible."""

    features: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def of_class(self, c: int) -> np.ndarray:
        """Zero-copy view of class ``c``'s rows."""
        return self.features[self.offsets[c]:self.offsets[c + 1]]

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def _memmap(path: Path, dset: h5py.Dataset) -> np.ndarray:
    offset = dset.id.get_offset() if dset.chunks is None and dset.compression is None else None
    if offset is None or dset.size == 0:
        return dset[()]
    return np.memmap(path, dtype=dset.dtype, mode="r", offset=offset, shape=dset.shape)


class FeatureCache:
    """A validated, read-only feature cache."""

    def __init__(self, path, key: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise GlagError(f"cache file '{self.path}' does not exist")
        try:
            f = h5py.File(self.path, "r")
        except OSError:
            raise GlagError(f"'{self.path}' is not a readable HDF5 cache (incomplete or corrupt file)")
        with f:
            a = dict(f.attrs)
            if not a.get("complete", False):
                raise GlagError(f"cache '{self.path}' is incomplete (its writer did not finish); delete it and re-extract")
            version = int(a.get("format_version", -1))
            if version != FORMAT_VERSION:
                raise GlagError(f"cache '{self.path}' has format version {version}; this glag reads version {FORMAT_VERSION}")
            stored = str(a["key"])
            if hashlib.sha256(str(a["config"]).encode()).hexdigest() != stored:
                raise GlagError(f"cache '{self.path}' key does not match its stored config (file altered?)")
            if key is not None and key != stored:
                raise GlagError(f"cache '{self.path}' has key {stored[:16]}…, expected {key[:16]}…")
            self.key = stored
            self.dataset = str(a["dataset"])
            self.num_classes = int(a["num_classes"])
            self.feature_dim = int(a["feature_dim"])
            self.class_names = json.loads(str(a["class_names"]))
            self.config = json.loads(str(a["config"]))
            self.created = str(a.get("created", ""))
            self.provenance = json.loads(str(a.get("provenance", "{}")))
            self.split_names = [k for k in f.keys() if k != "classifier"]
            self.weight = f["classifier/weight"][()]
            self.bias = f["classifier/bias"][()]
            self.head = str(f["classifier"].attrs.get("head", "linear"))
            self.head_scale = float(f["classifier"].attrs.get("scale", 1.0))
            self._splits = {}
            for name in self.split_names:
                g = f[name]
                self._splits[name] = SplitView(_memmap(self.path, g["features"]), g["labels"][()],
                                               g["index"][()], g["class_offsets"][()])

    def head_fn(self, device=None):
        """A torch function: features -> stage-one logits, exactly as the stage-one model computes them."""
        import torch

        W = torch.as_tensor(self.weight, device=device)
        b = torch.as_tensor(self.bias, device=device)
        if self.head == "cosine":
            Wn = torch.nn.functional.normalize(W, dim=1)
            s = self.head_scale
            return lambda x: s * torch.nn.functional.normalize(x, dim=1) @ Wn.T + b
        return lambda x: x @ W.T + b

    def stage_one_logits(self, features) -> np.ndarray:
        """Stage-one logits of cached feature rows (NumPy in, NumPy out)."""
        import torch

        return self.head_fn()(torch.from_numpy(np.array(features, dtype=np.float32))).numpy()

    def split(self, name: str) -> SplitView:
        if name not in self._splits:
            raise GlagError(f"cache '{self.path}' has no split '{name}'; it has: {', '.join(self.split_names)}")
        return self._splits[name]

    def has_split(self, name: str) -> bool:
        return name in self._splits

    @property
    def train_counts(self) -> np.ndarray:
        return self.split("train").counts

    def info(self) -> dict:
        return {"path": str(self.path), "key": self.key, "dataset": self.dataset, "recipe": recipe(self.provenance),
                "num_classes": self.num_classes,
                "feature_dim": self.feature_dim, "created": self.created,
                "rows": {k: len(v) for k, v in self._splits.items()}, "size_mb": round(self.path.stat().st_size / 2**20, 2)}


def recipe(provenance: dict) -> str:
    """A short human label of a training recipe, e.g. 'resnet32 graloss(a=1,g=3) 200ep seed0'."""
    if not provenance:
        return "?"
    loss = provenance.get("loss", "?")
    params = {"graloss": ("a", "g"), "la": ("tau",), "focal": ("gamma",)}.get(loss, ())
    args = ",".join(f"{p}={provenance[p]:g}" for p in params if p in provenance)
    return (f"{provenance.get('backbone', '?')} {loss}{f'({args})' if args else ''} "
            f"{provenance.get('epochs', '?')}ep seed{provenance.get('seed', '?')}")


def verify(path) -> list[str]:
    """Problems found in a cache file (empty when it is sound)."""
    try:
        cache = FeatureCache(path)
    except GlagError as exc:
        return [str(exc)]
    problems = []
    C, d = cache.num_classes, cache.feature_dim
    if cache.weight.shape != (C, d) or cache.bias.shape != (C,):
        problems.append(f"classifier has shapes {cache.weight.shape}/{cache.bias.shape}, expected ({C}, {d})/({C},)")
    elif not (np.isfinite(cache.weight).all() and np.isfinite(cache.bias).all()):
        problems.append("classifier has non-finite values")
    for name in cache.split_names:
        s = cache.split(name)
        n = len(s.labels)
        if s.features.shape != (n, d) or s.index.shape != (n,):
            problems.append(f"{name}: features {s.features.shape} / index {s.index.shape} do not match {n} labels of dim {d}")
            continue
        if n and (s.labels.min() < 0 or s.labels.max() >= C):
            problems.append(f"{name}: labels outside [0, {C})")
        off = s.offsets
        if off.shape != (C + 1,) or off[0] != 0 or off[-1] != n or np.any(np.diff(off) < 0):
            problems.append(f"{name}: class_offsets are not a non-decreasing [0..{n}] array of length {C + 1}")
        else:
            bad = [c for c in range(C) if np.any(s.labels[off[c]:off[c + 1]] != c)]
            if bad:
                problems.append(f"{name}: class_offsets disagree with labels for classes {bad[:10]}")
        for start in range(0, n, 65536):
            block = np.asarray(s.features[start:start + 65536])
            rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
            if rows.size:
                problems.append(f"{name}: non-finite features in row {start + int(rows[0])} ({rows.size} rows in block)")
                break
    return problems
