"""The collection commands: ``framesim index``, ``framesim search`` and ``framesim store ...``.

Kept apart from ``cli.py`` (the frame-dataset and match commands); registered on the same group.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from framesim.cli import (
    EXIT_PARTIAL,
    _error,
    _fatal,
    _fatal_error,
    _parse_weights,
    dedupe_option,
    engine_errors,
    engine_options,
    runtime_option,
)

if TYPE_CHECKING:
    from framesim.collection import SearchResult
    from framesim.stores import VectorStore

store_option = click.option(
    "--store", "store", default=None, metavar="STORE", envvar="FRAMESIM_STORE",
    help="Collection: qdrant (embedded Qdrant Edge, default), faiss, qdrant:FOLDER / faiss:FOLDER, "
         "qdrant+http://HOST:6333[/NAME][?shards=N&replicas=R] (server or cluster; API key from "
         "$QDRANT_API_KEY) or qdrant-server[/NAME] (address from $QDRANT_URL). Also $FRAMESIM_STORE.")
dataset_option = click.option("-d", "--dataset", default="dataset", show_default=True,
                              type=click.Path(exists=True, file_okay=False, path_type=Path),
                              help="Frame dataset folder.")
weights_option = click.option("--weights", multiple=True,
                              help="Weights file for the backbone (NAME=FILE with several; FILE=none for random).")


quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bar.")


def _backbone_option(multiple: bool) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option("-b", "--backbone", "backbones" if multiple else "backbone", multiple=multiple,
                        default=None if multiple else "efficientnet-lite0", show_default=not multiple,
                        help="Backbone spec NAME[:DESCRIPTOR]" + ("; repeat for several [default: "
                                                                  "efficientnet-lite0]." if multiple else "."))


def _one_collection(command: Callable[..., None]) -> Callable[..., None]:
    """The options that name one collection: dataset, backbone, store, weights."""
    for option in (weights_option, store_option, _backbone_option(multiple=False), dataset_option):
        command = option(command)
    return command


def _store_errors() -> tuple[type[Exception], ...]:
    from framesim.backbones import BackboneError
    from framesim.dataset import DatasetLockedError

    return (BackboneError, DatasetLockedError, ValueError, OSError, *engine_errors())


@click.command("index")
@dataset_option
@_backbone_option(multiple=True)
@store_option
@weights_option
@click.option("--exclude", multiple=True, metavar="VIDEO",
              help="Keep this video (manifest video or video_id) out of the collection, removing its points; repeat.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@runtime_option
@dedupe_option
@engine_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def index_cmd(dataset: Path, backbones: tuple[str, ...], store: str | None, weights: tuple[str, ...],
              exclude: tuple[str, ...], batch_size: int, runtime: str, dedupe: float | None, engine: str,
              ray_address: str | None, quiet: bool) -> None:
    """Embed a dataset's frames and keep them in a persistent collection, incrementally.

    A rerun adds only what is new and removes frames the dataset no longer has; a run killed at any
    point, then rerun, gives the same collection as one uninterrupted run.
    """
    from framesim.collection import index as run_index
    from framesim.matching import DEFAULT_BACKBONE

    backbones = tuple(dict.fromkeys(backbones or (DEFAULT_BACKBONE,)))
    failures: list[str] = []

    def fail(msg: str) -> None:
        failures.append(msg)
        _error(msg)

    try:
        summaries = run_index(dataset, list(backbones), store=store, weights=_parse_weights(weights, backbones),
                              runtime=runtime, exclude=list(exclude), batch_size=batch_size, progress=not quiet,
                              on_error=fail, engine=engine, ray_address=ray_address,
                              **({} if dedupe is None else {"dedupe": dedupe}))
    except _store_errors() as exc:
        _fatal_error(exc)
        return
    for s in summaries:
        info = s.store
        embedded = s.embed.embedded if s.embed else 0
        click.echo(f"{s.backbone}: {s.added} points added, {s.removed} removed, {s.present} already there "
                   f"({embedded} frame{'' if embedded == 1 else 's'} embedded) -> {info['count']} points in "
                   f"{info['backend']} {info['location']} in {s.seconds:.1f} s")
    if failures:
        sys.exit(EXIT_PARTIAL)


@click.command("search")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@dataset_option
@_backbone_option(multiple=False)
@store_option
@weights_option
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Frames per image.")
@click.option("--video", "videos", multiple=True, help="Search only the frames of this video; repeat.")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write pairs.csv / pairs.parquet / run.json here (the match contract).")
@runtime_option
def search_cmd(images: tuple[Path, ...], dataset: Path, backbone: str, store: str | None,
               weights: tuple[str, ...], top_k: int, videos: tuple[str, ...], out: Path | None, runtime: str) -> None:
    """Find the frames nearest each image in a dataset's collection (run framesim index first)."""
    from framesim.collection import search as run_search
    from framesim.timecode import format_timestamp

    try:
        result = run_search(list(images), dataset, backbone, store=store, top_k=top_k, videos=list(videos) or None,
                            weights=_parse_weights(weights, (backbone,)), runtime=runtime, on_error=_error)
    except _store_errors() as exc:
        _fatal_error(exc)
        return
    if not result.examples and not result.failures:
        _fatal(f"no images found in {', '.join(map(str, images))}")
    pairs = result.pairs
    rows = [("example", "rank", "score", "video", "time", "frame")]
    rows += [(r.example, str(r.rank), f"{r.score:.4f}", r.video, format_timestamp(r.timestamp_s),
              str(dataset / r.path) if r.path else r.frame_id) for r in pairs.itertuples()]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    t = result.timings
    click.echo(f"{len(result.examples)} images, {result.store['count']} points in {result.store['backend']} "
               f"({result.store.get('search', '')}): model {t['model']:.2f} s, open {t['open']:.2f} s, "
               f"embed {t['embed']:.2f} s, search {t['search'] * 1000:.0f} ms", err=True)
    if out is not None:
        _write_search_run(out, result, dataset, backbone, top_k)
        click.echo(f"pairs:  {out / 'pairs.csv'}", err=True)
    if result.failures:
        sys.exit(EXIT_PARTIAL)


def _write_search_run(out: Path, result: SearchResult, dataset: Path, backbone: str, top_k: int) -> None:
    import datetime as dt

    from framesim.runs import EXTRA_COLUMNS, PAIRS_COLUMNS, RUN_FORMAT, RUN_VERSION, write_run

    pairs = result.pairs
    run = {"format": RUN_FORMAT, "version": RUN_VERSION, "command": "search",
           "created": dt.datetime.now().isoformat(timespec="seconds"), "dataset": str(dataset.resolve()),
           "examples": [e.name for e in result.examples], "failed_examples": result.failures,
           "n_examples": len(result.examples), "top_k": top_k, "min_score": None, "store": result.store,
           "postprocess": {"score": "cosine"},
           "backbones": [{"name": backbone, "spec": backbone, "dim": result.store["dim"]}]}
    try:
        write_run(out, pairs[PAIRS_COLUMNS + EXTRA_COLUMNS], run)
    except OSError as exc:
        _fatal_error(exc)


@click.group("store")
def store_group() -> None:
    """Inspect collections and move them between backends (Qdrant Edge <-> server, FAISS)."""


@store_group.command("info")
@_one_collection
def store_info(dataset: Path, backbone: str, store: str | None, weights: tuple[str, ...]) -> None:
    """Print what a collection is: backend, location, points, dim, engine, search mode."""
    try:
        with _open(dataset, backbone, store, weights, create=False) as collection:
            for key, value in collection.info().items():
                click.echo(f"{key}: {value}")
    except _store_errors() as exc:
        _fatal_error(exc)


def _open(dataset: Path, backbone: str, store: str | None, weights: tuple[str, ...], create: bool) -> VectorStore:
    """Open ``store`` for ``backbone`` (its model is not loaded: only its spec, weights and dim matter)."""
    from framesim.backbones.base import get_backbone, weights_for
    from framesim.stores import open_store

    model = get_backbone(backbone, **weights_for(backbone, _parse_weights(weights, (backbone,))))
    return open_store(store, dataset=dataset, backbone=model, create=create)


def _copy(dataset: Path, backbone: str, source: str | None, target: str | None, weights: tuple[str, ...],
          quiet: bool) -> None:
    from framesim.collection import copy_store

    if str(source or "qdrant") == str(target or "qdrant"):
        raise click.UsageError("source and target are the same collection")
    try:
        with _open(dataset, backbone, source, weights, create=False) as src, \
                _open(dataset, backbone, target, weights, create=True) as dst:
            n = copy_store(src, dst, progress=not quiet)
            click.echo(f"{n} points copied: {src.info()['backend']} {src.location} -> "
                       f"{dst.info()['backend']} {dst.location} (now {dst.count()} points, checksum "
                       f"{dst.info().get('checksum', '-')})")
    except _store_errors() as exc:
        _fatal_error(exc)


@store_group.command("export")
@click.argument("target")
@_one_collection
@quiet_option
def store_export(target: str, dataset: Path, backbone: str, store: str | None, weights: tuple[str, ...],
                 quiet: bool) -> None:
    """Stream the collection (--store) into TARGET (a store spec, e.g. qdrant+http://host:6333)."""
    _copy(dataset, backbone, store, target, weights, quiet)


@store_group.command("import")
@click.argument("source")
@_one_collection
@quiet_option
def store_import(source: str, dataset: Path, backbone: str, store: str | None, weights: tuple[str, ...],
                 quiet: bool) -> None:
    """Stream the collection SOURCE (a store spec) into the collection (--store)."""
    _copy(dataset, backbone, source, store, weights, quiet)


@store_group.command("hnsw")
@_one_collection
@click.option("--m", "m", type=click.IntRange(4, 128), default=16, show_default=True, help="Graph degree.")
@click.option("--ef-construct", type=click.IntRange(8, 2048), default=128, show_default=True,
              help="Candidates while building (higher: better graph, slower build).")
@click.option("--ef", type=click.IntRange(8, 4096), default=128, show_default=True,
              help="Candidates while searching (higher: better recall, slower queries).")
@click.option("--min-recall", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="Keep the graph only if its recall@10 against exact search reaches this.")
@click.option("--sample", type=click.IntRange(min=10), default=200, show_default=True,
              help="Frames of the collection used as queries for the recall check.")
def store_hnsw(dataset: Path, backbone: str, store: str | None, weights: tuple[str, ...], m: int,
               ef_construct: int, ef: int, min_recall: float, sample: int) -> None:
    """Build an HNSW graph for a Qdrant Edge collection (milliseconds per query instead of exact search).

    Built on a copy in a child process while the collection keeps answering; installed only if its
    recall on the collection's own frames reaches --min-recall.
    """
    from framesim.stores.hnsw import build_hnsw

    try:
        with _open(dataset, backbone, store, weights, create=False) as collection:
            folder = getattr(collection, "folder", None)
            if collection.name != "qdrant" or folder is None:
                raise ValueError(f"{collection.location}: HNSW is built here for qdrant (Qdrant Edge) collections; "
                                 "a Qdrant server builds its own graph")
        report = build_hnsw(folder, m=m, ef_construct=ef_construct, ef=ef, min_recall=min_recall, sample=sample,
                            log=lambda msg: click.echo(msg, err=True))
    except _store_errors() as exc:
        _fatal_error(exc)
        return
    click.echo(f"recall@{report['recall_at']} {report['recall']:.3f} (min {min_recall}), built in "
               f"{report['build_seconds']:.0f} s: {'installed' if report['installed'] else 'not installed'}")
    if not report["installed"]:
        sys.exit(EXIT_PARTIAL)


def register(cli: click.Group) -> None:
    for command in (index_cmd, search_cmd, store_group):
        cli.add_command(command)
