"""``glag tune``: a validation-only Optuna search of one stage-two method's settings on a cache."""

from __future__ import annotations

import json
from pathlib import Path

import click

from glag.cache.store import resolve
from glag.cli_options import (
    cache_dir_option,
    config_from_cli,
    config_option,
    option_for,
    quiet_option,
    set_option,
)
from glag.errors import GlagError
from glag.options import Number, check_writable
from glag.tuning import OBJECTIVES


@click.command()
@click.option(
    "--cache",
    "target",
    default=None,
    help="Cache file or key prefix (the stage-one recipe it records is best.toml's base); or --config.",
)
@cache_dir_option
@config_option
@set_option
@option_for("seed")
@click.option("--method", default="glag", show_default=True, help="The stage-two method to tune.")
@click.option(
    "--trials",
    type=Number(int, 1, 100_000),
    default=50,
    show_default=True,
    help="Finished trials in the study; the same command continues a study up to this many.",
)
@click.option(
    "--objective",
    type=click.Choice(OBJECTIVES),
    default="top1",
    show_default=True,
    help="Validation top-1, or balanced validation accuracy (the mean per-class accuracy).",
)
@click.option(
    "--repeats",
    type=Number(int, 1, 100),
    default=1,
    show_default=True,
    help="Stage-two seeds per trial (seed, seed+1, ...), their scores averaged.",
)
@click.option(
    "--prune/--no-prune",
    default=True,
    show_default=True,
    help="Stop trials whose validation curve falls below the median (methods that train by epoch).",
)
@click.option("--storage", default=None, help="An Optuna storage URL (default: sqlite in --out).")
@click.option(
    "--executor",
    type=click.Choice(["local", "slurm"]),
    default="local",
    show_default=True,
    help="local: --workers processes here; slurm: --workers tasks of one SLURM job array (the recipe's "
    "[slurm] settings), sharing a journal-file study in --out (or --storage).",
)
@click.option(
    "--workers",
    type=Number(int, 1, 256),
    default=1,
    show_default=True,
    help="Local processes sharing the study (one thread each beside this one).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("glag-tune"),
    show_default=True,
    help="Study folder: study.db, tune.json, best.toml, best/, trials.csv, history/importances/slice.png.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@quiet_option
def tune(
    target,
    cache_dir,
    config,
    sets,
    method,
    trials,
    objective,
    repeats,
    prune,
    storage,
    executor,
    workers,
    out,
    as_json,
    quiet,
    **kw,
):
    """Search one stage-two method's settings on a cache, on validation rows only.

    The search space is the recipe's [tune] section (key = {low, high[, log]} or a list of choices), or
    the method's default. Every trial runs on the cache with its test split removed; the best trial is
    re-run once with test read (best/), and its settings written as best.toml, a recipe.
    """
    from glag.cache.format import FeatureCache
    from glag.tuning import cache_recipe
    from glag.tuning import tune as run_tune

    if (target is None) == (config is None):
        raise GlagError(
            "give --cache (a cache, with the recipe it records) or --config (a recipe whose stage one is "
            "reused or trained first), one of the two"
        )
    path = resolve(target, cache_dir) if target is not None else None
    base = cache_recipe(FeatureCache(path)) if path is not None else {}
    cfg = config_from_cli(kw, config, sets, base)
    check_writable(out, "--out", folder=True)
    res = run_tune(
        cfg,
        path,
        out,
        method=method,
        trials=trials,
        objective=objective,
        repeats=repeats,
        prune=prune,
        storage=storage,
        workers=workers,
        executor=executor,
        progress=not quiet,
        log=(lambda m: None) if (quiet or as_json) else lambda m: click.echo(m, err=True),
    )
    if as_json:
        click.echo(json.dumps(res, indent=2))
    else:
        click.echo(
            f"best {objective} on validation {res['best_value']:.4f} (trial {res['best_trial']} of "
            f"{res['trials']}): {res['best_params']}\nrecipe: {res['best_toml']}\nrun: {res['best_run']}"
        )
