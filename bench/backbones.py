"""Backbone throughput: model forward against end-to-end embed."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import cv2
import numpy as np

from bench.common import _median_times
from framesim.backbones import Backbone


@click.command()
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
