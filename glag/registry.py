"""The one rule of every registry (stage-two methods, stage-one losses, backbones, datasets): a name is
safe as a folder name and registered once, what is registered is callable the way glag will call it, and
a name that a setting takes becomes one of its allowed values."""

from __future__ import annotations

import importlib
import inspect

from glag.config import CHOICES
from glag.errors import GlagError
from glag.paths import check_safe_name


def add(
    table: dict,
    name: str,
    item,
    what: str,
    setting: str | None = None,
    *,
    fn=None,
    args: int = 0,
    kwargs: tuple = (),
    builtins: str | None = None,
) -> None:
    """Put ``item`` in ``table`` under ``name`` (``what`` names the kind in messages); ``setting``: the
    config setting whose allowed names (config.CHOICES) gain ``name``. ``fn`` (the registered function) must
    accept ``args`` positional and ``kwargs`` keyword arguments, as glag calls it. ``builtins``: the module
    that registers glag's own names, imported before a name from elsewhere is added, so that a user's
    name can never take one of glag's."""
    check_safe_name(name, what)
    if fn is not None:
        if not callable(fn):
            raise GlagError(f"{what} '{name}': {fn!r} is not callable")
        try:
            inspect.signature(fn).bind(*([None] * args), **dict.fromkeys(kwargs))
        except TypeError as exc:
            wanted = ", ".join([f"{args} positional argument(s)", *(f"{k}=" for k in kwargs)])
            raise GlagError(
                f"{what} '{name}': {fn.__name__} cannot be called with {wanted} ({exc})"
            ) from None
        except ValueError:  # a builtin without a signature: glag cannot check it, it will tell when called
            pass
    if builtins and not str(getattr(fn, "__module__", "")).startswith("glag."):
        importlib.import_module(builtins)
    if name in table:
        raise GlagError(f"{what} '{name}' is registered twice; choose another name")
    table[name] = item
    if setting and name not in CHOICES[setting]:
        CHOICES[setting] += (name,)
