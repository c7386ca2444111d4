"""The cache folder: where files live, listing and removal."""
from __future__ import annotations

import os
from pathlib import Path

from glag.cache.format import STATS_MARK, SUFFIX, FeatureCache
from glag.errors import GlagError


def default_cache_dir() -> Path:
    return Path(os.environ.get("GLAG_CACHE_DIR", "~/.cache/glag")).expanduser()


def list_caches(cache_dir: Path) -> list[dict]:
    """Info for every cache file in ``cache_dir``; unreadable files are listed with their error."""
    rows = []
    for path in sorted(Path(cache_dir).glob(f"*{SUFFIX}")):
        if path.name.startswith(".") or STATS_MARK in path.name:  # temporary files, generator statistics
            continue
        try:
            info = FeatureCache(path, check_data=False).info()
            rows.append({"file": path.name, "dataset": info["dataset"], "recipe": info["recipe"], "key": info["key"][:16],
                         "classes": info["num_classes"], "dim": info["feature_dim"],
                         "rows": " ".join(f"{k}={v}" for k, v in info["rows"].items()),
                         "MB": info["size_mb"], "created": info["created"]})
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


def related_files(path: Path) -> list[Path]:
    """Files derived from a cache: generator statistics and reports named after it or carrying its key."""
    path = Path(path)
    found = set(path.parent.glob(f"{path.stem}{STATS_MARK}*")) | set(path.parent.glob(f"{path.stem}.stage1.json"))
    try:
        key = FeatureCache(path, check_data=False).key[:16]
        found |= set(path.parent.glob(f"*{key}*"))
    except GlagError:
        pass
    return sorted(q for q in found if q != path and q.is_file())
