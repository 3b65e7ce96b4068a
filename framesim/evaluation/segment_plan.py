"""Planning of the segment benchmark (``framesim.evaluation.segment_benchmark``, whose docstring
gives the method): where filler comes from, how many segments each source gives, where they lie in
their source, how queries are laid out, and how many query frames a collected segment gets.

Everything here is drawn from the one seeded RNG the builder passes in, in a fixed order, so a
plan is a function of the dataset, the arguments and the seed.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from framesim.dataset import FrameDataset, video_fingerprint
from framesim.evaluation.benchmark import _allocate, _balanced_edits, grey_thumbnail
from framesim.evaluation.edits import Edit
from framesim.evaluation.segment_compile import SpanRequest, ken_burns_params
from framesim.images import ImageError, find_images, load_image
from framesim.video import VIDEO_EXTENSIONS, VideoError, VideoReader, find_videos

FILLER_LEN_S = (1.0, 3.0)
#: 16x16 thumbnail cosine of "the same picture" up to noise and compression (not just the same scene)
STATIC_COSINE = 0.98
#: a video is static when more than this share of its frames has such a twin far away in the video
STATIC_SHARE = 0.5
#: room left after each planned span, for snapping to frames (a span is collected up to L + this)
SNAP_MARGIN_S = 0.5
_EPS = 1e-6


@dataclasses.dataclass
class Source:
    """An indexed video that segments are copied from."""

    video: str  # as the manifest names it
    video_id: str
    t0: float  # span of the dataset's sampled frames
    t1: float


@dataclasses.dataclass
class FillerItem:
    """A still or a video that filler pieces are made from (t0/t1: its span, for a video)."""

    kind: str  # "image" or "video"
    path: Path
    label: str
    t0: float = 0.0
    t1: float = 0.0


@dataclasses.dataclass
class Piece:
    """One stretch of a query: a copied segment or a filler piece."""

    kind: str  # "segment" or "filler"
    length_s: float
    start_s: float = 0.0  # where it starts in its source (planned)
    source: Source | None = None
    item: FillerItem | None = None
    edit: Edit | None = None
    seed: tuple[int, ...] = ()
    span: SpanRequest | None = None
    ken_burns: dict[str, float] | None = None
    frames: list[bytes] = dataclasses.field(default_factory=list)  # rendered, once collected
    start_v: float = 0.0
    end_v: float = 0.0


def filler_items(filler: Sequence[str | os.PathLike[str]], known_ids: dict[str, str]) -> list[FillerItem]:
    """Images and videos among ``filler`` (folders searched); ValueError for a missing path, an
    unreadable video, or a video of the dataset (``known_ids``: video_id -> manifest name)."""
    items: list[FillerItem] = []
    for p in map(Path, filler):
        if not p.exists():
            raise ValueError(f"{p}: filler path does not exist")
        if p.is_dir():
            images, videos = find_images([p]), find_videos([p])
        elif p.suffix.lower() in VIDEO_EXTENSIONS:
            images, videos = [], [p]
        else:
            images, videos = [p], []
        if not images and not videos:
            raise ValueError(f"{p}: no images or videos found for filler")
        items += [FillerItem("image", f, str(f)) for f in images]
        for v in videos:
            try:
                fid = video_fingerprint(v)
            except OSError as exc:
                raise ValueError(f"filler video unreadable: {v}: {exc.strerror or exc}") from exc
            if fid in known_ids:
                raise ValueError(f"{v}: filler video is the dataset's video {known_ids[fid]}; filler must come "
                                 "from no indexed video")
            try:  # one grab-only pass: the span a piece may be cut from
                with VideoReader(v) as reader:
                    ts = [t for _, t in reader]
            except VideoError as exc:
                raise ValueError(f"filler video unreadable: {exc}") from exc
            if not ts:
                raise ValueError(f"filler video unreadable: {v}: no frame could be decoded")
            items.append(FillerItem("video", v, str(v), ts[0], ts[-1]))
    if not items:
        raise ValueError("filler: no images or videos given")
    return items


def static_video(ds: FrameDataset, frames: pd.DataFrame, min_gap_s: float) -> bool:
    """Whether most of a video's sampled frames show the same picture as a frame of that video more than
    ``min_gap_s`` away (a fixed camera on a still scene): a span of it has no one true position in it,
    so it cannot be a source whose ground truth IoU can judge (any other span is as right)."""
    thumbs, times = [], []
    for rel, t in zip(frames["path"], frames["timestamp_s"], strict=True):
        try:
            thumb = grey_thumbnail(load_image(ds.frame_path(str(rel))))
        except (ImageError, ValueError):
            continue
        if thumb is not None:
            thumbs.append(thumb)
            times.append(float(t))
    if len(thumbs) < 2:
        return False
    sim = np.stack(thumbs) @ np.stack(thumbs).T
    t = np.asarray(times)
    far = np.abs(t[:, None] - t[None, :]) > min_gap_s
    has_far = far.any(axis=1)
    if not has_far.any():
        return False
    twin = (np.where(far, sim, -1.0).max(axis=1) >= STATIC_COSINE)[has_far]
    return bool(twin.mean() > STATIC_SHARE)


def usable_video(path: Path, video_id: str) -> bool:
    """The file is there and is the video the dataset extracted (same content id)."""
    try:
        return path.is_file() and video_fingerprint(path) == video_id
    except OSError:
        return False


def held_out_items(ds: FrameDataset, manifest: pd.DataFrame, held_out: Sequence[str],
                    videos: pd.DataFrame) -> list[FillerItem]:
    """Filler from the held-out videos: the video itself, or its dataset frames as stills."""
    items = []
    for vid in held_out:
        rows = manifest[manifest["video_id"] == vid]
        path = Path(str(videos.at[vid, "video"]))
        if usable_video(path, vid):
            ts = rows["timestamp_s"].to_numpy(np.float64)
            items.append(FillerItem("video", path, str(videos.at[vid, "video"]), float(ts.min()), float(ts.max())))
        else:  # the file is gone or changed: its dataset frames still are footage of no indexed video
            items += [FillerItem("image", ds.frame_path(str(r)), f"{videos.at[vid, 'video']}#{r}")
                      for r in rows["path"]]
    return items


def segment_quotas(sources: Sequence[Source], n_segments: int, n_queries: int, min_len: float) -> list[int]:
    """Segments per source: in proportion to length, capped by how many fit into one query without
    overlap (times the number of queries); ValueError when they do not all fit."""
    lengths = [s.t1 - s.t0 for s in sources]
    caps = [n_queries * int(max(0.0, length) // (min_len + SNAP_MARGIN_S)) for length in lengths]
    if sum(caps) < n_segments:
        longest = max(lengths, default=0.0)
        raise ValueError(f"sources too short: {n_segments} segments of >= {min_len:g} s need more footage than "
                         f"the {len(sources)} usable source video(s) have (longest sampled span {longest:.1f} s); "
                         "give fewer queries or segments, or a shorter minimum length")
    quotas = [0] * len(sources)
    pool = [i for i, c in enumerate(caps) if c > 0]
    remaining = n_segments
    while True:
        alloc = _allocate([lengths[i] for i in pool], remaining)
        over = [i for i, a in zip(pool, alloc, strict=True) if a > caps[i]]
        if not over:
            for i, a in zip(pool, alloc, strict=True):
                quotas[i] = a
            return quotas
        for i in over:
            quotas[i] = caps[i]
            remaining -= caps[i]
            pool.remove(i)


def plan_segments(sources: Sequence[Source], n_queries: int, per_query: int, min_len: float, max_len: float,
                   rng: np.random.Generator) -> list[list[Piece]]:
    quotas = segment_quotas(sources, n_queries * per_query, n_queries, min_len)
    dealt = [i for i in sorted(range(len(sources)), key=lambda i: -quotas[i]) for _ in range(quotas[i])]
    query_order = rng.permutation(n_queries)
    per_query_sources: list[list[int]] = [[] for _ in range(n_queries)]
    for m, i in enumerate(dealt):
        per_query_sources[int(query_order[m % n_queries])].append(i)
    plan = []
    for chosen in per_query_sources:
        pieces = []
        for i in dict.fromkeys(chosen):
            src, k = sources[i], chosen.count(i)
            stretch = (src.t1 - src.t0) / k
            for j in range(k):
                a = src.t0 + j * stretch
                length = min(float(rng.uniform(min_len, max_len)), stretch - SNAP_MARGIN_S)
                # max(): when the length takes the whole stretch, rounding can put the bound a hair below a
                start = float(rng.uniform(a, max(a, a + stretch - SNAP_MARGIN_S - length)))
                pieces.append(Piece("segment", length, start, source=src))
        plan.append([pieces[j] for j in rng.permutation(len(pieces))])
    return plan


def filler_piece(items: Sequence[FillerItem], rng: np.random.Generator) -> Piece:
    item = items[int(rng.integers(len(items)))]
    length = float(rng.uniform(*FILLER_LEN_S))
    if item.kind == "image":
        return Piece("filler", length, item=item, ken_burns=ken_burns_params(rng))
    room = max(0.0, item.t1 - item.t0 - length)
    return Piece("filler", length, item.t0 + float(rng.uniform(0, room)) if room else item.t0, item=item)


def finish_segment(p: Piece, fps: float, min_len: float, max_len: float, interval: float) -> bool:
    """Choose how many query frames the collected segment gets (both spans within [min_len,
    max_len]); False when the decoded frames cannot give min_len."""
    span = p.span
    assert span is not None
    if not span.frames:
        return False
    ts = [f[0] for f in span.frames]
    s = ts[0]
    following = ts[1:] + [span.next_ts if span.next_ts is not None else ts[-1] + interval]
    limit = min(span.stop_s, following[-1])
    n_avail = max(0, math.ceil((limit - s) * fps - _EPS))

    def shown(j: int) -> int:
        return bisect.bisect_right(ts, s + j / fps + _EPS) - 1

    def src_span(n: int) -> float:
        return following[shown(n - 1)] - s

    n = min(n_avail, max(math.ceil(min_len * fps - _EPS), min(math.floor(max_len * fps + _EPS),
                                                             round(p.length_s * fps))))
    while n < n_avail and src_span(n) < min_len - _EPS:
        n += 1
    while n > 1 and (src_span(n) > max_len + _EPS or n / fps > max_len + _EPS):
        n -= 1
    if n < 1 or n / fps < min_len - _EPS or src_span(n) < min_len - _EPS:
        return False
    p.frames = [span.frames[shown(j)][1] for j in range(n)]
    p.start_v, p.end_v = s, s + src_span(n)
    return True


def finish_filler_video(p: Piece, fps: float) -> None:
    span = p.span
    assert span is not None and p.item is not None
    if not span.frames:
        raise ValueError(f"filler video unreadable: {p.item.path}: no frame decoded at {p.start_s:.2f} s")
    ts = [f[0] for f in span.frames]
    n = max(1, round(p.length_s * fps))
    p.frames = [span.frames[max(0, bisect.bisect_right(ts, ts[0] + j / fps + _EPS) - 1)][1] for j in range(n)]
    p.start_v, p.end_v = ts[0], ts[0] + n / fps


def plan_queries(sources: Sequence[Source], items: Sequence[FillerItem], edits: Sequence[Edit], *, n_queries: int,
                 n_copy_free: int, per_query: int, min_len: float, max_len: float, seed: int,
                 rng: np.random.Generator) -> list[list[Piece]]:
    """The queries, copying ones first: filler, segment, filler, ..., filler; then the copy-free
    ones, filler only, each as long as a randomly chosen copying query. Every piece has its edit
    (balanced over ``edits``, segments and filler separately) and the seed of its RNG."""
    queries: list[list[Piece]] = []
    for segs in plan_segments(sources, n_queries, per_query, min_len, max_len, rng):
        pieces = [filler_piece(items, rng)]
        for s in segs:
            pieces += [s, filler_piece(items, rng)]
        queries.append(pieces)
    for _ in range(n_copy_free):
        target = sum(p.length_s for p in queries[int(rng.integers(n_queries))])
        pieces = [filler_piece(items, rng)]
        while sum(p.length_s for p in pieces) < target:
            pieces.append(filler_piece(items, rng))
        queries.append(pieces)
    by_name = {e.name: e for e in edits}
    for stream, kind in ((2, "segment"), (3, "filler")):
        group = [p for q in queries for p in q if p.kind == kind]
        names = _balanced_edits(list(by_name), len(group), rng)
        for k, (p, name) in enumerate(zip(group, names, strict=True)):
            p.edit, p.seed = by_name[name], (seed, stream, k)
    return queries
