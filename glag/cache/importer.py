"""Make a cache from feature arrays computed elsewhere (``glag cache import``)."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from glag.cache.format import FeatureCache, cache_filename, json_hash, key_payload, write_cache
from glag.cache.head import HEAD_FIT, fit_linear_head
from glag.cache.integrity import digest
from glag.errors import GlagError

MAX_ABS = 1e6  # |feature| bound: squares and covariances stay well inside float32's precision
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _npz_limit() -> int:
    """Bytes one npz may unpack to: a quarter of this machine's memory (so a zip bomb is refused unread)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _check_npz(path: Path, role: str) -> None:
    """Refuse what is not an .npz archive, and any member whose array header asks for more memory than
    ``_npz_limit`` (read from the headers, before any array is decompressed)."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head.startswith(b"\x93NUMPY"):
        raise GlagError(
            f"--{role} file '{path}' is a single .npy array, not an .npz archive; save the split with "
            "np.savez(path, features=..., labels=...)"
        )
    if not head.startswith(b"PK"):
        raise GlagError(
            f"--{role} file '{path}' is not an .npz archive (it starts with {head!r}, not a zip header)"
        )
    limit, total = _npz_limit(), 0
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                with z.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    shape, _, dtype = (
                        np.lib.format.read_array_header_1_0(member)
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0(member)
                    )
                total += int(np.prod(shape, dtype=object)) * dtype.itemsize
                if total > limit:
                    raise GlagError(
                        f"--{role} file '{path}': its arrays would unpack to {total / 2**30:.3g} GiB, over "
                        f"the {limit / 2**30:.3g} GiB glag reads from one file (a zip bomb?)"
                    )
    except GlagError:
        raise
    except Exception as exc:  # BadZipFile, a truncated member, a member that is no .npy
        raise GlagError(
            f"--{role} file '{path}' is not a readable .npz file ({type(exc).__name__}: "
            f"{str(exc).strip()[:120]})"
        ) from None


def _load_npz(path: Path, role: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GlagError(f"--{role} file '{path}' does not exist")
    _check_npz(path, role)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # ValueError (object arrays), BadZipFile, EOFError, zlib.error, ...
        raise GlagError(
            f"--{role} file '{path}' is not a readable .npz file ({type(exc).__name__}: "
            f"{str(exc).strip()[:120]})"
        ) from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise GlagError(
            f"--{role} file '{path}' lacks {', '.join(missing)}; it has: "
            f"{', '.join(sorted(arrays)) or 'nothing'}"
        )
    return {k: arrays[k] for k in keys + optional if k in arrays}


def load_split(path: Path, role: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features float32 [N, d], labels int64 [N], index int64 [N]) of one npz, checked."""
    a = _load_npz(path, role, ("features", "labels"), ("index",))
    f, y = a["features"], a["labels"]
    if f.ndim != 2 or f.shape[1] < 1 or not np.issubdtype(f.dtype, np.number) or np.iscomplexobj(f):
        raise GlagError(
            f"--{role} '{path}': features must be a real numeric [N, d] array with d >= 1, got {f.dtype} "
            f"{list(f.shape)}"
        )
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise GlagError(f"--{role} '{path}': labels must be an integer [N] array, got {y.dtype} {y.shape}")
    index = a.get("index", np.arange(len(y)))
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer) or (len(index) and index.min() < 0):
        raise GlagError(
            f"--{role} '{path}': index must be a non-negative integer [N] array (each row's position in "
            f"its source), got {index.dtype} {list(index.shape)}"
        )
    if len(f) != len(y) or len(index) != len(y):
        raise GlagError(
            f"--{role} '{path}': lengths differ: features {len(f)}, labels {len(y)}, index {len(index)}"
        )
    if len(y) == 0:
        raise GlagError(f"--{role} '{path}' has no rows; every split needs at least one")
    f = f.astype(np.float32)
    bad = int((~np.isfinite(f)).any(axis=1).sum())
    if bad:
        raise GlagError(f"--{role} '{path}': {bad} rows of features are not finite (NaN or inf)")
    big = float(np.abs(f).max())
    if big > MAX_ABS:
        raise GlagError(
            f"--{role} '{path}': features reach {big:.3g}; allowed: |f| <= {MAX_ABS:g} (float32 statistics "
            "and the fitted head lose all precision beyond); rescale them"
        )
    return f, y.astype(np.int64), np.asarray(index, dtype=np.int64)


def _load_names(class_names: Path) -> list:
    try:
        names = json.loads(Path(class_names).read_text())
    except (OSError, ValueError) as exc:
        raise GlagError(f"--class-names '{class_names}' is not a readable JSON list ({exc})") from exc
    if not isinstance(names, list) or not names:
        raise GlagError(f"--class-names '{class_names}' must hold a non-empty JSON list of names")
    return names


def _load_head(head: Path, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight [C, d], bias [C]) of a --head file, checked against the features' dimension."""
    h = _load_npz(head, "head", ("weight",), ("bias",))
    W = np.asarray(h["weight"], dtype=np.float32)
    b = np.asarray(h.get("bias", np.zeros(len(W))), dtype=np.float32)
    if W.ndim != 2 or W.shape[1] != d or b.shape != (W.shape[0],):
        raise GlagError(f"--head '{head}': weight {W.shape} / bias {b.shape} do not fit features of dim {d}")
    if not (np.isfinite(W).all() and np.isfinite(b).all()):
        raise GlagError(f"--head '{head}': weight or bias is not finite")
    return W, b


def _check_labels(splits: dict, C: int, source: str) -> None:
    for role, (_, y, _) in splits.items():
        if y.min() < 0 or y.max() >= C:
            raise GlagError(
                f"--{role}: labels must lie in [0, {C}) ({source}), got range [{y.min()}, {y.max()}]"
            )
    empty = np.flatnonzero(np.bincount(splits["train"][1], minlength=C) == 0)
    if len(empty):
        raise GlagError(
            f"--train has no row of class(es) {empty[:10].tolist()}; every class needs a train row"
        )


def _arrays_hash(splits: dict, W, b) -> str:
    """The key covers every array (and the head when given), so other features can never share it."""
    arrays = {
        f"{role}/{k}": a
        for role, s in splits.items()
        for k, a in zip(("features", "labels", "index"), s, strict=False)
    }
    if W is not None:
        arrays.update({"head/weight": W, "head/bias": b})
    return digest(
        np.frombuffer("".join(f"{k}:{digest(v)}" for k, v in sorted(arrays.items())).encode(), np.uint8)
    )


def import_cache(
    cache_dir: Path,
    name: str,
    train: Path,
    val: Path,
    test: Path,
    head: Path | None = None,
    class_names: Path | None = None,
) -> tuple[Path, bool]:
    """Write (or find) the cache for these arrays; returns its path and whether it already existed."""
    if not NAME_RE.match(name or ""):
        raise GlagError(f"--name '{name}' is invalid; use letters, digits, '.', '_' or '-' (not first)")
    splits = {role: load_split(p, role) for role, p in (("train", train), ("val", val), ("test", test))}
    dims = {role: s[0].shape[1] for role, s in splits.items()}
    if len(set(dims.values())) != 1:
        raise GlagError(f"feature dimensions differ: {', '.join(f'{r} {d}' for r, d in dims.items())}")
    names = _load_names(class_names) if class_names is not None else None
    W, b = _load_head(head, dims["train"]) if head is not None else (None, None)
    C = (
        len(names)
        if names
        else (len(W) if W is not None else int(max(s[1].max() for s in splits.values())) + 1)
    )
    if W is not None and len(W) != C:
        raise GlagError(f"--head '{head}' has {len(W)} classes but --class-names lists {C}")
    source = (
        f"--class-names lists {C} classes"
        if names
        else f"--head has {C} classes"
        if W is not None
        else f"the largest label sets {C} classes"
    )
    _check_labels(splits, C, source)
    names = names or [str(c) for c in range(C)]
    parts = key_payload(
        {"imported": name, "num_classes": C, "class_names": names},
        _arrays_hash(splits, W, b),
        {"source": "import", "head": "given" if W is not None else HEAD_FIT},
    )
    key = json_hash(parts)
    path = Path(cache_dir) / cache_filename(name, key)
    if path.is_file():
        FeatureCache(path, key=key).ensure_sound()
        return path, True
    if W is None:
        W, b = fit_linear_head(splits["train"][0], splits["train"][1], C)
    write_cache(
        path,
        key_parts=parts,
        dataset=name,
        num_classes=C,
        class_names=names,
        splits=splits,
        classifier=(W, b),
        provenance={
            "source": "import",
            "head": parts["extraction"]["head"],
            "files": {r: str(p) for r, p in (("train", train), ("val", val), ("test", test))},
        },
    )
    return path, False
