"""Peak memory of each stage on videos of two lengths: it must not grow with the video's length.

    python -m bench memory                  # 1 and 4 minutes of 720p30
    python -m bench memory --minutes 1 --minutes 2

Each stage runs in a fresh subprocess and reports its own peak RSS (VmHWM): extract at 1 fps, the
frames' embedding (``match``'s first step, default backbone) and match (embeddings cached: example
embedding, search, verification). The videos and the 20 examples are made as in ``bench pipeline``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from bench.pipeline import in_subprocess, make_examples, make_video, stage_embed, stage_extract, stage_match

N_EXAMPLES = 20


@click.command()
@click.option("--minutes", "lengths", type=float, multiple=True, default=[1.0, 4.0], show_default=True,
              help="Video lengths to compare (repeat the option).")
def memory(lengths: tuple[float, ...]) -> None:
    """Peak RSS of extract, embed and match on 720p30 videos of different lengths."""
    run_memory(lengths)


def run_memory(lengths: tuple[float, ...]) -> None:
    rows: dict[float, dict[str, dict[str, Any]]] = {}
    for minutes in sorted(lengths):
        video = make_video(max(10, round(minutes * 60)))
        with tempfile.TemporaryDirectory(prefix="framesim-memory-") as d:
            work = Path(d)
            examples = make_examples(video, work / "examples", n_copies=N_EXAMPLES - 5, n_distractors=5)
            rows[minutes] = {
                "extract (1 fps)": in_subprocess(stage_extract, video, work / "ds"),
                "embed frames": in_subprocess(stage_embed, work / "ds"),
                "match": in_subprocess(stage_match, examples, work / "ds", work / "run"),
            }
            shutil.rmtree(work / "ds", ignore_errors=True)
    lengths = tuple(sorted(rows))
    print(f"peak RSS (MiB) per stage, each in its own process; 720p30 H.264, {N_EXAMPLES} examples")
    header = "".join(f"{f'{m:g} min':>12s}" for m in lengths)
    print(f"{'stage':18s}{header}{'growth':>10s}   wall s per length")
    for stage in rows[lengths[0]]:
        peaks = [rows[m][stage]["peak_rss_mb"] for m in lengths]
        walls = ", ".join(f"{rows[m][stage]['wall_s']:.0f}" for m in lengths)
        print(f"{stage:18s}" + "".join(f"{p:12.0f}" for p in peaks) + f"{peaks[-1] / peaks[0]:9.2f}x   {walls}")
    frames = ", ".join(f"{rows[m]['extract (1 fps)']['frames']}" for m in lengths)
    print(f"frames: {frames} (x{lengths[-1] / lengths[0]:g} the length)")
