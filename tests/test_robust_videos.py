"""Issue #6, videos: every kind of bad or unusual video ends in one clear line or a correct result, the
rest of the batch goes on, and what the dataset already held is untouched. Both decoders are checked
(full decoding with OpenCV; ``--keyframes`` with PyAV). Test videos are made here with OpenCV and
ffmpeg, or cut from the real media in ``../shared/media``."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result
from conftest import REPO, require_ffmpeg, synthetic_frame, without_file_override

from framesim.cli import cli
from framesim.dataset import FrameDataset
from framesim.images import load_image

MakeVideo = Callable[..., Path]
MODES = pytest.mark.parametrize("keyframes", [False, True], ids=["decode", "keyframes"])


# -- helpers ---------------------------------------------------------------------------------------
def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def extract_cli(inputs: list[Path] | Path, root: Path, *options: str, keyframes: bool = False) -> Result:
    paths = inputs if isinstance(inputs, list) else [inputs]
    return invoke("extract", "-q", "-o", root, *(["--keyframes"] if keyframes else []), *options, *paths)


def snapshot(root: Path) -> tuple[list[dict], dict[str, str]]:
    """The manifest's rows and the sha256 of every file under frames/: what "nothing lost" compares."""
    rows = FrameDataset(root).manifest().sort_values("frame_id").to_dict("records")
    files = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((root / "frames").rglob("*")) if p.is_file()}
    return rows, files


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def ffmpeg(*args: str | Path, stdin: bytes | None = None) -> None:
    subprocess.run([require_ffmpeg(), "-v", "error", "-y", *map(str, args)], input=stdin, check=True,
                   capture_output=True)


def raw_frames(n: int, size: tuple[int, int] = (160, 120)) -> bytes:
    """Input for ffmpeg's rawvideo demuxer: synthetic BGR frames with their number drawn on them."""
    return b"".join(synthetic_frame(i, 0, size).tobytes() for i in range(n))


def h264(path: Path, n: int, *options: str, fps: int = 25, gop: int = 25) -> Path:
    ffmpeg("-f", "rawvideo", "-pix_fmt", "bgr24", "-s", "160x120", "-r", fps, "-i", "-", "-c:v", "libx264",
           "-g", gop, "-keyint_min", gop, "-sc_threshold", "0", "-pix_fmt", "yuv420p", *options, path,
           stdin=raw_frames(n))
    return path


def drawn_number(rgb: np.ndarray, candidates: range) -> int:
    """Which synthetic frame a stored frame shows (least mean absolute difference)."""
    bgr = rgb[..., ::-1].astype(np.float32)
    h, w = bgr.shape[:2]
    return min(candidates, key=lambda i: float(np.mean(np.abs(bgr - synthetic_frame(i, 0, (w, h))))))


def frames_of(root: Path, video: Path) -> pd.DataFrame:
    manifest = FrameDataset(root).manifest()
    return manifest[manifest["video"] == str(video)].sort_values("frame_index").reset_index(drop=True)


# -- files that cannot be used at all --------------------------------------------------------------
def _cut(source: Path, fraction: float, out: Path) -> Path:
    data = source.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


_TRUNCATED = (r"truncated MP4/MOV: it ends inside its 'mdat' box, before the index \(moov box\) that locates the "
              r"frames, at [\d,]+ of [\d,]+ bytes \(an interrupted download or copy\?\)")
Media = Callable[[], Path]


def _zero_bytes(folder: Path, media: Media) -> Path:
    (folder / "zero.mp4").write_bytes(b"")
    return folder / "zero.mp4"


def _random_bytes(folder: Path, media: Media) -> Path:
    (folder / "noise.mp4").write_bytes(np.random.default_rng(3).bytes(200_000))
    return folder / "noise.mp4"


def _cut_bikes(fraction: float) -> Callable[[Path, Media], Path]:
    def make(folder: Path, media: Media) -> Path:
        return _cut(media() / "videos" / "bikes.mp4", fraction, folder / f"bikes-{round(fraction * 100)}.mp4")

    return make


def _audio_only(folder: Path, media: Media) -> Path:
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", folder / "song.mp4")
    return folder / "song.mp4"


#: case -> (maker(folder, shared media) -> path, the reason the user reads, as a regex)
BAD_VIDEOS: dict[str, tuple[Callable[[Path, Media], Path], str]] = {
    "zero-bytes": (_zero_bytes, r"empty file \(0 bytes\)"),
    "random-bytes": (_random_bytes, r"not a video \(FFmpeg recognises no format in it, or the file is corrupt\)"),
    "cut-at-10%": (_cut_bikes(0.1), _TRUNCATED),
    "cut-at-50%": (_cut_bikes(0.5), _TRUNCATED),
    "cut-at-90%": (_cut_bikes(0.9), _TRUNCATED),
    "audio-only": (_audio_only, r"no video stream \(the file holds 1 audio stream\)"),
}


@MODES
@pytest.mark.parametrize("case", list(BAD_VIDEOS))
def test_unusable_video_fails_in_one_line_and_the_dataset_keeps_what_it_had(
        case: str, keyframes: bool, make_video: MakeVideo, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    make, reason = BAD_VIDEOS[case]
    (tmp_path / "bad").mkdir()
    bad = make(tmp_path / "bad", lambda: request.getfixturevalue("shared_media"))
    good = make_video("good.mp4", n_frames=30, fps=10)
    root = tmp_path / "ds"
    assert extract_cli(good, root, keyframes=keyframes).exit_code == 0
    before = snapshot(root)
    result = extract_cli([bad, good], root, keyframes=keyframes)
    assert result.exit_code == 1
    [line] = error_lines(result)  # one line, naming the file and the reason
    assert line.startswith(f"error: {bad}: ") and re.fullmatch(reason, line[len(f"error: {bad}: "):]), line
    assert f"1 video failed:\n  {bad}: " in result.stderr
    assert "0 frames added" in result.stdout and "from 1 video " in result.stdout  # the good one went on
    assert snapshot(root) == before


def test_unreadable_file_is_named_with_the_reason_and_the_batch_goes_on(make_video: MakeVideo) -> None:
    # Root may read any file whatever its mode, so as root the command runs without that power (see
    # without_file_override) to see what a user sees.
    with tempfile.TemporaryDirectory(prefix="framesim-perm-") as folder:
        work = Path(folder)
        os.chmod(work, 0o777)
        good = make_video("good.mp4", n_frames=20, fps=10).rename(work / "good.mp4")
        locked = make_video("locked.mp4", n_frames=25, fps=10).rename(work / "locked.mp4")
        for f in (good, locked):
            os.chmod(f, 0o644)
        os.chmod(locked, 0o000)
        proc = subprocess.run([sys.executable, "-m", "framesim", "extract", "-q", "-o", work / "ds", work],
                              capture_output=True, text=True, cwd=REPO,
                              preexec_fn=without_file_override if os.geteuid() == 0 else None)
        assert proc.returncode == 1, proc.stderr
        assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
            f"error: {locked}: cannot read (Permission denied)"]
        assert FrameDataset(work / "ds").manifest()["video"].unique().tolist() == [str(good)]


# -- files that can be used in part ----------------------------------------------------------------
@MODES
def test_truncated_video_keeps_the_frames_before_the_cut(keyframes: bool, tmp_path: Path) -> None:
    # With its index first (faststart) a cut MP4 still opens: the frames before the cut are stored
    # exactly as a full copy gives them, and the video is reported as broken off, not as done.
    full = h264(tmp_path / "full.mp4", 100, "-movflags", "+faststart", gop=10)
    cut = _cut(full, 0.5, tmp_path / "cut.mp4")
    options = ("--fps", "5")
    assert extract_cli(full, tmp_path / "full-ds", *options, keyframes=keyframes).exit_code == 0
    result = extract_cli(cut, tmp_path / "ds", *options, keyframes=keyframes)
    assert result.exit_code == 1
    [line] = error_lines(result)
    assert re.fullmatch(rf"error: {re.escape(str(cut))}: (decoded \d+ of 100 frames the header declares; decoding "
                        r"stopped at [\d.]+ s of 4\.00 s|the file ends at [\d.]+ s of the 4\.00 s its header "
                        r"declares) \(truncated or corrupt file\?\)", line), line
    kept, reference = frames_of(tmp_path / "ds", cut), frames_of(tmp_path / "full-ds", full)
    assert 3 <= len(kept) < len(reference)
    expected = reference[reference["frame_index"].isin(kept["frame_index"])]
    assert kept["frame_index"].tolist() == reference["frame_index"].tolist()[: len(kept)]
    assert kept["sha256"].tolist() == expected["sha256"].tolist()
    assert kept["timestamp_s"].tolist() == pytest.approx(expected["timestamp_s"].tolist())
    again = extract_cli(cut, tmp_path / "ds", *options, keyframes=keyframes)  # still broken: said again, no rows twice
    assert again.exit_code == 1 and "0 frames added" in again.stdout


@pytest.mark.slow
def test_header_that_lies_and_frames_that_do_not_decode(shared_media: Path, tmp_path: Path) -> None:
    videos = shared_media / "videos"
    # Megamind_bugy.avi: a broken header and a last frame whose timestamp is 0.0.
    result = extract_cli(videos / "Megamind_bugy.avi", tmp_path / "ds")
    assert result.exit_code == 0
    assert f"note: {videos / 'Megamind_bugy.avi'}: repaired 1 unusable stream timestamp(s)" in result.stderr
    times = frames_of(tmp_path / "ds", videos / "Megamind_bugy.avi")["timestamp_s"].to_numpy()
    assert len(times) == 10 and np.all(np.diff(times) > 0)
    assert np.abs(times - np.arange(10)).max() < 0.05  # one frame a second, on the stream's clock
    # tree.avi: the header declares 444 frames at 15 fps; 68 decode, spread over the same 29.5 s.
    result = extract_cli(videos / "tree.avi", tmp_path / "ds")
    assert result.exit_code == 0
    assert f"note: {videos / 'tree.avi'}: decoded 68 of 444 frames the header declares, over its whole " \
           "duration (variable frame rate or dropped frames)" in result.stderr
    times = frames_of(tmp_path / "ds", videos / "tree.avi")["timestamp_s"].to_numpy()
    assert len(times) == 30 and np.all(np.diff(times) > 0)
    assert np.abs(times - np.arange(30)).max() < 0.5  # frames are 0.43 s apart on average: the nearest


@MODES
def test_variable_frame_rate_uses_the_stream_clock(keyframes: bool, tmp_path: Path) -> None:
    # 10 frames at 5 fps (0-1.8 s), then 50 at 25 fps (2-3.96 s); the header's frame rate fits neither.
    video = h264(tmp_path / "vfr.mp4", 60, "-vf", "setpts='if(lt(N,10),N*0.2,2+(N-10)*0.04)/TB'",
                 "-fps_mode", "passthrough", gop=10)
    root = tmp_path / "ds"
    result = extract_cli(video, root, "--fps", "2", keyframes=keyframes)
    assert result.exit_code == 0, result.output
    rows = frames_of(root, video)
    if keyframes:  # keyframes every 10 frames (0, 2.0, 2.4, 2.8, 3.2, 3.6 s), kept if 0.5 s after the last kept
        expected = {0: 0.0, 10: 2.0, 30: 2.8, 50: 3.6}
    else:  # the first frame at or after each 0.5 s step
        expected = {0: 0.0, 3: 0.6, 5: 1.0, 8: 1.6, 10: 2.0, 23: 2.52, 35: 3.0, 48: 3.52}
    assert dict(zip(rows["frame_index"], rows["timestamp_s"], strict=True)) == pytest.approx(expected, abs=1e-3)
    for index, path in zip(rows["frame_index"], rows["path"], strict=True):
        assert drawn_number(load_image(FrameDataset(root).frame_path(path)), range(60)) == index


def test_repeated_timestamps_do_not_push_later_frames_out() -> None:
    # What libx264 + ffmpeg made of the clip above: a pts repeated where the frame rate changes.
    from framesim.video import TimestampRepair

    clock = TimestampRepair(25.0)
    raw = [0, 200, 400, 2000, 2040, 2080, 2080, 2160, 2200, 2240, 2240, 2320, 2360]
    out = [clock(ms) for ms in raw]
    assert all(b > a for a, b in zip(out, out[1:], strict=False))
    assert out[6] == pytest.approx(2.12) and out[10] == pytest.approx(2.28)  # the last interval, 40 ms, not 0.2 s
    assert out[-2:] == pytest.approx([2.32, 2.36]) and clock.repaired == 2  # back on the stream's clock


@pytest.mark.slow
@MODES
def test_8k_video(keyframes: bool, tmp_path: Path) -> None:
    video = tmp_path / "8k.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=0x2050F0:size=7680x4320:rate=5", "-frames:v", "3", "-c:v", "libx264",
           "-preset", "ultrafast", "-pix_fmt", "yuv420p", video)
    result = extract_cli(video, tmp_path / "ds", "--fps", "5", keyframes=keyframes)
    assert result.exit_code == 0, result.output
    rows = frames_of(tmp_path / "ds", video)
    assert len(rows) == (1 if keyframes else 3)
    assert (rows["width"].unique().tolist(), rows["height"].unique().tolist()) == ([7680], [4320])
    rgb = load_image(FrameDataset(tmp_path / "ds").frame_path(rows["path"][0]))
    assert rgb.shape == (4320, 7680, 3)
    assert np.abs(rgb.reshape(-1, 3).mean(axis=0) - (0x20, 0x50, 0xF0)).max() < 4


@MODES
def test_rotated_video_is_stored_as_it_is_shown(keyframes: bool, tmp_path: Path) -> None:
    plain = h264(tmp_path / "plain.mp4", 20)
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-i", plain, "-c", "copy", "-metadata:s:v:0", "rotate=90", rotated)  # a display matrix, pixels as before
    # The reference: the first frame as ffmpeg shows it (it applies the display matrix).
    shown = subprocess.run([require_ffmpeg(), "-v", "error", "-i", rotated, "-frames:v", "1", "-f", "rawvideo",
                            "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    result = extract_cli(rotated, tmp_path / "ds", keyframes=keyframes)
    assert result.exit_code == 0, result.output
    rows = frames_of(tmp_path / "ds", rotated)
    assert rows["frame_index"].tolist() == [0] and (rows["width"][0], rows["height"][0]) == (120, 160)
    rgb = load_image(FrameDataset(tmp_path / "ds").frame_path(rows["path"][0]))
    assert rgb.shape == (160, 120, 3) and len(shown) == rgb.size
    assert np.abs(rgb.astype(int) - np.frombuffer(shown, np.uint8).reshape(rgb.shape)).mean() < 6  # JPEG q95
    upright = synthetic_frame(0, 0, (160, 120))[..., ::-1]
    assert np.abs(rgb.astype(int) - np.rot90(upright, k=1)).mean() < 8  # turned, not just reshaped


# -- names -----------------------------------------------------------------------------------------
@pytest.fixture
def in_tmp(tmp_path: Path) -> Iterator[Path]:
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


@MODES
def test_names_with_a_leading_dash_spaces_and_unicode(keyframes: bool, make_video: MakeVideo, in_tmp: Path) -> None:
    names = ["-o x ünï 日本.mp4", "--help.mp4", "a'b\"c $(echo) %d;.mp4"]
    for n, name in enumerate(names):
        make_video(name, n_frames=15 + n, fps=10)
    # after "--" every word is a file; "./-name" works without it
    result = invoke("extract", "-q", "-o", "ds", *(["--keyframes"] if keyframes else []), "--", *names[:2],
                    f"./{names[2]}")
    assert result.exit_code == 0, result.output
    manifest = FrameDataset(in_tmp / "ds").manifest()
    assert sorted(manifest["video"].unique()) == sorted(names)  # as given, less the "./"
    assert manifest.groupby("video").size().tolist() == [2, 2, 2]  # 1 fps: 0 and 1 s; keyframes: 0 and 12
    assert all(FrameDataset(in_tmp / "ds").frame_path(p).is_file() for p in manifest["path"])
    assert not (in_tmp / "x").exists()  # "-o x" in a name was never read as an option


# -- a whole folder --------------------------------------------------------------------------------
@pytest.mark.slow
def test_whole_shared_folder_then_with_bad_files(shared_media: Path, tmp_path: Path) -> None:
    videos = shared_media / "videos"
    result = extract_cli(videos, tmp_path / "ds")
    assert result.exit_code == 0 and not error_lines(result) and "failed" not in result.stderr
    assert "from 6 videos" in result.stdout
    before = snapshot(tmp_path / "ds")
    (tmp_path / "more").mkdir()
    BAD_VIDEOS["zero-bytes"][0](tmp_path / "more", lambda: shared_media)
    BAD_VIDEOS["cut-at-50%"][0](tmp_path / "more", lambda: shared_media)
    result = extract_cli([videos, tmp_path / "more"], tmp_path / "ds")
    assert result.exit_code == 1
    summary = result.stderr[result.stderr.index("2 videos failed:"):].splitlines()
    assert [line.split(": ")[0].strip() for line in summary[1:]] == [
        str(tmp_path / "more" / "bikes-50.mp4"), str(tmp_path / "more" / "zero.mp4")]
    assert snapshot(tmp_path / "ds") == before
