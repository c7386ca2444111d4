"""The cache folder: where files live, listing and removal."""

from __future__ import annotations

import os
from pathlib import Path

from glag.cache.format import STATS_MARK, SUFFIX, FeatureCache
from glag.errors import GlagError


def default_cache_dir() -> Path:
    # an empty GLAG_CACHE_DIR= is unset, not the working folder
    return Path(os.environ.get("GLAG_CACHE_DIR", "").strip() or "~/.cache/glag").expanduser()


def cache_folder(value) -> Path:
    """The cache folder a caller named: None or an empty value means the default (never the working
    folder), and ``~`` is expanded whoever typed it, so a write and a later lookup agree."""
    if value is None or not str(value).strip():
        return default_cache_dir()
    return Path(str(value)).expanduser()


def list_caches(cache_dir: Path) -> list[dict]:
    """Info for every cache file in ``cache_dir``; unreadable files are listed with their error."""
    rows = []
    for path in sorted(Path(cache_dir).glob(f"*{SUFFIX}")):
        if path.name.startswith(".") or STATS_MARK in path.name:  # temporary files, generator statistics
            continue
        try:
            info = FeatureCache(path, check_data=False).info()
            rows.append(
                {
                    "file": path.name,
                    "dataset": info["dataset"],
                    "recipe": info["recipe"],
                    "key": info["key"][:16],
                    "classes": info["num_classes"],
                    "dim": info["feature_dim"],
                    "rows": " ".join(f"{k}={v}" for k, v in info["rows"].items()),
                    "MB": info["size_mb"],
                    "created": info["created"],
                }
            )
        except GlagError as exc:
            rows.append({"file": path.name, "dataset": "?", "key": "?", "error": str(exc)})
    return rows


def resolve(target: str, cache_dir: Path) -> Path:
    """A cache path from a file path or a key prefix (at least 6 hex digits) in ``cache_dir``."""
    p = Path(target)
    if p.is_file():
        return p
    if len(target) >= 6 and all(ch in "0123456789abcdef" for ch in target.lower()):
        hits = [q for q in Path(cache_dir).glob(f"*{SUFFIX}") if _key_of(q, target)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise GlagError(f"key prefix '{target}' matches {len(hits)} caches; give more digits")
    raise GlagError(f"'{target}' is neither a cache file nor a key prefix of a cache in '{cache_dir}'")


def _key_of(path: Path, prefix: str) -> bool:
    try:
        return FeatureCache(path, check_data=False).key.startswith(prefix.lower())
    except GlagError:
        return False


CACHE_ATTRS = {"format_version", "key", "config", "class_names", "num_classes"}  # every glag cache has these
STATS_ATTRS = {"version", "key", "config", "complete"}  # every generator statistics file has these


def glag_file_kind(path: Path) -> str | None:
    """'cache' or 'stats' when ``path`` is an HDF5 file that glag wrote (complete or not), else None.

    Recognised by content, never by name, so that nothing else is ever taken for glag's."""
    import h5py

    path = Path(path)
    if not path.is_file() or path.is_symlink():
        return None
    try:
        with h5py.File(path, "r") as f:
            attrs = set(f.attrs)
    except (OSError, ValueError):
        return None
    if CACHE_ATTRS <= attrs:
        return "cache"
    if STATS_ATTRS <= attrs and STATS_MARK in path.name:
        return "stats"
    return None


def _is_stage_one_report(path: Path, cache: Path) -> bool:
    """A stage-one report that glag wrote for this cache (its JSON names the cache file)."""
    import json

    try:
        rep = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(rep, dict) and Path(str(rep.get("cache", ""))).name == cache.name and "top1" in rep


def related_files(path: Path) -> list[Path]:
    """glag's own files beside a cache: its generator statistics and its stage-one report.

    Only files named after the cache and recognised by their content count."""
    path = Path(path)
    stats = [q for q in path.parent.glob(f"{path.stem}{STATS_MARK}*{SUFFIX}") if glag_file_kind(q) == "stats"]
    report = path.with_suffix(".stage1.json")
    reports = (
        [report]
        if report.is_file() and not report.is_symlink() and _is_stage_one_report(report, path)
        else []
    )
    return sorted(set(stats + reports) - {path})


def removable(target: str, cache_dir: Path) -> Path:
    """The path of a glag cache or statistics file that ``cache rm`` may delete, or a one-line refusal."""
    p = Path(target)
    if p.exists() or p.is_symlink():
        if glag_file_kind(p) is None:
            raise GlagError(
                f"'{target}' is not a glag cache or statistics file; 'glag cache rm' removes only those "
                "(nothing was removed)"
            )
        return p
    return resolve(target, cache_dir)
