"""End-to-end throughput: extract + embed (default backbone) + match of a 720p30 video, extrapolated to 1 hour.

    python -m bench pipeline --minutes 5

The video is real footage, not a test pattern: the shared clips (Big Buck Bunny, bikes, Megamind,
carphone, tree; ~58 s) scaled and cropped to 1280x720 at 30 fps, looped to the length under a slowly
moving crop and hue shift (so no two seconds are the same picture), H.264 (libx264 veryfast, CRF 23)
with a keyframe every second (GOP 30, no scene-cut keyframes). Generated videos are kept in
``$FRAMESIM_BENCH_CACHE`` (default: <tmp>/framesim-bench) since encoding takes minutes on 2 cores.

The 100 examples are 90 frames of the video at random instants between the sampled ones, each edited by
a random ``framesim.evaluation.edits`` edit, and 10 unrelated photos of the shared media (distractors).

Stages, each timed once (wall and CPU seconds):

* extract at 1 fps, and with keyframes (``extract(..., keyframes=True)``, when the dataset has it);
* embed the frames with the default backbone (what ``match`` does first), model loading timed apart;
* match (default settings: verification on) with the frames' embeddings cached: model load, the
  examples' embedding, search and verification of 10 candidates per example.

1 hour = extract and frame embedding (proportional to the video's length) x (60 / minutes), plus one
model load and the match stage (fixed: they depend on the number of examples, not on the length).
"""

from __future__ import annotations

import concurrent.futures
import inspect
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
SOURCE_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "Megamind_bugy.avi", "carphone_pristine.mp4", "tree.avi")
WIDTH, HEIGHT, FPS = 1280, 720, 30
N_COPIES, N_DISTRACTORS = 90, 10
TARGET_MINUTES = {"1 fps": 6.0, "keyframes": 3.0}
#: bump when the generated video changes, so cached files are not reused
VIDEO_VERSION = 1


def bench_cache() -> Path:
    path = Path(os.environ.get("FRAMESIM_BENCH_CACHE", Path(tempfile.gettempdir()) / "framesim-bench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def _base_clip() -> Path:
    """The shared clips at 1280x720, 30 fps, one after the other (~58 s), nearly lossless."""
    out = bench_cache() / f"base-v{VIDEO_VERSION}.mp4"
    if out.exists():
        return out
    inputs, chains = [], []
    for i, name in enumerate(SOURCE_CLIPS):
        inputs += ["-i", str(MEDIA / "videos" / name)]
        chains.append(f"[{i}:v]scale={WIDTH}:{HEIGHT}:force_original_aspect_ratio=increase,crop={WIDTH}:{HEIGHT},"
                      f"fps={FPS},setsar=1,format=yuv420p[v{i}]")
    concat = "".join(f"[v{i}]" for i in range(len(SOURCE_CLIPS))) + f"concat=n={len(SOURCE_CLIPS)}:v=1:a=0[v]"
    tmp = out.with_suffix(".tmp.mp4")
    _ffmpeg(*inputs, "-filter_complex", ";".join(chains + [concat]), "-map", "[v]",
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", str(tmp))
    tmp.replace(out)
    return out


def make_video(seconds: int) -> Path:
    """A realistic 720p30 H.264 video of ``seconds`` with a keyframe every second (module docstring)."""
    out = bench_cache() / f"real720p30-{seconds}s-v{VIDEO_VERSION}.mp4"
    if out.exists():
        return out
    longer = sorted(p for p in bench_cache().glob(f"real720p30-*s-v{VIDEO_VERSION}.mp4")
                    if int(p.name.split("-")[1][:-1]) > seconds)
    tmp = out.with_suffix(".tmp.mp4")
    if longer:  # cut a longer one at a keyframe: seconds of encoding saved per second of video
        _ffmpeg("-i", str(longer[0]), "-t", str(seconds), "-c", "copy", str(tmp))
    else:
        # A crop that wanders and a hue that drifts: each loop of the base clip looks different.
        wander = ("crop=w=iw*0.85:h=ih*0.85:x=(iw-ow)*(0.5+0.5*sin(t/7)):y=(ih-oh)*(0.5+0.5*cos(t/11)),"
                  f"scale={WIDTH}:{HEIGHT},hue=h=40*sin(t/13)")
        _ffmpeg("-stream_loop", "-1", "-i", str(_base_clip()), "-t", str(seconds), "-vf", wander,
                "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", str(FPS), "-keyint_min", str(FPS),
                "-sc_threshold", "0", "-r", str(FPS), "-pix_fmt", "yuv420p", "-an", str(tmp))
    tmp.replace(out)
    return out


def make_examples(video: Path, out: Path, n_copies: int = N_COPIES, n_distractors: int = N_DISTRACTORS,
                  seed: int = 0) -> Path:
    """Edited frames of ``video`` at random instants and edited unrelated photos, as JPEG files in ``out``."""
    from framesim.evaluation.edits import EDITS

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    duration = cap.get(cv2.CAP_PROP_FRAME_COUNT) / cap.get(cv2.CAP_PROP_FPS)
    # instants between the 1 fps samples, where extract keeps no frame
    instants = np.sort(rng.choice(int(duration) - 1, n_copies, replace=n_copies > duration - 1) + 0.5)
    images = []
    for t in instants:
        cap.set(cv2.CAP_PROP_POS_MSEC, t * 1000)
        ok, bgr = cap.read()
        if ok:
            images.append((f"copy-{t:07.1f}s", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    cap.release()
    photos = sorted(p for p in (MEDIA / "images").rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    for p in rng.choice(photos, n_distractors, replace=False):
        images.append((f"distractor-{p.stem}", cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)))
    names = list(EDITS)
    for name, img in images:
        edited, _ = EDITS[names[rng.integers(len(names))]](img, rng)
        cv2.imwrite(str(out / f"{name}.jpg"), cv2.cvtColor(edited, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return out


def has_keyframe_mode() -> bool:
    from framesim.dataset import extract

    return "keyframes" in inspect.signature(extract).parameters


# ----------------------------------------------------------------------- stages (each a plain function)


def stage_extract(video: Path, dataset: Path, keyframes: bool = False) -> dict[str, Any]:
    from framesim.dataset import FrameDataset, extract

    kwargs: dict[str, Any] = {"keyframes": True} if keyframes else {"fps": 1.0}
    summary = extract([video], dataset, progress=False, **kwargs)
    if not summary.ok:
        raise RuntimeError(f"extract failed: {summary.failures}")
    return {"frames": len(FrameDataset(dataset).manifest())}


def stage_embed(dataset: Path) -> dict[str, Any]:
    """The frames' embedding, as ``match`` runs it before searching (default backbone and batch size)."""
    from framesim.backbones import get_backbone
    from framesim.dataset import FrameDataset
    from framesim.embeddings import EmbeddingCache, embed_missing
    from framesim.images import load_image
    from framesim.matching import DEFAULT_BACKBONE

    t0, c0 = time.perf_counter(), time.process_time()
    backbone = get_backbone(DEFAULT_BACKBONE)
    backbone.embed(np.zeros((1, backbone.input_size, backbone.input_size, 3), np.uint8))  # load + warm up
    load_wall, load_cpu = time.perf_counter() - t0, time.process_time() - c0
    ds = FrameDataset(dataset)
    frames = ds.manifest().drop_duplicates("sha256")
    path_of = dict(zip(frames["sha256"], frames["path"], strict=True))
    stats = embed_missing(backbone, EmbeddingCache(ds.root / "embeddings", backbone), list(path_of),
                          lambda key: load_image(ds.frame_path(path_of[key])), progress=False)
    if stats.failures:
        raise RuntimeError(f"embedding failed: {stats.failures[:3]}")
    return {"frames": stats.embedded, "model_load_wall_s": load_wall, "model_load_cpu_s": load_cpu}


def stage_match(examples: Path, dataset: Path, out_dir: Path) -> dict[str, Any]:
    from framesim.matching import match

    result = match(examples, dataset, out_dir=out_dir, progress=False)
    if not result.ok:
        raise RuntimeError(f"match failed: {result.failures[:3]}")
    (run,) = result.run["backbones"]
    return {"pairs": len(result.pairs), "search_verify_s": run["search_seconds"], "embed_s": run["embed_seconds"]}


def timed(fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``fn``'s result plus its wall and CPU seconds and this process's peak RSS (MiB; meaningful in a
    fresh process, see ``in_subprocess``)."""
    w, c = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    result.update(wall_s=time.perf_counter() - w, cpu_s=time.process_time() - c, peak_rss_mb=memory_mb()[1])
    return result


def memory_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process, MiB; the peak since the start or ``reset_peak_memory``."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                found[line[:5]] = int(line.split()[1]) / 1024
    return found["VmRSS"], found["VmHWM"]


def reset_peak_memory() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": the peak RSS becomes the current RSS
        f.write("5")


def in_fresh_process(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a new interpreter (spawned: no memory inherited from this one)."""
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def in_subprocess(fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``timed(fn, ...)`` in a fresh interpreter: its peak memory and its model load are its own."""
    return in_fresh_process(timed, fn, *args, **kwargs)


# ----------------------------------------------------------------------------------------------- CLI


@click.command()
@click.option("--minutes", default=5.0, show_default=True, help="Length of the measured video.")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), help="Keep the datasets and run here.")
def pipeline(minutes: float, keep: Path | None) -> None:
    """Extract (1 fps, keyframes) + embed + match of a 720p30 video with 100 examples, extrapolated to 1 hour."""
    run_pipeline(minutes, keep)


def run_pipeline(minutes: float, keep: Path | None = None) -> None:
    seconds = max(10, round(minutes * 60))
    video = make_video(seconds)
    work = Path(tempfile.mkdtemp(prefix="framesim-pipeline-")) if keep is None else keep
    try:
        examples = make_examples(video, work / "examples")
        stages: dict[str, dict[str, Any]] = {}
        stages["extract 1 fps"] = in_subprocess(stage_extract, video, work / "ds")
        if has_keyframe_mode():
            stages["extract keyframes"] = in_subprocess(stage_extract, video, work / "ds-keyframes", keyframes=True)
        stages["embed frames"] = in_subprocess(stage_embed, work / "ds")
        stages["match (cached frames)"] = in_subprocess(stage_match, examples, work / "ds", work / "run")
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"video: {video.name}, {seconds / 60:g} min of 1280x720 30 fps H.264, keyframe every 1 s; "
          f"100 examples ({N_COPIES} edited frames, {N_DISTRACTORS} distractor photos)")
    print(f"{'stage':24s} {'wall s':>8s} {'CPU s':>8s} {'frames':>7s} {'peak RSS MiB':>13s}")
    for name, r in stages.items():
        print(f"{name:24s} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} {r.get('frames', ''):>7} {r['peak_rss_mb']:13.0f}")
    if not has_keyframe_mode():
        print("extract keyframes: skipped (framesim.dataset.extract has no keyframes= yet)")
    embed, matched = stages["embed frames"], stages["match (cached frames)"]
    print(f"embed frames: model load {embed['model_load_wall_s']:.1f} s wall ({embed['model_load_cpu_s']:.1f} CPU); "
          f"match: examples' embedding {matched['embed_s']:.1f} s, search + verification "
          f"{matched['search_verify_s']:.1f} s wall, {matched['pairs']} pairs")
    print_extrapolation(stages, seconds)


def print_extrapolation(stages: dict[str, dict[str, Any]], seconds: float) -> None:
    """1 hour = the length-proportional stages x (3600 / seconds) + the fixed ones, in wall and in CPU seconds."""
    scale = 3600 / seconds
    embed, fixed = stages["embed frames"], stages["match (cached frames)"]
    print(f"\n1 hour extrapolated: extract and frame embedding (minus its model load) x{scale:.1f}; model load and "
          f"match (examples, search, verification) once. Load average now {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs: CPU seconds are the steadier number on a shared machine.")
    for clock in ("wall", "cpu"):
        per_length_embed = embed[f"{clock}_s"] - embed[f"model_load_{clock}_s"]
        for mode, target in TARGET_MINUTES.items():
            key = f"extract {mode}"
            if key not in stages:
                print(f"  {clock:4s} {mode:10s}: not measured")
                continue
            extract_h = stages[key][f"{clock}_s"] * scale
            # keyframe mode keeps ~1 frame/s with 1 s keyframes, so its embedding is the 1 fps one
            total = extract_h + per_length_embed * scale + fixed[f"{clock}_s"]
            verdict = "meets" if total < target * 60 else "misses"
            print(f"  {clock:4s} {mode:10s}: extract {extract_h:6.0f} + embed {per_length_embed * scale:5.0f} + match "
                  f"{fixed[f'{clock}_s']:4.0f} = {total:6.0f} s = {total / 60:5.1f} min  ({verdict} {target:g} min)")
