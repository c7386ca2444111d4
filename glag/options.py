"""Checked command-line values: numbers that must be finite and in range, and outputs that must be writable.

Errors name the flag, the value and what is allowed, and come before any data is read or work is done.
"""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import click

from glag.config import Rule
from glag.errors import GlagError


class Number(click.ParamType):
    """A finite int or float within ``[lo, hi]`` (``lo_open``/``hi_open`` exclude the bound), or a config
    setting's Rule."""

    def __init__(self, kind=float, lo=None, hi=None, lo_open=False, hi_open=False, extra: str = ""):
        self.rule = kind if isinstance(kind, Rule) else Rule("", kind, lo, hi, lo_open, hi_open, extra)
        self.name = "integer" if self.rule.kind is int else "number"

    def convert(self, value, param, ctx):
        try:
            return self.rule.check(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)

    def get_metavar(self, param, ctx=None) -> str:
        return "INTEGER" if self.rule.kind is int else "FLOAT"


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
