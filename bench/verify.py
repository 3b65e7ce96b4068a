"""Cost of match's local-feature verification."""

from __future__ import annotations

import time
from pathlib import Path

import click
import cv2
import numpy as np


@click.command()
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
