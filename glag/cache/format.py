"""The HDF5 feature cache (SPEC section 6): atomic writes, checked reads, per-class views."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from glag.cache.integrity import Verifier, damaged, seal, write_array
from glag.errors import GlagError
from glag.paths import atomic_path

# 2: per-array sha256 checksums, attribute digest, head type in the root attributes.
FORMAT_VERSION = 2
SUFFIX = ".h5"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
HEADS = ("linear", "cosine")
STATS_MARK = ".afg-"  # in every generator statistics file's name, between its cache's name and its own key


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
    return (
        np.ascontiguousarray(features[order], dtype=np.float32),
        labels[order],
        np.asarray(index, dtype=np.int64)[order],
        offsets,
    )


def write_cache(
    path: Path,
    *,
    key_parts: dict,
    dataset: str,
    num_classes: int,
    class_names: list[str],
    splits: dict[str, tuple],
    classifier: tuple[np.ndarray, np.ndarray],
    provenance: dict | None = None,
    head: dict | None = None,
    _fail_after_split: str | None = None,
) -> Path:
    """Write a complete cache file atomically.

    ``splits`` maps split name to ``(features [N, d], labels [N], index [N])``; rows are grouped by
    class here.
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
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise GlagError(
            "the stage-one classifier has non-finite weights (training diverged?); nothing was written"
        )
    key = json_hash(key_parts)
    sums: dict = {}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(
                {
                    "format_version": FORMAT_VERSION,
                    "key": key,
                    "dataset": dataset,
                    "num_classes": num_classes,
                    "feature_dim": dims.pop(),
                    "class_names": canonical_json(list(class_names)),
                    "config": canonical_json(key_parts),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "complete": False,
                    "provenance": canonical_json(provenance or {}),
                    "head": head["head"],
                    "head_scale": float(head["scale"]),
                }
            )
            for name, (feats, labels, index) in splits.items():
                feats, labels, index, offsets = group_by_class(np.asarray(feats), labels, index, num_classes)
                if not np.isfinite(feats).all():
                    raise GlagError(
                        f"split '{name}' has non-finite features (backbone diverged?); nothing was written"
                    )
                g = f.create_group(name)
                for arr_name, arr in (
                    ("features", feats),
                    ("labels", labels),
                    ("index", index),
                    ("class_offsets", offsets),
                ):
                    write_array(g, arr_name, arr, sums)
                if name == _fail_after_split:  # test hook: simulate a crash mid-write
                    raise RuntimeError(f"simulated failure after writing split '{name}'")
            g = f.create_group("classifier")
            write_array(g, "weight", weight, sums)
            write_array(g, "bias", bias, sums)
            f.attrs["complete"] = True  # last but the seal: a file without it was never finished
            seal(f, sums)
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
        return self.features[self.offsets[c] : self.offsets[c + 1]]

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def read_rows(features: np.ndarray, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``start:stop`` of a split's features as an in-memory copy. A memory-mapped array is read
    with plain file reads, so the pages never count in this process's resident memory."""
    if not isinstance(features, np.memmap) or features.filename is None:
        rows = np.asarray(features[start:stop])
        if out is None:
            return rows.copy()
        out[...] = rows
        return out
    row_bytes = features.dtype.itemsize * int(np.prod(features.shape[1:], dtype=np.int64))
    if out is None:
        out = np.empty((stop - start,) + features.shape[1:], dtype=features.dtype)
    with open(features.filename, "rb") as fh:
        fh.seek(features.offset + start * row_bytes)
        if fh.readinto(memoryview(out).cast("B")) != (stop - start) * row_bytes:
            raise GlagError(
                f"cache '{features.filename}' is truncated (rows {start}:{stop} are missing); re-extract it"
            )
    return out


def _memmap(path: Path, dset: h5py.Dataset) -> np.ndarray:
    offset = dset.id.get_offset() if dset.chunks is None and dset.compression is None else None
    if offset is None or dset.size == 0:
        return dset[()]
    return np.memmap(path, dtype=dset.dtype, mode="r", offset=offset, shape=dset.shape)


class FeatureCache:
    """A validated, read-only feature cache.

    Opening checks the header (complete, format version, key) and the structure (shapes, label
    range, class offsets against labels, head shapes), and unless ``check_data=False`` starts
    checking every stored array's checksum in the background; ``ensure_sound()`` waits for that
    and raises GlagError naming what is damaged. Everything that writes a result or a derived
    file from a cache calls it first. ``check_data=False`` is for listing and lookup only.
    """

    persistent = True  # a file on disk; a view of it (glag.cache.derived) is not, and stores nothing derived

    def __init__(self, path, key: str | None = None, check_data: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            raise GlagError(f"cache file '{self.path}' does not exist")
        try:
            f = h5py.File(self.path, "r")
        except OSError:
            with open(self.path, "rb") as fh:
                is_hdf5 = fh.read(4) == HDF5_SIGNATURE[:4]  # even a header cut short starts so
            if not is_hdf5:  # someone else's file: never advise deleting it
                raise GlagError(
                    f"'{self.path}' is not an HDF5 file, so not a glag cache; pass a cache file or key "
                    "prefix ('glag cache ls')"
                ) from None
            raise GlagError(
                f"'{self.path}' is not a readable HDF5 cache (incomplete, truncated or corrupt file); "
                f"delete it ('glag cache rm') and re-extract"
            ) from None
        try:
            with f:
                attrs = self._read_header(f, key)
                self._verifier = Verifier(f, self.path, attrs) if check_data else None
                self._read_arrays(f)
                problems = structure_problems(self)
                if problems:
                    if self._verifier is not None:
                        self.ensure_sound()  # names the damaged arrays, if checksums tell
                    raise GlagError(
                        f"cache '{self.path}' is damaged: {problems[0]}; delete it and re-extract"
                    )
                if self._verifier is not None:
                    # Hashed in the background while the caller reads; ensure_sound() joins.
                    self._verifier.start()
        except (OSError, KeyError, ValueError, TypeError) as exc:  # h5py's ways of saying the file is broken
            raise GlagError(
                f"cache '{self.path}' is damaged or truncated ({type(exc).__name__}: {exc}); "
                f"delete it and re-extract"
            ) from exc

    def _read_header(self, f: h5py.File, key: str | None) -> dict:
        a = dict(f.attrs)
        if STATS_MARK in self.path.name and "version" in a and "format_version" not in a:
            cache = self.path.name.split(STATS_MARK)[0] + SUFFIX
            raise GlagError(
                f"'{self.path}' is a generator statistics file, not a feature cache; pass the cache it "
                f"was made from ('{cache}')"
            )
        if not {"format_version", "key", "config"} <= set(a):
            raise GlagError(
                f"'{self.path}' is an HDF5 file but not a glag feature cache; pass a file made by "
                "'glag extract' or 'glag cache import'"
            )
        if not a.get("complete", False):
            raise GlagError(
                f"cache '{self.path}' is incomplete (its writer did not finish); delete it and re-extract"
            )
        version = int(a.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise GlagError(
                f"cache '{self.path}' has format version {version}; this glag reads version "
                f"{FORMAT_VERSION}: delete it and re-make it with the 'glag extract' command that made it"
            )
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
        self.head = str(a["head"])
        self.head_scale = float(a["head_scale"])
        return a

    def _read_arrays(self, f: h5py.File) -> None:
        self.split_names = [k for k in f.keys() if k != "classifier"]
        self.weight = f["classifier/weight"][()]
        self.bias = f["classifier/bias"][()]
        self._splits = {}
        for name in self.split_names:
            g = f[name]
            self._splits[name] = SplitView(
                _memmap(self.path, g["features"]), g["labels"][()], g["index"][()], g["class_offsets"][()]
            )

    def ensure_sound(self) -> FeatureCache:
        """Wait for the checksum check started at open; raise GlagError if any array is damaged."""
        if self._verifier is None:
            raise GlagError(f"cache '{self.path}' was opened without checking its data; reopen it to use it")
        bad = self._verifier.wait()
        if bad:
            raise GlagError(
                f"cache '{self.path}' is damaged: {', '.join(bad)} "
                f"{'fails its' if len(bad) == 1 else 'fail their'} checksum; "
                f"delete it ('glag cache rm') and re-extract"
            )
        return self

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
            raise GlagError(
                f"cache '{self.path}' has no split '{name}'; it has: {', '.join(self.split_names)}"
            )
        return self._splits[name]

    def has_split(self, name: str) -> bool:
        return name in self._splits

    @property
    def train_counts(self) -> np.ndarray:
        return self.split("train").counts

    def info(self) -> dict:
        return {
            "path": str(self.path),
            "key": self.key,
            "dataset": self.dataset,
            "recipe": recipe(self.provenance),
            "num_classes": self.num_classes,
            "feature_dim": self.feature_dim,
            "created": self.created,
            "rows": {k: len(v) for k, v in self._splits.items()},
            "size_mb": round(self.path.stat().st_size / 2**20, 2),
        }


def recipe(provenance: dict) -> str:
    """A short human label of a training recipe, e.g. 'resnet32 graloss(a=1,g=3) 200ep seed0'."""
    if not provenance:
        return "?"
    if provenance.get("source") == "import":
        return "imported" + (" (head given)" if provenance.get("head") == "given" else " (head fitted)")
    loss = provenance.get("loss", "?")
    params = {"graloss": ("a", "g"), "la": ("tau",), "focal": ("gamma",)}.get(loss, ())
    args = ",".join(f"{p}={provenance[p]:g}" for p in params if p in provenance)
    return (
        f"{provenance.get('backbone', '?')} {loss}{f'({args})' if args else ''} "
        f"{provenance.get('epochs', '?')}ep seed{provenance.get('seed', '?')}"
    )


def structure_problems(cache: FeatureCache) -> list[str]:
    """Shape and consistency problems of an opened cache (cheap: no feature is read)."""
    problems = []
    C, d = cache.num_classes, cache.feature_dim
    if cache.head not in HEADS or not cache.head_scale > 0:
        problems.append(
            f"classifier head '{cache.head}' (scale {cache.head_scale}) is not one of {', '.join(HEADS)}"
        )
    if cache.weight.shape != (C, d) or cache.bias.shape != (C,):
        problems.append(
            f"classifier has shapes {cache.weight.shape}/{cache.bias.shape}, expected ({C}, {d})/({C},)"
        )
    for name in cache.split_names:
        s = cache.split(name)
        n = len(s.labels)
        if s.features.shape != (n, d) or s.index.shape != (n,):
            problems.append(
                f"{name}: features {s.features.shape} / index {s.index.shape} do not match {n} labels of "
                f"dim {d}"
            )
            continue
        if n and (s.labels.min() < 0 or s.labels.max() >= C):
            problems.append(f"{name}: labels outside [0, {C})")
            continue
        off = s.offsets
        if off.shape != (C + 1,) or off[0] != 0 or off[-1] != n or np.any(np.diff(off) < 0):
            problems.append(
                f"{name}: class_offsets are not a non-decreasing [0..{n}] array of length {C + 1}"
            )
        elif not np.array_equal(s.labels, np.repeat(np.arange(C), np.diff(off))):
            bad = [c for c in range(C) if np.any(s.labels[off[c] : off[c + 1]] != c)]
            problems.append(f"{name}: class_offsets disagree with labels for classes {bad[:10]}")
    return problems


def verify(path) -> list[str]:
    """Problems found in a cache file (empty when it is sound): header, the checksum of every stored
    array (each damaged one named), structure, and finite features."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            problems = [
                f"{name}: checksum mismatch (its stored bytes changed since the cache was written)"
                for name in damaged(f, path)
            ]
    except OSError:
        problems = []  # FeatureCache below says what is wrong with the file itself
    try:
        cache = FeatureCache(path, check_data=False)
    except GlagError as exc:
        return problems + [str(exc)]
    for name in cache.split_names:
        s = cache.split(name)
        for start in range(0, len(s), 65536):
            block = np.asarray(s.features[start : start + 65536])
            rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
            if rows.size:
                problems.append(
                    f"{name}: non-finite features in row {start + int(rows[0])} ({rows.size} rows in block)"
                )
                break
    return problems
