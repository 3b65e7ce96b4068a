"""Reading example images and hashing pixels.

OpenCV does the decoding (it applies EXIF orientation with IMREAD_COLOR); everything framesim
hands around is RGB uint8 (H, W, 3).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})

#: refuse images whose decoded size would exceed this many pixels (decompression bombs)
MAX_IMAGE_PIXELS = 100_000_000


class ImageError(ValueError):
    """An image file cannot be used; the message names the file and the reason."""


def pixel_sha256(rgb: np.ndarray) -> str:
    """sha256 of the pixels (shape included), independent of the file format they came from."""
    rgb = np.ascontiguousarray(rgb)
    h = hashlib.sha256(f"{rgb.shape}|{rgb.dtype}|".encode())
    h.update(rgb.data)
    return h.hexdigest()


#: DCT-domain scale factors libjpeg can decode at, largest first, with OpenCV's flag for each
_JPEG_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT/JPG/DAC)


def jpeg_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header without decoding it, or None if it is not a JPEG
    whose header can be read."""
    buf = bytes(data[:65536]) if isinstance(data, bytes) else np.asarray(data, np.uint8)[:65536].tobytes()
    if len(buf) < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return None
    pos = 2
    while pos + 9 < len(buf):
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF_MARKERS:
            height = buf[pos + 5] << 8 | buf[pos + 6]
            width = buf[pos + 7] << 8 | buf[pos + 8]
            return (width, height) if width and height else None
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        pos += 2 + (buf[pos + 2] << 8 | buf[pos + 3])
    return None


def declared_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) that a JPEG, PNG, GIF or BMP header declares, read without decoding; None for
    other formats or a header that cannot be read. Lets a decompression bomb be refused before any
    pixel memory is allocated."""
    head = bytes(data[:32]) if isinstance(data, bytes) else np.asarray(data, np.uint8)[:32].tobytes()
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    if head[:2] == b"BM" and len(head) >= 26:
        return (abs(int.from_bytes(head[18:22], "little", signed=True)),
                abs(int.from_bytes(head[22:26], "little", signed=True)))
    return jpeg_size(data)


def load_image(path: str | os.PathLike[str], min_side: int | None = None) -> np.ndarray:
    """Load an image file as RGB uint8, or raise ImageError naming the file and the reason.

    ``min_side``: the caller is about to shrink the image to about ``min_side`` pixels, so a JPEG is
    decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least that long:
    2-3x cheaper than a full decode followed by a resize, and itself an area average.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode copes with any file name
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if data.size == 0:
        raise ImageError(f"{path}: empty file")
    size = declared_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ImageError(f"{path}: declares {size[0]}x{size[1]} pixels, over the {MAX_IMAGE_PIXELS} pixel limit "
                         "(refused before decoding)")
    if path.suffix.lower() == ".gif":
        return _load_gif_first_frame(path)
    flag = cv2.IMREAD_COLOR
    if min_side is not None and size is not None and data[0] == 0xFF and data[1] == 0xD8:  # a JPEG
        flag = next((f for k, f in _JPEG_REDUCED if min(size) // k >= min_side), flag)
    bgr = cv2.imdecode(data, flag)
    if bgr is None:
        raise ImageError(f"{path}: not a readable image")
    if bgr.shape[0] * bgr.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageError(f"{path}: {bgr.shape[1]}x{bgr.shape[0]} exceeds the {MAX_IMAGE_PIXELS} pixel limit")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _load_gif_first_frame(path: Path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    try:
        ok, bgr = cap.read()
    finally:
        cap.release()
    if not ok or bgr is None:
        raise ImageError(f"{path}: not a readable GIF")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def find_images(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Image files among ``paths``; folders are searched recursively, in sorted order."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(
                f for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            ))
        else:
            found.append(p)
    return found


def save_image(path: str | os.PathLike[str], rgb: np.ndarray, jpeg_quality: int = 95) -> None:
    """Encode RGB pixels by the path's extension and write atomically."""
    from framesim._io import write_bytes

    path = Path(path)
    ext = path.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ImageError(f"{path}: cannot encode as {ext}")
    write_bytes(path, buf.tobytes())
