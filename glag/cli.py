"""The ``glag`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from tabulate import tabulate

from glag import __version__
from glag.cli_options import (
    cache_dir_option,
    dataset_options,
    generator_options,
    stage_two_options,
    train_options,
)
from glag.errors import GlagError
from glag.options import Number, check_writable
from glag.pipeline import (
    build_generator,
    build_spec,
    run_stage_one,
    stage_two_run,
)
from glag.pipeline import log as _log


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="glag")
def cli():
    """GLAG long-tailed classification: dataset inspection (data), stage-one training and feature dump
    (extract), the adaptive feature generator (generate), classifier-only stage two (classify), the whole
    pipeline (run), multi-seed paired grids (sweep), cache management (cache), run comparison (report) and
    prediction with an exported model (predict)."""


@cli.group()
def cache():
    """List, inspect, verify and remove feature caches."""


@cache.command("ls")
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def cache_ls(cache_dir: Path, as_json: bool):
    """List the caches in the cache folder."""
    from glag.cache.store import list_caches

    rows = list_caches(cache_dir)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo(f"no caches in {cache_dir}")
    else:
        click.echo(tabulate(rows, headers="keys"))


@cache.command("info")
@click.argument("target")
@cache_dir_option
def cache_info(target: str, cache_dir: Path):
    """Show a cache's attributes and per-split class counts (TARGET: file or key prefix)."""
    from glag.cache.format import FeatureCache
    from glag.cache.store import resolve

    c = FeatureCache(resolve(target, cache_dir), check_data=False)
    info = c.info()
    info["config"] = c.config
    info["train_counts"] = c.train_counts.tolist()
    click.echo(json.dumps(info, indent=2))


@cache.command("verify")
@click.argument("targets", nargs=-1, required=True)
@cache_dir_option
def cache_verify(targets: tuple[str, ...], cache_dir: Path):
    """Check every stored array's checksum (naming each damaged one), shapes, label range, class
    offsets and finiteness, for each cache and the generator statistics beside it; exit 1 on any problem."""
    from glag.cache.format import STATS_MARK, verify
    from glag.cache.store import related_files, resolve
    from glag.generate.afg import stats_problems

    bad = 0
    for t in targets:
        path = resolve(t, cache_dir)
        checks = [(path, verify(path))]
        checks += [(q, stats_problems(q)) for q in related_files(path) if STATS_MARK in q.name]
        for p, problems in checks:
            bad += bool(problems)
            for msg in problems or ["OK"]:
                click.echo(f"{p}: {msg}")
    if bad:
        raise click.exceptions.Exit(1)


@cache.command("import")
@click.option(
    "--train",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="npz with 'features' [N, d] and 'labels' [N] (and optionally 'index' [N]).",
)
@click.option(
    "--val",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Validation split, same form.",
)
@click.option(
    "--test", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Test split, same form."
)
@click.option(
    "--head",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="npz with the stage-one head: 'weight' [C, d] and optionally 'bias' [C]; fitted (CE) when absent.",
)
@click.option(
    "--class-names",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON list of class names (default: 0..C-1, C = largest label + 1).",
)
@click.option(
    "--name", required=True, help="Dataset name for the cache file (letters, digits, '.', '_', '-')."
)
@cache_dir_option
def cache_import(train, val, test, head, class_names, name, cache_dir):
    """Make a cache from features computed elsewhere; prints its path as JSON.

    The content key covers every array, so importing the same arrays again finds the same cache.
    'glag generate', 'glag classify', 'glag report' and 'glag cache' then work on it as on any cache.
    """
    from glag.cache.importer import import_cache

    check_writable(cache_dir, "--cache-dir", folder=True)
    path, existed = import_cache(cache_dir, name, train, val, test, head, class_names)
    click.echo(json.dumps({"cache": str(path), "reused": existed}))


@cache.command("rm")
@click.argument("targets", nargs=-1, required=True)
@cache_dir_option
@click.option("--keep-derived", is_flag=True, help="Keep generator statistics derived from the cache.")
def cache_rm(targets: tuple[str, ...], cache_dir: Path, keep_derived: bool):
    """Remove caches (TARGETS: files or key prefixes) and the statistics and stage-one report derived from
    them.

    Only files that glag wrote are removed, recognised by their content; any other path is refused.
    """
    from glag.cache.store import related_files, removable

    paths = [removable(t, cache_dir) for t in targets]  # check all first: no partial removal on a typo
    for p in paths:
        for q in ([] if keep_derived else related_files(p)) + [p]:
            q.unlink()
            click.echo(f"removed {q}")


@cli.command("data")
@dataset_options
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
def data_cmd(indices, export, as_json, **kw):
    """Show a dataset's per-class train/val/test counts and Many/Medium/Few groups, without training.

    Takes the same dataset options as 'glag extract', so what it prints is what extract trains on.
    """
    from glag.extract.dataset_report import class_table, lent_rows, totals, write_indices
    from glag.extract.datasets import load_dataset

    check_writable(indices, "--indices", folder=False)
    if export:  # checked before the images are read, which can take minutes
        from glag.extract.subset_export import check_new_folder

        check_new_folder(export, kw["data_root"])
    data = load_dataset(build_spec(kw), download=kw["download"], progress=not as_json)
    spec = data.spec
    rows = class_table(data)
    summary = {
        "dataset": spec.label(),
        "spec": spec.identity(),
        "totals": totals(rows),
        "val_rows": {"rule": spec.val_rows or "given", "from_train": lent_rows(data)},
    }
    if spec.content:
        summary["digest"] = spec.content
    if indices:
        summary["indices"] = {"file": str(indices), "rows": write_indices(data, indices)}
    if export:
        from glag.extract.subset_export import export_subset

        summary["export"] = {"folder": str(export), "files": export_subset(data, export)}
    if as_json:
        click.echo(json.dumps({**summary, "classes": rows}, indent=2))
        return
    click.echo(tabulate(rows, headers="keys"))
    t = summary["totals"]
    click.echo(
        f"{summary['dataset']}: train {t['train']}, val {t['val']}, test {t['test']} images; "
        f"{t['many_classes']} many / {t['medium_classes']} medium / {t['few_classes']} few classes"
    )
    lent = summary["val_rows"]["from_train"]
    if lent:
        click.echo(
            "validation rows taken from the end of the training part (--val-rows every-class): "
            + ", ".join(f"{name} {n}" for name, n in lent.items())
        )
    elif spec.val_rows == "leftovers":
        click.echo(
            "validation rows: leftovers only (--val-rows leftovers); classes without leftovers have none"
        )
    if spec.content:
        click.echo(f"content digest (sha256): {spec.content}")
    if indices:
        click.echo(f"wrote {summary['indices']['rows']} rows to {indices}")
    if export:
        click.echo(
            f"exported {sum(summary['export']['files'].values())} images to {export} "
            "(use: --dataset folder --profile all)"
        )


@cli.command()
@dataset_options
@train_options
@cache_dir_option
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Dump features of this stage-one checkpoint instead of training.",
)
@click.option(
    "--views",
    type=Number(int, 0),
    default=0,
    show_default=True,
    help="Also dump this many augmented views of the train split.",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue an interrupted training run from its last epoch checkpoint, or start it over.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or log lines.")
def extract(cache_dir, checkpoint, views, resume, quiet, **kw):
    """Train a backbone (stage one) and dump train/val/test features to the cache.

    An identical call reuses the trained weights and the cache instead of recomputing.
    Prints the cache path and stage-one test accuracy (overall, Many/Medium/Few) as JSON.
    """
    done = run_stage_one(kw, cache_dir, checkpoint, views, quiet, resume)
    if done is None:  # a non-zero rank under torchrun: rank 0 writes and reports
        return
    path, report, reused = done
    out = {"cache": str(path), "reused": reused, **{k: report[k] for k in ("top1", "many", "medium", "few")}}
    click.echo(json.dumps(out))


@cli.command()
@click.option("--cache", "target", required=True, help="Cache file or key prefix.")
@cache_dir_option
@generator_options
@click.option(
    "--n-target", type=Number(int, 0), default=0, help="Rows per class after top-up (0 = largest class)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def generate(target, cache_dir, n_target, as_json, **kw):
    """Compute Tukey-space class statistics and tail support sets for a cache.

    They are stored in their own file beside the cache (never inside it) and reused by
    'glag classify'. Prints per group: classes, real rows and synthetic rows per epoch.
    """
    from glag.cache.store import resolve
    from glag.generate.afg import describe

    afg = build_generator(resolve(target, cache_dir), n_target=n_target, **kw)
    rows = afg.summary(n_target)
    if as_json:
        click.echo(json.dumps({**describe(afg), "groups": rows}, indent=2))
    else:
        info = describe(afg)
        click.echo(
            f"statistics: {info['stats_file']}  ({info['mode']} factors, {info['factor_MB']} MB, "
            f"{info['backend']})"
        )
        click.echo(tabulate(rows, headers="keys"))


def _check_stage_two_args(methods, out_base) -> None:
    _check_methods(methods)
    check_writable(out_base, "--out", folder=True)


def _check_methods(methods, variants=()) -> None:
    from glag.classify.runner import METHODS

    bad = [m for m in methods if m not in METHODS and m not in variants]
    if bad:
        allowed = ", ".join([*METHODS, *variants]) + (
            " (the last from the config's [variants])" if variants else ""
        )
        raise click.BadParameter(f"{', '.join(bad)} (choose from {allowed})", param_hint="'--method'")


def _print_results(records, extra_rows=()):
    from glag.metrics import summary_row

    rows = list(extra_rows) + [
        {"method": r["method"], **summary_row(r["test"]), "seconds": r["seconds"], "run": r["dir"]}
        for r in records
    ]
    click.echo(tabulate(rows, headers="keys", floatfmt=".2f", missingval="-"))


@cli.command()
@click.option("--cache", "target", required=True, help="Cache file or key prefix.")
@cache_dir_option
@click.option(
    "--method",
    "methods",
    multiple=True,
    default=["glag"],
    show_default=True,
    help="glag, stage-one, crt, lws, tau-norm, logit-adjust or probe; repeat for several.",
)
@generator_options
@stage_two_options
@click.option(
    "--seed", type=Number(int, 0, 2**32, hi_open=True), default=0, show_default=True, help="Random seed."
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Stage-one checkpoint for the exported model (default: the one recorded beside the cache).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def classify(target, cache_dir, methods, checkpoint, quiet, **kw):
    """Train stage-two classifiers on a cache and report test top-1 (overall, Many/Medium/Few).

    Each method writes a run folder with result.json and per_class.csv; GLAG also exports
    model.pt (backbone -> Tukey -> classifier) when the stage-one checkpoint is known.
    Hyper-parameters and beta_c are tuned on the validation split only.
    """
    from glag.cache.store import resolve

    _check_stage_two_args(methods, kw["out_base"])
    if checkpoint is not None:  # a bad --checkpoint fails now, not after training
        from glag.extract.dump import load_checkpoint

        load_checkpoint(checkpoint)
    _print_results(stage_two_run(resolve(target, cache_dir), methods, kw, checkpoint, quiet))


@cli.command()
@dataset_options
@train_options
@cache_dir_option
@generator_options
@stage_two_options
@click.option(
    "--method",
    "methods",
    multiple=True,
    default=["stage-one", "crt", "glag"],
    show_default=True,
    help="Stage-two methods to run on the cache; repeat for several.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or log lines.")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    is_eager=True,
    expose_value=False,
    callback=lambda ctx, _, v: _use_config(ctx, v),
    help="A recipe file (TOML; configs/ has the literature's): its keys set these options' values, "
    "and flags given here override them.",
)
@click.option(
    "--print-config", is_flag=True, help="Print the effective config (recipe + flags) as TOML and exit."
)
def run(cache_dir, methods, quiet, print_config, **kw):
    """Run the whole pipeline: extract -> generate -> classify, and print a result table.

    With no arguments: the bundled long-tailed digits, offline, in about a minute on 2 CPU cores.
    Every run folder's result.json records the effective config.
    """
    from glag.config import to_toml
    from glag.pipeline import run_config_of, run_stage_two

    variants = click.get_current_context().meta.get("glag_variants", {})
    resolved, run_config = run_config_of(kw, methods, variants)
    _check_methods(methods, variants)
    checked = {name: _variant_kw(kw, name, v) for name, v in variants.items()}  # every variant, used or not
    if print_config:
        click.echo(to_toml(run_config), nl=False)
        return
    check_writable(kw["out_base"], "--out", folder=True)  # before training, so no work is lost to a bad --out
    done = run_stage_one(kw, cache_dir, quiet=quiet)
    if done is None:
        return
    path, _, reused = done
    if not quiet:
        _log(f"cache {path} ({'reused' if reused else 'written'})")
    _print_results(run_stage_two(path, methods, kw, checked, resolved, run_config, quiet))


def _variant_kw(kw: dict, name: str, overrides: dict) -> dict:
    """The run's options with a config variant's keys, each checked as its flag would be."""
    params = {p.name: p for p in click.get_current_context().command.params}
    out = dict(kw)
    for key, value in overrides.items():
        if key == "methods":
            out[key] = value
            continue
        try:
            out[key] = params[key].type_cast_value(click.get_current_context(), value)
        except click.BadParameter as exc:
            raise click.BadParameter(exc.message, param_hint=f"[variants.{name}] {key}") from None
    return out


@cli.command()
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
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def sweep(config, seeds, out, sets, cache_dir, jobs, quiet):
    """Run CONFIG's stage-one caches (seeds x --set values) x its stage-two methods, cell by cell.

    Resumable: finished cells are never re-run, and a killed sweep re-runs only what is missing.
    Writes cells.csv (one row per cell and method) and summary.md (mean ± std, and GLAG minus each
    method paired on the same cache with 95 % intervals).
    """
    from glag.sweep import parse_seeds, parse_sets, run_sweep

    seed_list, set_map = parse_seeds(seeds), parse_sets(sets)
    check_writable(out, "--out", folder=True)
    rows = run_sweep(config, seed_list, out, set_map, cache_dir=cache_dir, quiet=quiet, jobs=jobs)
    click.echo(f"{len(rows)} rows in {out / 'cells.csv'}; summary in {out / 'summary.md'}")


def _use_config(ctx, path):
    """Make a config file's values the defaults of the command's options (flags still override)."""
    if path is not None:
        from glag.config import read_config

        values = read_config(path)
        ctx.meta["glag_variants"] = values.pop("variants", {})
        ctx.default_map = {**(ctx.default_map or {}), **values}
    return path


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--format", "fmt", type=click.Choice(["markdown", "csv"]), default="markdown", show_default=True
)
@click.option(
    "--plots",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write per_class.png (accuracy vs training count) and beta.png (beta_c over epochs) here.",
)
@click.option(
    "--tsne",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a t-SNE plot of real and generated features of a few tail classes and their support "
    "classes, from the first GLAG run given.",
)
@click.option(
    "--paired",
    is_flag=True,
    help="Also print GLAG minus each method, paired on the same cache, with 95 % t-intervals.",
)
def report(runs, fmt, plots, tsne, paired):
    """Compare run folders in one table (markdown or CSV), optionally with plots.

    Each run folder also gets stage_one_curves.png (loss, val accuracy, lambda(t), lr per epoch)
    when its stage-one training log is known."""
    from glag.classify.report import plot_beta, plot_per_class, plot_stage_one_curves
    from glag.classify.results import load_run, paired_table, summary_table

    check_writable(plots, "--plots", folder=True)
    check_writable(tsne, "--tsne", folder=False)
    recs = [load_run(r) for r in runs]
    tables = [summary_table(recs)] + ([paired_table(recs)] if paired else [])
    for table in tables:
        click.echo(
            table.to_markdown(index=False) if fmt == "markdown" else table.to_csv(index=False).rstrip()
        )
    if tsne and not any(r["method"] == "glag" for r in recs):
        raise GlagError("--tsne needs a GLAG run folder among RUNS (method 'glag')")
    if plots:
        plots.mkdir(parents=True, exist_ok=True)
        for p in (plot_per_class(recs, plots / "per_class.png"), plot_beta(recs, plots / "beta.png")):
            if p:
                _log(f"wrote {p}")
    if tsne:
        from glag.classify.tsne import plot_tsne

        glag_runs = [r for r in recs if r["method"] == "glag"]
        if not glag_runs:
            raise GlagError("--tsne needs a GLAG run folder among RUNS (method 'glag')")
        _log(f"wrote {plot_tsne(glag_runs[0], tsne)}")
    for r in recs:  # last: a refused --tsne or --plots leaves no curves behind
        plot_stage_one_curves(r)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", type=click.Path(path_type=Path))
def predict(model, images):
    """Classify every image under IMAGES with an exported MODEL (model.pt); prints CSV."""
    import csv

    from glag.classify.export import predict_folder

    rows = predict_folder(model, images)
    w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)


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
