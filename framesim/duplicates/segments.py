"""Copied segments between videos: temporal alignment of candidate frame pairs.

``find_segments`` turns frame pairs (from the kNN self-join; most of them spurious, since each frame
brings its top neighbours down to a low similarity floor) into segments: a stretch of video A that
appears in video B, with its extents on both clocks, the offset between them and a score. Runs of
matching frames with a consistent time offset between two videos become one segment.

Two methods from the copy-localisation literature, behind one function:

* ``"tn"`` (default): the temporal network of Tan et al. (ACM MM 2009), one of the strongest
  localisers in the VCSL benchmark (He et al., CVPR 2022). Matches are nodes of a DAG, edges join
  matches that move forward on both clocks at a near-constant offset; the best paths are copies
  (``framesim.duplicates.segments_tn``). It follows a drifting offset (speed 0.9-1.1x).
* ``"vote"``: temporal Hough voting (as in Douze et al.'s video copy detection, and VCSL's "HV"
  baseline): per video pair, a histogram of offsets t_b - t_a weighted by similarity; each peak's
  matches are split into runs along time where the gap stays under ``max_gap_s``. Simple and fast,
  but an offset that drifts (a sped-up copy) leaves its bin and the copy breaks into pieces.

Both work on timestamps in seconds, never frame indices, so videos sampled at different rates align,
and tolerances scale with the coarser video's sampling step (the median difference of its frame times).
Measured on the synthetic cases of ``tests/test_segments.py`` (planted copies amid chance pairs at
~4% of all frame pairs, dropped frames, 2 against 1.5 fps, two copies, 0.9-1.1x speed, whole-video
copies) and on a real heavily re-encoded clip, tn gets every case right with exact extents; vote
matches it at speed 1x but is up to 1.5 s off at 0.9x/1.1x and splits a 60 s copy at 1.1x into 2-3
pieces. On 1.5 M candidate pairs (100 videos of 500 s at 2 fps) tn took 2.5 s, vote 4.7 s (2 cores).
"""

from __future__ import annotations

import heapq
import math
import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd

from framesim.duplicates.files import SEGMENT_COLUMNS as CONTRACT_COLUMNS
from framesim.duplicates.segments_tn import (
    TIME_EPS_S,
    AlignParams,
    MatchLayout,
    box_members,
    segment_box,
    tn_paths,
    trimmed_run,
)

#: the segments contract (``files.SEGMENT_COLUMNS``) and the segment's id, which ``evidence`` refers to
SEGMENT_COLUMNS: list[str] = [*CONTRACT_COLUMNS, "segment"]
EVIDENCE_COLUMNS: list[str] = ["segment", "i", "j", "score"]
METHODS = ("tn", "vote")

#: pairs below this cosine are ignored; the self-join's own floor, so by default every candidate counts
#: (the copy of a heavily compressed clip can sit at ~0.65-0.75 with a CNN backbone)
MIN_PAIR_SCORE = 0.5
#: evidence scale of ``segment_score``: a segment of n pairs counts 1 - exp(-n / EVIDENCE_PAIRS) of its
#: mean similarity. 4 pairs (2 s at 2 fps) give 0.63: a run of two or three frames is weak evidence
#: (spurious chains of that length happen by chance among top-10 neighbours), ten give 0.92.
EVIDENCE_PAIRS = 4.0
#: segments scoring below this are dropped. Three consecutive pairs at cosine 0.9 score 0.47, a whole
#: 4 s clip at 2 fps with cosine 0.7 0.61; chains of chance matches (cosine 0.5-0.7, skipping frames)
#: reached 0.43 in the synthetic tests with chance pairs at 8% of all frame pairs of two videos
MIN_SEGMENT_SCORE = 0.45
#: default gap a segment bridges: this many sampling steps of the coarser video (3 dropped samples)...
GAP_STEPS = 4.0
#: ...but at least this long, so densely sampled videos (25 fps) still bridge a second of lost frames
MIN_GAP_S = 1.0
#: offset tolerance between consecutive matches, in sampling steps of the coarser video: each matched
#: time is off by up to about half a step of each video when rates differ, or when a copy starts
#: between two samples
OFFSET_TOL_STEPS = 1.0
#: offset drift allowed per second of A (tn only): speeds 0.9-1.1x stay one segment
SPEED_TOL = 0.1
#: an end pair weaker than the run's median by more than this (or TRIM_MADS median absolute
#: deviations) is trimmed: chance matches next to a copy must not stretch its extents
TRIM_MARGIN = 0.1
TRIM_MADS = 3.0
#: sampling step assumed for a video with a single frame when no other video has two (extract's 1 fps)
DEFAULT_STEP_S = 1.0


def segment_score(mean_similarity: np.ndarray | float, n_pairs: np.ndarray | int,
                  coverage: np.ndarray | float = 1.0) -> np.ndarray:
    """Score in [0, 1] of segments from the mean cosine of their matched pairs, how many pairs they
    have and their coverage (pairs / frames of the sparser video inside the segment's extents).

    ``clip(mean_similarity, 0, 1) * coverage * (1 - exp(-n_pairs / EVIDENCE_PAIRS))``. The first
    factor says how alike the matched frames look; the other two how much temporal evidence backs it:
    one strong pair scores less than ten pairs of the same similarity, and a chain that skips most
    frames of its span (what chance matches at compatible offsets make) less than a run that matches
    nearly every frame (what a copy makes, dropped frames being absent from the span anyway). Tune
    EVIDENCE_PAIRS and MIN_SEGMENT_SCORE on the segment benchmark."""
    mean = np.clip(np.asarray(mean_similarity, np.float64), 0.0, 1.0)
    n = np.asarray(n_pairs, np.float64)
    cover = np.clip(np.asarray(coverage, np.float64), 0.0, 1.0)
    return mean * cover * (1.0 - np.exp(-n / EVIDENCE_PAIRS))


def find_segments(i: np.ndarray, j: np.ndarray, score: np.ndarray, frames: pd.DataFrame, *, method: str = "tn",
                  min_score: float = MIN_PAIR_SCORE, max_gap_s: float | None = None, min_frames: int = 2,
                  min_segment_score: float = MIN_SEGMENT_SCORE, offset_tol_s: float | None = None,
                  speed_tol: float = SPEED_TOL, bias: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Align candidate frame pairs into copied segments between (and within) videos.

    ``i``, ``j``, ``score``: candidate pairs, positions into ``frames`` (columns ``video``,
    ``timestamp_s``; row order = positions 0..n-1). Pairs below ``min_score`` are ignored.
    ``max_gap_s``: the longest stretch without a match inside one segment (default: GAP_STEPS
    sampling steps of the coarser video, at least MIN_GAP_S). ``offset_tol_s``: how far the offset
    may move between consecutive matches (default OFFSET_TOL_STEPS steps). ``speed_tol``: offset
    drift per second allowed by tn. ``bias``: a match weighs ``score - bias`` (default: min_score,
    so every match above the floor helps, the stronger the more). Segments of fewer than
    ``min_frames`` pairs or scoring below ``min_segment_score`` are dropped.

    Returns ``(segments, evidence)``. ``segments``: SEGMENT_COLUMNS, best first; extents run from
    the first matched frame's time to the last one's plus the video's sampling step, so a whole
    4 s clip at 2 fps gives 0-4; ``offset_s = start_b - start_a``; ``score`` is ``segment_score``;
    ``n_frames`` the matched pairs. ``video_a`` sorts before ``video_b``; within one video, a is the
    earlier copy. ``evidence``: EVIDENCE_COLUMNS, the pairs behind each segment, ``i`` the frame in
    ``video_a`` and ``j`` the one in ``video_b`` (so not always i < j).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if isinstance(min_frames, bool) or int(min_frames) != min_frames or min_frames < 1:
        raise ValueError(f"min_frames must be a positive integer, got {min_frames!r}")
    for name, value, least in (("min_score", min_score, "any"), ("bias", bias, "any"),
                               ("min_segment_score", min_segment_score, ">= 0"), ("speed_tol", speed_tol, ">= 0"),
                               ("max_gap_s", max_gap_s, "> 0"), ("offset_tol_s", offset_tol_s, "> 0")):
        if value is None and name in ("bias", "max_gap_s", "offset_tol_s"):
            continue
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                and (least == "any" or (value >= 0 if least == ">= 0" else value > 0))):
            raise ValueError(f"{name} must be a finite number{'' if least == 'any' else ' ' + least}, got {value!r}")
    video_code, names, times = _frame_table(frames)
    i, j, score = _checked_pairs(i, j, score, len(times))
    keep = score >= min_score
    clocks = _video_clocks(video_code, times, len(names))
    layout = _layout(i[keep], j[keep], score[keep], video_code, times, clocks.steps,
                     min_score if bias is None else bias, max_gap_s, offset_tol_s)
    params = AlignParams(int(min_frames), float(speed_tol), TRIM_MARGIN, TRIM_MADS)
    if len(layout.ta) == 0:
        paths: list[np.ndarray] = []
    elif method == "tn":
        paths = tn_paths(layout, params)
    else:
        paths = [p for g in range(len(layout.starts) - 1) for p in vote_paths(layout, g, params, min_segment_score)]
    return _tables(layout, paths, names, clocks, float(min_segment_score))


def _frame_table(frames: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(frames, pd.DataFrame):
        raise ValueError(f"frames must be a pandas DataFrame, got {type(frames).__name__}")
    missing = [c for c in ("video", "timestamp_s") if c not in frames.columns]
    if missing:
        raise ValueError(f"frames lacks the column(s) {missing}")
    times = pd.to_numeric(frames["timestamp_s"], errors="coerce").to_numpy(np.float64)
    if not np.isfinite(times).all():
        raise ValueError("frames: timestamp_s must be finite numbers of seconds")
    # sorted names, so code order is string order (video_a sorts before video_b)
    names, code = np.unique(frames["video"].astype(str).to_numpy(), return_inverse=True)
    return code.astype(np.int64), names, times


def _checked_pairs(i: np.ndarray, j: np.ndarray, score: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    arrays = [np.asarray(a) for a in (i, j, score)]
    if any(a.ndim != 1 for a in arrays) or len({len(a) for a in arrays}) != 1:
        raise ValueError("pairs: i, j and score must be 1-D arrays of one length")
    i, j, score = arrays
    if len(i) and not (np.issubdtype(i.dtype, np.integer) and np.issubdtype(j.dtype, np.integer)):
        raise ValueError("pairs: i and j must be integer frame positions")
    i, j, score = i.astype(np.int64), j.astype(np.int64), score.astype(np.float64)
    if len(i) and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n):
        raise ValueError(f"pairs: frame positions must lie in 0..{n - 1} (the rows of frames)")
    if not np.isfinite(score).all():
        raise ValueError("pairs: score must be finite")
    return i, j, score


@dataclass(frozen=True)
class VideoClocks:
    """Each video's frame times, sorted (video v: ``times[bounds[v]:bounds[v + 1]]``), its sampling
    step (the median difference of its distinct frame times) and its last frame time."""

    times: np.ndarray
    bounds: np.ndarray
    steps: np.ndarray
    last: np.ndarray

    def frames_within(self, video: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """How many frames each video has in [start, end)."""
        counts = np.zeros(len(video), np.int64)
        for k, (v, a, b) in enumerate(zip(video, start, end, strict=True)):
            t = self.times[self.bounds[v]:self.bounds[v + 1]]
            counts[k] = np.searchsorted(t, b - TIME_EPS_S) - np.searchsorted(t, a - TIME_EPS_S)
        return counts


def _video_clocks(code: np.ndarray, times: np.ndarray, n_videos: int) -> VideoClocks:
    order = np.lexsort((times, code))
    c, t = code[order], times[order]
    d = np.diff(t)
    within = (c[1:] == c[:-1]) & (d > TIME_EPS_S)
    steps = np.full(n_videos, np.nan)
    if within.any():
        medians = pd.Series(d[within]).groupby(c[1:][within]).median()
        steps[medians.index.to_numpy()] = medians.to_numpy()
    known = steps[np.isfinite(steps)]
    steps[~np.isfinite(steps)] = float(np.median(known)) if known.size else DEFAULT_STEP_S
    bounds = np.searchsorted(c, np.arange(n_videos + 1))
    last = t[np.maximum(bounds[1:] - 1, 0)] if len(t) else np.zeros(n_videos)
    return VideoClocks(times=t, bounds=bounds, steps=steps, last=last)


def _layout(i: np.ndarray, j: np.ndarray, score: np.ndarray, code: np.ndarray, times: np.ndarray,
            steps: np.ndarray, bias: float, max_gap_s: float | None, offset_tol_s: float | None) -> MatchLayout:
    """Orient the pairs (a in the video that sorts first; in one video, the earlier frame), drop
    repeats and same-instant pairs, and sort by (video a, video b, t_a, t_b)."""
    ti, tj = times[i], times[j]
    swap = (code[j] < code[i]) | ((code[j] == code[i]) & (tj < ti))
    ia, ib = np.where(swap, j, i), np.where(swap, i, j)
    ok = ~((code[ia] == code[ib]) & (times[ib] - times[ia] <= 1e-9))
    ia, ib, score = ia[ok], ib[ok], score[ok]
    va, vb, ta, tb = code[ia], code[ib], times[ia], times[ib]
    order = np.lexsort((-score, tb, ta, vb, va))
    ia, ib, score, va, vb, ta, tb = (x[order] for x in (ia, ib, score, va, vb, ta, tb))
    first = np.ones(len(ia), bool)
    first[1:] = (ia[1:] != ia[:-1]) | (ib[1:] != ib[:-1])  # a pair given twice: keep its best score
    ia, ib, score, va, vb, ta, tb = (x[first] for x in (ia, ib, score, va, vb, ta, tb))
    new_pair = np.ones(len(ia), bool)
    new_pair[1:] = (va[1:] != va[:-1]) | (vb[1:] != vb[:-1])
    starts = np.r_[np.flatnonzero(new_pair), len(ia)].astype(np.int64)
    coarse = np.maximum(steps[va], steps[vb])
    gap = np.full(len(ia), max_gap_s) if max_gap_s is not None else np.maximum(MIN_GAP_S, GAP_STEPS * coarse)
    tol = np.full(len(ia), offset_tol_s) if offset_tol_s is not None else OFFSET_TOL_STEPS * coarse
    return MatchLayout(ia=ia, ib=ib, va=va, vb=vb, ta=ta, tb=tb, score=score, weight=score - bias, gap=gap,
                       tol=tol, step_a=steps[va], step_b=steps[vb], starts=starts)


def vote_paths(layout: MatchLayout, g: int, params: AlignParams, min_segment_score: float = 0.0) -> list[np.ndarray]:
    """Temporal Hough voting in video pair g: strongest offset bin first, its matches (within the
    tolerance of the bin's weighted mean offset) made one-to-one and split into runs along time.
    A bin whose neighbourhood holds too few matches to reach ``min_segment_score`` even at full
    coverage and the pair's best similarity is skipped (most bins of chance matches)."""
    lo, hi = int(layout.starts[g]), int(layout.starts[g + 1])
    offset = layout.tb[lo:hi] - layout.ta[lo:hi]
    weight = np.maximum(layout.weight[lo:hi], 1e-9)  # a match at the floor still counts a little
    tol, gap = float(layout.tol[lo]), float(layout.gap[lo])
    bins = np.floor(offset / tol).astype(np.int64)
    bins -= bins.min()
    bin_weight = np.bincount(bins, weights=weight)
    bin_count = np.bincount(bins)
    free = np.ones(hi - lo, bool)
    heap = [(-w, int(b)) for b, w in enumerate(bin_weight) if bin_count[b] >= params.min_frames]
    heapq.heapify(heap)
    order = np.argsort(offset, kind="stable")
    sorted_offset = offset[order]
    bin_start = np.searchsorted(bins[order], np.arange(len(bin_count) + 1))
    paths: list[np.ndarray] = []
    best_score = float(layout.score[lo:hi].max())

    def take(local: np.ndarray) -> None:
        local = local[free[local]]
        free[local] = False
        np.subtract.at(bin_weight, bins[local], weight[local])
        np.subtract.at(bin_count, bins[local], 1)
        for b in np.unique(bins[local]):
            if bin_count[b] >= params.min_frames:
                heapq.heappush(heap, (-bin_weight[b], int(b)))

    while heap:
        key, b = heapq.heappop(heap)
        if bin_count[b] < params.min_frames or -key > bin_weight[b] + 1e-9:
            continue  # stale entry: the bin has lost matches since
        if segment_score(best_score, bin_count[max(b - 1, 0):b + 2].sum()) < min_segment_score:
            continue
        members = order[bin_start[b]:bin_start[b + 1]]
        members = members[free[members]]
        centre = float(np.average(offset[members], weights=weight[members]))
        window = order[np.searchsorted(sorted_offset, centre - tol - 1e-9):
                       np.searchsorted(sorted_offset, centre + tol + 1e-9, "right")]
        window = window[free[window]]
        for run in _runs(layout, lo, _one_to_one(layout, lo, window, centre, tol), gap, tol):
            kept = run[trimmed_run(layout.score[lo + run], params.trim_margin, params.trim_mads)[0]]
            if len(kept) >= params.min_frames:
                paths.append(lo + kept)
                box = box_members(layout, g, *segment_box(layout, lo + kept)) - lo
                take(box)
        take(window)
    return paths


def _one_to_one(layout: MatchLayout, lo: int, local: np.ndarray, centre: float, tol: float) -> np.ndarray:
    """One match per frame of a and of b, greedily, nearest the peak's offset first (in quarters of
    the tolerance), the stronger first among equally near; in time order. Nearness comes first
    because neighbouring frames of a shot are about as similar as the matching one: the offset,
    not the similarity, tells the true partner."""
    nearness = np.floor(np.abs(layout.tb[lo + local] - layout.ta[lo + local] - centre) / (tol / 4))
    local = local[np.lexsort((-layout.score[lo + local], nearness))]
    # first occurrences, kept in priority order (np.unique itself returns them in value order)
    local = local[np.sort(np.unique(layout.ia[lo + local], return_index=True)[1])]
    local = local[np.sort(np.unique(layout.ib[lo + local], return_index=True)[1])]
    return local[np.lexsort((layout.tb[lo + local], layout.ta[lo + local]))]


def _runs(layout: MatchLayout, lo: int, local: np.ndarray, gap: float, tol: float) -> list[np.ndarray]:
    """Split time-ordered matches where either clock jumps by more than ``gap`` or b runs backwards."""
    if len(local) == 0:
        return []
    da, db = np.diff(layout.ta[lo + local]), np.diff(layout.tb[lo + local])
    cut = np.flatnonzero((da > gap + 1e-9) | (db > gap + 1e-9) | (db < -tol)) + 1
    return np.split(local, cut)


def _tables(layout: MatchLayout, paths: list[np.ndarray], names: np.ndarray, clocks: VideoClocks,
            min_segment_score: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The segments and evidence tables (contract columns), best first, ids 0.. in that order."""
    rows = []
    for path in paths:
        start_a, end_a, start_b, end_b = segment_box(layout, path)
        a, b = int(layout.va[path[0]]), int(layout.vb[path[0]])
        rows.append((a, start_a, min(end_a, clocks.last[a] + clocks.steps[a]), b, start_b,
                     min(end_b, clocks.last[b] + clocks.steps[b]), float(layout.score[path].mean()), len(path)))
    table = pd.DataFrame(rows, columns=["va", "start_a", "end_a", "vb", "start_b", "end_b", "mean", "n_frames"])
    columns = {c: table[c].to_numpy() for c in ("va", "start_a", "end_a", "vb", "start_b", "end_b")}
    span = np.minimum(clocks.frames_within(columns["va"], columns["start_a"], columns["end_a"]),
                      clocks.frames_within(columns["vb"], columns["start_b"], columns["end_b"]))
    table["coverage"] = np.clip(table["n_frames"] / np.maximum(span, 1), 0.0, 1.0)
    table["score"] = segment_score(table["mean"].to_numpy(), table["n_frames"].to_numpy(),
                                   table["coverage"].to_numpy())
    table["path"] = np.arange(len(table))
    table = table[table["score"] >= min_segment_score]
    table = table.sort_values(["score", "va", "vb", "start_a", "start_b"], ascending=[False, True, True, True, True],
                              kind="stable").reset_index(drop=True)
    segments = pd.DataFrame({
        "video_a": pd.Series(names[table["va"].to_numpy(np.int64)], dtype=object),
        "start_a": table["start_a"].astype(np.float64), "end_a": table["end_a"].astype(np.float64),
        "video_b": pd.Series(names[table["vb"].to_numpy(np.int64)], dtype=object),
        "start_b": table["start_b"].astype(np.float64), "end_b": table["end_b"].astype(np.float64),
        "score": table["score"].astype(np.float64), "n_frames": table["n_frames"].astype(np.int64),
        "offset_s": (table["start_b"] - table["start_a"]).astype(np.float64),
        "segment": np.arange(len(table), dtype=np.int64),
    }, columns=SEGMENT_COLUMNS)
    chosen = [paths[k] for k in table["path"]]
    nodes = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    evidence = pd.DataFrame({
        "segment": np.repeat(np.arange(len(chosen), dtype=np.int64), [len(p) for p in chosen]),
        "i": layout.ia[nodes].astype(np.int64), "j": layout.ib[nodes].astype(np.int64),
        "score": layout.score[nodes].astype(np.float32),
    }, columns=EVIDENCE_COLUMNS)
    return segments, evidence
