"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

import os
from contextlib import contextmanager

DEBUG_ENV = "GLAG_DEBUG"  # set (or `glag --debug`): registered user code's exceptions keep their traceback


class GlagError(Exception):
    """An error caused by user input or on-disk state, reported without a traceback."""


def is_builtin(fn) -> bool:
    """True for glag's own registered functions (their exceptions are glag's bugs: tracebacks stay)."""
    return str(getattr(fn, "__module__", "")).startswith("glag.")


@contextmanager
def user_code(what: str, fn=None):
    """Run registered user code (``what``: "stage-two method 'x'"); what it raises becomes one line naming
    it, unless GLAG_DEBUG is set or ``fn`` is glag's own."""
    try:
        yield
    except GlagError:
        raise
    except Exception as exc:
        if os.environ.get(DEBUG_ENV) or (fn is not None and is_builtin(fn)):
            raise
        raise GlagError(
            f"{what} raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            f"(glag --debug shows its traceback)"
        ) from exc
