"""``glag report`` and ``glag predict``: reading finished run folders and exported models."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import click

from glag.classify.export import predict_folder
from glag.classify.report import plot_beta, plot_per_class, plot_stage_one_curves
from glag.classify.results import load_run
from glag.errors import GlagError
from glag.options import check_writable
from glag.pipeline import log
from glag.reporting import groups_header, paired_table, summary_table


@click.command()
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
    check_writable(plots, "--plots", folder=True)
    check_writable(tsne, "--tsne", folder=False)
    recs = [load_run(r) for r in runs]
    if fmt == "markdown":
        click.echo(groups_header(recs) + "\n")
    else:  # CSV stays CSV: the thresholds go to stderr
        log(groups_header(recs))
    for table in [summary_table(recs)] + ([paired_table(recs)] if paired else []):
        click.echo(
            table.to_markdown(index=False) if fmt == "markdown" else table.to_csv(index=False).rstrip()
        )
    glag_runs = [r for r in recs if r["method"] == "glag"]
    if tsne and not glag_runs:
        raise GlagError("--tsne needs a GLAG run folder among RUNS (method 'glag')")
    if plots:
        plots.mkdir(parents=True, exist_ok=True)
        for p in (plot_per_class(recs, plots / "per_class.png"), plot_beta(recs, plots / "beta.png")):
            if p:
                log(f"wrote {p}")
    if tsne:
        from glag.classify.tsne import plot_tsne

        log(f"wrote {plot_tsne(glag_runs[0], tsne)}")
    for r in recs:  # last: a refused --tsne or --plots leaves no curves behind
        plot_stage_one_curves(r)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", type=click.Path(path_type=Path))
def predict(model, images):
    """Classify every image under IMAGES with an exported MODEL (model.pt); prints CSV."""
    rows = predict_folder(model, images)
    w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
