"""Issue #6, interrupted runs lose nothing: real `framesim` processes killed with SIGKILL at random
times, killed inside write_run, run side by side on one dataset, and run out of disk space (a small
tmpfs when we may mount one, RLIMIT_FSIZE everywhere). After each: what was complete is intact, no
temp files are left, and a rerun gives exactly what an uninterrupted run gives."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import scene_colour

from framesim.backbones import get_backbone
from framesim.dataset import FrameDataset, extract
from framesim.embeddings import EmbeddingCache
from framesim.matching import RUN_FILES, match, read_pairs, write_run

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

# The child imports everything first, runs SETUP (test settings such as smaller chunks), says
# "ready", optionally waits for a line on stdin, then is the real `framesim` command: timings start
# at "ready", so a random delay lands in the work, not in Python's start-up.
CHILD = textwrap.dedent("""
    import sys
    import framesim.cli as cli, framesim.dataset as d, framesim.embeddings as e, framesim.matching as m
    import framesim.video_run as v
    import framesim.runs as r
    import framesim.report
    exec(sys.argv[1])
    print("ready", flush=True)
    if sys.argv[2] == "wait":
        sys.stdin.readline()
    sys.argv = ["framesim", *sys.argv[3:]]
    cli.main()
""")


def start(args: Sequence[str], setup: str = "", wait: bool = False,
          fsize: int | None = None) -> subprocess.Popen[str]:
    """Start `framesim ARGS` in a child; ``fsize``: RLIMIT_FSIZE in bytes (writes past it fail, EFBIG)."""

    def limit() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    proc = subprocess.Popen([sys.executable, "-c", CHILD, setup, "wait" if wait else "go", *map(str, args)],
                            env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=limit)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.communicate()
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def framesim(args: Sequence[str], setup: str = "", fsize: int | None = None) -> tuple[int, str, str]:
    return finish(start(args, setup, fsize=fsize))


def write_fast_video(path: Path, n_frames: int, size: tuple[int, int] = (320, 240), scene_len: int = 30) -> Path:
    """Like conftest.write_video (a textured colour per scene, the frame number drawn), with each
    scene's background made once: 1500 frames in ~2 s instead of ~10 s."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, size)
    assert writer.isOpened()
    base = None
    for i in range(n_frames):
        if i % scene_len == 0:
            rng = np.random.default_rng(i // scene_len)
            texture = cv2.resize(rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8), (w, h),
                                 interpolation=cv2.INTER_NEAREST)
            base = (0.5 * np.array(scene_colour(i // scene_len), np.float32) + 0.5 * texture).astype(np.uint8)
        assert base is not None
        frame = base.copy()
        cv2.putText(frame, str(i), (w // 10, h // 2), cv2.FONT_HERSHEY_SIMPLEX, h / 120, (255, 255, 255), 2)
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A long video (extract takes ~1-2 s), a short one, and two example images cut from the long one."""
    root = tmp_path_factory.mktemp("media")
    long_video = write_fast_video(root / "long.mp4", 1500)
    short = write_fast_video(root / "short.mp4", 40, scene_len=10)
    examples = root / "examples"
    examples.mkdir()
    cap = cv2.VideoCapture(str(long_video))
    for i in range(1000):
        ok, bgr = cap.read()
        assert ok
        if i in (100, 910):
            small = cv2.resize(bgr, (160, 120), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(examples / f"ex{i}.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 70])
    cap.release()
    return {"long": long_video, "short": short, "examples": examples}


@pytest.fixture(scope="module")
def long_dataset(media: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """750 frames of the long video (every 2nd), extracted once for the match tests (read only)."""
    root = tmp_path_factory.mktemp("long") / "ds"
    assert extract([media["long"]], root, every=2, progress=False).frames_added == 750
    return root


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root (relative posix path -> hash)."""
    return {p.relative_to(root).as_posix(): sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[str]:
    """Temp files of atomic writes and staged run files (none may survive a finished command)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(".*")
                  if p.is_file() and (p.name.endswith(".tmp") or p.name.startswith((".staged-", ".commit"))))


def visible(root: Path) -> dict[str, str]:
    """snapshot() of what readers look at: without hidden files (the run folder's .lock, staged files)."""
    return {k: v for k, v in snapshot(root).items() if not k.startswith(".")}


def frames_snapshot(root: Path) -> dict[str, str]:
    return {k: v for k, v in snapshot(root).items() if k.startswith("frames/")}


def assert_one_line_error(err: str, *patterns: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for pattern in patterns:
        assert pattern in lines[0], lines[0]


def kill_when(proc: subprocess.Popen[str], progress: Callable[[], int], target: int, jitter_s: float) -> None:
    """SIGKILL ``proc`` once ``progress()`` (files on disk) reaches ``target``, then a random extra
    delay: the kill lands at an arbitrary instruction of the work, yet surely before it ends, however
    fast or slow the machine is (a kill timed in seconds alone could land after a fast run ended)."""
    while progress() < target and proc.poll() is None:
        time.sleep(0.002)
    time.sleep(jitter_s)
    proc.send_signal(signal.SIGKILL)


# -- 1. SIGKILL at random times during extract -------------------------------------------------------
@pytest.mark.slow
def test_extract_killed_at_random_times_then_rerun_equals_uninterrupted(media: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    setup = "v.CHUNK_ROWS = 20"  # more commit points than the default 100 in a 750-frame run
    full = tmp_path / "full"
    assert framesim(["extract", media["long"], "-o", full, "--every", "2", "-q"], setup)[0] == 0
    expected = FrameDataset(full).manifest()

    root = tmp_path / "ds"
    rng = random.Random(6)  # seeded: the same kill points on every run of the test

    def images() -> int:
        return sum(1 for p in (root / "frames").rglob("*.jpg")) if (root / "frames").is_dir() else 0

    rows_after_kill = []
    for target in sorted(rng.sample(range(10, len(expected) - 50), 3)):
        proc = start(["extract", media["long"], "-o", root, "--every", "2", "-q"], setup)
        kill_when(proc, images, target, rng.uniform(0, 0.02))
        code, _, err = finish(proc)
        assert code == -signal.SIGKILL, err
        killed = FrameDataset(root).manifest()
        # what survived is a prefix of the uninterrupted result, and every listed image is on disk
        pd.testing.assert_frame_equal(killed, expected.iloc[:len(killed)])
        assert all(FrameDataset(root).frame_path(p).is_file() for p in killed["path"])
        rows_after_kill.append(len(killed))
    assert all(n < len(expected) for n in rows_after_kill), rows_after_kill  # every kill landed mid-run

    present = len(FrameDataset(root).manifest())
    code, out, err = framesim(["extract", media["long"], "-o", root, "--every", "2", "-q"], setup)
    assert code == 0, err
    assert f"{len(expected) - present} frames added ({present} already" in out  # resumed, nothing redone
    pd.testing.assert_frame_equal(FrameDataset(root).manifest(), expected)
    assert frames_snapshot(root) == frames_snapshot(full)  # same files, same bytes, no orphans
    assert leftovers(root) == []
    assert sha(root / "manifest.csv") == sha(full / "manifest.csv")


# -- 2. SIGKILL at random times during match (embedding) ----------------------------------------------
@pytest.mark.slow
def test_match_killed_at_random_times_resumes_embedding_and_pairs_equal_uninterrupted(
        media: dict[str, Path], long_dataset: Path, tmp_path: Path) -> None:
    setup = "e.FLUSH_EVERY = 16"  # a shard every 2 batches: many commit points in a short run
    ds = tmp_path / "ds"
    # a private copy of the dataset without embeddings (each run below starts from its own cache)
    subprocess.run(["cp", "-a", str(long_dataset), str(ds)], check=True)
    ref_ds = tmp_path / "ref_ds"
    subprocess.run(["cp", "-a", str(long_dataset), str(ref_ds)], check=True)

    def args(dataset: Path, out: Path) -> list[str | Path]:
        return ["match", media["examples"], "-d", dataset, "-b", "tiny-image", "--dedupe", "0",
                "--batch-size", "8", "-q", "--no-report", "-o", out]

    assert framesim(args(ref_ds, tmp_path / "ref"), setup)[0] == 0
    expected = read_pairs(tmp_path / "ref")
    n_keys = 750 + 2

    def cached() -> int:
        return len(EmbeddingCache(ds / "embeddings", get_backbone("tiny-image")))

    def shards() -> int:
        return sum(1 for _ in (ds / "embeddings").rglob("shard-*.json")) if (ds / "embeddings").is_dir() else 0

    rng = random.Random(6)
    survived = []
    n_shards = n_keys // 16  # FLUSH_EVERY below
    for target in sorted(rng.sample(range(1, n_shards // 2), 3)):
        proc = start(args(ds, tmp_path / "run"), setup)
        kill_when(proc, shards, target, rng.uniform(0, 0.02))
        code, _, err = finish(proc)
        assert code == -signal.SIGKILL, err
        survived.append(cached())
    assert all(0 < n < n_keys for n in survived), survived  # every kill landed mid-embedding

    before = cached()
    code, _, err = framesim(args(ds, tmp_path / "run"), setup)
    assert code == 0, err
    b = json.loads((tmp_path / "run" / "run.json").read_text())["backbones"][0]
    # resumed: only what was missing is embedded
    assert b["frames_embedded"] + b["examples_embedded"] == n_keys - before
    pd.testing.assert_frame_equal(read_pairs(tmp_path / "run"), expected)
    assert leftovers(ds) == [] and leftovers(tmp_path / "run") == []


# -- 3. SIGKILL inside write_run ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_dataset(media: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small") / "ds"
    extract([media["short"]], root, every=2, progress=False)
    match(media["examples"], root, ["tiny-image"], top_k=3, progress=False)  # fills the embedding cache
    return root


KILL_AT = textwrap.dedent("""
    import os, signal
    def hook(event):
        if event == EVENT:
            os.kill(os.getpid(), signal.SIGKILL)
    r._test_hook = hook
""")


@pytest.mark.parametrize("event", ["staged pairs", "staged run.json", "committed", "replaced pairs.parquet",
                                   "replaced pairs.csv", "replaced run.json"])
def test_kill_while_writing_the_run_leaves_the_old_set_or_the_new_one(
        media: dict[str, Path], small_dataset: Path, tmp_path: Path, event: str) -> None:
    out, ref = tmp_path / "run", tmp_path / "ref"
    match(media["examples"], small_dataset, ["tiny-image"], top_k=3, out_dir=out, progress=False)
    (out / "report.html").write_text("an earlier report")  # other files of the folder are left alone
    old = visible(out)
    new_pairs = match(media["examples"], small_dataset, ["tiny-image"], top_k=5, out_dir=ref, progress=False).pairs

    code, _, err = framesim(["match", media["examples"], "-d", small_dataset, "-b", "tiny-image", "-k", "5", "-q",
                             "--no-report", "-o", out], f"EVENT = {event!r}\n{KILL_AT}")
    assert code == -signal.SIGKILL, err
    committed = event.startswith(("committed", "replaced"))
    if not committed:  # before the commit point nothing a reader looks at has changed
        assert visible(out) == old
    pairs = read_pairs(out)  # finishes (committed) or undoes (not) the interrupted write
    assert leftovers(out) == []
    files = visible(out)
    if committed:
        pd.testing.assert_frame_equal(pairs, new_pairs)
        run = json.loads((out / "run.json").read_text())
        assert run["top_k"] == 5
        assert all(run["pairs_files"][name]["sha256"] == files[name] for name in RUN_FILES[:2])
        assert len(pd.read_csv(out / "pairs.csv")) == run["pairs_files"]["rows"] == len(new_pairs)
    else:
        assert files == old
    assert (out / "report.html").read_text() == "an earlier report"


def test_runs_writing_into_one_folder_at_once_leave_one_whole_set(media: dict[str, Path], small_dataset: Path,
                                                                   tmp_path: Path) -> None:
    # Several writers at once (threads: flock locks conflict between open files, as between processes)
    # and a reader tidying up meanwhile: the folder ends with one writer's complete set.
    base = match(media["examples"], small_dataset, ["tiny-image"], top_k=3, progress=False)
    versions = [base.pairs.assign(score=base.pairs["score"] * (i + 1) / 8) for i in range(6)]
    out = tmp_path / "run"
    errors: list[BaseException] = []

    def write(pairs: pd.DataFrame) -> None:
        try:
            write_run(out, pairs, base.run)
        except BaseException as exc:  # noqa: BLE001 (reported by the assert below)
            errors.append(exc)

    def read() -> None:
        for _ in range(50):
            with contextlib.suppress(ValueError, OSError):  # mid-commit a reader may see a mix and say so
                read_pairs(out)

    threads = [threading.Thread(target=write, args=(p,)) for p in versions] + [threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    final = read_pairs(out)  # verified against run.json's checksums
    assert any(final.equals(p) for p in versions)
    assert leftovers(out) == []


def test_read_pairs_refuses_pairs_that_are_not_the_runs(media: dict[str, Path], small_dataset: Path,
                                                        tmp_path: Path) -> None:
    match(media["examples"], small_dataset, ["tiny-image"], top_k=3, out_dir=tmp_path / "a", progress=False)
    match(media["examples"], small_dataset, ["tiny-image"], top_k=5, out_dir=tmp_path / "b", progress=False)
    (tmp_path / "b" / "pairs.parquet").replace(tmp_path / "a" / "pairs.parquet")  # a mix made by hand
    with pytest.raises(ValueError, match="not the pairs run.json describes"):
        read_pairs(tmp_path / "a")


# -- 4. two runs on one dataset at once ---------------------------------------------------------------
def lock_holder_pid(root: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((root / ".lock").read_text().split()[1])
    return None


@pytest.mark.parametrize("second", ["extract", "match"])
def test_a_second_run_on_a_busy_dataset_is_refused_in_one_line(media: dict[str, Path], tmp_path: Path,
                                                                second: str) -> None:
    root = tmp_path / "ds"
    extract([media["short"]], root, every=2, progress=False)  # match needs frames
    full = tmp_path / "full"
    extract([media["short"]], full, every=2, progress=False)
    extract([media["long"]], full, every=2, progress=False)
    other = (["extract", media["short"], "-o", root, "--every", "5", "-q"] if second == "extract" else
             ["match", media["examples"], "-d", root, "-b", "tiny-image", "-q", "--no-report", "-o", tmp_path / "r"])
    waiting = start(other, wait=True)  # imported and ready: it tries the lock the moment we say so
    first = start(["extract", media["long"], "-o", root, "--every", "2", "-q"])
    deadline = time.monotonic() + 60
    while lock_holder_pid(root) != first.pid:  # the first run holds the lock (it writes its pid there)
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.01)
    assert waiting.stdin is not None
    waiting.stdin.write("go\n")
    waiting.stdin.flush()
    code, _, err = finish(waiting)
    assert first.poll() is None, "the first run ended before the second tried: test is not testing"
    assert code == 2
    assert_one_line_error(err, f"dataset {root} is in use by another framesim run", f"pid {first.pid}")
    code, _, err = finish(first)
    assert code == 0, err
    pd.testing.assert_frame_equal(FrameDataset(root).manifest(), FrameDataset(full).manifest())
    assert frames_snapshot(root) == frames_snapshot(full)
    assert not (tmp_path / "r").exists()


# -- 5. disk full -------------------------------------------------------------------------------------
@contextlib.contextmanager
def small_disk(path: Path, size: str = "2m") -> Iterator[Callable[[str], None]]:
    """A tmpfs of ``size`` at ``path`` (skips unless we may mount: root with CAP_SYS_ADMIN); yields
    ``resize("64m")`` (tmpfs can grow in place: "freeing space" without losing what is there)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the RLIMIT_FSIZE variant runs")

    def resize(new: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new}", str(path)], check=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Fill the file system of ``folder`` up to ``leave`` bytes free; returns the filler file."""
    filler = folder / "filler"
    st = os.statvfs(folder)
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


FULL_DISK = ("no space left on device", "file too large")


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_extract_on_a_full_disk_keeps_what_was_complete_and_resumes(media: dict[str, Path], tmp_path: Path,
                                                                     how: str) -> None:
    full = tmp_path / "full"
    extract([media["short"]], full, every=2, progress=False)
    extract([media["long"]], full, every=4, progress=False)
    with contextlib.ExitStack() as stack:
        disk = tmp_path / "disk"
        resize = stack.enter_context(small_disk(disk)) if how == "tmpfs" else None
        root = disk / "ds"
        assert framesim(["extract", media["short"], "-o", root, "--every", "2", "-q"])[0] == 0
        before = snapshot(root)
        earlier = FrameDataset(root).manifest()

        code, _, err = framesim(["extract", media["long"], "-o", root, "--every", "4", "-q"],
                                fsize=16_000 if how == "rlimit" else None)
        assert code == 2
        assert_one_line_error(err, str(root))
        assert any(reason in err for reason in FULL_DISK), err
        assert leftovers(root) == []
        ds = FrameDataset(root)
        now = ds.manifest()
        # the earlier frames and their files are untouched; new rows are a prefix of the full result
        pd.testing.assert_frame_equal(now.iloc[:len(earlier)], earlier)
        assert all(before[k] == v for k, v in frames_snapshot(root).items() if k in before)
        pd.testing.assert_frame_equal(now, FrameDataset(full).manifest().iloc[:len(now)])
        assert all(ds.frame_path(p).is_file() for p in now["path"])
        if how == "rlimit":  # nothing new fitted: the earlier manifest files are byte for byte the same
            assert {k: snapshot(root)[k] for k in ("manifest.parquet", "manifest.csv")} == {
                k: before[k] for k in ("manifest.parquet", "manifest.csv")}

        if resize is not None:
            resize("64m")  # space freed
        code, _, err = framesim(["extract", media["long"], "-o", root, "--every", "4", "-q"])
        assert code == 0, err
        pd.testing.assert_frame_equal(FrameDataset(root).manifest(), FrameDataset(full).manifest())
        assert frames_snapshot(root) == frames_snapshot(full)
        assert leftovers(root) == []


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_match_on_a_full_disk_keeps_the_earlier_pairs_and_reruns(media: dict[str, Path], small_dataset: Path,
                                                                 tmp_path: Path, how: str) -> None:
    expected = match(media["examples"], small_dataset, ["tiny-image"], top_k=5, out_dir=tmp_path / "ref",
                     progress=False).pairs
    with contextlib.ExitStack() as stack:
        disk = tmp_path / "disk"
        if how == "tmpfs":
            stack.enter_context(small_disk(disk))
        out = disk / "run"
        args = ["match", media["examples"], "-d", small_dataset, "-b", "tiny-image", "-q", "--no-report", "-o", out]
        assert framesim([*args, "-k", "3"])[0] == 0
        old = snapshot(out)
        filler = fill(disk, leave=4096) if how == "tmpfs" else None

        code, _, err = framesim([*args, "-k", "5"], fsize=2048 if how == "rlimit" else None)
        assert code == 2
        assert_one_line_error(err, str(out / "pairs.parquet"))
        assert any(reason in err for reason in FULL_DISK), err
        assert snapshot(out) == old  # the earlier run, byte for byte, and nothing else
        if filler is not None:
            filler.unlink()  # space freed
        code, _, err = framesim([*args, "-k", "5"])
        assert code == 0, err
        pd.testing.assert_frame_equal(read_pairs(out), expected)
        assert leftovers(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_report_on_a_full_disk_keeps_the_earlier_report(media: dict[str, Path], small_dataset: Path,
                                                        tmp_path: Path, how: str) -> None:
    with contextlib.ExitStack() as stack:
        disk = tmp_path / "disk"
        if how == "tmpfs":
            stack.enter_context(small_disk(disk, "16m"))
        out = disk / "run"
        match(media["examples"], small_dataset, ["tiny-image"], top_k=3, out_dir=out, progress=False)
        assert framesim(["report", out])[0] == 0
        old = snapshot(out)
        filler = fill(disk, leave=64 * 1024) if how == "tmpfs" else None

        code, _, err = framesim(["report", out], fsize=1 << 20 if how == "rlimit" else None)
        assert code == 2
        assert_one_line_error(err, str(out / "report.html"))
        assert any(reason in err for reason in FULL_DISK), err
        assert snapshot(out) == old
        if filler is not None:
            filler.unlink()
        code, out_text, err = framesim(["report", out])
        assert code == 0, err
        assert leftovers(out) == [] and (out / "report.html").stat().st_size > 100_000
