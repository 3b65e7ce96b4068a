"""Shared fixtures: where the real test media is, and synthetic videos whose content we know."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = Path(os.environ.get("FRAMESIM_SHARED_MEDIA", REPO.parent / "shared" / "media"))
FFMPEG = shutil.which("ffmpeg")


def without_file_override() -> None:
    """preexec_fn for a test run as root: drop the capabilities that let root read and search files
    whatever their mode, so that a chmod 000 file is unreadable to the child as it is to a user.

    From the bounding set: exec gives root every capability left in it, so dropping the effective
    ones would not outlive the exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def require_ffmpeg() -> str:
    """The ffmpeg command, which makes test videos OpenCV cannot write (H.264 with a set GOP, VFR, audio,
    rotation). Without it the test is skipped, or fails where FRAMESIM_REQUIRE_FFMPEG is set (CI)."""
    if FFMPEG is None:
        if os.environ.get("FRAMESIM_REQUIRE_FFMPEG"):
            pytest.fail("the ffmpeg command is missing and FRAMESIM_REQUIRE_FFMPEG is set")
        pytest.skip("needs the ffmpeg command (with libx264)")
    return FFMPEG


@pytest.fixture(scope="session")
def shared_media() -> Path:
    if not (SHARED_MEDIA / "videos").is_dir():
        pytest.skip(f"real test media not found at {SHARED_MEDIA} (set FRAMESIM_SHARED_MEDIA)")
    return SHARED_MEDIA


def scene_colour(scene: int) -> tuple[int, int, int]:
    """A distinct BGR colour per scene number."""
    rng = np.random.default_rng(1000 + scene)
    return tuple(int(c) for c in rng.integers(30, 226, size=3))


def synthetic_frame(index: int, scene: int, size: tuple[int, int]) -> np.ndarray:
    """BGR frame: the scene's colour and texture, with the frame number drawn large.

    Within a scene frames differ only by the drawn number (small change); between scenes the
    colour and texture change completely (a cut).
    """
    w, h = size
    rng = np.random.default_rng(scene)
    texture = cv2.resize(rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8), (w, h),
                         interpolation=cv2.INTER_NEAREST)
    frame = (0.5 * np.array(scene_colour(scene), np.float32) + 0.5 * texture).astype(np.uint8)
    cv2.putText(frame, str(index), (w // 10, h // 2), cv2.FONT_HERSHEY_SIMPLEX, h / 120, (255, 255, 255), 2)
    return frame


def write_video(path: Path, n_frames: int, fps: float = 25.0, size: tuple[int, int] = (160, 120),
                scene_starts: Sequence[int] = (0,)) -> Path:
    """Write an mp4 (mpeg4) of ``n_frames`` synthetic frames; a new scene starts at each index in scene_starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened(), f"cannot open VideoWriter for {path}"
    starts = sorted(scene_starts)
    for i in range(n_frames):
        scene = sum(1 for s in starts if s <= i) - 1
        writer.write(synthetic_frame(i, scene, size))
    writer.release()
    return path


@pytest.fixture
def make_video(tmp_path: Path) -> Callable[..., Path]:
    """Factory: make_video(name="v.mp4", n_frames=50, fps=25, size=(160,120), scene_starts=(0,))."""

    def make(name: str = "v.mp4", n_frames: int = 50, **kwargs: object) -> Path:
        return write_video(tmp_path / name, n_frames, **kwargs)  # type: ignore[arg-type]

    return make


def write_avi(path: Path, n_frames: int, fps: float = 25.0, size: tuple[int, int] = (160, 120),
              scene_starts: Sequence[int] = (0,)) -> Path:
    """Like write_video but MJPG in AVI: a truncated copy still opens (OpenCV's mp4 keeps its index
    at the end), which is what tests of videos that break off mid-way need."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened(), f"cannot open VideoWriter for {path}"
    starts = sorted(scene_starts)
    for i in range(n_frames):
        writer.write(synthetic_frame(i, sum(1 for s in starts if s <= i) - 1, size))
    writer.release()
    return path


@pytest.fixture
def make_truncated_avi(tmp_path: Path) -> Callable[..., Path]:
    """Factory: make_truncated_avi(name="cut.avi", n_frames=100, keep=0.5) -> an AVI cut after ``keep``
    of its bytes; its header still declares ``n_frames``."""

    def make(name: str = "cut.avi", n_frames: int = 100, keep: float = 0.5, **kwargs: object) -> Path:
        full = write_avi(tmp_path / f"full-{name}", n_frames, **kwargs)  # type: ignore[arg-type]
        data = full.read_bytes()
        full.unlink()
        out = tmp_path / name
        out.write_bytes(data[: int(len(data) * keep)])
        return out

    return make


@pytest.fixture(autouse=True, scope="session")
def isolated_framesim_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Converted weights go to a temporary FRAMESIM_HOME, never the user's ~/.cache/framesim."""
    home = tmp_path_factory.mktemp("framesim-home")
    old = os.environ.get("FRAMESIM_HOME")
    os.environ["FRAMESIM_HOME"] = str(home)
    yield
    if old is None:
        os.environ.pop("FRAMESIM_HOME", None)
    else:
        os.environ["FRAMESIM_HOME"] = old


def textured_image(seed: int, size: tuple[int, int] = (360, 480)) -> np.ndarray:
    """An RGB image with blobs and lines: plenty of corners for SIFT (no text: glyphs would be
    shared content between two such images)."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = cv2.resize(rng.integers(0, 256, (h // 24, w // 24, 3), dtype=np.uint8), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    for _ in range(40):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            cv2.circle(img, p1, int(rng.integers(4, 30)), c, -1)
        else:
            cv2.line(img, p1, (int(rng.integers(0, w)), int(rng.integers(0, h))), c, 3)
    return img


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private FRAMESIM_HOME for one test, so cache tests never touch (or depend on) the user's cache."""
    monkeypatch.setenv("FRAMESIM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every ONNX export of a converted runtime (the real one runs)."""
    from framesim.backbones import runtime

    done: list[Path] = []
    real = runtime._export_onnx

    def counting(model: object, path: Path) -> None:
        done.append(path)
        real(model, path)

    monkeypatch.setattr(runtime, "_export_onnx", counting)
    return done


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a test server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium under Playwright, for the page tests (skipped without it unless
    FRAMESIM_REQUIRE_BROWSER=1, as in CI)."""
    from test_report_browser import find_chromium

    required = os.environ.get("FRAMESIM_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("FRAMESIM_REQUIRE_BROWSER=1 but the playwright package is missing (pip install playwright)")
        pytest.skip("the playwright package is not installed")
    exe = find_chromium()
    if exe is None:
        if required:
            pytest.fail("FRAMESIM_REQUIRE_BROWSER=1 but no Chromium found (apt-get install -y chromium)")
        pytest.skip("headless Chromium not installed (apt-get install -y chromium)")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu", "--mute-audio"])
        except PlaywrightError as exc:
            if required:
                pytest.fail(f"FRAMESIM_REQUIRE_BROWSER=1 but Chromium ({exe}) did not start: {exc}")
            pytest.skip(f"Chromium ({exe}) did not start under Playwright: {exc}")
        yield b
        b.close()
