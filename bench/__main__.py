"""Throughput benchmarks, each a ratio measured in one run so machine noise cancels out.

    python -m bench extract ../shared/media/videos/bikes.mp4      # extract at 1 fps vs decode-only
    python -m bench backbones -b efficientnet-lite0 -b resnet50   # model forward vs end-to-end embed
    python -m bench backbones -b efficientnet-lite0:avg -b efficientnet-lite0:gem+flip   # descriptor costs
    python -m bench verify ../shared/media/videos/bikes.mp4        # local-feature verification costs

Medians of ``--repeat`` runs are printed.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click
import cv2
import numpy as np

from framesim.backbones import Backbone


def _median_time(fn: Callable[[], object], repeat: int) -> float:
    return _median_times(fn, repeat)[0]


def _median_times(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median (wall seconds, process CPU seconds). CPU time barely moves when other processes load
    the machine, so it is the steadier number on a shared 2-core box; wall time is what users see."""
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


@click.group()
def main() -> None:
    """framesim benchmarks."""


@main.command()
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


@main.command()
@click.option("-b", "--backbone", "names", multiple=True, default=["efficientnet-lite0"], show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--images", default=96, show_default=True, help="Images per end-to-end run.")
@click.option("--repeat", default=3, show_default=True)
@click.option("--random-weights", is_flag=True, help="weights=None for Keras models (no download needed).")
def backbones(names: tuple[str, ...], batch_size: int, images: int, repeat: int, random_weights: bool) -> None:
    """Model forward images/s against end-to-end embed (JPEG decode + resize + model + cache write)."""
    from framesim.backbones import get_backbone
    from framesim.images import pixel_sha256

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        # 720p JPEG frames with some structure (smooth noise), as extract would store them.
        paths = {}
        for i in range(images):
            small = rng.integers(0, 256, (45, 80, 3), dtype=np.uint8)
            img = cv2.resize(small, (1280, 720), interpolation=cv2.INTER_CUBIC)
            path = Path(d) / f"{i:05d}.jpg"
            cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            paths[pixel_sha256(img)] = path
        print(f"{'backbone':20s} {'forward img/s':>14s} {'end-to-end img/s':>17s} {'ratio':>6s} "
              f"{'fwd CPU ms/img':>15s} {'e2e CPU ms/img':>15s}")
        for name in names:
            keras_app = name.split(":")[0] in ("vgg16", "resnet50", "resnet101")
            kwargs = {"weights": None} if random_weights and keras_app else {}
            fwd, e2e, fwd_cpu, e2e_cpu = _measure_backbone(get_backbone(name, **kwargs), paths, batch_size,
                                                           images, repeat)
            print(f"{name:20s} {fwd:14.1f} {e2e:17.1f} {e2e / fwd:6.2f} {fwd_cpu * 1e3:15.1f} {e2e_cpu * 1e3:15.1f}")


def _measure_backbone(bb: Backbone, paths: dict[str, Path], batch_size: int, images: int,
                      repeat: int) -> tuple[float, float, float, float]:
    """Model-only images/s on ready batches, end-to-end images/s from JPEG files into a fresh cache,
    and the CPU seconds per image of each."""
    from framesim.embeddings import EmbeddingCache, embed_missing
    from framesim.images import load_image

    batch = np.random.default_rng(1).integers(0, 256, (batch_size, bb.input_size, bb.input_size, 3), np.uint8)
    bb.embed(batch)  # trace / warm up
    n_batches = max(1, images // batch_size)
    t_fwd, c_fwd = _median_times(lambda: [bb.embed(batch) for _ in range(n_batches)], repeat)

    def end_to_end() -> None:
        with tempfile.TemporaryDirectory() as cache_dir:
            embed_missing(bb, EmbeddingCache(cache_dir, bb), list(paths), lambda k: load_image(paths[k]),
                          batch_size=batch_size, progress=False)

    t_e2e, c_e2e = _median_times(end_to_end, repeat)
    n_fwd = n_batches * batch_size
    return n_fwd / t_fwd, len(paths) / t_e2e, c_fwd / n_fwd, c_e2e / len(paths)


@main.command()
@click.argument("video", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--frames", default=20, show_default=True, help="Frames (1 per second) to use.")
def verify(video: Path, frames: int) -> None:
    """CPU cost of match's verification: RootSIFT per frame and per example (and its mirror image),
    and the matching + RANSAC of one (example, frame) pair. Examples are cropped, scaled copies."""
    from framesim.verification import count_inliers, local_features

    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    imgs, i = [], 0
    while len(imgs) < frames:
        ok, bgr = cap.read()
        if not ok:
            break
        if i % max(1, round(fps)) == 0:
            imgs.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        i += 1
    cap.release()
    copies = [cv2.resize(im[im.shape[0] // 8:, im.shape[1] // 8:], None, fx=0.6, fy=0.6) for im in imgs]
    c0 = time.process_time()
    feats = [local_features(im) for im in imgs]
    c1 = time.process_time()
    ex = [local_features(im) for im in copies] + [local_features(im, flip=True) for im in copies]
    c2 = time.process_time()
    inliers = [count_inliers(e, f) for e in ex[:len(copies)] for f in feats]
    c3 = time.process_time()
    n = len(imgs)
    print(f"video: {video} ({n} frames of {imgs[0].shape[1]}x{imgs[0].shape[0]}), "
          f"{np.mean([len(f) for f in feats]):.0f} keypoints/frame")
    print(f"features per frame:             {(c1 - c0) / n * 1e3:7.1f} CPU ms")
    print(f"features per example (+mirror): {(c2 - c1) / n * 1e3:7.1f} CPU ms")
    print(f"match + RANSAC per pair:        {(c3 - c2) / len(inliers) * 1e3:7.1f} CPU ms "
          f"(x2 with the mirror image; median inliers same frame {np.median(inliers[::n + 1]):.0f})")


if __name__ == "__main__":
    main()
