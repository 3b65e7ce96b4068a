"""Extract throughput: decode-only against framesim extract at 1 fps, and keyframe mode.

    python -m bench extract                  # generated 720p30 H.264, 120 s, a keyframe every 1 s
    python -m bench extract --seconds 60     # shorter
    python -m bench extract VIDEO            # the same measurements on a file

Repeats are interleaved (decode, extract, keyframes; extract, keyframes, decode; ...) so that
load from other processes hits all three alike; medians of wall and process CPU seconds are
printed. Process CPU time barely moves with load, so on a busy machine the CPU ratio is the
steadier figure.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import click
import cv2

from bench.common import _median_times


def make_test_video(path: Path, seconds: float, size: tuple[int, int] = (1280, 720), fps: int = 30,
                    gop: int = 30) -> Path:
    """Write ffmpeg's testsrc2 pattern as H.264 (libx264 veryfast, yuv420p) to ``path``, with a
    keyframe exactly every ``gop`` frames (none added at scene changes). Needs the ffmpeg command."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise click.ClickException("the ffmpeg command is needed to make the test video")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "lavfi",
                    "-i", f"testsrc2=size={size[0]}x{size[1]}:rate={fps}:duration={seconds:g}",
                    "-c:v", "libx264", "-preset", "veryfast", "-g", str(gop), "-keyint_min", str(gop),
                    "-sc_threshold", "0", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def _decode_only(video: Path) -> tuple[int, float]:
    """Sequential grab() over the whole video: (frames, duration in seconds by the stream clock)."""
    cap = cv2.VideoCapture(str(video.absolute()), cv2.CAP_FFMPEG)
    n, last_ms = 0, 0.0
    while cap.grab():
        n += 1
        last_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return n, last_ms / 1000 + (1 / fps if fps > 0 else 0.0)


def _interleaved(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, tuple[list[float], list[float]]]:
    """(wall seconds, CPU seconds) of each function per round; each round runs them all, starting
    with the next one each time (on a shared machine, what ran just before changes the timing)."""
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in fns}
    names = list(fns)
    for round_ in range(repeat):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            wall, cpu = _median_times(fns[name], 1)
            times[name][0].append(wall)
            times[name][1].append(cpu)
    return times


@click.command()
@click.argument("video", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--seconds", default=120.0, show_default=True, help="Length of the generated video (without VIDEO).")
@click.option("--fps", default=1.0, show_default=True, help="Sampling rate of the extract run.")
@click.option("--repeat", default=5, show_default=True)
def extract(video: Path | None, seconds: float, fps: float, repeat: int) -> None:
    """Decode-only (sequential grab) frames/s against framesim extract at --fps, and keyframe mode.

    Without VIDEO, a 720p30 H.264 clip of --seconds with a keyframe every second is generated."""
    with tempfile.TemporaryDirectory(prefix="framesim-bench-") as tmp:
        if video is None:
            video = make_test_video(Path(tmp) / "testsrc2-720p30.mp4", seconds)
        _measure(video, fps, repeat, Path(tmp))


def _measure(video: Path, fps: float, repeat: int, tmp: Path) -> None:
    from framesim.dataset import extract as run_extract

    kept: dict[str, int] = {}

    def extract_into(name: str, **options: object) -> Callable[[], None]:
        def run() -> None:
            with tempfile.TemporaryDirectory(dir=tmp) as d:
                summary = run_extract([video], Path(d) / "ds", progress=False, **options)  # type: ignore[arg-type]
                if not summary.ok:
                    raise click.ClickException(f"extract failed: {summary.failures}")
                kept[name] = summary.frames_added
        return run

    n_frames, duration = _decode_only(video)  # also warms the page cache
    extract_into("warm-up", keyframes=True)()  # imports PyAV and friends outside the timings
    times = _interleaved({"decode": lambda: _decode_only(video), "extract": extract_into("extract", fps=fps),
                          "keyframes": extract_into("keyframes", keyframes=True)}, repeat)
    med = {name: (statistics.median(w), statistics.median(c)) for name, (w, c) in times.items()}
    paired = statistics.median(d / e for d, e in zip(times["decode"][0], times["extract"][0], strict=True))
    (t_dec, c_dec), (t_ext, c_ext), (t_key, c_key) = med["decode"], med["extract"], med["keyframes"]
    print(f"video: {video} ({n_frames} frames, {duration:.1f} s); medians of {repeat}, wall (process CPU)")
    print(f"decode only (grab):       {n_frames / t_dec:7.1f} frames/s  {t_dec:7.3f} s ({c_dec:.3f} s CPU)")
    print(f"extract at {fps:g} fps:        {n_frames / t_ext:7.1f} frames/s  {t_ext:7.3f} s ({c_ext:.3f} s CPU), "
          f"{kept['extract']} frames kept")
    print(f"  ratio to decode-only:   {t_dec / t_ext:7.2f} (per-round median {paired:.2f}; CPU {c_dec / c_ext:.2f})")
    print(f"extract --keyframes:      {t_key:7.3f} s ({c_key:.3f} s CPU), {kept['keyframes']} frames kept, "
          f"{duration / t_key:.0f}x real time")
