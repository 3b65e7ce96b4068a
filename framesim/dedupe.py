"""Near-identical consecutive frames: embed once, reuse the vector.

A static shot sampled at 1 fps gives runs of frames that differ by sensor noise and compression only;
running the CNN on each costs time and changes nothing. Each frame is compared with the first frame of
the current run (its *representative*) of the same video, by the mean absolute difference of 16x16
greyscale thumbnails (0..1, as the scene sampler measures change). Below ``threshold`` the frame joins
the run and takes the representative's vector; otherwise it starts a new run. Comparing with the
representative rather than the previous frame means a slow pan or fade cannot drift a run along.

Only the CNN vector is shared: every frame stays in the index and in the pairs, and verification
still looks at its own pixels. Thumbnails are cached beside the embeddings (the same sharded,
checksummed store), so a re-run decodes nothing new.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from framesim.embeddings import EmbeddingCache

if TYPE_CHECKING:
    import pandas as pd

    from framesim.dataset import FrameDataset

#: default mean absolute thumbnail difference (0..1) under which consecutive frames share a vector.
#: Measured: a still shot with strong sensor noise through H.264 gives ~0.0006 between frames 1 s apart
#: (CNN cosine 0.994); leaves moving in the wind already 0.003-0.005 (cosine 0.92-0.98, not the same
#: picture to the CNN); camera or subject motion 0.01 and more. So 0.002: noise only.
DEFAULT_DEDUPE_THRESHOLD = 0.002
THUMB_SIDE = 16


class _ThumbnailSpec:
    """What ``EmbeddingCache`` needs to know about the thumbnails it stores (they are not a backbone)."""

    name = spec = base_name = "_thumbnail16"
    weights = "none"
    dim = THUMB_SIDE * THUMB_SIDE


def thumbnail(grey: np.ndarray) -> np.ndarray:
    """(THUMB_SIDE**2,) float32 in 0..1: the area-averaged greyscale thumbnail of an image."""
    if grey.ndim == 3:
        grey = cv2.cvtColor(grey, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32).ravel() / 255.0


def load_thumbnail(path: str | os.PathLike[str]) -> np.ndarray:
    """Thumbnail of an image file. JPEGs are decoded at 1/8 scale in the DCT domain (a few times
    cheaper than a full decode, and already an area average)."""
    data = np.fromfile(path, dtype=np.uint8)
    grey = cv2.imdecode(data, cv2.IMREAD_REDUCED_GRAYSCALE_8) if data.size else None
    if grey is None:
        raise ValueError(f"{path}: not a readable image")
    return thumbnail(grey)


def frame_thumbnails(root: str | os.PathLike[str], keys: Sequence[str],
                     path_of: Callable[[str], str | os.PathLike[str]], workers: int = 2) -> dict[str, np.ndarray]:
    """Thumbnails of ``keys`` (pixel sha256s), from the cache under ``root`` or decoded and added to it.
    Unreadable images are left out (the embedding step reports them)."""
    cache = EmbeddingCache(root, _ThumbnailSpec())  # type: ignore[arg-type]
    todo = cache.missing(keys)

    def load(key: str) -> np.ndarray | None:
        try:
            return load_thumbnail(path_of(key))
        except (OSError, ValueError):
            return None

    if todo:
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(todo), 4096):
                chunk = todo[start:start + 4096]
                loaded = list(pool.map(load, chunk))
                good = [k for k, t in zip(chunk, loaded, strict=True) if t is not None]
                if good:
                    cache.put(good, np.stack([t for t in loaded if t is not None]))
        cache.flush()
    present = [k for k in dict.fromkeys(keys) if k in cache]
    vectors = cache.get(present) if present else np.zeros((0, _ThumbnailSpec.dim), np.float32)
    return dict(zip(present, vectors, strict=True))


@dataclass
class DedupeResult:
    """``vector_key[k]``: the key whose vector frame key ``k`` uses (itself for representatives)."""

    vector_key: dict[str, str]
    threshold: float

    @property
    def representatives(self) -> list[str]:
        """Keys that need a vector of their own, in first-seen order."""
        return list(dict.fromkeys(self.vector_key.values()))

    @property
    def saved(self) -> int:
        """Frames (distinct pixel keys) that reuse another frame's vector."""
        return sum(1 for k, v in self.vector_key.items() if k != v)

    def summary(self) -> dict[str, object]:
        n = len(self.vector_key)
        return {"threshold": self.threshold, "frames": n, "embedded": n - self.saved, "reused": self.saved,
                "reused_fraction": round(self.saved / n, 4) if n else 0.0}


def near_duplicate_runs(keys: Sequence[str], videos: Sequence[object], thumbs: dict[str, np.ndarray],
                        threshold: float) -> DedupeResult:
    """Group consecutive frames (manifest order: by video, then time) into runs of near-identical
    frames. A frame without a thumbnail, or with ``threshold <= 0``, is its own representative; a
    key seen before keeps its first assignment (identical pixels in two places are one frame)."""
    vector_key: dict[str, str] = {}
    rep_key: str | None = None
    rep_video: object = None
    for key, video in zip(keys, videos, strict=True):
        if key in vector_key:
            continue
        thumb = thumbs.get(key)
        rep = thumbs.get(rep_key) if rep_key is not None else None
        if (threshold > 0 and video == rep_video and thumb is not None and rep is not None
                and float(np.abs(thumb - rep).mean()) < threshold):
            vector_key[key] = vector_key[rep_key]  # type: ignore[index]
            continue
        vector_key[key] = key
        rep_key, rep_video = key, video
    return DedupeResult(vector_key, threshold)


def dataset_runs(ds: FrameDataset, manifest: pd.DataFrame, frames_by_key: pd.DataFrame, threshold: float,
                 workers: int) -> DedupeResult:
    """Which of a dataset's frames share a vector; with ``threshold <= 0`` none do.

    ``frames_by_key``: the manifest rows with distinct ``sha256`` (one per pixel key)."""
    keys = list(manifest["sha256"])
    if threshold <= 0:
        return DedupeResult({k: k for k in keys}, threshold)
    path_of = dict(zip(frames_by_key["sha256"], frames_by_key["path"], strict=True))
    thumbs = frame_thumbnails(ds.root / "embeddings", list(path_of), lambda k: ds.frame_path(path_of[k]),
                              workers=workers)
    video_col = "video_id" if "video_id" in manifest else "video"
    return near_duplicate_runs(keys, list(manifest[video_col]), thumbs, threshold)
