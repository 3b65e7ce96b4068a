"""Temporal alignment of frame pairs into copied segments (framesim.duplicates.segments).

Synthetic cases build candidate pairs the way the self-join does: each frame of a copy is similar to
the frames of its source in proportion to how close their content times are, chance pairs (cosine
0.5-0.7) are scattered at random, and only each frame's top 10 survive. One case runs on real media.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from framesim.duplicates.segments import (
    EVIDENCE_COLUMNS,
    SEGMENT_COLUMNS,
    find_segments,
    segment_score,
)

METHODS = ["tn", "vote"]


def frames_table(videos: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame([(name, float(t)) for name, ts in videos.items() for t in ts],
                        columns=["video", "timestamp_s"])


def copy_pairs(frames: pd.DataFrame, video_a: str, video_b: str, content_b: Callable[[np.ndarray], np.ndarray],
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of a copy: frame b shows A's content at content_b(t_b) (nan: not copied); cosine 0.93
    falling by 0.3 a second of content distance (neighbouring frames of a shot look alike)."""
    a = np.flatnonzero(frames["video"].to_numpy() == video_a)
    b = np.flatnonzero(frames["video"].to_numpy() == video_b)
    t = frames["timestamp_s"].to_numpy()
    distance = np.abs(t[a][:, None] - content_b(t[b])[None, :])
    with np.errstate(invalid="ignore"):
        sim = 0.93 - 0.3 * distance + rng.uniform(-0.02, 0.02, distance.shape)
        ok = np.isfinite(distance) & (sim >= 0.5)
    ai, bi = np.nonzero(ok)
    return a[ai], b[bi], sim[ok]


def chance_pairs(frames: pd.DataFrame, rng: np.random.Generator, per_frame: int = 5) -> tuple[np.ndarray, ...]:
    """Spurious pairs: per frame, random partners in other videos with random cosine 0.5-0.7."""
    video = frames["video"].to_numpy()
    i = np.repeat(np.arange(len(video)), per_frame)
    j = rng.integers(0, len(video), len(i))
    ok = video[i] != video[j]
    return i[ok], j[ok], rng.uniform(0.5, 0.7, int(ok.sum()))


def candidates(*parts: tuple[np.ndarray, ...], k: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The contract's candidate arrays: i < j, each pair once, kept if in the top k of either frame."""
    i, j, s = (np.concatenate([p[n] for p in parts]) for n in range(3))
    df = pd.DataFrame({"i": np.minimum(i, j), "j": np.maximum(i, j), "s": s})
    df = df.sort_values("s", ascending=False, kind="stable").drop_duplicates(["i", "j"])
    both = pd.concat([df.assign(f=df["i"]), df.assign(f=df["j"])])
    both = both[both.groupby("f").cumcount() < k].drop_duplicates(["i", "j"])
    return both["i"].to_numpy(np.int64), both["j"].to_numpy(np.int64), both["s"].to_numpy(np.float32)


def extents(row: pd.Series) -> tuple[float, float, float, float]:
    return (row["start_a"], row["end_a"], row["start_b"], row["end_b"])


def planted(seed: int, per_frame: int = 5) -> tuple[pd.DataFrame, tuple[np.ndarray, ...]]:
    """A and B, 60 s at 2 fps; B[20 s, 40 s) is A[5 s, 25 s)."""
    rng = np.random.default_rng(seed)
    frames = frames_table({"A": np.arange(120) * 0.5, "B": np.arange(120) * 0.5})
    copy = copy_pairs(frames, "A", "B", lambda t: np.where((t >= 20) & (t < 40), t - 15, np.nan), rng)
    return frames, candidates(copy, chance_pairs(frames, rng, per_frame))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(4))
def test_planted_copy_among_chance_pairs(method: str, seed: int) -> None:
    frames, (i, j, s) = planted(seed)
    segments, evidence = find_segments(i, j, s, frames, method=method)
    assert list(segments.columns) == SEGMENT_COLUMNS and list(evidence.columns) == EVIDENCE_COLUMNS
    assert len(segments) == 1, segments
    row = segments.iloc[0]
    assert (row["video_a"], row["video_b"]) == ("A", "B")
    assert extents(row) == (5.0, 25.0, 20.0, 40.0)
    assert row["offset_s"] == 15.0 and row["n_frames"] == 40 and 0.85 < row["score"] <= 1.0
    # the evidence is the copy's own diagonal: b-time - a-time = 15 s for every pair
    t = frames["timestamp_s"].to_numpy()
    assert len(evidence) == 40 and (evidence["segment"] == 0).all()
    assert np.allclose(t[evidence["j"]] - t[evidence["i"]], 15.0)
    # with no score floor the chance chains come out too, all far below the copy
    everything, _ = find_segments(i, j, s, frames, method=method, min_segment_score=0.0)
    assert len(everything) > 5 and everything["score"].iloc[1] < 0.5 * row["score"]
    assert everything["score"].is_monotonic_decreasing and (everything["segment"] == range(len(everything))).all()


@pytest.mark.parametrize("method", METHODS)
def test_dropped_frames_do_not_split(method: str) -> None:
    rng = np.random.default_rng(7)
    b_times = np.arange(80) * 0.5
    dropped = np.isin(np.arange(80), [30, 31, 32, 45, 46, 60])  # gaps of up to 3 samples
    frames = frames_table({"A": np.arange(80) * 0.5, "B": b_times[~dropped]})
    copy = copy_pairs(frames, "A", "B", lambda t: np.where((t >= 10) & (t < 35), t - 8, np.nan), rng)
    segments, _ = find_segments(*candidates(copy, chance_pairs(frames, rng)), frames, method=method)
    assert len(segments) == 1, segments
    assert extents(segments.iloc[0]) == (2.0, 27.0, 10.0, 35.0)


@pytest.mark.parametrize("method", METHODS)
def test_different_sampling_rates(method: str) -> None:
    """A at 2 fps from a 25 fps source, B at 1.5 fps from a 29.97 fps source (frame times jitter)."""
    rng = np.random.default_rng(3)
    a_times = np.ceil(np.arange(0, 50, 0.5) * 25) / 25
    b_times = np.ceil(np.arange(0, 50, 1 / 1.5) * 29.97) / 29.97
    frames = frames_table({"A": a_times, "B": b_times})
    copy = copy_pairs(frames, "A", "B", lambda t: np.where((t >= 12) & (t < 36), t - 10, np.nan), rng)
    segments, _ = find_segments(*candidates(copy, chance_pairs(frames, rng)), frames, method=method)
    assert len(segments) == 1, segments
    start_a, end_a, start_b, end_b = extents(segments.iloc[0])
    # first/last matched frames: within a step of the true extents A[2, 26) and B[12, 36)
    assert abs(start_a - 2) <= 0.5 and abs(end_a - 26) <= 0.5
    assert abs(start_b - 12) <= 0.67 and abs(end_b - 36) <= 0.67
    assert abs(segments.iloc[0]["offset_s"] - 10) <= 0.67


@pytest.mark.parametrize("method", METHODS)
def test_same_source_copied_twice(method: str) -> None:
    rng = np.random.default_rng(11)
    frames = frames_table({"A": np.arange(60) * 0.5, "B": np.arange(160) * 0.5})

    def content(t: np.ndarray) -> np.ndarray:
        return np.select([(t >= 10) & (t < 25), (t >= 50) & (t < 65)], [t - 5, t - 45], np.nan)

    copy = copy_pairs(frames, "A", "B", content, rng)
    segments, _ = find_segments(*candidates(copy, chance_pairs(frames, rng)), frames, method=method)
    assert len(segments) == 2, segments
    assert sorted(extents(r) for _, r in segments.iterrows()) == [(5.0, 20.0, 10.0, 25.0), (5.0, 20.0, 50.0, 65.0)]
    assert sorted(segments["offset_s"]) == [5.0, 45.0]


@pytest.mark.parametrize(("speed", "duration"), [(1.05, 30), (1.1, 60), (0.9, 30)])
def test_speed_change_is_one_segment_with_tn(speed: float, duration: float) -> None:
    """B plays A's [4 s, 4 s + duration) at ``speed`` from 10 s: the offset drifts by up to 6 s."""
    rng = np.random.default_rng(5)
    frames = frames_table({"A": np.arange(200) * 0.5, "B": np.arange(200) * 0.5})
    end_b = 10 + duration / speed

    def content(t: np.ndarray) -> np.ndarray:
        return np.where((t >= 10) & (t < end_b), 4 + speed * (t - 10), np.nan)

    pairs = candidates(copy_pairs(frames, "A", "B", content, rng), chance_pairs(frames, rng))
    segments, _ = find_segments(*pairs, frames, method="tn")
    assert len(segments) == 1, segments
    start_a, end_a, start_b, stop_b = extents(segments.iloc[0])
    assert abs(start_a - 4) <= 0.5 and abs(end_a - 4 - duration) <= 0.5
    assert abs(start_b - 10) <= 0.5 and abs(stop_b - end_b) <= 0.5
    if speed == 1.1:  # the Hough vote cannot follow a 6 s drift: the copy comes out in pieces
        pieces, _ = find_segments(*pairs, frames, method="vote")
        assert len(pieces) >= 2 and pieces["n_frames"].max() < segments.iloc[0]["n_frames"]


@pytest.mark.parametrize("method", METHODS)
def test_whole_video_copy_is_one_segment_spanning_both(method: str) -> None:
    rng = np.random.default_rng(2)
    frames = frames_table({"clip.mp4": np.arange(24) * 0.5, "clip-reencoded.mp4": np.arange(24) * 0.5,
                           "other.mp4": np.arange(30) * 0.5})
    copy = copy_pairs(frames, "clip-reencoded.mp4", "clip.mp4", lambda t: t, rng)
    segments, evidence = find_segments(*candidates(copy, chance_pairs(frames, rng, 2)), frames, method=method)
    assert len(segments) == 1, segments
    row = segments.iloc[0]
    assert (row["video_a"], row["video_b"]) == ("clip-reencoded.mp4", "clip.mp4")  # string order
    assert extents(row) == (0.0, 12.0, 0.0, 12.0) and row["n_frames"] == 24 and row["offset_s"] == 0.0
    video = frames["video"].to_numpy()
    assert (video[evidence["i"]] == "clip-reencoded.mp4").all() and (video[evidence["j"]] == "clip.mp4").all()


@pytest.mark.parametrize("method", METHODS)
def test_repeat_inside_one_video(method: str) -> None:
    """An intro replayed: frames of one video more than a gap apart (the self-join's same-video pairs)."""
    frames = frames_table({"V": np.arange(100) * 0.5})
    t = frames["timestamp_s"].to_numpy()
    sim = 0.93 - 0.3 * np.abs(t[:, None] - np.where(t >= 30, t - 30, np.nan)[None, :])
    with np.errstate(invalid="ignore"):
        a, b = np.nonzero(sim >= 0.5)
    segments, _ = find_segments(*candidates((a, b, sim[a, b])), frames, method=method)
    assert len(segments) == 1
    assert extents(segments.iloc[0]) == (0.0, 20.0, 30.0, 50.0) and segments.iloc[0]["video_b"] == "V"


@pytest.mark.parametrize("method", METHODS)
def test_empty_and_single_pair(method: str) -> None:
    frames = frames_table({"A": np.arange(8) * 0.5, "B": np.arange(8) * 0.5})
    none = np.zeros(0, np.int64)
    segments, evidence = find_segments(none, none, np.zeros(0, np.float32), frames, method=method)
    assert segments.empty and list(segments.columns) == SEGMENT_COLUMNS
    assert evidence.empty and list(evidence.columns) == EVIDENCE_COLUMNS
    one = (np.array([2]), np.array([11]), np.array([0.95], np.float32))
    assert find_segments(*one, frames, method=method)[0].empty  # fewer than min_frames
    single, ev = find_segments(*one, frames, method=method, min_frames=1, min_segment_score=0)
    assert extents(single.iloc[0]) == (1.0, 1.5, 1.5, 2.0) and single.iloc[0]["offset_s"] == 0.5
    assert ev[["i", "j"]].values.tolist() == [[2, 11]]
    ten = (np.arange(8), np.arange(8) + 8, np.full(8, 0.95, np.float32))
    run, _ = find_segments(*ten, frames, method=method, min_frames=1, min_segment_score=0)
    assert len(run) == 1 and run.iloc[0]["score"] > 2 * single.iloc[0]["score"]
    # all frames of a video copied: extents clip at the last frame + step
    assert extents(run.iloc[0]) == (0.0, 4.0, 0.0, 4.0)


def test_segment_score() -> None:
    one, ten = segment_score(0.9, 1), segment_score(0.9, 10)
    assert 0 < one < ten <= 0.9
    assert segment_score(0.9, 10, coverage=0.4) < ten
    assert segment_score(1.2, 1000) <= 1.0 and segment_score(-0.1, 5) == 0.0


def test_bad_input() -> None:
    frames = frames_table({"A": [0.0, 0.5], "B": [0.0, 0.5]})
    i, j, s = np.array([0]), np.array([2]), np.array([0.9])
    with pytest.raises(ValueError, match="method"):
        find_segments(i, j, s, frames, method="dtw")
    with pytest.raises(ValueError, match="positions"):
        find_segments(np.array([0]), np.array([9]), s, frames)
    with pytest.raises(ValueError, match="one length"):
        find_segments(i, np.array([2, 3]), s, frames)
    with pytest.raises(ValueError, match="timestamp_s"):
        find_segments(i, j, s, frames.drop(columns="timestamp_s"))
    with pytest.raises(ValueError, match="max_gap_s"):
        find_segments(i, j, s, frames, max_gap_s=0)
    with pytest.raises(ValueError, match="min_frames"):
        find_segments(i, j, s, frames, min_frames=0)


def test_many_pairs_are_fast() -> None:
    """~180k candidate pairs over 40 videos (10 copies among them) in seconds, both methods."""
    rng = np.random.default_rng(0)
    frames = frames_table({f"v{k:02d}": np.arange(600) * 0.5 for k in range(40)})
    parts = [chance_pairs(frames, rng, 10)]
    for k in range(0, 20, 2):
        parts.append(copy_pairs(frames, f"v{k:02d}", f"v{k + 1:02d}",
                                lambda t: np.where((t >= 100) & (t < 200), t - 50, np.nan), rng))
    i, j, s = candidates(*parts)
    assert len(i) > 150_000
    for method in METHODS:
        t0 = time.monotonic()
        segments, _ = find_segments(i, j, s, frames, method=method)
        assert time.monotonic() - t0 < 20
        copies = segments[segments["score"] > 0.8]
        assert len(copies) == 10 and (copies["offset_s"] == 50.0).all()


@pytest.mark.slow
def test_real_reencoded_clip(shared_media, tmp_path) -> None:
    """carphone_distorted.mp4 is a heavily compressed copy of carphone_pristine.mp4 (4 s): every frame
    pair of the two sits near cosine 0.7, so only the temporal structure can tell the alignment."""
    import framesim
    from framesim.dataset import FrameDataset
    from framesim.images import load_image

    videos = shared_media / "videos"
    framesim.extract([videos / "carphone_pristine.mp4", videos / "carphone_distorted.mp4"], tmp_path / "ds", fps=2,
                     progress=False)
    ds = FrameDataset(tmp_path / "ds")
    frames = ds.manifest().reset_index(drop=True)
    backbone = framesim.get_backbone("efficientnet-lite0")
    vectors = backbone.embed(np.stack([backbone.resize(load_image(ds.frame_path(p))) for p in frames["path"]]))
    video = frames["video"].to_numpy()
    sims = vectors @ vectors.T
    i, j, s = [], [], []
    for a in range(len(frames)):  # brute-force top 10 in the other video, cosine >= 0.5
        other = np.flatnonzero(video != video[a])
        for b in other[np.argsort(-sims[a, other])[:10]]:
            if sims[a, b] >= 0.5:
                i.append(min(a, b))
                j.append(max(a, b))
                s.append(sims[a, b])
    pairs = pd.DataFrame({"i": i, "j": j, "s": s}).drop_duplicates(["i", "j"])
    for method in METHODS:
        segments, _ = find_segments(pairs["i"].to_numpy(), pairs["j"].to_numpy(), pairs["s"].to_numpy(), frames,
                                    method=method)
        assert len(segments) == 1, (method, segments)
        start_a, end_a, start_b, end_b = extents(segments.iloc[0])
        assert start_a <= 0.5 and start_b <= 0.5 and end_a >= 3.5 and end_b >= 3.5, (method, segments)
        assert end_a <= 4.1 and end_b <= 4.1
