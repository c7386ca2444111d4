"""``glag sweep``: a recipe's grid of seeds x --set values, run locally or as a SLURM job array."""

from __future__ import annotations

from pathlib import Path

import click

from glag.cli_options import cache_dir_option, explicit, quiet_option, section_options
from glag.options import Number, check_writable
from glag.sweep import parse_seeds, parse_sets, run_sweep


@click.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--seeds", default="0-2", show_default=True, help="Seeds of stage one and stage two: 0-4 or 0,1,2."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Sweep folder: cells/<cell>/ (config.toml and run folders), cells.csv, summary.md, groups.png.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=V1,V2",
    help="Vary a config key over values (one stage-one cache per combination and seed); repeatable.",
)
@cache_dir_option
@click.option(
    "--jobs",
    type=Number(int, 1, 64),
    default=1,
    show_default=True,
    help="Cells run side by side in separate processes: packed runs on one GPU. Cells that share a "
    "stage-one cache run one after another in one worker.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "slurm"]),
    default="local",
    show_default=True,
    help="local: cells run on this machine (--jobs at a time); slurm: one SLURM job array through submitit, "
    "options from the recipe's [slurm] section and the flags below.",
)
@section_options("slurm")
@quiet_option
def sweep(config, seeds, out, sets, cache_dir, jobs, executor, quiet, **slurm):
    """Run CONFIG's stage-one caches (seeds x --set values) x its stage-two methods, cell by cell.

    Resumable: finished cells are never re-run, and a killed sweep re-runs only what is missing.
    Writes cells.csv (one row per cell and method) and summary.md (mean ± std, and GLAG minus each
    method paired on the same cache with 95 % intervals).
    """
    ctx = click.get_current_context()
    given = explicit(ctx, slurm)
    if executor == "slurm" and ctx.get_parameter_source("jobs") == click.core.ParameterSource.COMMANDLINE:
        raise click.BadParameter(
            "--jobs is for --executor local; SLURM runs the cells", param_hint="'--jobs'"
        )
    if given and executor != "slurm":
        raise click.BadParameter(f"--{next(iter(given)).replace('_', '-')} needs --executor slurm")
    seed_list, set_map = parse_seeds(seeds), parse_sets(sets)
    check_writable(out, "--out", folder=True)
    rows = run_sweep(
        config,
        seed_list,
        out,
        set_map,
        cache_dir=cache_dir,
        quiet=quiet,
        jobs=jobs,
        executor=executor,
        slurm=given,
    )
    click.echo(f"{len(rows)} rows in {out / 'cells.csv'}; summary in {out / 'summary.md'}")
