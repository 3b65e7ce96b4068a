"""Extract throughput: decode-only against framesim extract."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import cv2

from bench.common import _median_time


@click.command()
@click.argument("video", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--fps", default=1.0, show_default=True)
@click.option("--repeat", default=5, show_default=True)
def extract(video: Path, fps: float, repeat: int) -> None:
    """Decode-only (sequential grab) frames/s against framesim extract at --fps."""
    from framesim.dataset import extract as run_extract

    def decode_only() -> int:
        cap = cv2.VideoCapture(str(video))
        n = 0
        while cap.grab():
            n += 1
        cap.release()
        return n

    n_frames = decode_only()
    t_decode = _median_time(decode_only, repeat)

    def do_extract() -> None:
        with tempfile.TemporaryDirectory() as d:
            run_extract([video], Path(d) / "ds", fps=fps, progress=False)

    t_extract = _median_time(do_extract, repeat)
    print(f"video: {video} ({n_frames} frames)")
    print(f"decode only (grab):   {n_frames / t_decode:8.1f} frames/s")
    print(f"extract at {fps:g} fps:    {n_frames / t_extract:8.1f} frames/s of video  "
          f"({t_extract:.3f} s, ratio to decode-only {t_decode / t_extract:.2f})")
