"""Click options generated from the config tree (glag.config): each flag's type, default, range and help
come from its setting, so a setting is written once. A flag given on the command line overrides the
recipe; one left at its default does not."""

from __future__ import annotations

from pathlib import Path

import click

from glag.cache.store import cache_folder, default_cache_dir
from glag.config import RENAMED, RULES, SECTIONS, Config, Rule, default, parse_override
from glag.errors import GlagError
from glag.options import Number
from glag.pipeline import load_config


class Choice(click.Choice):
    """click.Choice whose names come from a registry when first needed (the registries import torch)."""

    def __init__(self, get):
        self._get = get
        super().__init__([])

    @property
    def choices(self):
        return self._get()

    @choices.setter
    def choices(self, value):
        pass


def flag_of(key: str) -> str:
    """A setting's long flag (``--tukey-power``)."""
    return "--" + key.replace("_", "-")


def option_for(key: str, rule: Rule | None = None):
    """The click option of a config key."""
    rule = rule or RULES[key]
    value = default(key)
    if rule.kind is bool:
        decl = rule.flag or flag_of(key)
        if "/" in decl:
            return click.option(decl, key, default=value, show_default=True, help=rule.help)
        return click.option(decl, key, is_flag=True, default=value, help=rule.help)
    if rule.kind is list:
        return click.option("--" + key, key, multiple=True, default=value, show_default=True, help=rule.help)
    if rule.choices:
        kind = Choice(rule.choices)
    elif rule.kind in (int, float):
        kind = Number(rule)
    elif rule.kind is Path:
        kind = click.Path(path_type=Path)
    else:
        kind = str
    decls = [flag_of(key)] + ([rule.flag] if rule.flag else [])
    return click.option(
        *decls, key, type=kind, default=value, show_default=value not in (None, ""), help=rule.help
    )


def _apply(options, f):
    """Decorate ``f`` with click options so they list in the order given."""
    for o in reversed(options):
        f = o(f)
    return f


def section_options(*sections: str, skip=()):
    """Decorator: one option per key of the given config sections (``skip``: keys left out)."""

    def deco(f):
        keys = [k for s in sections for k in SECTIONS[s] if k not in skip]
        return _apply([option_for(k) for k in keys] + _renamed(keys), f)

    return deco


def _renamed(keys):
    """Hidden old flags that say the new one (``--lt`` -> ``--tukey-power``)."""

    def refuse(new):
        def cb(ctx, param, value):
            if value is not None:
                raise click.BadParameter(f"is now {flag_of(new)}", param_hint=f"'{flag_of(param.name)}'")

        return cb

    return [
        click.option(flag_of(old), old, hidden=True, expose_value=False, callback=refuse(new))
        for old, new in RENAMED.items()
        if new in keys
    ]


def explicit(ctx: click.Context, kw: dict) -> dict:
    """The config values the command line set itself (not left at their defaults)."""
    src = click.core.ParameterSource
    return {
        k: (tuple(v) if isinstance(v, (list, tuple)) else v)
        for k, v in kw.items()
        if k in RULES and ctx.get_parameter_source(k) in (src.COMMANDLINE, src.ENVIRONMENT)
    }


def cache_dir_option(f):
    # the default reads $GLAG_CACHE_DIR itself (not click's envvar), so an empty value means unset
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=lambda: str(default_cache_dir()),
        callback=lambda ctx, param, value: cache_folder(value),  # '' and an unexpanded ~ as the library
        show_default="$GLAG_CACHE_DIR or ~/.cache/glag",
        help="Folder of feature caches.",
    )(f)


def out_option(f):
    return click.option(
        "--out",
        "out_base",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("glag-runs"),
        show_default=True,
        help="Folder for run folders (result.json, per_class.csv, model.pt).",
    )(f)


def download_option(f):
    return click.option(
        "--download", is_flag=True, help="Download the dataset into --data-root first (needs a network)."
    )(f)


config_option = click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A recipe file (TOML; configs/ has the literature's): its keys set these options' values, and flags "
    "given here override them.",
)
set_option = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set any config key, flags or not (e.g. --set crt_epochs=20); repeatable.",
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars or log lines.")


def config_from_cli(kw: dict, path: Path | None = None, sets=(), base: dict | None = None) -> Config:
    """The run config: defaults <- recipe <- ``base`` (values already checked, e.g. a cache's recorded
    recipe) <- --set values <- flags given on the command line."""
    overrides = dict(parse_override(s) for s in sets)
    for key in overrides:  # only a SLURM sweep reads them: taking one here would ignore it silently
        if key.rpartition(".")[2] in SECTIONS["slurm"]:
            raise GlagError(
                f"--set {key}: [slurm] settings are for 'glag sweep --executor slurm'; this command runs here"
            )
    flags = explicit(click.get_current_context(), kw)
    labels = {key: flag_of(key) for key in flags}  # a flag's value is named by its flag, not by --set
    return load_config(path, {**(base or {}), **overrides, **flags}, source="--set", labels=labels)
