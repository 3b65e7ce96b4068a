"""Reading example images and hashing pixels.

OpenCV does the decoding (it applies EXIF orientation with IMREAD_COLOR; we apply it where we need
IMREAD_UNCHANGED to see alpha); everything framesim hands around is RGB uint8 (H, W, 3).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
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


def image_format(head: bytes) -> str | None:
    """The image format that a file's first bytes announce (``"JPEG"``, ``"PNG"``, ``"GIF"``, ...), or None.

    Decided by magic bytes, never by the file name: a ``.gif`` that is really a PNG, or a GIF without an
    extension, is decoded as what it is."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:2] == b"BM":
        return "BMP"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "AVIF"
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "JPEG 2000"
    return None


def _looks_like(head: bytes) -> str:
    """What a file that is no image seems to be, for the error message."""
    if head[4:8] == b"ftyp":
        return "looks like an MP4/QuickTime file, e.g. a video"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "looks like a Matroska/WebM video"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "looks like an AVI video"
    if head.startswith(b"%PDF"):
        return "looks like a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "looks like a ZIP archive"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # perhaps a multi-byte character cut at the end of the head
        text = head[:-3].decode("utf-8", errors="replace")
    if text and "\ufffd" not in text and all(c.isprintable() or c in "\r\n\t\f" for c in text):
        return "looks like text"
    return f"unrecognised data starting with {head[:8].hex(' ')}"


#: bytes read first: enough to tell the format, and to refuse a video named .png without reading all of it
_HEAD = 512
#: formats OpenCV may read that image_format does not name (PNM, PFM, Radiance HDR, Sun raster): tried before
#: a file with an unknown signature is called "not an image"
_OTHER_OPENCV_SIGNATURES = tuple(f"P{c}{w}".encode() for c in "1234567Ff" for w in " \t\r\n") + (
    b"#?RADIANCE", b"#?RGBE", b"\x59\xa6\x6a\x95")


def load_image(path: str | os.PathLike[str], min_side: int | None = None,
               min_long_side: int | None = None) -> np.ndarray:
    """Load an image file as RGB uint8, or raise ImageError naming the file and the reason, in one line.

    ``min_side``: the caller is about to shrink the image to about ``min_side`` pixels, so a JPEG is
    decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least that long:
    2-3x cheaper than a full decode followed by a resize, and itself an area average.
    ``min_long_side``: the same for a caller that brings the long side to that length (verification).

    The format is told by magic bytes. EXIF orientation is applied; greyscale and CMYK become RGB;
    16-bit samples keep their top 8 bits; transparent pixels are composited over white; a GIF or
    multi-page TIFF gives its first frame. A JPEG without its end-of-image marker or a PNG without
    its IEND chunk (cut off mid-data) is refused rather than embedded half grey.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:  # open() copes with any file name (spaces, unicode, a leading dash)
            _check_head(f.read(_HEAD), path)  # before reading all of a video named .png
            f.seek(0)
            data = np.fromfile(f, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return decode_image(data, path, min_side, min_long_side, gif_file=path)


def decode_image(data: bytes | np.ndarray, name: str | os.PathLike[str], min_side: int | None = None,
                 min_long_side: int | None = None, gif_file: Path | None = None) -> np.ndarray:
    """``load_image`` for bytes already in memory (an upload); errors name ``name``. ``gif_file``: the
    file the bytes came from, for the FFmpeg fallback of an OpenCV without a GIF codec (else a temp file)."""
    path = name  # what the messages call it
    data = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray | memoryview) else data
    head = data[:_HEAD].tobytes()
    fmt = _check_head(head, path)
    if data.size == 0:
        raise ImageError(f"{path}: empty file")
    size = declared_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ImageError(f"{path}: declares {size[0]}x{size[1]} pixels, over the {MAX_IMAGE_PIXELS} pixel limit "
                         "(refused before decoding)")
    flag = cv2.IMREAD_COLOR
    exif: bytes | None = None  # the EXIF block, needed only where we apply its orientation ourselves
    if fmt == "JPEG":
        _check_jpeg_complete(path, data)
        if min_side is not None and size is not None:
            flag = next((f for k, f in _JPEG_REDUCED if min(size) // k >= min_side), flag)
        elif min_long_side is not None and size is not None:
            flag = next((f for k, f in _JPEG_REDUCED if max(size) // k >= min_long_side), flag)
    elif fmt == "PNG":
        has_alpha, exif = _png_info(path, data)
        if has_alpha:
            flag = cv2.IMREAD_UNCHANGED  # IMREAD_COLOR drops alpha, showing the arbitrary colour under it
    elif fmt == "WebP":
        has_alpha, exif = _webp_info(data)
        if has_alpha:
            flag = cv2.IMREAD_UNCHANGED
    elif fmt == "GIF":
        flag = cv2.IMREAD_UNCHANGED  # keeps the transparent index as alpha 0; OpenCV decodes the first frame
    decoded = cv2.imdecode(data, flag)
    if decoded is None and fmt == "GIF":  # an OpenCV built without its GIF codec: FFmpeg reads the first frame
        decoded = _load_gif_first_frame(data, gif_file)
    if decoded is None:
        if fmt is None:
            raise ImageError(f"{path}: not an image ({_looks_like(head)})")
        raise ImageError(f"{path}: corrupt {fmt} (the decoder could not read its data)")
    if decoded.shape[0] * decoded.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageError(f"{path}: {decoded.shape[1]}x{decoded.shape[0]} exceeds the {MAX_IMAGE_PIXELS} pixel limit")
    if flag != cv2.IMREAD_UNCHANGED:
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    # IMREAD_UNCHANGED skips what IMREAD_COLOR does for us: orientation, depth and channel conversion.
    try:
        return _apply_orientation(_unchanged_to_rgb(decoded), _exif_orientation(exif) if exif else 1)
    except ValueError as exc:
        raise ImageError(f"{path}: {exc}") from exc


def _check_jpeg_complete(path: str | os.PathLike[str], data: np.ndarray) -> None:
    """Refuse a JPEG cut off before its end-of-image marker (FFD9) after the first scan starts.

    OpenCV 5 returns None for one (4.x returned the image with its missing part grey and only a
    warning on stderr); checked here, before decoding, the reason is exact and libjpeg prints nothing.
    FFD9 cannot occur inside entropy-coded data (a 0xFF there is always followed by 0x00 or RSTn), and
    the search starts at the scan so that an EXIF thumbnail's own FFD9 does not count.
    """
    if data.size >= 2 and data[-2] == 0xFF and data[-1] == 0xD9:
        return  # the usual case: nothing after the marker
    buf = memoryview(data)
    n, pos = len(buf), 2
    while True:  # walk the header segments to the first start-of-scan (FFDA)
        if pos + 4 > n:
            raise ImageError(f"{path}: truncated JPEG (ends inside its header)")
        if buf[pos] != 0xFF:
            raise ImageError(f"{path}: corrupt JPEG (bad marker in its header at byte {pos})")
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        elif marker == 0xDA:
            break
        else:
            pos += 2 + (buf[pos + 2] << 8 | buf[pos + 3])
    scan = data[pos:]
    if not np.any((scan[:-1] == 0xFF) & (scan[1:] == 0xD9)):  # trailing bytes after FFD9 are fine
        raise ImageError(f"{path}: truncated JPEG (ends before its end-of-image marker)")


def _png_info(path: str | os.PathLike[str], data: np.ndarray) -> tuple[bool, bytes | None]:
    """(whether the PNG has an alpha channel or a tRNS transparency chunk, its eXIf block or None).

    Walks the chunks (a few hundred at most: cheap); a PNG that ends before its IEND chunk is refused
    here: OpenCV refuses it too, but only after libpng prints "PNG input buffer is incomplete"."""
    buf = memoryview(data)
    n, pos = len(buf), 8
    has_alpha, exif = False, None
    while True:
        if pos + 12 > n:
            raise ImageError(f"{path}: truncated PNG (ends before its IEND chunk)")
        length = int.from_bytes(buf[pos:pos + 4], "big")
        kind = bytes(buf[pos + 4:pos + 8])
        if pos + 12 + length > n:
            raise ImageError(f"{path}: truncated PNG (ends inside its {kind.decode('latin-1')} chunk)")
        if kind == b"IHDR" and length >= 13:
            has_alpha = buf[pos + 8 + 9] in (4, 6)  # colour types grey+alpha, RGB+alpha
        elif kind == b"tRNS":
            has_alpha = True
        elif kind == b"eXIf":
            exif = bytes(buf[pos + 8:pos + 8 + length])
        elif kind == b"IEND":
            return has_alpha, exif
        pos += 12 + length


def _webp_info(data: np.ndarray) -> tuple[bool, bytes | None]:
    """(whether the WebP declares alpha, its EXIF block or None), from its RIFF chunks."""
    buf = memoryview(data)
    n, pos = len(buf), 12
    has_alpha, exif = False, None
    while pos + 8 <= n:
        kind = bytes(buf[pos:pos + 4])
        length = int.from_bytes(buf[pos + 4:pos + 8], "little")
        body = buf[pos + 8:min(n, pos + 8 + length)]
        if kind == b"VP8X" and len(body) >= 1:
            has_alpha = bool(body[0] & 0x10)
        elif kind == b"VP8L" and len(body) >= 5:
            has_alpha = bool(int.from_bytes(body[1:5], "little") >> 28 & 1)  # the alpha_is_used bit
        elif kind == b"ALPH":
            has_alpha = True
        elif kind == b"EXIF":
            exif = bytes(body)
        pos += 8 + length + (length & 1)  # chunks are padded to even length
    return has_alpha, exif


def _exif_orientation(exif: bytes) -> int:
    """The Orientation tag (0x0112, 1-8) of a TIFF-structured EXIF block; 1 if absent or unreadable."""
    if exif.startswith(b"Exif\x00\x00"):
        exif = exif[6:]
    order = {b"II": "little", b"MM": "big"}.get(exif[:2])
    if order is None or len(exif) < 8:
        return 1
    ifd = int.from_bytes(exif[4:8], order)  # type: ignore[arg-type]
    if ifd + 2 > len(exif):
        return 1
    for i in range(int.from_bytes(exif[ifd:ifd + 2], order)):  # type: ignore[arg-type]
        entry = exif[ifd + 2 + 12 * i:ifd + 14 + 12 * i]
        if len(entry) == 12 and int.from_bytes(entry[:2], order) == 0x0112:  # type: ignore[arg-type]
            value = int.from_bytes(entry[8:10], order)  # type: ignore[arg-type]  # SHORT, left-aligned
            return value if 1 <= value <= 8 else 1
    return 1


def _apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright for an EXIF orientation (1-8), as IMREAD_COLOR would."""
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.transpose(img)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(img), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


def _unchanged_to_rgb(img: np.ndarray) -> np.ndarray:
    """RGB uint8 from an IMREAD_UNCHANGED result (grey, grey+alpha, BGR or BGRA; 8 or 16 bit).

    16-bit samples keep their top 8 bits, as IMREAD_COLOR does. Transparency is composited over
    white: pixels under alpha 0 hold arbitrary colour (whatever the editor left there), so keeping it
    would make two files that look the same embed differently; white is how viewers show it."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"unsupported {img.dtype} samples")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 2:
        colour, alpha = cv2.cvtColor(np.ascontiguousarray(img[..., 0]), cv2.COLOR_GRAY2RGB), img[..., 1]
    elif channels == 4:
        colour, alpha = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB), img[..., 3]
    else:
        raise ValueError(f"unsupported {channels}-channel image")
    a = alpha[..., None].astype(np.uint16)
    # c*a/255 + 255*(1-a/255), rounded: exact for a = 0 (white) and a = 255 (the colour itself)
    return ((colour * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _load_gif_first_frame(data: np.ndarray, path: Path | None) -> np.ndarray | None:
    """The first frame (BGR) of a GIF through FFmpeg (which reads files: bytes go through a temp file), or None."""
    if path is None:
        fd, tmp = tempfile.mkstemp(suffix=".gif")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data.tobytes())
            return _load_gif_first_frame(data, Path(tmp))
        finally:
            os.unlink(tmp)
    cap = cv2.VideoCapture(str(path))
    try:
        ok, bgr = cap.read()
    finally:
        cap.release()
    return bgr if ok else None


def _check_head(head: bytes, path: str | os.PathLike[str]) -> str | None:
    """The format told by the first bytes; ImageError when they are no image OpenCV could read."""
    fmt = image_format(head)
    if fmt is None and not head.startswith(_OTHER_OPENCV_SIGNATURES):
        if not head:
            raise ImageError(f"{path}: empty file")
        raise ImageError(f"{path}: not an image ({_looks_like(head)})")
    return fmt


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
