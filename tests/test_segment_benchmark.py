"""The segment benchmark builder: query videos whose frames really are the truth's source frames.

The synthetic sources draw a barcode in their middle: 16 cells, a white and a black pilot and 14
bits holding the video number and the frame index, big enough to survive the edits that keep the
picture's geometry (and the two encodings on the way). Reading the barcode back from every frame of
every copied segment checks the truth's times frame by frame.
"""

from __future__ import annotations

import bisect
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import textured_image

from framesim.dataset import FrameDataset, extract
from framesim.evaluation.edits import EditContext
from framesim.evaluation.segment_benchmark import build_segment_benchmark
from framesim.evaluation.segment_compile import (
    VIDEO_EDITS,
    fit_rect,
    get_video_edits,
    ken_burns_frame,
    ken_burns_params,
    render,
)
from framesim.video import VideoReader

GRID_COLS, GRID_ROWS = 8, 2
GRID_X, GRID_Y = (0.2, 0.8), (0.35, 0.65)  # clear of caption bands (<= 20 %) and corner logos (<= 28 %)
INDEX_BITS = 11
#: edits that keep the barcode where it was (hflip mirrors it: read mirrored)
GEOMETRY_KEEPING = ["grayscale", "blur", "reencode", "noise", "hflip", "caption_logo", "brightness_contrast"]


def coded_frame(video_no: int, index: int, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    frame = cv2.cvtColor(textured_image(100 + video_no, (h, w)), cv2.COLOR_RGB2BGR)
    bits = [1] + [(video_no >> b) & 1 for b in range(3)] + [(index >> b) & 1 for b in range(INDEX_BITS)] + [0]
    cw, ch = (GRID_X[1] - GRID_X[0]) * w / GRID_COLS, (GRID_Y[1] - GRID_Y[0]) * h / GRID_ROWS
    for k, bit in enumerate(bits):
        r, c = divmod(k, GRID_COLS)
        x0, y0 = GRID_X[0] * w + c * cw, GRID_Y[0] * h + r * ch
        cv2.rectangle(frame, (round(x0), round(y0)), (round(x0 + cw) - 1, round(y0 + ch) - 1),
                      (255, 255, 255) if bit else (0, 0, 0), -1)
    return frame


def write_coded_video(path: Path, video_no: int, n_frames: int, fps: float, size: tuple[int, int]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for i in range(n_frames):
        writer.write(coded_frame(video_no, i, size))
    writer.release()
    return path


def read_code(rgb: np.ndarray, rect: tuple[int, int, int, int], mirrored: bool) -> tuple[int, int] | None:
    """(video number, frame index) from the barcode inside ``rect`` of a query frame, or None when
    there is none (pilots too alike, or a cell that is neither white nor black)."""
    x, y, w, h = rect
    grey = cv2.cvtColor(rgb[y:y + h, x:x + w], cv2.COLOR_RGB2GRAY).astype(np.float32)
    if mirrored:
        grey = grey[:, ::-1]
    cw, ch = (GRID_X[1] - GRID_X[0]) * w / GRID_COLS, (GRID_Y[1] - GRID_Y[0]) * h / GRID_ROWS
    means = []
    for k in range(GRID_COLS * GRID_ROWS):
        r, c = divmod(k, GRID_COLS)
        cx, cy = GRID_X[0] * w + (c + 0.5) * cw, GRID_Y[0] * h + (r + 0.5) * ch
        means.append(grey[round(cy - ch / 4):round(cy + ch / 4), round(cx - cw / 4):round(cx + cw / 4)].mean())
    white, black = means[0], means[-1]
    if white - black < 30:
        return None
    if any(min(abs(m - white), abs(m - black)) > 0.25 * (white - black) for m in means):
        return None  # a cell neither white nor black: no barcode here
    bits = [int(m > (white + black) / 2) for m in means[1:-1]]
    return sum(b << i for i, b in enumerate(bits[:3])), sum(b << i for i, b in enumerate(bits[3:]))


def decode_all(path: Path) -> tuple[list[float], list[np.ndarray]]:
    ts, frames = [], []
    with VideoReader(path) as reader:
        for _, t in reader:
            ts.append(t)
            frames.append(reader.retrieve())
    return ts, frames


def timestamps(path: Path) -> list[float]:
    with VideoReader(path) as reader:
        return [t for _, t in reader]


@pytest.fixture(scope="module")
def coded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three coded sources (4:3 at 25 fps, 16:9 at 30 fps, 4:3 at 25 fps) extracted at 2 fps, and a
    folder of filler photos."""
    root = tmp_path_factory.mktemp("segments")
    specs = [(0, 250, 25.0, (192, 144)), (1, 180, 30.0, (256, 144)), (2, 200, 25.0, (160, 120))]
    videos = {no: write_coded_video(root / f"coded{no}.mp4", no, n, fps, size) for no, n, fps, size in specs}
    extract([str(v) for v in videos.values()], root / "ds", fps=2, progress=False)
    photos = root / "photos"
    photos.mkdir()
    for k in range(3):
        cv2.imwrite(str(photos / f"p{k}.jpg"), textured_image(500 + k, (300, 400)))
    return {"root": root, "videos": videos, "sizes": {no: size for no, _, _, size in specs}, "ds": root / "ds",
            "photos": photos}


def test_query_frames_are_the_truths_edited_source_frames(coded: dict, tmp_path: Path) -> None:
    fps, size = 12.0, (480, 270)
    bench = build_segment_benchmark(coded["ds"], tmp_path / "bench", n_queries=2, n_copy_free=1,
                                    segments_per_query=4, min_len_s=2.0, max_len_s=3.0, edits=GEOMETRY_KEEPING,
                                    filler=[coded["photos"]], seed=3, size=size, fps=fps, progress=False)
    truth = bench.truth
    assert len(truth) == 8 and list(truth.columns) == ["query", "start_q", "end_q", "video", "start_v", "end_v",
                                                       "edit", "params"]
    no_of = {str(p): no for no, p in coded["videos"].items()}
    source_ts = {no: timestamps(p) for no, p in coded["videos"].items()}
    checked = 0
    for query, rows in truth.groupby("query"):
        ts, frames = decode_all(Path(query))
        assert len(ts) == round(bench.info["queries"][[q["query"] for q in bench.info["queries"]].index(query)]
                                ["duration_s"] * fps)
        for row in rows.itertuples():
            no = no_of[row.video]
            assert 2.0 - 1e-6 <= row.end_q - row.start_q <= 3.0 + 1e-6
            assert 2.0 - 1e-6 <= row.end_v - row.start_v <= 3.0 + 1e-6
            rect = fit_rect(*coded["sizes"][no], *size)
            first, last = round(row.start_q * fps), round(row.end_q * fps)
            for k in range(first, last):
                t_v = row.start_v + (k / fps - row.start_q)
                expected = bisect.bisect_right(source_ts[no], t_v + 1e-6) - 1
                got = read_code(frames[k], rect, mirrored=row.edit == "hflip")
                assert got == (no, expected), (row.edit, query, k, got, expected)
                checked += 1
            # the frames just outside the segment are filler, not this video
            for k in (first - 1, last):
                if 0 <= k < len(frames):
                    assert read_code(frames[k], rect, row.edit == "hflip") not in [(no, i) for i in range(250)]
    assert checked > 8 * 2 * fps * 0.99
    assert len(bench.copy_free) == 1 and bench.copy_free[0] not in set(map(Path, truth["query"]))
    assert bench.copy_free[0].is_file() and len(bench.queries) == 3
    assert set(truth["video"]) <= set(bench.indexed_videos)


def test_balanced_edits_copy_free_queries_and_determinism(coded: dict, tmp_path: Path) -> None:
    kwargs = dict(n_queries=4, n_copy_free=2, segments_per_query=3, min_len_s=2.0, max_len_s=2.5,
                  filler=[coded["photos"]], size=(160, 90), fps=10.0, encoder="opencv", progress=False)
    a = build_segment_benchmark(coded["ds"], tmp_path / "a", seed=7, **kwargs)
    b = build_segment_benchmark(coded["ds"], tmp_path / "b", seed=7, **kwargs)
    c = build_segment_benchmark(coded["ds"], tmp_path / "c", seed=8, **kwargs)
    counts = a.truth["edit"].value_counts()
    assert set(counts.index) == set(VIDEO_EDITS) and counts.max() - counts.min() <= 1 and counts.sum() == 12
    assert len(a.copy_free) == 2 and len(a.queries) == 6
    assert not set(map(str, a.copy_free)) & set(a.truth["query"])
    for q in a.info["queries"]:
        kinds = [p["kind"] for p in q["pieces"]]
        assert kinds == (["filler"] * len(kinds) if q["copy_free"] else ["filler", "segment"] * 3 + ["filler"])

    def relative(bench) -> pd.DataFrame:
        return bench.truth.assign(query=[Path(q).name for q in bench.truth["query"]])

    pd.testing.assert_frame_equal(relative(a), relative(b))
    assert [p.read_bytes() for p in a.queries] == [p.read_bytes() for p in b.queries]
    assert not relative(a).equals(relative(c))
    saved = json.loads((a.root / "segment_benchmark.json").read_text())
    assert saved["counts"] == {"queries": 6, "copy_free": 2, "segments": 12, "dropped_segments": 0}
    pd.testing.assert_frame_equal(pd.read_csv(a.root / "segments_truth.csv", keep_default_na=False), a.truth,
                                  check_dtype=False)
    # spans of one query never overlap in a source
    for _, rows in a.truth.groupby(["query", "video"]):
        spans = sorted(zip(rows["start_v"], rows["end_v"], strict=True))
        assert all(e <= s2 + 1e-9 for (_, e), (s2, _) in zip(spans, spans[1:], strict=False))


def test_without_filler_held_out_videos_and_duplicates_are_left_out(coded: dict, tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    copy = tmp_path / "coded0_copy.mp4"  # a re-encode of coded0: a near-duplicate
    with VideoReader(coded["videos"][0]) as reader:
        writer = cv2.VideoWriter(str(copy), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (96, 72))
        for _ in reader:
            writer.write(cv2.resize(reader.retrieve_bgr(), (96, 72), interpolation=cv2.INTER_AREA))
        writer.release()
    extract([str(p) for p in coded["videos"].values()] + [str(copy)], ds, fps=2, progress=False)
    bench = build_segment_benchmark(ds, tmp_path / "bench", n_queries=2, n_copy_free=1, segments_per_query=2,
                                    min_len_s=2.0, max_len_s=2.5, size=(160, 90), fps=10.0, encoder="opencv",
                                    progress=False)
    held = bench.info["held_out_videos"]
    assert len(held) == 1 and bench.info["duplicate_videos"] == {str(copy): str(coded["videos"][0])}
    assert set(bench.excluded) == {str(copy), *held}
    assert not set(bench.excluded) & set(bench.indexed_videos)
    assert set(bench.truth["video"]) <= set(bench.indexed_videos) and len(bench.truth) == 4
    fillers = {p["source"] for q in bench.info["queries"] for p in q["pieces"] if p["kind"] == "filler"}
    assert fillers == set(held)
    vids = FrameDataset(ds).manifest().drop_duplicates("video").set_index("video")["video_id"]
    assert bench.exclude_video_ids == sorted(vids[v] for v in bench.excluded)


def test_video_edits_are_constant_over_a_clip() -> None:
    a, b = textured_image(1, (144, 192)), textured_image(2, (144, 192))
    for edit in get_video_edits():
        out_a, params_a = render(a, edit, (0, 2, 5), EditContext(), (480, 270))
        out_b, params_b = render(b, edit, (0, 2, 5), EditContext(), (480, 270))
        again, _ = render(a, edit, (0, 2, 5), EditContext(), (480, 270))
        other, params_other = render(a, edit, (0, 2, 6), EditContext(), (480, 270))
        assert params_a == params_b and out_a.shape == out_b.shape == (270, 480, 3), edit.name
        assert np.array_equal(out_a, again), edit.name  # re-seeded per frame: the same frame renders the same
        assert params_other != params_a or not params_a, edit.name  # another segment, another draw
    pad = get_video_edits(["pad"])[0]
    bars = [render(img, pad, (1, 2, 3), EditContext(), (480, 270))[0].max(axis=2) == 0 for img in (a, b)]
    assert bars[0].mean() > 0.2 and np.array_equal(bars[0], bars[1])  # the same bars on every frame
    with pytest.raises(ValueError, match="unknown edit"):
        get_video_edits(["smudge"])


def test_filler_videos_are_cut_into_pieces(coded: dict, tmp_path: Path) -> None:
    extra = write_coded_video(tmp_path / "other.mp4", 5, 150, 25.0, (192, 144))  # in no indexed video
    size = (320, 180)
    bench = build_segment_benchmark(coded["ds"], tmp_path / "bench", n_queries=1, n_copy_free=1,
                                    segments_per_query=2, min_len_s=2.0, max_len_s=2.5, edits=["grayscale", "blur"],
                                    filler=[extra], size=size, fps=10.0, encoder="opencv", progress=False)
    assert bench.info["filler"]["videos"] == 1 and bench.info["filler"]["images"] == 0
    rect = fit_rect(192, 144, *size)
    for q in bench.info["queries"]:
        _, frames = decode_all(Path(q["query"]))
        pieces = [p for p in q["pieces"] if p["kind"] == "filler"]
        assert pieces and {p["source"] for p in pieces} == {str(extra)}
        for p in pieces:
            codes = [read_code(frames[k], rect, False) for k in range(round(p["start_q"] * 10), round(p["end_q"] * 10))]
            assert {c[0] for c in codes if c} == {5} and len([c for c in codes if c]) == len(codes)
            indices = [c[1] for c in codes if c]
            assert indices == sorted(indices) and indices[0] == round(p["start_s"] * 25)  # a cut, played forward


def test_ken_burns_moves_over_the_still() -> None:
    img = textured_image(3, (300, 400))
    params = ken_burns_params(np.random.default_rng(0))
    first, last = ken_burns_frame(img, params, 0.0, 160, 90), ken_burns_frame(img, params, 1.0, 160, 90)
    assert first.shape == last.shape == (90, 160, 3)
    assert np.abs(first.astype(int) - last.astype(int)).mean() > 10


def test_bad_input_is_one_clear_value_error(coded: dict, tmp_path: Path) -> None:
    small = dict(n_queries=1, n_copy_free=0, segments_per_query=1, size=(160, 90), progress=False)
    with pytest.raises(ValueError, match="no frames"):
        build_segment_benchmark(tmp_path / "empty", tmp_path / "o", **small)
    one = tmp_path / "one"
    extract([str(coded["videos"][0])], one, fps=2, progress=False)
    with pytest.raises(ValueError, match="one video .* no filler"):
        build_segment_benchmark(one, tmp_path / "o", **small)
    with pytest.raises(ValueError, match="sources too short"):
        build_segment_benchmark(one, tmp_path / "o", filler=[coded["photos"]], min_len_s=20, max_len_s=30,
                                **small)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="filler image unreadable"):
        build_segment_benchmark(one, tmp_path / "o", filler=[broken], **small)
    with pytest.raises(ValueError, match="filler video is the dataset's video"):
        build_segment_benchmark(one, tmp_path / "o", filler=[coded["videos"][0]], **small)
    with pytest.raises(ValueError, match="filler path does not exist"):
        build_segment_benchmark(one, tmp_path / "o", filler=[tmp_path / "nowhere"], **small)
    with pytest.raises(ValueError, match="size must be"):
        build_segment_benchmark(one, tmp_path / "o", filler=[coded["photos"]], **{**small, "size": (161, 90)})
    with pytest.raises(ValueError, match="min_len_s <= max_len_s"):
        build_segment_benchmark(one, tmp_path / "o", filler=[coded["photos"]], min_len_s=5, max_len_s=3, **small)


@pytest.mark.slow
def test_real_media_gives_20_segments_under_6_edits(shared_media: Path, tmp_path: Path) -> None:
    extract([str(shared_media / "videos")], tmp_path / "ds", fps=2, progress=False)
    t0 = time.perf_counter()
    bench = build_segment_benchmark(tmp_path / "ds", tmp_path / "bench", filler=[shared_media / "images"],
                                    progress=False)
    seconds = time.perf_counter() - t0
    truth = bench.truth
    lengths_q, lengths_v = truth["end_q"] - truth["start_q"], truth["end_v"] - truth["start_v"]
    assert len(truth) >= 20 and lengths_q.between(2 - 1e-6, 8 + 1e-6).all() and lengths_v.between(2 - 1e-6,
                                                                                                   8 + 1e-6).all()
    assert truth["edit"].nunique() >= 6 and len(bench.copy_free) >= 3
    assert str(shared_media / "videos" / "carphone_distorted.mp4") in bench.excluded
    assert set(truth["video"]) <= set(bench.indexed_videos)
    for q in bench.queries:
        with VideoReader(q) as reader:
            n = sum(1 for _ in reader)
            assert (reader.width, reader.height) == (480, 270) and n > 24 * 5
    print(f"segment benchmark on the shared media: {len(truth)} segments, {len(bench.queries)} queries, "
          f"{seconds:.1f} s")


def test_segments_that_fill_their_whole_stretch_are_planned() -> None:
    """A source exactly as long as k segments of min length need: each segment takes its whole stretch, and
    float rounding must not make the range of its start negative (it did for some start times)."""
    from framesim.evaluation.segment_plan import SNAP_MARGIN_S, Source, plan_segments

    rng = np.random.default_rng(0)
    for t0 in rng.uniform(0, 100, 200):
        src = Source("v.mp4", "id", float(t0), float(t0) + 3 * (2.0 + SNAP_MARGIN_S) + 1e-6)
        plan = plan_segments([src], n_queries=1, per_query=3, min_len=2.0, max_len=8.0, rng=rng)
        starts = sorted(p.start_s for p in plan[0])
        assert len(starts) == 3 and all(src.t0 - 1e-9 <= s <= src.t1 for s in starts)
