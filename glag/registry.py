"""The one rule of every registry (stage-two methods, stage-one losses, backbones, datasets): a name is
registered once, and a name that a setting takes becomes one of its allowed values."""

from __future__ import annotations

from glag.config import CHOICES


def add(table: dict, name: str, item, what: str, setting: str | None = None) -> None:
    """Put ``item`` in ``table`` under ``name`` (``what`` names the kind in the error); ``setting``: the
    config setting whose allowed names (config.CHOICES) gain ``name``."""
    if name in table:
        raise ValueError(f"{what} '{name}' is registered twice")
    table[name] = item
    if setting and name not in CHOICES[setting]:
        CHOICES[setting] += (name,)
