"""The seed notebooks' pipeline as one plain script: the reference ``python -m bench endtoend`` times
framesim against. Not part of the package, and deliberately naive.

    python -m bench.seed_pipeline VIDEOS... --examples DIR --fps 2 -o OUT

1. decode + write: OpenCV ``VideoCapture`` reads every frame; the first frame at or after each 1/FPS s
   tick of the stream clock (``CAP_PROP_POS_MSEC``) is written as JPEG (quality 95) to OUT/frames.
   No timestamp repair: a broken clock is taken as it comes, as the notebooks did.
2. load: ``cv2.imread`` of every frame and example image, resized to 224x224 (``INTER_AREA``), BGR -> RGB.
3. model load: EfficientNet-Lite0 with ImageNet weights in plain Keras, built by framesim's own builder
   (``build_model`` + the converted weights), so the network is exactly the one framesim runs.
4. embed: framesim's EfficientNet-Lite preprocessing ((x - 127) / 128 on RGB), ``model.predict`` in
   batches of 32, average pooling over the spatial axes, L2 normalisation.
5. search: cosine top-K per example with numpy (a full matrix product: no index).

Writes OUT/pairs.csv (framesim's pairs columns; ``example`` relative to the examples folder, ``video``
as given, ``score`` the cosine) and OUT/timings.json; the stage seconds also go to stderr as one JSON line.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import click
import cv2
import numpy as np
import pandas as pd

SIDE = 224
BATCH = 32
JPEG_QUALITY = 95
BACKBONE = "seed:efficientnet-lite0:avg@cosine"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PAIRS_COLUMNS = ["backbone", "example", "frame_id", "video", "frame_index", "timestamp_s", "score", "rank"]


def decode_and_write(video: str, fps: float, frames_dir: Path) -> list[dict[str, object]]:
    """Rows (frame_id, video, frame_index, timestamp_s, path) of the frames kept from ``video``."""
    stem = Path(video).stem
    out = frames_dir / stem
    out.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(video)
    rows: list[dict[str, object]] = []
    next_tick, index = 0.0, -1
    while True:
        ok, bgr = cap.read()
        if not ok:  # end of stream, or a broken one: the notebooks stopped there
            break
        index += 1
        t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if t + 1e-6 < next_tick:
            continue
        # the next tick strictly after t: one frame serves every tick a gap in the stream skipped
        next_tick = (math.floor(t * fps + 1e-6) + 1) / fps
        path = out / f"{index:08d}.jpg"
        cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        rows.append({"frame_id": f"{stem}/{index:08d}", "video": video, "frame_index": index,
                     "timestamp_s": round(t, 6), "path": str(path)})
    cap.release()
    return rows


def load_224(path: str) -> np.ndarray | None:
    bgr = cv2.imread(path)
    if bgr is None:
        return None
    return cv2.cvtColor(cv2.resize(bgr, (SIDE, SIDE), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def load_model() -> object:
    """EfficientNet-Lite0 feature-map model (n, 7, 7, 1280) with ImageNet weights, plain Keras."""
    from framesim.backbones.efficientnet_lite import (
        VARIANTS,
        assign_weights,
        blocks_from_weights,
        build_model,
        load_imagenet_weights,
    )

    weights, _ = load_imagenet_weights(VARIANTS["efficientnet-lite0"])
    blocks = blocks_from_weights(weights)
    model, _, by_key = build_model(blocks, SIDE)
    assign_weights(by_key, blocks, weights)
    return model


def embed(model: object, images: np.ndarray) -> np.ndarray:
    out = []
    for i in range(0, len(images), BATCH):
        batch = (images[i:i + BATCH].astype(np.float32) - 127.0) / 128.0  # framesim's Lite preprocessing
        maps = np.asarray(model.predict(batch, verbose=0))  # type: ignore[attr-defined]
        out.append(maps.mean(axis=(1, 2)))  # average pooling
    x = np.concatenate(out) if out else np.zeros((0, 1280), np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@click.command()
@click.argument("videos", nargs=-1, required=True)
@click.option("--examples", "examples_dir", required=True, type=click.Path(exists=True, file_okay=False,
                                                                           path_type=Path))
@click.option("--fps", default=2.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("-k", "--top-k", default=10, show_default=True, type=click.IntRange(min=1))
def main(videos: tuple[str, ...], examples_dir: Path, fps: float, out: Path, top_k: int) -> None:
    """Seed-style reference pipeline: OpenCV decode, JPEG frames, Keras EfficientNet-Lite0, numpy cosine top-K."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    frames: list[dict[str, object]] = []
    for video in videos:
        frames += decode_and_write(video, fps, out / "frames")
    timings["decode_write"] = time.perf_counter() - t

    t = time.perf_counter()
    example_paths = sorted(p for p in examples_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    frame_imgs = [load_224(str(f["path"])) for f in frames]
    example_imgs = [load_224(str(p)) for p in example_paths]
    frames = [f for f, im in zip(frames, frame_imgs, strict=True) if im is not None]
    names = [p.relative_to(examples_dir).as_posix() for p, im in zip(example_paths, example_imgs, strict=True)
             if im is not None]
    frame_x = np.stack([im for im in frame_imgs if im is not None])
    example_x = np.stack([im for im in example_imgs if im is not None])
    timings["load"] = time.perf_counter() - t

    t = time.perf_counter()
    model = load_model()  # includes importing TensorFlow/Keras, as a notebook's first cell would
    timings["model_load"] = time.perf_counter() - t

    t = time.perf_counter()
    frame_v, example_v = embed(model, frame_x), embed(model, example_x)
    timings["embed"] = time.perf_counter() - t

    t = time.perf_counter()
    sims = example_v @ frame_v.T
    k = min(top_k, sims.shape[1])
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    table = pd.DataFrame(frames).drop(columns="path")
    rows = []
    for i, name in enumerate(names):
        picked = table.iloc[top[i]].assign(backbone=BACKBONE, example=name, score=sims[i, top[i]].round(6),
                                           rank=np.arange(1, k + 1))
        rows.append(picked)
    pairs = pd.concat(rows, ignore_index=True)[PAIRS_COLUMNS]
    timings["search"] = time.perf_counter() - t

    pairs.to_csv(out / "pairs.csv", index=False)
    info = {"timings": {k: round(v, 4) for k, v in timings.items()}, "frames": len(frames),
            "examples": len(names), "videos": len(videos)}
    (out / "timings.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info), file=sys.stderr)


if __name__ == "__main__":
    main()
