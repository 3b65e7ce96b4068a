"""Known answers for the kNN self-join (framesim.duplicates.selfjoin) and the frame groups."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from framesim.duplicates.groups import GROUP_COLUMNS, frame_groups, groups_table
from framesim.duplicates.selfjoin import FramePairs, knn_self_join


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n: int, dim: int, clusters: int, seed: int = 0, spread: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return _unit(centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)))


def _brute_force(x: np.ndarray, videos: np.ndarray, k: int, min_score: float) -> set[tuple[int, int]]:
    """Every frame's k best frames of other videos scoring >= min_score, from the full matrix."""
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    s[videos[:, None] == videos[None, :]] = -np.inf
    pairs = set()
    for q, row in enumerate(s):
        for c in np.argsort(-row, kind="stable")[:k]:
            if row[c] >= min_score:
                pairs.add((min(q, int(c)), max(q, int(c))))
    return pairs


def _as_set(p: FramePairs) -> set[tuple[int, int]]:
    return set(zip(p.i.tolist(), p.j.tolist(), strict=True))


def _videos(n: int, seed: int = 1) -> np.ndarray:
    """Shuffled video codes: 30 videos of 20-120 frames, then one-frame "videos" (photos)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 120, 30)
    codes = np.repeat(np.arange(30), lengths)[:n]
    codes = np.concatenate([codes, 100 + np.arange(n - len(codes))])
    return rng.permutation(codes)


def test_exact_join_equals_brute_force():
    x = _clustered(1500, 24, 60)
    videos = _videos(len(x))
    times = np.random.default_rng(2).uniform(0, 60, len(x))
    # a small chunk splits the long videos into several query pieces and the photos into several runs
    pairs = knn_self_join(x, videos, times, k=4, min_score=0.3, index="Flat", chunk=50, progress=False)
    assert len(pairs) > 1000
    assert _as_set(pairs) == _brute_force(x, videos, 4, 0.3)
    assert (pairs.i < pairs.j).all() and (videos[pairs.i] != videos[pairs.j]).all()
    key = pairs.i * len(x) + pairs.j
    assert (np.diff(key) > 0).all()  # sorted by (i, j), each pair once
    np.testing.assert_allclose(pairs.score, np.einsum("ij,ij->i", x[pairs.i], x[pairs.j]), atol=1e-5)
    assert pairs.score.dtype == np.float32 and pairs.i.dtype == np.int64


def test_own_video_does_not_hide_the_other_videos_match():
    rng = np.random.default_rng(3)
    base = _unit(rng.standard_normal((1, 32)))
    still = _unit(base + 0.02 * rng.standard_normal((200, 32)))  # one static shot: 200 near-identical frames
    copy = _unit(base + 0.15 * rng.standard_normal((1, 32)))  # another video's edited copy of it
    others = _unit(rng.standard_normal((300, 32)))
    x = np.concatenate([still, copy, others])
    videos = np.concatenate([np.zeros(200, int), [1], 2 + np.arange(300) // 30])
    assert 0.5 < float((x[200] @ still.T).min()) < float(np.sort(still @ still[0])[-3])
    pairs = knn_self_join(x, videos, np.zeros(len(x)), k=3, min_score=0.5, index="Flat", progress=False)
    found = _as_set(pairs)
    assert all((f, 200) in found for f in range(200))  # every still frame is paired with the copy


def test_same_video_gap_pairs_only_far_apart_frames_of_one_video():
    rng = np.random.default_rng(4)
    walk = _unit(np.cumsum(rng.standard_normal((60, 48)), axis=0))  # a slowly changing shot, 1 fps
    walk[45] = _unit(walk[5:6] + 0.05 * rng.standard_normal((1, 48)))[0]  # the shot comes back at 45 s
    x = np.concatenate([walk, _clustered(40, 48, 4, seed=5)])
    videos = np.concatenate([np.zeros(60, int), 1 + np.arange(40) // 10])
    times = np.concatenate([np.arange(60.0), np.arange(40) % 10 * 1.0])
    plain = knn_self_join(x, videos, times, k=3, min_score=0.8, index="Flat", progress=False)
    assert not (videos[plain.i] == videos[plain.j]).any()
    gap = knn_self_join(x, videos, times, k=3, min_score=0.8, same_video_gap_s=20, index="Flat", progress=False)
    same = videos[gap.i] == videos[gap.j]
    assert (5, 45) in _as_set(gap)
    assert (np.abs(times[gap.i[same]] - times[gap.j[same]]) > 20).all()
    assert _as_set(plain) <= _as_set(gap)
    ivf = knn_self_join(x, videos, times, k=3, min_score=0.8, same_video_gap_s=20, index="IVF4,Flat", nprobe=4,
                        progress=False)
    assert _as_set(ivf) == _as_set(gap)  # all lists probed: the IVF path must equal exact search


def test_ivf_reaches_high_recall_with_exact_scores():
    x = _clustered(20_000, 64, 400, seed=6, spread=0.5)
    videos = np.repeat(np.arange(200), 100)
    times = np.tile(np.arange(100.0), 200)
    exact = knn_self_join(x, videos, times, k=5, min_score=0.6, index="Flat", progress=False)
    approx = knn_self_join(x, videos, times, k=5, min_score=0.6, index="IVF64,Flat", nprobe=8, progress=False)
    truth = _as_set(exact)
    assert len(truth) > 20_000
    assert len(truth & _as_set(approx)) / len(truth) >= 0.95
    np.testing.assert_allclose(approx.score, np.einsum("ij,ij->i", x[approx.i], x[approx.j]), atol=1e-5)
    assert (approx.score >= 0.6).all()


def test_float16_memmap_is_read_in_chunks(tmp_path):
    x = _clustered(12_000, 256, 300, seed=7).astype(np.float16)
    path = tmp_path / "vectors.f16"
    x.tofile(path)
    mm = np.memmap(path, np.float16, "r", shape=x.shape)
    videos, times = np.repeat(np.arange(120), 100), np.tile(np.arange(100.0), 120)
    tracemalloc.start()
    try:
        pairs = knn_self_join(mm, videos, times, k=3, min_score=0.5, index="IVF16,Flat", chunk=1024, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * x.size * 4  # a float32 copy of the whole collection would be 12 MB
    in_memory = knn_self_join(x.astype(np.float32), videos, times, k=3, min_score=0.5, index="IVF16,Flat",
                              progress=False)
    assert len(pairs) > 1000 and _as_set(pairs) == _as_set(in_memory)


def test_groups_of_a_hand_made_graph():
    pairs = FramePairs(np.array([0, 1, 3, 5, 7, 8, 7]), np.array([1, 2, 4, 6, 8, 9, 9]),
                       np.array([0.9, 0.8, 0.95, 0.4, 0.7, 0.7, 0.7], np.float32))
    labels, reps = frame_groups(pairs, 11, min_score=0.5)
    # sizes 3, 3, 2; equal sizes ordered by first member; 5-6 is below the threshold
    assert labels.tolist() == [0, 0, 0, 2, 2, -1, -1, 1, 1, 1, -1]
    assert reps.tolist() == [1, 7, 3]  # 1: 0.9 + 0.8; the triangle and the pair tie: lowest position
    frames = pd.DataFrame({"frame_id": [f"f{p}" for p in range(11)], "video": list("aaabbccdddd"),
                           "timestamp_s": np.arange(11.0)})
    table = groups_table(labels, reps, frames)
    assert list(table.columns) == GROUP_COLUMNS
    assert table["frame_id"].tolist() == ["f0", "f1", "f2", "f7", "f8", "f9", "f3", "f4"]
    assert table["representative"].tolist() == ["f1"] * 3 + ["f7"] * 3 + ["f3"] * 2
    assert table["size"].tolist() == [3] * 6 + [2] * 2
    chain = FramePairs(np.arange(999), np.arange(1, 1000), np.full(999, 0.9, np.float32))
    labels, reps = frame_groups(chain, 1000, min_score=0.5)  # a long chain: one component
    assert (labels == 0).all() and reps.tolist() == [1]
    labels, reps = frame_groups(pairs, 11, min_score=0.99)
    assert (labels == -1).all() and len(reps) == 0 and groups_table(labels, reps, frames).empty


@pytest.mark.parametrize(("change", "message"), [
    ({"vectors": np.full((4, 8), np.nan, np.float32)}, "vectors: contains NaN"),
    ({"vectors": np.ones(8, np.float32)}, "vectors: expected a 2-d"),
    ({"vectors": np.ones((4, 8), np.float64)}, "vectors: expected float32 or float16"),
    ({"videos": np.zeros(3, int)}, "videos and times: expected shape"),
    ({"videos": np.zeros(4)}, "videos: expected integer"),
    ({"times": np.array([0, 1, np.nan, 2])}, "times: contains NaN"),
    ({"k": 0}, "k: expected an integer >= 1"),
    ({"min_score": 1.5}, r"min_score: expected a cosine in \[-1, 1\]"),
    ({"same_video_gap_s": -1.0}, "same_video_gap_s"),
    ({"index": "IVF-nonsense"}, "index: invalid FAISS factory string"),
])
def test_bad_input(change, message):
    args = {"vectors": _unit(np.random.default_rng(8).standard_normal((4, 8))), "videos": np.arange(4),
            "times": np.zeros(4), "k": 2, "min_score": 0.5, "same_video_gap_s": None, "index": "Flat"}
    args.update(change)
    with pytest.raises(ValueError, match=message):
        knn_self_join(args.pop("vectors"), args.pop("videos"), args.pop("times"), progress=False, **args)


def test_bad_pairs_for_groups():
    with pytest.raises(ValueError, match="pairs: frame positions"):
        frame_groups(FramePairs(np.array([0]), np.array([5]), np.array([0.9], np.float32)), 3, min_score=0.5)


def test_pca_ivf_factory_finds_the_copies_with_exact_scores():
    rng = np.random.default_rng(9)
    # a common component, as CNN descriptors have: FAISS's PCA centres it away, its scores fall far below cosines
    x = _unit(rng.standard_normal((2000, 32)) / np.sqrt(32) + _unit(np.ones((1, 32))))
    x[1800:] = _unit(x[:200] + 0.3 / np.sqrt(32) * rng.standard_normal((200, 32)))  # copies of frames 0..199
    videos = np.arange(2000) // 50
    assert np.median(x[:200] @ x[200:400].T) > 0.4
    pairs = knn_self_join(x, videos, np.zeros(2000), k=2, min_score=0.9, index="PCAR16,IVF4,SQ8", nprobe=4,
                          progress=False)
    assert {(c, 1800 + c) for c in range(200)} <= _as_set(pairs)
    np.testing.assert_allclose(pairs.score, np.einsum("ij,ij->i", x[pairs.i], x[pairs.j]), atol=1e-5)
