"""The ``glag`` command line: a thin caller of the library (glag.pipeline, glag.sweep, glag.classify)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from tabulate import tabulate

from glag import __version__
from glag.cache.store import resolve
from glag.cli_cache import cache
from glag.cli_options import (
    cache_dir_option,
    config_from_cli,
    config_option,
    download_option,
    option_for,
    out_option,
    quiet_option,
    section_options,
    set_option,
)
from glag.cli_results import predict, report
from glag.cli_sweep import sweep
from glag.cli_tune import tune
from glag.config import RULES, to_toml
from glag.errors import DEBUG_ENV, GlagError
from glag.extract.dataset_report import describe, describe_lines
from glag.extract.datasets import DatasetSpec, load_dataset
from glag.extract.dump import load_checkpoint
from glag.extract.subset_export import check_new_folder
from glag.generate.afg import describe as describe_generator
from glag.metrics import summary_row
from glag.options import Number, check_writable
from glag.pipeline import build_generator, resolved, run_stage_one, run_stage_two
from glag.pipeline import run as run_pipeline
from glag.reporting import groups_header


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="glag")
@click.option(
    "--debug",
    is_flag=True,
    help=f"Show the traceback when a registered method, loss, backbone or dataset of your own raises "
    f"(otherwise one line names it); the same as setting {DEBUG_ENV}=1.",
)
def cli(debug: bool):
    """GLAG long-tailed classification: dataset inspection (data), stage-one training and feature dump
    (extract), the adaptive feature generator (generate), classifier-only stage two (classify), the whole
    pipeline (run), multi-seed paired grids (sweep), cache management (cache), run comparison (report) and
    prediction with an exported model (predict), and a validation-only search of stage-two settings (tune)."""
    if debug:
        os.environ[DEBUG_ENV] = "1"  # read where user code runs, and by a sweep's worker processes


for command in (cache, report, predict, sweep, tune):
    cli.add_command(command)


@cli.command("data")
@section_options("dataset")
@download_option
@click.option(
    "--indices",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write split,index,label for every train/val/test image to this CSV (index: position in the source "
    "files), plus path (relative to --data-root) for image folders.",
)
@click.option(
    "--export",
    type=click.Path(path_type=Path),
    default=None,
    help="Copy the subset's train/val/test images to this new folder; '--dataset folder --profile all' on it "
    "trains on the same images in the same order (image folders only).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def data_cmd(download, indices, export, as_json, **kw):
    """Show a dataset's per-class train/val/test counts and Many/Medium/Few groups, without training.

    Takes the same dataset options as 'glag extract', so what it prints is what extract trains on.
    """
    check_writable(indices, "--indices", folder=False)
    if export:  # checked before the images are read, which can take minutes
        check_new_folder(export, kw["data_root"])
    cfg = config_from_cli(kw)
    data = load_dataset(DatasetSpec.from_config(cfg), download=download, progress=not as_json)
    summary = describe(data, indices, export, (cfg.dataset.many_above, cfg.dataset.few_below))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(tabulate(summary["classes"], headers="keys"))
    click.echo("\n".join(describe_lines(summary)))


@cli.command()
@section_options("dataset", "stage_one")
@download_option
@cache_dir_option
@config_option
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Dump features of this stage-one checkpoint instead of training.",
)
@click.option(
    "--views",
    type=Number(int, 0, 1000),
    default=0,
    show_default=True,
    help="Also dump this many augmented views.",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue an interrupted training run from its last epoch checkpoint, or start it over.",
)
@quiet_option
def extract(download, cache_dir, config, checkpoint, views, resume, quiet, **kw):
    """Train a backbone (stage one) and dump train/val/test features to the cache.

    An identical call reuses the trained weights and the cache instead of recomputing.
    Prints the cache path and stage-one test accuracy (overall, Many/Medium/Few) as JSON.
    """
    cfg = config_from_cli(kw, config)
    done = run_stage_one(
        cfg, cache_dir, checkpoint=checkpoint, views=views, quiet=quiet, resume=resume, download=download
    )
    if done is None:  # a non-zero rank under torchrun: rank 0 writes and reports
        return
    path, report, reused = done
    out = {"cache": str(path), "reused": reused, **{k: report[k] for k in ("top1", "many", "medium", "few")}}
    click.echo(json.dumps(out))


@cli.command()
@click.option("--cache", "target", required=True, help="Cache file or key prefix.")
@cache_dir_option
@section_options("generator")
@option_for("n_target")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def generate(target, cache_dir, as_json, **kw):
    """Compute Tukey-space class statistics and tail support sets for a cache.

    They are stored in their own file beside the cache (never inside it) and reused by
    'glag classify'. Prints per group: classes, real rows and synthetic rows per epoch.
    """
    cfg = config_from_cli(kw)
    afg = build_generator(resolve(target, cache_dir), cfg)
    rows = afg.summary(cfg.stage_two.n_target)
    info = describe_generator(afg)
    if as_json:
        click.echo(json.dumps({**info, "groups": rows}, indent=2))
        return
    click.echo(
        f"statistics: {info['stats_file']}  ({info['mode']} factors, {info['factor_MB']} MB, "
        f"{info['backend']})"
    )
    click.echo(tabulate(rows, headers="keys"))


def _print_results(records):
    click.echo(groups_header(records))
    rows = [
        {"method": r["method"], **summary_row(r["test"]), "seconds": r["seconds"], "run": r["dir"]}
        for r in records
    ]
    click.echo(tabulate(rows, headers="keys", floatfmt=".2f", missingval="-"))


@cli.command()
@click.option("--cache", "target", required=True, help="Cache file or key prefix.")
@cache_dir_option
@click.option(
    "--method", "method", multiple=True, default=["glag"], show_default=True, help=RULES["method"].help
)
@section_options("generator", "stage_two", skip=("method",))
@option_for("seed")
@set_option
@out_option
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Stage-one checkpoint for the exported model (default: the one recorded beside the cache).",
)
@quiet_option
def classify(target, cache_dir, sets, out_base, checkpoint, quiet, **kw):
    """Train stage-two classifiers on a cache and report test top-1 (overall, Many/Medium/Few).

    Each method writes a run folder with result.json and per_class.csv; GLAG also exports
    model.pt (backbone -> Tukey -> classifier) when the stage-one checkpoint is known.
    Hyper-parameters and beta_c are tuned on the validation split only.
    """
    methods = kw.pop("method")  # classify's own default: GLAG alone
    cfg = config_from_cli(kw, None, sets)
    check_writable(out_base, "--out", folder=True)
    if checkpoint is not None:  # a bad --checkpoint fails now, not after training
        load_checkpoint(checkpoint)
    path = resolve(target, cache_dir)
    _print_results(run_stage_two(path, cfg, out_base, methods=methods, checkpoint=checkpoint, quiet=quiet))


@cli.command()
@section_options("dataset", "stage_one", "generator", "stage_two")
@download_option
@cache_dir_option
@out_option
@config_option
@set_option
@click.option(
    "--print-config", is_flag=True, help="Print the effective config (recipe + flags) as TOML and exit."
)
@quiet_option
def run(download, cache_dir, out_base, config, sets, print_config, quiet, **kw):
    """Run the whole pipeline: extract -> generate -> classify, and print a result table.

    With no arguments: the bundled long-tailed digits, offline, in about a minute on 2 CPU cores.
    Every run folder's result.json records the effective config.
    """
    cfg = config_from_cli(kw, config, sets)
    if print_config:
        click.echo(to_toml(resolved(cfg).to_dict()), nl=False)
        return
    _print_results(run_pipeline(cfg, out=out_base, cache_dir=cache_dir, quiet=quiet, download=download))


def main(argv=None) -> int:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        rv = cli.main(args=argv, prog_name="glag", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        click.echo("interrupted", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    except GlagError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    except OSError as exc:  # disk full, permissions, a vanished mount: the partial file is already removed
        where = f" ('{exc.filename}')" if getattr(exc, "filename", None) else ""
        click.echo(f"error: {exc.strerror or exc}{where}", err=True)
        return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
