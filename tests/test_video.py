"""Finding and decoding videos: synthetic clips with known content, broken files, the real media."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import synthetic_frame, write_avi

from framesim.keyframes import KeyframeReader
from framesim.video import VIDEO_EXTENSIONS, TimestampRepair, VideoError, VideoReader, find_videos


def truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def drawn_index(rgb: np.ndarray, candidates: range, scene: int = 0) -> int:
    """Which synthetic frame (by its drawn number) the decoded picture is closest to."""
    h, w = rgb.shape[:2]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.float32)
    errors = {i: float(np.mean(np.abs(bgr - synthetic_frame(i, scene, (w, h))))) for i in candidates}
    return min(errors, key=errors.__getitem__)


# -- find_videos -----------------------------------------------------------------------------------
def test_find_videos_recursive_case_insensitive_skips_hidden(tmp_path: Path) -> None:
    for rel in ["b.mp4", "a.AVI", "sub/c.MkV", "sub/deeper/d.webm", "notes.txt", "image.jpg",
                ".hidden.mp4", ".cache/e.mp4", "sub/.x/f.mp4"]:
        p = tmp_path / "media" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    media = tmp_path / "media"
    found = find_videos([media])
    assert [p.relative_to(media).as_posix() for p in found] == ["a.AVI", "b.mp4", "sub/c.MkV", "sub/deeper/d.webm"]
    # the path stays as the user gave it (relative parts kept)
    assert found[0] == media / "a.AVI"


def test_find_videos_keeps_explicit_files_and_drops_duplicates(tmp_path: Path) -> None:
    (tmp_path / "v.mp4").write_bytes(b"x")
    (tmp_path / "clip.dat").write_bytes(b"x")
    missing = tmp_path / "missing.mp4"
    found = find_videos([tmp_path / "clip.dat", missing, tmp_path, str(tmp_path / "v.mp4")])
    assert found == [tmp_path / "clip.dat", missing, tmp_path / "v.mp4"]


def test_video_extensions_are_lower_case_with_dot() -> None:
    assert {".mp4", ".avi", ".mkv", ".mov", ".webm"} <= VIDEO_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in VIDEO_EXTENSIONS)


# -- reading ---------------------------------------------------------------------------------------
def test_reader_indices_timestamps_and_pixels(make_video: Callable[..., Path]) -> None:
    path = make_video("v.mp4", n_frames=40, fps=25, size=(160, 120))
    seen = []
    with VideoReader(path) as video:
        assert (video.width, video.height, video.frame_count) == (160, 120, 40)
        assert video.fps == pytest.approx(25)
        for index, t in video:
            seen.append((index, t))
            if index in (0, 13, 39):
                rgb = video.retrieve()
                assert rgb.shape == (120, 160, 3) and rgb.dtype == np.uint8
                assert drawn_index(rgb, range(40)) == index
        assert video.ended and video.incomplete_reason() is None and video.header_note() is None
    assert [i for i, _ in seen] == list(range(40))
    assert [t for _, t in seen] == pytest.approx([i / 25 for i in range(40)], abs=1e-6)


def test_reader_retrieve_is_rgb(tmp_path: Path) -> None:
    path = tmp_path / "red.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for _ in range(3):
        writer.write(np.full((48, 64, 3), (0, 0, 255), np.uint8))  # BGR red
    writer.release()
    with VideoReader(path) as video:
        next(iter(video))
        r, g, b = video.retrieve().reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 40 and b < 40


def test_reader_iterates_once(make_video: Callable[..., Path]) -> None:
    with VideoReader(make_video(n_frames=3)) as video:
        assert len(list(video)) == 3
        with pytest.raises(RuntimeError):
            iter(video)


@pytest.mark.parametrize("reader", [VideoReader, KeyframeReader])
@pytest.mark.parametrize(("content", "reason"), [
    (b"", "empty file"),
    (np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes(), "not a video (FFmpeg recognises"),
])
def test_unreadable_files_raise_one_line_video_error(tmp_path: Path, content: bytes, reason: str,
                                                     reader: type) -> None:
    # Both decoders (OpenCV for sampling, PyAV for --keyframes) refuse the same way.
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError) as info:
        reader(path)
    message = str(info.value)
    assert message == f"{path}: {info.value.reason}" and reason in message and "\n" not in message


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="no such file"):
        VideoReader(tmp_path / "nope.mp4")
    with pytest.raises(VideoError, match="not a regular file"):
        VideoReader(tmp_path)


def test_truncated_video_is_reported_as_broken_off(tmp_path: Path,
                                                    make_truncated_avi: Callable[..., Path]) -> None:
    with VideoReader(write_avi(tmp_path / "full.avi", 100)) as video:
        assert sum(1 for _ in video) == 100 and video.incomplete_reason() is None
    half = make_truncated_avi("half.avi", 100, keep=0.5)
    with VideoReader(half) as video:
        n = sum(1 for _ in video)
        reason = video.incomplete_reason()
    assert 40 <= n <= 55
    assert reason is not None and f"decoded {n} of 100 frames the header declares" in reason


# -- timestamp repair ------------------------------------------------------------------------------
def test_timestamp_repair_keeps_good_values() -> None:
    clock = TimestampRepair(15.0)
    raw = [0.0, 733.337, 1133.339, 1600.008, 2066.677]  # tree.avi: variable, but fine
    assert [clock(r) for r in raw] == [r / 1000 for r in raw]
    assert clock.repaired == 0


def test_timestamp_repair_replaces_garbage_with_previous_plus_typical_interval() -> None:
    clock = TimestampRepair(30.0)
    # Megamind_bugy.avi: 33.3 ms steps, then 0.0 for the last frame
    raw = [33.333 * (i + 1) for i in range(10)] + [0.0]
    out = [clock(r) for r in raw]
    assert out[-1] == pytest.approx(out[-2] + 0.033333, abs=1e-4)
    assert clock.repaired == 1
    clock = TimestampRepair(25.0, declared_duration=10.0)
    out = [clock(r) for r in [0, 40, 40, float("nan"), -5, 1e12, 240, 280]]
    assert all(b > a for a, b in zip(out, out[1:], strict=False))
    assert out[:3] == pytest.approx([0, 0.04, 0.08])
    assert out[-2:] == pytest.approx([0.24, 0.28])  # back on the stream's clock once it is sane again
    assert clock.repaired == 4


def test_timestamp_repair_first_frame_and_no_header() -> None:
    clock = TimestampRepair()
    assert clock(float("-inf")) == 0.0 and clock(float("nan")) == pytest.approx(0.04)
    # without a declared duration a long gap cannot be proved wrong: kept
    clock = TimestampRepair(25.0)
    assert [clock(r) for r in [0, 40, 4_000_000]] == [0, 0.04, 4000]


# -- real media ------------------------------------------------------------------------------------
def test_real_media_decodes_with_increasing_timestamps(shared_media: Path) -> None:
    videos = find_videos([shared_media / "videos"])
    names = {p.name for p in videos}
    assert {"bikes.mp4", "tree.avi", "Megamind_bugy.avi", "bigbuckbunny.mp4"} <= names
    for path in videos:
        with VideoReader(path) as video:
            times = [t for _, t in video]
            assert video.ended and video.incomplete_reason() is None, path
        assert len(times) > 10, path
        assert all(math.isfinite(t) and t >= 0 for t in times), path
        assert all(b > a for a, b in zip(times, times[1:], strict=False)), path
        if path.name == "tree.avi":
            # the header says 444 frames at 15 fps; 68 decode, over the same ~29.5 s
            assert len(times) == 68 and video.frame_count == 444
            assert times[-1] == pytest.approx(29.53, abs=0.05)
            assert "decoded 68 of 444" in (video.header_note() or "")
        if path.name == "Megamind_bugy.avi":
            # the last frame reports 0.0 ms: repaired to previous + one interval
            assert len(times) == 270 and video.timestamps_repaired == 1
            assert times[-1] == pytest.approx(9.0, abs=1e-3)


def test_real_media_truncated_avi_is_broken_off(shared_media: Path, tmp_path: Path) -> None:
    cut = truncate(shared_media / "videos" / "tree.avi", tmp_path / "tree_cut.avi", 0.5)
    with VideoReader(cut) as video:
        n = sum(1 for _ in video)
        reason = video.incomplete_reason()
    assert 0 < n < 68 and reason is not None and f"decoded {n} of 444 frames" in reason
