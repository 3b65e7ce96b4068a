"""``framesim evaluate``: score backbones on a benchmark built from a dataset (``--segments``: copied segments).

Kept apart from ``cli.py``; registered on the same group.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from framesim.cli import (
    EXIT_PARTIAL,
    _dedupe_kwargs,
    _error,
    _fatal_error,
    _FloatRange,
    _parse_weights,
    _verify_params,
    dedupe_option,
    runtime_option,
    verify_option,
)

if TYPE_CHECKING:
    from framesim.evaluation import EvaluationResult


@click.command("evaluate")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-b", "--backbone", "backbones", multiple=True,
              help="Backbone (name or spec) to evaluate; repeat to compare several [default: efficientnet-lite0]. "
                   "phash (64-bit perceptual hash) and tiny-image are baselines.")
@click.option("-n", "--examples", "n_examples", type=click.IntRange(min=1), default=150, show_default=True,
              help="Benchmark size, distractors included.")
@click.option("--distractor-share", type=_FloatRange(0, 1, max_open=True), default=None,
              help="Share of the examples that come from no indexed video [default: 1/3; 0 for a single-video "
                   "dataset without --distractors].")
@click.option("--distractors", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of images from no video to make distractors from [default: frames of held-out videos].")
@click.option("--edits", default=None,
              help="Comma-separated edits to use [default: all: rescale_jpeg, crop_mild, crop_strong, blur, "
                   "brightness_contrast, caption, logo, hflip, rotate, pip, grayscale, pad, stretch, noise, "
                   "perspective, combo].")
@click.option("--from-frames", is_flag=True,
              help="Cut examples from the dataset's frame images instead of re-decoding the videos (faster on "
                   "long videos; examples then show exactly the indexed instants, which flatters every backbone).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Same seed, same benchmark.")
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Frames kept per example and backbone.")
@click.option("--weights", multiple=True,
              help="Weights file for the backbone (NAME=FILE with several; FILE=none for random weights).")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Evaluation folder [default: reports/eval-<date-time>].")
@runtime_option
@dedupe_option
@verify_option
@click.option("--no-report", is_flag=True, help="Do not write report.html.")
@click.option("--segments", is_flag=True,
              help="Score copied-segment detection (framesim duplicates) instead: query videos compiled from "
                   "filler and edited 2-8 s spans of the dataset's videos, sampled at 2 fps (uses -b, --seed, "
                   "--weights, --runtime, -o, -q; the frame-benchmark options do not apply).")
@click.option("--filler", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="With --segments: images or videos from no indexed video for the queries' filler "
                   "[default: about a third of the videos, held out]; repeatable.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def evaluate(dataset: Path, backbones: tuple[str, ...], n_examples: int,
             distractor_share: float | None, distractors: Path | None, edits: str | None, from_frames: bool,
             seed: int, top_k: int,
             weights: tuple[str, ...], out: Path | None, runtime: str, dedupe: float | None,
             verify_spec: str | None, no_report: bool, segments: bool, filler: tuple[Path, ...],
             quiet: bool) -> None:
    """Score backbones on a copy-detection benchmark built from DATASET's own videos.

    Frames are cut from the videos and edited the way re-uploads are (crops, re-encoding, captions,
    flips, picture-in-picture, ...); distractors come from no indexed video. Prints per backbone
    top-1 accuracy, µAP, recall at 90 % precision and false matches, overall and per edit, and
    writes metrics.csv and the HTML report.
    """
    from framesim.backbones import BackboneError
    from framesim.dataset import DatasetLockedError
    from framesim.evaluation import default_eval_dir, format_table
    from framesim.evaluation import evaluate as run_evaluate
    from framesim.evaluation.benchmark import NoDistractorSourceError
    from framesim.matching import DEFAULT_BACKBONE

    backbones = tuple(dict.fromkeys(backbones or (DEFAULT_BACKBONE,)))
    if segments:
        from framesim.cli_duplicates import evaluate_segments

        if len(backbones) > 1:
            raise click.UsageError("--segments evaluates one backbone at a time")
        evaluate_segments(dataset, backbones[0], out or default_eval_dir(), filler=filler, seed=seed,
                          weights=weights, runtime=runtime, quiet=quiet)
        return
    verify = _verify_params(verify_spec)
    edit_names = [e.strip() for e in edits.split(",") if e.strip()] if edits is not None else None
    out = out or default_eval_dir()

    def run(share: float) -> EvaluationResult:
        return run_evaluate(dataset, list(backbones), out_dir=out, n_examples=n_examples, distractor_share=share,
                            distractors=distractors, seed=seed, top_k=top_k, edits=edit_names,
                            from_video=not from_frames, progress=not quiet,
                            weights=_parse_weights(weights, backbones), report=not no_report, on_error=_error,
                            runtime=runtime, verify=verify, **_dedupe_kwargs(dedupe))

    try:
        try:
            result = run(distractor_share if distractor_share is not None else 1 / 3)
        except NoDistractorSourceError:
            if distractor_share is not None:
                raise
            # a single-video dataset (the bundled sample): still useful without distractors; say so
            click.echo("note: the dataset has a single video, so none can be held out to make distractors: "
                       "evaluating without them (no false-match count); pass --distractors DIR (images from no "
                       "video) to add some", err=True)
            result = run(0.0)
    except (BackboneError, DatasetLockedError, ValueError, OSError) as exc:
        _fatal_error(exc)
        return
    info = result.benchmark.info
    source = {"folder": f"images of {info.get('distractor_folder')}",
              "held-out videos": f"{len(info['held_out_videos'])} held-out videos"}.get(info["distractor_source"], "-")
    made = f"{info['n_distractors']} distractors from {source}" if info["n_distractors"] else "no distractors"
    click.echo(f"benchmark: {info['n_with_source']} examples from {len(info['indexed_videos'])} indexed videos, "
               f"{made}, {len(info['edits'])} edits, seed {info['seed']}")
    for dup, kept in info["duplicate_videos"].items():
        click.echo(f"left out as a near-duplicate: {dup} (of {kept})")
    click.echo("")
    click.echo(format_table(result.table))
    click.echo("")
    click.echo(f"done in {result.seconds:.1f} s")
    click.echo(f"table:  {out / 'metrics.csv'}")
    if result.report is not None:
        click.echo(f"report: {result.report}")
    if not result.match.ok:
        sys.exit(EXIT_PARTIAL)


def register(cli: click.Group) -> None:
    cli.add_command(evaluate)
