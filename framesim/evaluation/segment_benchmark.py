"""A segment-level copy-detection benchmark with known answers, compiled from a dataset's own videos.

``build_segment_benchmark(dataset, out)`` writes query videos ``out/queries/query_NNN.mp4``, the
ground truth ``out/segments_truth.csv`` (one row per copied segment: ``query`` (absolute path of the
query video), ``start_q, end_q`` (seconds on the query's clock), ``video`` (the source, exactly as the
dataset's manifest names it), ``start_v, end_v`` (seconds on the source's clock), ``edit``,
``params`` (JSON)) and ``out/segment_benchmark.json`` (what was built, from what, and how). The
queries play the part of new uploads: filler footage that is in no indexed video, with 2-8 s
segments of indexed videos cut in under edits, as the copy-detection benchmarks VCDB and
CC_WEB_VIDEO describe partial copies; some queries copy nothing at all.

How it chooses, deterministically from ``seed``:

* **Index**: the dataset's videos minus near-duplicates (``benchmark.duplicate_videos``: of a group,
  e.g. a video and its re-encode, one is kept; the others would be second right answers the truth
  cannot name, so they are excluded from the index entirely) and minus held-out filler videos.
  ``indexed_videos`` is what the index must hold, ``excluded`` what it must leave out.
* **Filler** (footage of no indexed video): ``filler`` paths, images and/or videos (folders are
  searched); a filler video that is a video of the dataset (same content id) is refused. Without
  ``filler``, about a third of the videos are held out (``benchmark._choose_held_out``) and used as
  filler. A filler piece lasts 1-3 s: a cut of a filler video, or a slow pan/zoom ("Ken Burns") over
  a still (a held-out video whose file is gone gives its dataset frames as stills). Copy-free queries
  are filler only, as long as a randomly chosen copying query.
* **Segments**: ``n_queries * segments_per_query`` of them, spread over the indexed videos in
  proportion to their sampled span (largest remainders, at most what fits without overlap in a
  query), dealt round-robin to the queries; a query with k segments of one video splits that video
  into k equal stretches and takes one segment from each, so spans in one query never overlap in
  the source (those of different queries may). Length uniform in [min_len_s, max_len_s], clipped to
  the stretch; the start uniform within it. Sources are re-decoded from the original files (the
  file must be there with the manifest's content id, as in ``benchmark.py``), inside the span of
  the dataset's sampled frames (past it a video may have no frame). A video whose file is gone or
  changed stays indexed but is no source, and so does a *static* video (most of its frames show the
  same picture, 16x16 thumbnail cosine >= 0.98, as a frame of it more than ``min_len_s`` away: a
  fixed camera on a still scene): a span of it has no one true position, any other span of it being
  as right an answer as the one the truth would name (``static_videos`` in the JSON).
* **Edits**: one per segment, every edit the same number of segments (+-1), parameters drawn once
  and applied identically to every frame (``segment_compile``); filler pieces are edited the same
  way, so edit artefacts cannot tell copied footage from filler.
* **Query layout**: filler, segment, filler, segment, ..., filler, at one canvas size and frame rate
  (default 480x270 at 24 fps, unlike most sources), every source frame letterboxed in. Query frame
  k of a segment shows the latest source frame at or before ``start_v + k / fps``: resampled by
  time, at the source's speed.
* **Truth times**: ``start_q`` is when the segment's first frame is shown, ``end_q`` its last shown
  frame's time + 1/fps; ``start_v`` the time of the first source frame used, ``end_v`` the last
  used source frame's time + its duration (to the next decoded frame). Both spans are kept within
  [min_len_s, max_len_s] (a span is collected up to 0.5 s past its drawn length, so snapping to
  frames has room); a segment the decoded frames cannot give that long is dropped and listed in
  ``segment_benchmark.json`` (a file that broke off), never shortened.
* **Encoding**: ffmpeg/libx264 when installed (the whole query is re-encoded, CRF 23), else OpenCV
  mp4v. Each query is written to a temporary file and renamed; the truth and the JSON go through
  ``framesim._io``. Query names are in random order, so a name does not tell a copy-free query.

Planning is ``segment_plan``; edits, canvas, decoding and writing are ``segment_compile``. Cost: every
query frame is rendered and encoded, and every frame of a copied span decoded and edited; the
defaults on the shared test media (24 segments, 11 queries, 4 minutes of 480x270 video) take ~35 s on
two cores, most of it x264 and the pan/zoom stills.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from framesim._io import write_json, write_table
from framesim.evaluation.benchmark import _choose_held_out, dataset_videos, duplicate_videos
from framesim.evaluation.edits import EditContext
from framesim.evaluation.segment_compile import (
    SpanRequest,
    apply_constant,
    collect_spans,
    decode_frame_bgr,
    get_video_edits,
    ken_burns_frame,
    letterbox,
    query_writer,
    resolve_encoder,
    shrink_for_canvas,
)
from framesim.evaluation.segment_plan import (
    FILLER_LEN_S,
    SNAP_MARGIN_S,
    Piece,
    Source,
    filler_items,
    finish_filler_video,
    finish_segment,
    held_out_items,
    plan_queries,
    static_video,
    usable_video,
)
from framesim.images import ImageError, load_image
from framesim.video import VideoError

FORMAT = "framesim-segment-benchmark"
VERSION = 1
TRUTH_COLUMNS = ["query", "start_q", "end_q", "video", "start_v", "end_v", "edit", "params"]
_QUERY_NAME = re.compile(r"^query_\d{3,}\.mp4$")


@dataclasses.dataclass
class SegmentBenchmark:
    """A built segment benchmark: its query videos, ground truth and which videos to index."""

    root: Path
    #: every query video (absolute paths), in name order
    queries: list[Path]
    #: the queries that copy nothing
    copy_free: list[Path]
    #: one row per copied segment (TRUTH_COLUMNS), as read back from segments_truth.csv
    truth: pd.DataFrame
    #: videos (as the manifest names them) the index must hold
    indexed_videos: list[str]
    #: videos (as the manifest names them) the index must leave out: near-duplicates and held-out filler
    excluded: list[str]
    info: dict[str, Any]

    @property
    def truth_path(self) -> Path:
        return self.root / "segments_truth.csv"

    @property
    def exclude_video_ids(self) -> list[str]:
        """video_ids of ``excluded``, for ``match(exclude_videos=...)``."""
        return list(self.info["exclude_video_ids"])


def _check_args(n_queries: int, n_copy_free: int, segments_per_query: int, min_len_s: float, max_len_s: float,
                seed: int, size: tuple[int, int], fps: float) -> None:
    for name, value, least in (("n_queries", n_queries, 1), ("n_copy_free", n_copy_free, 0),
                               ("segments_per_query", segments_per_query, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if not (0 < min_len_s <= max_len_s and math.isfinite(max_len_s)):
        raise ValueError(f"segment lengths must satisfy 0 < min_len_s <= max_len_s, got {min_len_s!r}, {max_len_s!r}")
    if len(size) != 2 or any(int(v) != v or v < 32 or v % 2 for v in size):
        raise ValueError(f"size must be (width, height), even and >= 32 each, got {size!r}")
    if not (math.isfinite(fps) and 1 <= fps <= 120):
        raise ValueError(f"fps must be within 1-120, got {fps!r}")
    if min_len_s * fps < 2:
        raise ValueError(f"min_len_s {min_len_s!r} at {fps:g} fps gives segments of under 2 frames")


def _collect(queries: Sequence[list[Piece]], size: tuple[int, int], fps: float, min_len: float, max_len: float,
             ctx: EditContext, bar: tqdm) -> list[dict[str, Any]]:
    """Decode each video that gives segments or filler cuts once, rendering what its pieces need;
    returns the segments that could not be served (marked "dropped")."""
    by_video: dict[str, list[Piece]] = {}
    for p in (p for q in queries for p in q):
        if p.kind == "segment" or (p.item is not None and p.item.kind == "video"):
            assert p.edit is not None
            p.span = SpanRequest(p.start_s, p.start_s + p.length_s + SNAP_MARGIN_S, p.edit, p.seed)
            key = p.source.video if p.source is not None else str(p.item.path)  # type: ignore[union-attr]
            by_video.setdefault(key, []).append(p)
    bar.total = len(by_video) + len(queries)
    dropped = []
    for key, pieces in by_video.items():
        bar.set_postfix_str(f"decoding {Path(key).name}", refresh=False)
        try:
            interval = collect_spans(key, [p.span for p in pieces if p.span is not None], size, ctx)
        except VideoError as exc:
            if pieces[0].kind == "filler":
                raise ValueError(f"filler video unreadable: {exc}") from exc
            interval = 0.0  # an indexed video that cannot be opened now: its segments are dropped
        for p in pieces:
            if p.kind == "filler":
                finish_filler_video(p, fps)
            elif not finish_segment(p, fps, min_len, max_len, interval):
                dropped.append({"video": key, "start_s": round(p.start_s, 3), "length_s": round(p.length_s, 3)})
                p.kind = "dropped"
            if p.span is not None:
                p.span.frames = []  # rendered frames now live in p.frames
        bar.update()
    return dropped


def _write_ken_burns(write: Callable[[np.ndarray], None], p: Piece, ctx: EditContext, size: tuple[int, int],
                     fps: float) -> int:
    assert p.item is not None and p.edit is not None and p.ken_burns is not None
    try:
        img = shrink_for_canvas(load_image(p.item.path), *size)
    except ImageError as exc:
        raise ValueError(f"filler image unreadable: {exc}") from exc
    n = max(1, round(p.length_s * fps))
    for j in range(n):
        frame = ken_burns_frame(img, p.ken_burns, j / max(1, n - 1), *size)
        edited, _ = apply_constant(p.edit, frame, p.seed, ctx)
        write(cv2.cvtColor(letterbox(edited, *size), cv2.COLOR_RGB2BGR))
    return n


def _write_query(path: Path, pieces: Sequence[Piece], size: tuple[int, int], fps: float, encoder: str,
                 ctx: EditContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """Encode one query; returns its truth rows, its pieces (for the layout) and its duration."""
    offset, rows, parts = 0, [], []
    with query_writer(path, size, fps, encoder) as write:
        for p in pieces:
            if p.kind == "dropped":
                continue
            if p.frames:
                for data in p.frames:
                    write(decode_frame_bgr(data))
                n = len(p.frames)
            else:
                n = _write_ken_burns(write, p, ctx, size, fps)
            start_q, end_q = round(offset / fps, 6), round((offset + n) / fps, 6)
            offset += n
            assert p.edit is not None
            if p.kind == "segment":
                assert p.source is not None and p.span is not None
                rows.append({"query": str(path), "start_q": start_q, "end_q": end_q, "video": p.source.video,
                             "start_v": round(p.start_v, 6), "end_v": round(p.end_v, 6), "edit": p.edit.name,
                             "params": json.dumps(p.span.params or {}, sort_keys=True, separators=(",", ":"))})
            source = p.source.video if p.source is not None else p.item.label if p.item is not None else ""
            parts.append({"kind": p.kind, "source": source, "start_q": start_q, "end_q": end_q,
                          "start_s": round(p.start_v, 6) if p.frames else None, "edit": p.edit.name})
            p.frames = []
    return rows, parts, round(offset / fps, 6)


def build_segment_benchmark(dataset: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                            n_queries: int = 8, n_copy_free: int = 3, segments_per_query: int = 3,
                            min_len_s: float = 2.0, max_len_s: float = 8.0, edits: Sequence[str] | None = None,
                            filler: Sequence[str | os.PathLike[str]] = (), seed: int = 0,
                            size: tuple[int, int] = (480, 270), fps: float = 24.0, encoder: str = "auto",
                            progress: bool = True) -> SegmentBenchmark:
    """Compile ``n_queries`` query videos with ``segments_per_query`` copied segments each, plus
    ``n_copy_free`` that copy nothing, from ``dataset`` into ``out_dir`` (see the module docstring).
    ``edits``: names from ``segment_compile.VIDEO_EDITS`` (default: all) or ``edits.EDITS``;
    ``filler``: image and/or video paths (folders searched), or none to hold out videos;
    ``encoder``: "auto" (ffmpeg/libx264 if installed, else OpenCV mp4v), "ffmpeg" or "opencv".
    Raises ValueError when the dataset and filler cannot give the benchmark asked for."""
    t_start = time.perf_counter()
    _check_args(n_queries, n_copy_free, segments_per_query, min_len_s, max_len_s, seed, size, fps)
    size, fps, seed = (int(size[0]), int(size[1])), float(fps), int(seed)
    filler = [filler] if isinstance(filler, (str, os.PathLike)) else list(filler)
    edit_list = get_video_edits(edits)
    encoder = resolve_encoder(encoder)
    ds, manifest, videos = dataset_videos(dataset)
    vname = {str(v): str(videos.at[v, "video"]) for v in videos.index}
    rng = np.random.default_rng([seed, 0])

    # index and filler: near-duplicates out; filler given, or a third of the videos held out
    duplicates = duplicate_videos(ds, manifest)
    candidates = [str(v) for v in videos.index if str(v) not in duplicates]
    held_out: list[str] = []
    if filler:
        items = filler_items(filler, vname)
    elif len(candidates) < 2:
        raise ValueError(f"{ds.root}: the dataset has one video (after leaving out near-duplicates) and no filler "
                         "was given: give filler images or videos that come from no indexed video")
    else:
        held_out = _choose_held_out(videos, candidates, rng)
        items = held_out_items(ds, manifest, held_out, videos)
    indexed = [v for v in candidates if v not in held_out]
    sources, unusable, static = [], [], []
    for vid in indexed:
        frames = manifest[manifest["video_id"] == vid]
        ts = frames["timestamp_s"].to_numpy(np.float64)
        if not usable_video(Path(vname[vid]), vid):
            unusable.append(vname[vid])
        elif static_video(ds, frames, min_len_s):
            static.append(vname[vid])
        else:
            sources.append(Source(vname[vid], vid, float(ts.min()), float(ts.max())))
    if not sources:
        raise ValueError(f"{ds.root}: no indexed video can be a source: files gone or changed since extraction "
                         f"({', '.join(unusable) or 'none'}), static ({', '.join(static) or 'none'})")

    queries = plan_queries(sources, items, edit_list, n_queries=n_queries, n_copy_free=n_copy_free,
                           per_query=segments_per_query, min_len=min_len_s, max_len=max_len_s, seed=seed, rng=rng)
    order = rng.permutation(len(queries))  # names in random order: a name does not tell a copy-free query
    width = max(3, len(str(len(queries) - 1)))
    root = Path(out_dir).absolute()
    qdir = root / "queries"
    paths = [qdir / f"query_{int(order[i]):0{width}d}.mp4" for i in range(len(queries))]

    ctx = EditContext()
    rows: list[dict[str, Any]] = []
    layout = []
    with tqdm(unit="step", desc="segment benchmark", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        dropped = _collect(queries, size, fps, min_len_s, max_len_s, ctx, bar)
        qdir.mkdir(parents=True, exist_ok=True)
        for old in qdir.iterdir():
            if old.is_file() and _QUERY_NAME.match(old.name) and old not in paths:
                old.unlink()
        for i in np.argsort(order, kind="stable"):
            bar.set_postfix_str(f"writing {paths[i].name}", refresh=False)
            query_rows, parts, duration = _write_query(paths[i], queries[i], size, fps, encoder, ctx)
            rows += query_rows
            layout.append({"query": str(paths[i]), "copy_free": bool(i >= n_queries), "duration_s": duration,
                           "pieces": parts})
            bar.update()

    write_table(pd.DataFrame(rows, columns=TRUTH_COLUMNS), csv=root / "segments_truth.csv")
    # read back the way an evaluation will, so callers see exactly what labels the queries
    truth = pd.read_csv(root / "segments_truth.csv", dtype={"query": str, "video": str, "edit": str,
                                                            "params": str}, keep_default_na=False)
    copy_free = sorted(paths[i] for i in range(n_queries, len(queries)))
    excluded = [vname[v] for v in videos.index if str(v) in duplicates or str(v) in held_out]
    info = {
        "format": FORMAT, "version": VERSION, "created": dt.datetime.now().isoformat(timespec="seconds"),
        "dataset": str(ds.root.resolve()), "seed": seed,
        "params": {"n_queries": n_queries, "n_copy_free": n_copy_free, "segments_per_query": segments_per_query,
                   "min_len_s": min_len_s, "max_len_s": max_len_s, "size": list(size), "fps": fps,
                   "encoder": encoder, "filler_len_s": list(FILLER_LEN_S), "snap_margin_s": SNAP_MARGIN_S},
        "indexed_videos": [vname[v] for v in indexed], "source_videos": [s.video for s in sources],
        "unusable_sources": unusable, "static_videos": static, "excluded_videos": excluded,
        "duplicate_videos": {vname[a]: vname[b] for a, b in duplicates.items()},
        "held_out_videos": [vname[v] for v in held_out],
        "exclude_video_ids": sorted(set(held_out) | set(duplicates)),
        "filler": {"source": "paths" if filler else "held-out videos",
                   "paths": [str(Path(f).absolute()) for f in filler],
                   "images": sum(it.kind == "image" for it in items),
                   "videos": sum(it.kind == "video" for it in items)},
        "edits": {e.name: e.description for e in edit_list},
        "segments_per_edit": {str(k): int(v) for k, v in truth["edit"].value_counts().sort_index().items()},
        "counts": {"queries": len(queries), "copy_free": len(copy_free), "segments": len(truth),
                   "dropped_segments": len(dropped)},
        "dropped_segments": dropped, "queries": sorted(layout, key=lambda q: q["query"]),
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    write_json(root / "segment_benchmark.json", info)
    return SegmentBenchmark(root=root, queries=sorted(paths), copy_free=copy_free, truth=truth,
                            indexed_videos=[vname[v] for v in indexed], excluded=excluded, info=info)
