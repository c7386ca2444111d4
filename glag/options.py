"""Checked command-line values: numbers that must be finite and in range, and outputs that must be writable.

Errors name the flag, the value and what is allowed, and come before any data is read or work is done.
"""

from __future__ import annotations

import errno
import math
import tempfile
from pathlib import Path

import click

from glag.errors import GlagError


def _fmt(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


class Number(click.ParamType):
    """A finite int or float within ``[lo, hi]`` (``lo_open``/``hi_open`` exclude the bound)."""

    def __init__(self, kind=float, lo=None, hi=None, lo_open=False, hi_open=False, extra: str = ""):
        self.kind, self.lo, self.hi, self.lo_open, self.hi_open, self.extra = (
            kind,
            lo,
            hi,
            lo_open,
            hi_open,
            extra,
        )
        self.name = "integer" if kind is int else "number"

    def allowed(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {_fmt(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {_fmt(self.hi)}")
        what = "a finite " + ("integer" if self.kind is int else "number")
        return (
            what + (" " + " and ".join(parts) if parts else "") + (f" ({self.extra})" if self.extra else "")
        )

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # from a config file or a default
            if self.kind is int and isinstance(value, float) and value.is_integer():
                value = int(value)
            elif self.kind is int and isinstance(value, float):
                self.fail(f"{value!r} is not an integer; allowed: {self.allowed()}", param, ctx)
            # the declared kind, so a config's `warmup = 1` keys a cache as the flag's `--warmup 1` does
            v = self.kind(value) if math.isfinite(value) else value
        else:
            try:
                v = self.kind(str(value).strip())
            except ValueError:
                self.fail(
                    f"{value!r} is not {'an integer' if self.kind is int else 'a number'}; allowed: "
                    f"{self.allowed()}",
                    param,
                    ctx,
                )
        bad = not math.isfinite(v)
        if not bad and self.lo is not None:
            bad = v <= self.lo if self.lo_open else v < self.lo
        if not bad and self.hi is not None:
            bad = v >= self.hi if self.hi_open else v > self.hi
        if bad:
            why = "is not finite" if not math.isfinite(v) else "is out of range"
            self.fail(f"{value} {why}; allowed: {self.allowed()}", param, ctx)
        return v

    def get_metavar(self, param, ctx=None) -> str:
        return "INTEGER" if self.kind is int else "FLOAT"


def check_writable(path: Path | None, flag: str, *, folder: bool) -> None:
    """Refuse an output that cannot be written, before any work: the nearest existing ancestor must be a
    writable folder, and an existing ``path`` must be a folder (``folder``) or a writable file."""
    if path is None:
        return
    p = Path(path).expanduser().absolute()
    if p.exists():
        if folder and not p.is_dir():
            raise GlagError(f"{flag} '{path}' exists and is not a folder; give a folder")
        if not folder and p.is_dir():
            raise GlagError(f"{flag} '{path}' is a folder; give a file name")
        target = p if folder else p.parent
    else:
        target = p.parent
        while not target.exists():
            target = target.parent
        if not target.is_dir():
            raise GlagError(f"{flag} '{path}' cannot be created: '{target}' is not a folder")
    try:  # a real probe: permission bits say nothing for root, a read-only mount or /proc
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.ENOENT and target.is_dir():  # /proc, /sys: folders that take no new files
            why = "a folder that takes no new files (a virtual file system such as /proc?)"
        raise GlagError(
            f"{flag} '{path}' is not writable ('{target}': {why}); choose another place"
        ) from None
