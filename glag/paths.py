"""Names that become path components, and writes that must stay inside the folder they belong to.

A recipe's variant names and ``--set`` values turn into folder names; a name such as ``x/../../y`` would
otherwise write outside ``--out``. Names are checked where they are read, and every run folder is
checked to resolve inside its base before it is written.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

from glag.errors import GlagError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,99}")
SAFE_HELP = "letters, digits and . _ = + - (at most 100 characters, starting with a letter or digit)"


def check_safe_name(name, what: str) -> str:
    """``name`` if it can be one folder name on every system; else a one-line refusal naming ``what``."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise GlagError(f"{what} {name!r} cannot name a folder; use {SAFE_HELP}")
    return name


def check_inside(base: Path, path: Path, what: str) -> Path:
    """``path`` if it resolves inside ``base`` (symbolic links followed); else a one-line refusal."""
    root, target = Path(base).resolve(), Path(path).resolve()
    if target != root and root not in target.parents:
        raise GlagError(f"{what} '{path}' would be written outside '{base}'; refusing it")
    return Path(path)


def missing_folders(path: Path, stop: Path | None = None) -> list[Path]:
    """The folders from ``path`` up (to ``stop``, excluded) that do not exist yet, innermost first: what a
    ``mkdir(parents=True)`` of ``path`` would make, so a failed command can take them back."""
    path = Path(path).absolute()
    stop = Path(stop).absolute() if stop is not None else None
    made = []
    for p in (path, *path.parents):
        if p.exists() or p == stop:
            break
        made.append(p)
    return made


def remove_if_empty(folders: list[Path]) -> None:
    """Remove each folder (innermost first) that is still empty: never a file, never anyone's content."""
    for p in folders:
        if p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
            p.rmdir()


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:  # disk full, quota, read-only: name the file, never leave the partial one
        raise GlagError(
            f"could not write '{path}': {exc.strerror or exc}; the partial file was removed"
        ) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
