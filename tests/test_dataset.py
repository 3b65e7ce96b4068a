"""extract() and FrameDataset: sampling end to end, the manifest contract, reruns, resume, locking,
failures. Synthetic videos give exact answers; the real media covers codecs and broken headers."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_frame

import framesim.frame_writer as frame_writer_mod
import framesim.video_run as video_run_mod
from framesim.dataset import (
    MANIFEST_COLUMNS,
    DatasetLockedError,
    ExtractSummary,
    FrameDataset,
    extract,
    safe_stem,
)
from framesim.images import load_image, pixel_sha256
from framesim.sampling import DEFAULT_SCENE_THRESHOLD, SceneSampler

REPO = Path(__file__).resolve().parents[1]
MakeVideo = Callable[..., Path]


def run(inputs: list[Path] | Path, root: Path, **kwargs: object) -> ExtractSummary:
    kwargs.setdefault("progress", False)
    return extract([inputs] if isinstance(inputs, Path) else inputs, root, **kwargs)  # type: ignore[arg-type]


def indices(root: Path) -> list[int]:
    return FrameDataset(root).manifest()["frame_index"].tolist()


def drawn_index(rgb: np.ndarray, candidates: range, scene: int) -> int:
    """Which synthetic frame (by the number drawn on it) a decoded picture is closest to."""
    import cv2

    h, w = rgb.shape[:2]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.float32)
    errors = {i: float(np.mean(np.abs(bgr - synthetic_frame(i, scene, (w, h))))) for i in candidates}
    return min(errors, key=errors.__getitem__)


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in (root / "frames").rglob("*") if p.is_file()}


# -- sampling end to end ---------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "expected"), [
    (dict(), [0, 25, 50, 75, 100, 125]),                        # fps=1 is the default
    (dict(fps=2.5), list(range(0, 130, 10))),
    (dict(every=7), list(range(0, 130, 7))),
    (dict(fps=1, every=7), list(range(0, 130, 7))),             # every beats the fps default
    (dict(fps=1, start=1.0, end=4.0), [25, 50, 75]),            # start <= t < end
    (dict(fps=1, start=1.5), [38, 63, 88, 113]),                # the fps clock starts at start
    (dict(fps=1, max_frames=2), [0, 25]),
    (dict(every=10, start=2.0, max_frames=3), [50, 60, 70]),
])
def test_sampling_picks_the_right_frames(make_video: MakeVideo, tmp_path: Path, options: dict,
                                         expected: list[int]) -> None:
    video = make_video("v.mp4", n_frames=130, fps=25)
    summary = run(video, tmp_path / "ds", **options)
    assert summary.ok and summary.frames_added == len(expected)
    manifest = FrameDataset(tmp_path / "ds").manifest()
    assert manifest["frame_index"].tolist() == expected
    assert manifest["timestamp_s"].tolist() == pytest.approx([i / 25 for i in expected], abs=1e-6)


def test_frames_show_the_right_picture_and_hash_matches_png(make_video: MakeVideo, tmp_path: Path) -> None:
    video = make_video("v.mp4", n_frames=60, fps=25)
    root = tmp_path / "ds"
    run(video, root, every=20, image_format="png")
    ds = FrameDataset(root)
    manifest = ds.manifest()
    assert manifest["frame_index"].tolist() == [0, 20, 40]
    for row in manifest.itertuples():
        assert row.path.endswith(".png")
        rgb = load_image(ds.frame_path(row.path))
        assert rgb.shape == (row.height, row.width, 3) == (120, 160, 3)
        assert pixel_sha256(rgb) == row.sha256  # PNG is lossless: file pixels == decoded pixels
        assert drawn_index(rgb, range(60), scene=0) == row.frame_index


def test_scene_mode_keeps_exactly_the_cuts(make_video: MakeVideo, tmp_path: Path) -> None:
    cuts = (0, 30, 55, 90)
    video = make_video("cuts.mp4", n_frames=120, fps=25, scene_starts=cuts)
    root = tmp_path / "ds"
    summary = run(video, root, scene=0.1)
    ds = FrameDataset(root)
    manifest = ds.manifest()
    assert summary.ok and manifest["frame_index"].tolist() == list(cuts)
    for scene, row in enumerate(manifest.itertuples()):
        assert drawn_index(load_image(ds.frame_path(row.path)), range(120), scene) == row.frame_index
    # a start inside a scene keeps its first frame in range
    run(video, tmp_path / "ds2", scene=0.1, start=1.0)
    assert indices(tmp_path / "ds2") == [25, 30, 55, 90]


def test_scene_default_threshold(make_video: MakeVideo, tmp_path: Path) -> None:
    video = make_video("cuts.mp4", n_frames=100, fps=25, scene_starts=(0, 40, 70))
    run(video, tmp_path / "ds", fps=None, scene=DEFAULT_SCENE_THRESHOLD)
    assert indices(tmp_path / "ds") == [0, 40, 70]
    with pytest.raises(ValueError, match="every and scene"):
        run(video, tmp_path / "ds", every=5, scene=0.1)


# -- the manifest contract -------------------------------------------------------------------------
def test_manifest_columns_dtypes_files_and_csv(make_video: MakeVideo, tmp_path: Path) -> None:
    videos = [make_video("a.mp4", n_frames=60), make_video("b.mp4", n_frames=30, size=(96, 64))]
    root = tmp_path / "ds"
    run(videos, root)
    ds = FrameDataset(root)
    manifest = ds.manifest()
    assert list(manifest.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert list(manifest.columns) == MANIFEST_COLUMNS + ["video_id"]
    for col in ("frame_index", "width", "height"):
        assert manifest[col].dtype == np.int64
    assert manifest["timestamp_s"].dtype == np.float64
    for col in ("frame_id", "video", "path", "sha256", "video_id"):
        assert pd.api.types.is_string_dtype(manifest[col]) and all(isinstance(v, str) for v in manifest[col])
    assert manifest["frame_id"].is_unique
    assert manifest["video"].tolist() == [str(videos[0])] * 3 + [str(videos[1])] * 2
    assert manifest[["width", "height"]].drop_duplicates().values.tolist() == [[160, 120], [96, 64]]
    for row in manifest.itertuples():
        assert re.fullmatch(r"frames/[\w.-]+-[0-9a-f]{8}/\d{8}\.jpg", row.path)
        assert row.frame_id == row.path[len("frames/"):-len(".jpg")]
        assert row.frame_id.endswith(f"/{row.frame_index:08d}")
        assert ds.frame_path(row.path).is_file()
        assert len(row.sha256) == 64 and row.video_id.startswith(row.frame_id.split("/")[0][-8:])
    # on disk: parquet and CSV hold the same table
    on_disk = pd.read_parquet(root / "manifest.parquet")
    pd.testing.assert_frame_equal(on_disk, manifest)
    csv = pd.read_csv(root / "manifest.csv")
    assert list(csv.columns) == list(manifest.columns)
    assert csv["frame_id"].tolist() == manifest["frame_id"].tolist()
    assert csv["timestamp_s"].tolist() == manifest["timestamp_s"].tolist()
    assert not list((root / "state" / "pending").glob("*.parquet"))  # consolidated at the end


def test_frame_files_get_the_usual_mode_and_no_temp_files_remain(make_video: MakeVideo, tmp_path: Path) -> None:
    old_umask = os.umask(0o027)
    try:
        run(make_video(n_frames=60), tmp_path / "ds", every=10)
        assert os.umask(0o027) == 0o027  # the run left the process umask as it was
    finally:
        os.umask(old_umask)
    images = [f for f in (tmp_path / "ds" / "frames").rglob("*") if f.is_file()]
    assert len(images) == 6 and all(f.suffix == ".jpg" and not f.name.startswith(".") for f in images)
    assert {stat.S_IMODE(f.stat().st_mode) for f in images} == {0o640}  # 0o666 & ~umask, like open()


def test_empty_dataset_manifest_has_the_columns(tmp_path: Path) -> None:
    manifest = FrameDataset(tmp_path / "nothing").manifest()
    assert manifest.empty and list(manifest.columns[:8]) == MANIFEST_COLUMNS
    assert manifest["frame_index"].dtype == np.int64 and manifest["timestamp_s"].dtype == np.float64


def test_frame_path_stays_inside_the_dataset(tmp_path: Path) -> None:
    ds = FrameDataset(tmp_path)
    assert ds.frame_path("frames/a-1/00000001.jpg") == (tmp_path / "frames/a-1/00000001.jpg").absolute()
    for bad in ("../etc/passwd", "/etc/passwd", "frames/../../x.jpg", "", "frames\\..\\x"):
        with pytest.raises(ValueError):
            ds.frame_path(bad)


def test_hostile_and_unusual_file_names(make_video: MakeVideo, tmp_path: Path) -> None:
    names = ["<img src=x onerror=alert(1)>.mp4", "with space & quote'.mp4", "-leading-dash.mp4",
             "ünïcødé 日本.MP4", ".hidden.mp4"]
    for n, name in enumerate(names):
        make_video(f"in/{name}", n_frames=5 + n)  # different content: identical files are one video
    summary = run(tmp_path / "in", tmp_path / "ds")
    assert summary.ok and len(summary.videos_done) == 4  # the hidden one is skipped in a folder
    manifest = FrameDataset(tmp_path / "ds").manifest()
    assert sorted(Path(v).name for v in manifest["video"]) == sorted(names[:4])
    folders = {p.split("/")[1] for p in manifest["path"]}
    assert len(folders) == 4
    for folder in folders:
        assert re.fullmatch(r"\w[\w.-]*-[0-9a-f]{8}", folder), folder
        assert not folder.startswith(("-", ".")) and "<" not in folder and " " not in folder
    assert any(f.startswith("ünïcødé_日本-") for f in folders)
    assert safe_stem("<img src=x onerror=alert(1)>") == "img_src_x_onerror_alert_1"
    assert safe_stem("---") == "video" and len(safe_stem("é" * 500).encode()) <= 100


# -- reruns and identity ---------------------------------------------------------------------------
def test_rerun_adds_nothing_and_same_content_elsewhere_is_the_same_video(make_video: MakeVideo,
                                                                         tmp_path: Path) -> None:
    video = make_video("v.mp4", n_frames=80)
    root = tmp_path / "ds"
    first = run(video, root)
    files = files_under(root)
    before = FrameDataset(root).manifest()
    again = run(video, root)
    assert (again.frames_added, again.frames_existing, again.frames_decoded) == (0, 4, 0)
    assert again.videos_done == [str(video)]
    copy = tmp_path / "elsewhere" / "renamed.mp4"
    copy.parent.mkdir()
    copy.write_bytes(video.read_bytes())
    third = run([copy, video], root)
    assert third.frames_added == 0 and third.frames_existing == 8
    pd.testing.assert_frame_equal(FrameDataset(root).manifest(), before)
    assert files_under(root) == files and first.frames_added == 4


def test_other_sampling_spec_adds_only_new_frames(make_video: MakeVideo, tmp_path: Path) -> None:
    video = make_video("v.mp4", n_frames=130)
    root = tmp_path / "ds"
    run(video, root, fps=1)
    summary = run(video, root, every=10)
    assert summary.frames_added == 10 and summary.frames_existing == 3  # 0, 50, 100 were there
    assert indices(root) == sorted(set(range(0, 130, 25)) | set(range(0, 130, 10)))
    assert FrameDataset(root).manifest()["frame_id"].is_unique


def test_max_frames_then_full_run_equals_full_run(make_video: MakeVideo, tmp_path: Path) -> None:
    video = make_video("v.mp4", n_frames=130)
    run(video, tmp_path / "full", every=5)
    first = run(video, tmp_path / "ds", every=5, max_frames=7)
    assert first.frames_added == 7
    second = run(video, tmp_path / "ds", every=5)
    assert (second.frames_added, second.frames_existing) == (19, 7)
    pd.testing.assert_frame_equal(FrameDataset(tmp_path / "ds").manifest(), FrameDataset(tmp_path / "full").manifest())


def test_lost_manifest_rows_are_rebuilt(make_video: MakeVideo, tmp_path: Path) -> None:
    video = make_video("v.mp4", n_frames=60)
    root = tmp_path / "ds"
    run(video, root)
    before = FrameDataset(root).manifest()
    (root / "manifest.parquet").unlink()
    (root / "manifest.csv").unlink()
    again = run(video, root)  # the state says done, but the rows are gone: redo
    assert again.frames_added == 3
    pd.testing.assert_frame_equal(FrameDataset(root).manifest(), before)


def test_pending_chunks_are_deduplicated(make_video: MakeVideo, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    run(make_video("v.mp4", n_frames=60), root)
    ds = FrameDataset(root)
    before = ds.manifest()
    ds.append(before.iloc[1:])  # as if a crash hit between writing manifest.parquet and removing chunks
    pd.testing.assert_frame_equal(ds.manifest(), before)
    with ds.lock():
        ds.consolidate()
    assert not list((root / "state" / "pending").glob("*.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(root / "manifest.parquet"), before)


# -- interruption and resume -----------------------------------------------------------------------
class Stop(KeyboardInterrupt):
    pass


def interrupt_at(event: str, n: int) -> Callable[[str], None]:
    count = 0

    def hook(name: str) -> None:
        nonlocal count
        if name == event:
            count += 1
            if count == n:
                raise Stop

    return hook


@pytest.mark.parametrize(("options", "chunk", "event", "n"), [
    (dict(every=3), 4, "chunk_flushed", 2),  # right after a chunk is on disk
    (dict(every=3), 4, "frame_saved", 11),   # images written, their rows not yet
    (dict(scene=0.1), 2, "chunk_flushed", 2),  # scene mode resumes from its saved state
])
def test_interrupted_run_resumes_to_the_same_result(make_video: MakeVideo, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, options: dict,
                                                    chunk: int, event: str, n: int) -> None:
    monkeypatch.setattr(video_run_mod, "CHUNK_ROWS", chunk)
    video = make_video("v.mp4", n_frames=60, scene_starts=(0, 12, 20, 33, 41, 50))
    run(video, tmp_path / "full", **options)
    expected = FrameDataset(tmp_path / "full").manifest()

    root = tmp_path / "ds"
    monkeypatch.setattr(frame_writer_mod, "_test_hook", interrupt_at(event, n))
    with pytest.raises(Stop):
        run(video, root, **options)
    monkeypatch.setattr(frame_writer_mod, "_test_hook", None)
    partial = FrameDataset(root).manifest()
    assert 0 < len(partial) < len(expected)
    state = FrameDataset(root).video_state(partial["video_id"][0])
    assert state is not None and next(iter(state["runs"].values()))["status"] == "partial"

    record = next(iter(state["runs"].values()))
    looked_at: list[int] = []
    original_keep = SceneSampler.keep

    def spy(self: SceneSampler, index: int, t: float, thumb: np.ndarray) -> bool:
        looked_at.append(index)
        return original_keep(self, index, t, thumb)

    monkeypatch.setattr(SceneSampler, "keep", spy)
    resumed = run(video, root, **options)
    assert resumed.frames_added == len(expected) - len(partial)
    assert resumed.frames_existing == len(partial)
    if "scene" in options:  # resumed from the saved sampler state, not replayed from frame 0
        assert record["sampler_state"]["ref"] is not None
        assert looked_at and min(looked_at) == record["last_index"] + 1
    pd.testing.assert_frame_equal(FrameDataset(root).manifest(), expected)
    assert files_under(root) == files_under(tmp_path / "full")


CHILD = textwrap.dedent("""
    import os, signal, sys
    import framesim.dataset as d, framesim.frame_writer as w, framesim.video_run as v
    video, root, event, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    v.CHUNK_ROWS = 10
    seen = 0
    def hook(name):
        global seen
        if name == event:
            seen += 1
            if seen == n:
                os.kill(os.getpid(), signal.SIGKILL)
    w._test_hook = hook
    d.extract([video], root, every=2, progress=False)
""")


@pytest.mark.parametrize(("event", "n"), [("chunk_flushed", 2), ("frame_saved", 25)])
def test_sigkill_mid_run_then_rerun_equals_uninterrupted(make_video: MakeVideo, tmp_path: Path,
                                                         event: str, n: int) -> None:
    video = make_video("v.mp4", n_frames=100)
    run(video, tmp_path / "full", every=2)
    root = tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(video), str(root), event, str(n)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    killed = FrameDataset(root).manifest()
    assert 0 < len(killed) < 50  # the chunks written before the kill are there
    summary = run(video, root, every=2)
    assert summary.ok and summary.frames_added == 50 - len(killed)
    pd.testing.assert_frame_equal(FrameDataset(root).manifest(), FrameDataset(tmp_path / "full").manifest())
    assert files_under(root) == files_under(tmp_path / "full")  # no leftovers (temp files, orphans)


def test_failed_image_write_ends_the_run_and_the_manifest_names_only_written_images(
        make_video: MakeVideo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video_run_mod, "CHUNK_ROWS", 3)
    video = make_video("v.mp4", n_frames=100)
    run(video, tmp_path / "full", every=4)
    real_write = frame_writer_mod._write_frame_file
    images_written = 0
    count_lock = threading.Lock()  # two writer threads

    def disk_fills_up(path: Path, data: bytes) -> None:
        nonlocal images_written
        with count_lock:
            if images_written == 7:
                raise OSError(errno.ENOSPC, "No space left on device")
            images_written += 1
        real_write(path, data)

    monkeypatch.setattr(frame_writer_mod, "_write_frame_file", disk_fills_up)
    root = tmp_path / "ds"
    with pytest.raises(OSError, match="No space left"):
        run(video, root, every=4)
    monkeypatch.setattr(frame_writer_mod, "_write_frame_file", real_write)
    ds = FrameDataset(root)
    manifest = ds.manifest()
    assert len(manifest) == 7  # two chunks of 3, then the one image written before the failure
    assert all(load_image(ds.frame_path(p)).shape == (120, 160, 3) for p in manifest["path"])
    state = ds.video_state(manifest["video_id"][0])
    assert state is not None and state["runs"]["every=4;start=;end=;max="]["status"] == "partial"
    resumed = run(video, root, every=4)
    assert (resumed.frames_added, resumed.frames_existing) == (25 - 7, 7)
    pd.testing.assert_frame_equal(ds.manifest(), FrameDataset(tmp_path / "full").manifest())


def test_writer_backlog_is_bounded_in_bytes_as_well_as_frames(tmp_path: Path) -> None:
    # 8K frames are 100 MB each: the frames waiting for the writer are bounded by their size too.
    go = threading.Event()

    def pixels() -> np.ndarray:
        go.wait(10)
        return np.zeros((8, 8, 3), np.uint8)

    half = frame_writer_mod.WRITER_BACKLOG_BYTES // 2
    with frame_writer_mod._FrameWriter(threads=1, backlog=8) as writer:
        writer.submit(tmp_path / "a.jpg", pixels, half)
        writer.submit(tmp_path / "b.jpg", pixels, half)
        third = threading.Thread(target=writer.submit, args=(tmp_path / "c.jpg", pixels, half))
        third.start()
        third.join(0.3)
        assert third.is_alive()  # waits: a third would exceed the byte budget
        go.set()
        third.join(10)
        assert not third.is_alive()
        # a frame bigger than the whole budget is still taken, alone
        writer.submit(tmp_path / "huge.jpg", pixels, 4 * frame_writer_mod.WRITER_BACKLOG_BYTES).result(10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "b.jpg", "c.jpg", "huge.jpg"]


# -- locking ---------------------------------------------------------------------------------------
def test_lock_refuses_a_second_holder(make_video: MakeVideo, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT)  # another open file = another holder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DatasetLockedError, match="in use by another framesim run"), FrameDataset(root).lock():
            pass
        with pytest.raises(DatasetLockedError):
            run(make_video(n_frames=5), root)
    finally:
        os.close(fd)
    with FrameDataset(root).lock():  # free again
        pass


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, b'pid %d' % os.getpid())\nprint('locked', flush=True)\ntime.sleep(60)",
         str(root / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(DatasetLockedError, match=f"pid {holder.pid}"), FrameDataset(root).lock():
            pass
    finally:
        holder.kill()
        holder.wait()
    with FrameDataset(root).lock():  # the kernel released it with the process
        pass


def test_lock_is_reentrant_for_its_thread_only(make_video: MakeVideo, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    ds = FrameDataset(root)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            with FrameDataset(root).lock():
                pass
        except BaseException as exc:
            errors.append(exc)

    with ds.lock():
        assert run(make_video(n_frames=5), root).ok  # extract locks too: nested use is fine
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(errors) == 1 and isinstance(errors[0], DatasetLockedError)


# -- failures --------------------------------------------------------------------------------------
def test_bad_files_fail_with_one_line_while_others_succeed(make_video: MakeVideo, tmp_path: Path) -> None:
    good = make_video("in/good.mp4", n_frames=30)
    (tmp_path / "in" / "empty.mp4").write_bytes(b"")
    (tmp_path / "in" / "random.mp4").write_bytes(np.random.default_rng(1).bytes(100_000))
    messages: list[str] = []
    summary = run([tmp_path / "in", tmp_path / "missing.mkv"], tmp_path / "ds", on_error=messages.append)
    assert not summary.ok
    assert summary.videos_done == [str(good)]
    failed = dict(summary.failures)
    assert set(failed) == {str(tmp_path / "in" / "empty.mp4"), str(tmp_path / "in" / "random.mp4"),
                           str(tmp_path / "missing.mkv")}
    assert "empty" in failed[str(tmp_path / "in" / "empty.mp4")]
    assert "not a video" in failed[str(tmp_path / "in" / "random.mp4")]
    assert "no such file" in failed[str(tmp_path / "missing.mkv")]
    assert sorted(messages) == sorted(f"{v}: {r}" for v, r in summary.failures)
    assert all("\n" not in m for m in messages)
    assert indices(tmp_path / "ds") == [0, 25]


def test_video_that_breaks_off_keeps_its_frames_and_fails(make_truncated_avi: Callable[..., Path],
                                                          make_video: MakeVideo, tmp_path: Path) -> None:
    cut = make_truncated_avi("cut.avi", n_frames=100, keep=0.5)
    good = make_video("good.mp4", n_frames=30)
    root = tmp_path / "ds"
    messages: list[str] = []
    summary = run([cut, good], root, every=10, on_error=messages.append)
    assert summary.videos_done == [str(good)] and [v for v, _ in summary.failures] == [str(cut)]
    reason = summary.failures[0][1]
    assert re.search(r"decoded \d+ of 100 frames the header declares", reason)
    assert messages == [f"{cut}: {reason}"]
    manifest = FrameDataset(root).manifest()
    assert manifest.loc[manifest["video"] == str(cut), "frame_index"].tolist() == [0, 10, 20, 30, 40]
    state = FrameDataset(root).video_state(manifest["video_id"][0])
    assert state is not None and state["runs"]["every=10;start=;end=;max="]["status"] == "error"
    again = run([cut, good], root, every=10)  # still broken: reported again, nothing added twice
    assert again.frames_added == 0 and len(again.failures) == 1


def test_progress_bar_goes_to_stderr(make_video: MakeVideo, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    video = make_video("clip.mp4", n_frames=30)
    extract(str(video), tmp_path / "ds", progress=True)  # a single path is fine too
    err = capsys.readouterr().err
    assert "clip-" in err and "30/30" in err and "frame/s" in err
    extract([video], tmp_path / "ds2", progress=False)
    assert capsys.readouterr().err == ""


def test_all_failed_still_writes_an_empty_manifest(tmp_path: Path) -> None:
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    summary = run(tmp_path / "bad.mp4", tmp_path / "ds")
    assert not summary.ok and summary.videos_done == []
    on_disk = pd.read_parquet(tmp_path / "ds" / "manifest.parquet")
    assert on_disk.empty and list(on_disk.columns[:8]) == MANIFEST_COLUMNS
    assert (tmp_path / "ds" / "manifest.csv").read_text().startswith(",".join(MANIFEST_COLUMNS))


def test_bad_options(make_video: MakeVideo, tmp_path: Path) -> None:
    video = make_video(n_frames=5)
    for bad in (dict(image_format="gif"), dict(start=-1), dict(start=2.0, end=1.0), dict(max_frames=0),
                dict(fps=0), dict(every=0), dict(scene=2.0)):
        with pytest.raises(ValueError):
            run(video, tmp_path / "ds", **bad)


# -- real media ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_media_extracts_with_sane_timestamps(shared_media: Path, tmp_path: Path) -> None:
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(2).bytes(300_000))
    inputs = [shared_media / "videos", tmp_path / "zero.mp4", tmp_path / "noise.mp4"]
    messages: list[str] = []
    summary = run(inputs, tmp_path / "ds", fps=5, on_error=messages.append)
    assert [Path(v).name for v, _ in summary.failures] == ["zero.mp4", "noise.mp4"] and len(messages) == 2
    assert {Path(v).name for v in summary.videos_done} == {
        "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4", "bigbuckbunny.mp4",
        "Megamind_bugy.avi", "tree.avi"}
    ds = FrameDataset(tmp_path / "ds")
    manifest = ds.manifest()
    for video, rows in manifest.groupby("video", sort=False):
        times = rows["timestamp_s"].to_numpy()
        assert np.all(np.isfinite(times)) and np.all(times >= 0), video
        assert np.all(np.diff(times) > 0), video
        assert rows["frame_index"].is_monotonic_increasing, video
    tree = manifest[manifest["video"].str.endswith("tree.avi")]["timestamp_s"]
    assert tree.max() - tree.min() == pytest.approx(29.53, abs=0.1)
    megamind = manifest[manifest["video"].str.endswith("Megamind_bugy.avi")]
    assert megamind["timestamp_s"].max() == pytest.approx(9.0, abs=1e-3)  # its last frame, repaired
    assert megamind["frame_index"].max() == 269
    notes = dict(summary.notes)
    assert "decoded 68 of 444" in notes[str(shared_media / "videos" / "tree.avi")]
    sizes = manifest.groupby(manifest["video"].map(lambda v: Path(v).name))[["width", "height"]].first()
    assert sizes.loc["bikes.mp4"].tolist() == [640, 272] and sizes.loc["bigbuckbunny.mp4"].tolist() == [1280, 720]
    assert all(ds.frame_path(p).is_file() for p in manifest["path"])
