"""``framesim duplicates`` and ``framesim evaluate --segments`` (the part of evaluate that scores copied
segments). Kept apart from ``cli.py``; registered on the same group."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from framesim.cli import (
    EXIT_PARTIAL,
    _error,
    _fatal_error,
    _FloatRange,
    _parse_weights,
    dedupe_option,
    engine_errors,
    engine_options,
    runtime_option,
)


def _errors() -> tuple[type[Exception], ...]:
    from framesim.backbones import BackboneError
    from framesim.dataset import DatasetLockedError

    return (BackboneError, DatasetLockedError, ValueError, OSError, *engine_errors())


@click.command("duplicates")
@click.option("-d", "--dataset", default="dataset", show_default=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path), help="Frame dataset folder.")
@click.option("-b", "--backbone", default="efficientnet-lite0", show_default=True,
              help="Backbone spec NAME[:DESCRIPTOR].")
@click.option("--min-score", type=_FloatRange(0, 1, min_open=True), default=None,
              help="Cosine at which two frames are near-duplicates (frame pairs, groups) [default: 0.85].")
@click.option("--candidate-score", type=_FloatRange(-1, 1), default=None,
              help="Weakest cosine a frame pair may have to take part in segment alignment [default: 0.6].")
@click.option("-k", "--neighbours", "k", type=click.IntRange(min=1), default=None,
              help="Nearest frames of other videos looked at per frame [default: 30].")
@click.option("--within", "within_video_s", type=_FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Also pair frames of one video more than SECONDS apart (a shot reused in the same video).")
@click.option("--method", type=click.Choice(["tn", "vote"]), default=None,
              help="Temporal alignment: tn (temporal network, default) or vote (offset voting).")
@click.option("--index", "index", default="auto", show_default=True,
              help="FAISS factory string for the self-join (auto: exact up to 50k frames, then PCA + IVF with "
                   "exact re-scoring).")
@click.option("--no-verify", is_flag=True, help="Do not check thin segments with local features.")
@click.option("--exclude", multiple=True, help="Leave this video out (path as in the manifest); repeatable.")
@click.option("--weights", multiple=True, help="Weights file for the backbone (FILE=none for random weights).")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder [default: reports/duplicates-<date-time>].")
@runtime_option
@dedupe_option
@engine_options
@click.option("--no-report", is_flag=True, help="Do not write report.html.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def duplicates_cmd(dataset: Path, backbone: str, min_score: float | None, candidate_score: float | None,
                   k: int | None, within_video_s: float | None, method: str | None, index: str, no_verify: bool,
                   exclude: tuple[str, ...], weights: tuple[str, ...], out: Path | None, runtime: str,
                   dedupe: float | None, engine: str, ray_address: str | None, no_report: bool, quiet: bool) -> None:
    """Near-duplicate frames and copied segments inside DATASET.

    Writes frame_pairs (.parquet/.csv: every pair of near-duplicate frames of different videos),
    groups (connected components, each with a representative to keep), segments (.parquet/.csv:
    video_a, start_a, end_a, video_b, start_b, end_b, score, n_frames, offset_s) and report.html.
    """
    from framesim.duplicates import find_duplicates, summary_lines
    from framesim.runs import default_run_dir

    options = {name: value for name, value in (("min_score", min_score), ("candidate_score", candidate_score),
                                                ("k", k), ("method", method), ("dedupe", dedupe)) if value is not None}
    out = out or default_run_dir().with_name("duplicates-" + default_run_dir().name)
    try:
        result = find_duplicates(dataset, backbone, out_dir=out, within_video_s=within_video_s, index=index,
                                 verify=not no_verify, exclude=exclude, weights=_parse_weights(weights, (backbone,)),
                                 runtime=runtime, report=not no_report, progress=not quiet, on_error=_error,
                                 engine=engine, ray_address=ray_address, **options)
    except _errors() as exc:
        _fatal_error(exc)
        return
    for line in summary_lines(result):
        click.echo(line)
    click.echo(f"output: {out}")
    if not no_report:
        click.echo(f"report: {out / 'report.html'}")
    if result.failures:
        sys.exit(EXIT_PARTIAL)


def evaluate_segments(dataset: Path, backbone: str, out: Path, *, filler: tuple[Path, ...], seed: int,
                      weights: tuple[str, ...], runtime: str, quiet: bool) -> None:
    """The body of ``framesim evaluate --segments``: build, run, score, print the table."""
    from framesim.evaluation.segment_metrics import format_segment_table
    from framesim.evaluation.segment_runner import evaluate_segments as run

    try:
        result = run(dataset, out, backbone=backbone, filler=filler, seed=seed,
                     weights=_parse_weights(weights, (backbone,)), runtime=runtime, progress=not quiet,
                     on_error=_error)
    except _errors() as exc:
        _fatal_error(exc)
        return
    info = result.benchmark.info
    click.echo(f"segment benchmark: {len(result.benchmark.truth)} copied segments in "
               f"{len(result.benchmark.queries)} query videos ({len(result.benchmark.copy_free)} copy nothing), "
               f"{len(result.benchmark.indexed_videos)} indexed videos, seed {info.get('seed', seed)}")
    click.echo("")
    click.echo(format_segment_table(result.scores))
    click.echo(f"VSC 2022 matching-track µAP: {result.vsc_uap:.3f}")
    click.echo("")
    click.echo(f"done in {result.seconds:.1f} s")
    click.echo(f"table:  {out / 'segment_metrics.csv'}")
    click.echo(f"report: {out / 'duplicates' / 'report.html'}")


def register(cli: click.Group) -> None:
    cli.add_command(duplicates_cmd)
