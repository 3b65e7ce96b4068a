"""Small JPEG thumbnails for the report, embedded as base64 (data URIs are built in the page).

Frames are decoded at reduced resolution when the manifest gives their size (libjpeg's DCT scaling
via ``IMREAD_REDUCED_COLOR_*``: a 1080p frame decodes about 8x faster at 1/8 scale), then shrunk with
area interpolation to fit a box and re-encoded as optimised baseline JPEG. A file that is missing
or unreadable gives ``None`` (the page shows a placeholder); nothing here raises for bad images.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from framesim.images import ImageError, load_image


@dataclass(frozen=True)
class ThumbSpec:
    """Fit inside ``max_width`` x ``max_height`` pixels, encode at JPEG ``quality``."""

    max_width: int = 160
    max_height: int = 120
    quality: int = 65


#: thumbnails of the frames found (a grid of many)
FRAME_THUMB = ThumbSpec(160, 120, 65)
#: the example image shown once per example, a little larger
EXAMPLE_THUMB = ThumbSpec(240, 180, 72)

_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def _decode_flag(width: int | None, height: int | None, spec: ThumbSpec) -> int:
    """The strongest reduced decode that still leaves at least the thumbnail's size."""
    if not width or not height:
        return cv2.IMREAD_COLOR
    scale = min(spec.max_width / width, spec.max_height / height, 1.0)
    for factor, flag in _REDUCED:
        if width / factor >= width * scale and height / factor >= height * scale:
            return flag
    return cv2.IMREAD_COLOR


def encode_thumbnail(bgr: np.ndarray, spec: ThumbSpec) -> bytes:
    """Shrink a BGR (or grey) uint8 image to fit ``spec`` (never enlarge) and encode as JPEG."""
    if bgr.ndim == 2:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    h, w = bgr.shape[:2]
    scale = min(spec.max_width / w, spec.max_height / h, 1.0)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr),
                           [cv2.IMWRITE_JPEG_QUALITY, int(spec.quality), cv2.IMWRITE_JPEG_OPTIMIZE, 1])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def read_thumbnail(path: str | os.PathLike[str], spec: ThumbSpec = FRAME_THUMB,
                   width: int | None = None, height: int | None = None) -> bytes | None:
    """JPEG bytes of a thumbnail of the image at ``path``, or None if it is missing or unreadable.

    ``width``/``height`` (the manifest's, when known) allow a fast reduced-resolution decode.
    """
    path = Path(path)
    try:
        flag = _decode_flag(width, height, spec)
        if flag != cv2.IMREAD_COLOR and path.suffix.lower() in (".jpg", ".jpeg"):
            bgr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), flag)
            if bgr is None:
                return None
        else:
            bgr = cv2.cvtColor(load_image(path), cv2.COLOR_RGB2BGR)
        return encode_thumbnail(bgr, spec)
    except (ImageError, OSError, ValueError, cv2.error):
        return None


def build_thumbnails(items: Mapping[str, tuple[Path, int | None, int | None]], spec: ThumbSpec,
                     workers: int | None = None) -> dict[str, str]:
    """key -> base64 JPEG for every readable image in ``items`` (key -> (path, width, height)).

    Decoding runs in a thread pool (OpenCV releases the GIL); unreadable images are left out.
    """
    if not items:
        return {}
    workers = workers or min(8, os.cpu_count() or 1)
    keys = list(items)

    def one(key: str) -> bytes | None:
        path, w, h = items[key]
        return read_thumbnail(path, spec, w, h)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, keys, chunksize=16))
    return {k: base64.b64encode(b).decode("ascii") for k, b in zip(keys, results, strict=True) if b is not None}
