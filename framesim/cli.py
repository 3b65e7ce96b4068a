"""The ``framesim`` command: parse options, call the library, print, set the exit code.

Exit codes: 0 everything worked; 1 some inputs failed (the rest was processed and written, each
failure printed on one line); 2 bad usage or nothing could be done.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from framesim import __version__

if TYPE_CHECKING:
    from framesim.verification import VerifyParams

EXIT_PARTIAL = 1
EXIT_FATAL = 2


def _error(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)


def _fatal(msg: str) -> None:
    _error(msg)
    sys.exit(EXIT_FATAL)


#: errors that mean "the disk (or the process's file size limit) is full": say what to do
_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _os_error(exc: OSError) -> str:
    """One line for an OSError: "<file>: <reason>" (not Python's "[Errno 28] ...: '<file>'")."""
    reason = exc.strerror or str(exc)
    reason = reason[:1].lower() + reason[1:]
    line = f"{exc.filename}: {reason}" if exc.filename is not None else reason
    if exc.errno in _FULL:
        line += " (free some space and run again: what was complete is kept, the run resumes)"
    return line


def _fatal_error(exc: Exception) -> None:
    """Exit with one line for an error that ends a command (never a traceback)."""
    _fatal(_os_error(exc) if isinstance(exc, OSError) else str(exc))


class _FloatRange(click.FloatRange):
    """click.FloatRange that also refuses NaN (every comparison with NaN is false, so FloatRange lets it
    through, and e.g. --min-score nan would silently keep no pair)."""

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        out = super().convert(value, param, ctx)
        if out != out:
            self.fail(f"{value!r} is not a number.", param, ctx)
        return out


def engine_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--engine`` and ``--ray-address``: where the per-video and per-shard tasks run."""
    command = click.option("--ray-address", default=None, metavar="HOST:PORT",
                           help="Ray cluster for --engine ray [default: $RAY_ADDRESS, else Ray on this "
                                "machine].")(command)
    return click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="Run the work here, or as Ray tasks on a cluster (pip install 'framesim[ray]'); "
                             "both give the same outputs.")(command)


def engine_errors() -> tuple[type[Exception], ...]:
    from framesim.engines.base import EngineUnavailable, SharedStorageError

    return (EngineUnavailable, SharedStorageError)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="framesim")
def cli() -> None:
    """Find duplicate and near-duplicate video frames.

    \b
    framesim extract videos/ -o dataset        sample frames into a frame dataset
    framesim match examples/ -d dataset        rank example images against the frames
    framesim index -d dataset                  keep the frames in a persistent collection (Qdrant)
    framesim search image.jpg -d dataset       the frames nearest an image, from the collection
    framesim report reports/<run>              rebuild a run's HTML report
    framesim evaluate dataset -b phash         score backbones on a benchmark built from the dataset
    """


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--dataset", default="dataset", show_default=True, type=click.Path(path_type=Path),
              help="Frame dataset folder (created if missing, extended if it exists).")
@click.option("--fps", type=_FloatRange(min=0, min_open=True), default=None,
              help="Keep this many frames per second of video [default: 1]; with --keyframes: keep a keyframe "
                   "only if it is at least 1/FPS s after the last one kept.")
@click.option("--every", type=click.IntRange(min=1), default=None, help="Keep every Nth decoded frame.")
@click.option("--scene", is_flag=True, help="Keep a frame whenever the picture changes (scene cuts).")
@click.option("--scene-threshold", type=_FloatRange(0, 1), default=None,
              help="How much the picture must change for --scene (0..1).")
@click.option("--keyframes", is_flag=True,
              help="Decode only keyframes (~100x real time on 720p): frames at the encoder's keyframe times "
                   "(often every 1-10 s), not at exact steps; every keyframe unless --fps is given.")
@click.option("--start", type=_FloatRange(min=0), default=None, help="Start time in seconds.")
@click.option("--end", type=_FloatRange(min=0), default=None, help="End time in seconds.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="At most this many frames per video.")
@click.option("--format", "image_format", type=click.Choice(["jpg", "png"]), default="jpg", show_default=True,
              help="Image format of the stored frames.")
@engine_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def extract(inputs: tuple[Path, ...], dataset: Path, fps: float | None, every: int | None, scene: bool,
            scene_threshold: float | None, keyframes: bool, start: float | None, end: float | None,
            max_frames: int | None, image_format: str, engine: str, ray_address: str | None, quiet: bool) -> None:
    """Sample frames from videos (files or folders, searched recursively) into a frame dataset."""
    from framesim.dataset import DatasetLockedError
    from framesim.dataset import extract as run_extract
    from framesim.sampling import DEFAULT_SCENE_THRESHOLD

    if keyframes and (every is not None or scene):
        raise click.UsageError("--keyframes decodes only keyframes; --every and --scene need every frame "
                               "(use --fps to thin keyframes)")
    if sum(x is not None and x is not False for x in (fps, every, scene or None)) > 1:
        raise click.UsageError("choose one of --fps, --every and --scene")
    if scene_threshold is not None and not scene:
        raise click.UsageError("--scene-threshold needs --scene")
    if start is not None and end is not None and end <= start:
        raise click.UsageError("--end must be after --start")
    scene_value = (scene_threshold if scene_threshold is not None else DEFAULT_SCENE_THRESHOLD) if scene else None
    try:
        summary = run_extract(
            list(inputs), dataset, fps=fps, every=every, scene=scene_value, keyframes=keyframes,
            start=start, end=end, max_frames=max_frames,
            image_format=image_format, progress=not quiet, on_error=_error, engine=engine, ray_address=ray_address)
    except (DatasetLockedError, ValueError, OSError, *engine_errors()) as exc:
        _fatal_error(exc)
        return
    if not summary.videos_done and not summary.failures:
        _fatal(f"no video files found in {', '.join(map(str, inputs))}")
    done = len(summary.videos_done)
    click.echo(f"{summary.frames_added} frames added ({summary.frames_existing} already in the dataset) "
               f"from {done} video{'' if done == 1 else 's'} in {summary.seconds:.1f} s -> {dataset}")
    for video, note in summary.notes:
        click.echo(f"note: {video}: {note}", err=True)
    if summary.failures:
        n = len(summary.failures)
        click.echo(f"{n} video{'' if n == 1 else 's'} failed:", err=True)
        for video, reason in summary.failures:
            click.echo(f"  {video}: {reason}", err=True)
        sys.exit(EXIT_PARTIAL)


def _parse_weights(values: tuple[str, ...], backbones: tuple[str, ...]) -> dict[str, str | None]:
    """``--weights FILE`` (single backbone) or ``--weights NAME=FILE``; ``none`` = random weights."""
    from framesim.backbones.base import split_spec, strip_score_suffix

    # the keys backbones.base.weights_for looks up: the spec as given, without "@...", and its bare name
    known = {key for b in backbones for key in (b, strip_score_suffix(b), split_spec(strip_score_suffix(b))[0])}
    out: dict[str, str | None] = {}
    for value in values:
        name, sep, spec = value.partition("=")
        if sep and name not in known and len(backbones) == 1 and os.path.exists(value):
            sep = ""  # a single backbone's weights file whose name holds "="
        if not sep:
            if len(backbones) != 1:
                raise click.UsageError("with several backbones, give --weights NAME=FILE")
            name, spec = backbones[0], value
        elif name not in known:  # a typo would otherwise leave that backbone on its default weights
            raise click.UsageError(f"--weights {value}: {name!r} is not one of the chosen backbones "
                                   f"({', '.join(backbones)})")
        out[name] = None if spec.lower() == "none" else spec
    return out


# Options that match and evaluate share (evaluate runs match).
runtime_option = click.option("--runtime", type=click.Choice(["auto", "tensorflow", "onnxruntime", "openvino"]),
                              default="auto", show_default=True,
                              help="What runs the CNN: auto takes ONNX Runtime or OpenVINO when installed and its "
                                   "outputs match TensorFlow's (1.5x or more faster on CPU), else TensorFlow.")
dedupe_option = click.option("--dedupe", type=_FloatRange(0, 1), default=None,
                             help="Consecutive frames whose 16x16 thumbnails differ by less than this (mean, 0..1) "
                                  "share one CNN vector; 0 embeds every frame [default: 0.002, sensor noise only].")



verify_option = click.option("--verify", "verify_spec", default=None, metavar="FEATURES[:LONG_SIDE[:N]]",
                             help="Local features that verify candidates: rootsift or orb, on images whose long "
                                  "side is brought to LONG_SIDE pixels, at most N per image "
                                  "[default: rootsift:640:1000].")


def _dedupe_kwargs(dedupe: float | None) -> dict[str, float]:
    return {} if dedupe is None else {"dedupe": dedupe}


def _verify_params(spec: str | None) -> VerifyParams | None:
    """--verify as VerifyParams (None: match's default), or a usage error saying what is wrong."""
    if spec is None:
        return None
    from framesim.verification import parse_verify_spec

    try:
        return parse_verify_spec(spec)
    except ValueError as exc:
        raise click.UsageError(f"--verify: {exc}") from None


def _stage_line(timings: dict[str, float]) -> str:
    """``embed 2.1 s, verify 0.9 s, ...``: the stages of a match run that took any time."""
    return ", ".join(f"{name} {sec:.1f} s" for name, sec in timings.items() if sec >= 0.05)


@cli.command()
@click.argument("examples", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-d", "--dataset", default="dataset", show_default=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path), help="Frame dataset folder.")
@click.option("-b", "--backbone", "backbones", multiple=True,
              help="Backbone spec NAME[:DESCRIPTOR][@SCORE]; repeat to compare several "
                   "[default: efficientnet-lite0]. E.g. efficientnet-lite0:avg@cosine is the plain baseline.")
@click.option("--weights", multiple=True,
              help="Weights file for the backbone (NAME=FILE with several; FILE=none for random weights).")
@click.option("-k", "--top-k", type=click.IntRange(min=0), default=10, show_default=True,
              help="Frames kept per example and backbone (0 = no limit, needs --min-score).")
@click.option("--min-score", type=_FloatRange(-1, 1), default=None,
              help="Keep only pairs scoring at least this (a probability with the default --score).")
@click.option("--index", "index_factory", default="auto", show_default=True,
              help="FAISS index factory string (Flat, HNSW32, IVF4096,Flat), search parameters after '|' "
                   "(IVF1024,SQ8|nprobe=128); auto: Flat below 1M frames, IVF above.")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder for pairs and report [default: reports/<date-time>].")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--score", type=click.Choice(["verified", "normalized", "cosine"]), default="verified",
              show_default=True,
              help="verified: probability the frame is the source, from the descriptor and local-feature "
                   "checks; normalized: the same without local features; cosine: raw cosine similarity.")
@click.option("--whiten/--no-whiten", default=False, show_default=True,
              help="PCA-whiten descriptors, learned on the dataset's frames.")
@click.option("--candidates", type=click.IntRange(min=1), default=20, show_default=True,
              help="Best frames per example re-scored by --score verified/normalized.")
@click.option("--ground-truth", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CSV with example,video,timestamp_s: marks each pair correct or not (within 1 s).")
@runtime_option
@dedupe_option
@verify_option
@click.option("--store", "store", default=None, metavar="STORE",
              help="Search the dataset's persistent collection (qdrant, faiss, qdrant+http://..., see "
                   "framesim index) instead of building an index for this run; what it lacks is indexed first.")
@click.option("--no-report", is_flag=True, help="Do not write report.html.")
@click.option("--metric", type=click.Choice(["cosine", "l2"]), default="cosine", show_default=True,
              help="Rank by cosine (normalised descriptors, re-scored as --score says) or by the Euclidean "
                   "distance of the unnormalised descriptors (pairs get a distance column; no re-scoring).")
@engine_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def match(examples: tuple[Path, ...], dataset: Path, backbones: tuple[str, ...], weights: tuple[str, ...],
          top_k: int, min_score: float | None, index_factory: str, out: Path | None, batch_size: int,
          score: str, whiten: bool, candidates: int, ground_truth: Path | None, runtime: str,
          dedupe: float | None, verify_spec: str | None, store: str | None, no_report: bool, metric: str,
          engine: str, ray_address: str | None, quiet: bool) -> None:
    """Rank example images (files or folders) against every frame of a dataset; write scored pairs."""
    from framesim.backbones import BackboneError
    from framesim.dataset import DatasetLockedError
    from framesim.matching import DEFAULT_BACKBONE, default_run_dir
    from framesim.matching import match as run_match

    if top_k == 0 and min_score is None:
        raise click.UsageError("--top-k 0 (no limit) needs --min-score")
    backbones = backbones or (DEFAULT_BACKBONE,)
    verify = _verify_params(verify_spec)
    out = out or default_run_dir()
    try:
        result = run_match(list(examples), dataset, list(dict.fromkeys(backbones)), top_k=top_k or None,
                           min_score=min_score, index=index_factory, weights=_parse_weights(weights, backbones),
                           out_dir=out, batch_size=batch_size, progress=not quiet, on_error=_error,
                           ground_truth=ground_truth, score=score, whiten=whiten, candidates=candidates,
                           runtime=runtime, verify=verify, store=store, engine=engine, ray_address=ray_address,
                           metric=metric, **_dedupe_kwargs(dedupe))
    except (BackboneError, DatasetLockedError, ValueError, OSError, *engine_errors()) as exc:
        _fatal_error(exc)
        return
    run = result.run
    for b in run["backbones"]:
        speed = f"{b['images_per_s']:.1f} images/s" if b["images_per_s"] else "all cached"
        click.echo(f"{b['name']}: {b['frames_embedded']} frames embedded, {b['frames_cached']} cached, "
                   f"{b['examples_embedded']} examples embedded ({speed})")
    for b in run["backbones"]:
        work = b["postprocess"].get("verification_work")
        if work:
            click.echo(f"{b['name']}: verified {work['pairs_verified']} of {work['pairs']} candidate pairs "
                       f"({work['pairs_cached']} cached, {work['mirrored']} also mirrored) "
                       f"in {work['seconds']:.1f} s")
    click.echo(f"{len(result.pairs)} pairs for {run['n_examples']} examples x {run['n_frames']} frames "
               f"in {run['seconds']:.1f} s ({_stage_line(run['timings'])})")
    truth = run["ground_truth"]
    if truth:
        for name, hits in truth["top1_correct"].items():
            click.echo(f"{name}: best frame correct for {hits} of {truth['n_examples_with_source']} examples "
                       f"with a known source (+{truth['n_distractors']} distractors)")
    click.echo(f"pairs:  {out / 'pairs.csv'}")
    if not no_report:
        from framesim.report import write_report

        try:
            click.echo(f"report: {write_report(out)}")
        except OSError as exc:  # the pairs are written; only the report is missing
            _fatal_error(exc)
    if result.failures:
        sys.exit(EXIT_PARTIAL)


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write [default: RUN_DIR/report.html].")
def report(run_dir: Path, out: Path | None) -> None:
    """Rebuild the HTML report of a match run (or of a `framesim duplicates` folder)."""
    from framesim.matching import recover_run
    from framesim.report import write_report

    try:
        if (run_dir / "duplicates.json").exists():
            from framesim.report.duplicates import write_duplicates_report

            click.echo(write_duplicates_report(run_dir, out))
            return
        recover_run(run_dir)  # a match killed while writing its files: finish or undo that first
        click.echo(write_report(run_dir, out))
    except OSError as exc:
        _fatal_error(exc)
    except (ValueError, KeyError) as exc:
        _fatal(f"{run_dir}: cannot build the report: {exc}")


@cli.command("backbones")
def list_backbones_cmd() -> None:
    """List the registered backbones and whether their weights are available offline."""
    from framesim.backbones import list_backbones

    rows = [(b.name, str(b.dim), str(b.input_size), "yes" if b.weights_available() else "no (download)",
             b.description) for b in list_backbones()]
    header = ("name", "dim", "input", "weights here", "description")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])


def main() -> None:
    cli()


def _register_collection_commands() -> None:
    from framesim.cli_collections import register
    from framesim.cli_duplicates import register as register_duplicates
    from framesim.cli_evaluate import register as register_evaluate
    from framesim.cli_serve import register as register_serve

    register(cli)
    register_serve(cli)
    register_duplicates(cli)
    register_evaluate(cli)


_register_collection_commands()


if __name__ == "__main__":
    main()
