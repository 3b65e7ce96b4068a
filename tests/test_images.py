"""Reading images: sizes from headers, and decompression bombs refused before decoding."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from framesim._io import _umask
from framesim.images import MAX_IMAGE_PIXELS, ImageError, declared_size, load_image


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, followed by a tiny (not matching) data chunk."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _jpeg_declaring(tmp_path: Path, width: int, height: int) -> bytes:
    cv2.imwrite(str(tmp_path / "small.jpg"), np.zeros((8, 8, 3), np.uint8))
    data = bytearray((tmp_path / "small.jpg").read_bytes())
    sof = next(i for i in range(2, len(data) - 9) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("fmt", [".png", ".jpg", ".bmp", ".gif"])
def test_declared_size_of_real_files(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"f{fmt}"
    if fmt == ".gif":  # OpenCV cannot write GIF; a minimal header is enough here
        path.write_bytes(b"GIF89a" + struct.pack("<HH", 37, 21) + b"\0" * 8)
    else:
        cv2.imwrite(str(path), np.zeros((21, 37, 3), np.uint8))
    assert declared_size(path.read_bytes()) == (37, 21)


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path, kind: str) -> None:
    # 20,000 x 20,000 declared (400 M pixels, 1.2 GB decoded): refused from the header, in one line.
    path = tmp_path / f"bomb.{'png' if kind == 'png' else 'jpg'}"
    path.write_bytes(_png_declaring(20_000, 20_000) if kind == "png" else _jpeg_declaring(tmp_path, 20_000, 20_000))
    assert MAX_IMAGE_PIXELS < 20_000 * 20_000
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: declares 20000x20000 pixels") and "before decoding" in message
    assert "\n" not in message


def test_umask_is_read_without_changing_it() -> None:
    old = os.umask(0o027)
    try:
        assert _umask() == 0o027
        assert os.umask(0o027) == 0o027  # still what it was
    finally:
        os.umask(old)
