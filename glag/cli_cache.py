"""``glag cache``: list, inspect, verify, import and remove feature caches."""

from __future__ import annotations

import json
from pathlib import Path

import click
from tabulate import tabulate

from glag.cache.format import STATS_MARK, FeatureCache, verify
from glag.cache.importer import import_cache
from glag.cache.store import list_caches, related_files, removable, resolve
from glag.cli_options import cache_dir_option
from glag.generate.afg import stats_problems
from glag.options import check_writable


@click.group()
def cache():
    """List, inspect, verify and remove feature caches."""


@cache.command("ls")
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def cache_ls(cache_dir: Path, as_json: bool):
    """List the caches in the cache folder."""

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

    paths = [removable(t, cache_dir) for t in targets]  # check all first: no partial removal on a typo
    for p in paths:
        for q in ([] if keep_derived else related_files(p)) + [p]:
            q.unlink()
            click.echo(f"removed {q}")
