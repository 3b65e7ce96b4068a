"""Reading images: sizes from headers, and decompression bombs refused before decoding."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import textured_image, without_file_override
from PIL import Image

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


# --- issue #6: robust loading of example images. Every image is made here, with a known answer. ---

def _pil_bytes(im: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _noise_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth-ish random RGB: compresses like a photo (many entropy-coded bytes)."""
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8), (w, h))


def _refused(path: Path, min_side: int | None = None) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path, min_side)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message[len(f"{path}: "):]


def _jpeg(tmp_path: Path, name: str = "photo.jpg", h: int = 120, w: int = 160, **kwargs: Any) -> Path:
    return _write(tmp_path, name, _pil_bytes(Image.fromarray(_noise_rgb(h, w)), "JPEG", quality=90, **kwargs))


# 1. corrupt and truncated JPEGs

@pytest.mark.parametrize("segment", [b"\xff\xc4", b"\xff\xc0"])  # Huffman tables, frame header
def test_jpeg_with_a_corrupt_header_is_refused_in_one_line(tmp_path: Path, segment: bytes) -> None:
    data = bytearray(_jpeg(tmp_path).read_bytes())
    at = data.index(segment) + 4  # the segment's body: its length field is left intact
    data[at:at + 12] = b"\xff\x00" * 6
    assert _refused(_write(tmp_path, "bad.jpg", bytes(data))) == "corrupt JPEG (the decoder could not read its data)"


@pytest.mark.parametrize("damage", ["a flipped byte", "garbage after the header"])
def test_jpeg_with_corrupt_entropy_data_loads_as_libjpeg_recovers_it(tmp_path: Path, damage: str) -> None:
    # Decided deliberately: libjpeg decodes through damaged entropy-coded data (printing "Corrupt JPEG
    # data: ..." on stderr, a warning OpenCV neither raises nor lets us read), so the file gives a
    # full-size image whose blocks after the damage are wrong. Only a complete file gets this far:
    # a truncated one is refused (below), as is a damaged header (above).
    data = bytearray(_jpeg(tmp_path).read_bytes())
    scan = data.index(b"\xff\xda")
    scan += 2 + int.from_bytes(data[scan + 2:scan + 4], "big")
    if damage == "a flipped byte":
        data[(scan + len(data)) // 2] ^= 0x55
    else:
        data[scan:-2] = np.random.default_rng(0).integers(0, 255, len(data) - 2 - scan, dtype=np.uint8).tobytes()
    assert load_image(_write(tmp_path, "damaged.jpg", bytes(data))).shape == (120, 160, 3)


def _with_exif_thumbnail(jpeg: bytes) -> bytes:
    """The JPEG with an APP1 segment holding a (fake) thumbnail, i.e. an FFD8..FFD9 before the scan."""
    body = b"Exif\x00\x00" + b"\xff\xd8\xff\xdb thumbnail \xff\xd9"
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


@pytest.mark.parametrize(("kind", "keep"), [("baseline", 0.5), ("baseline", 0.95), ("progressive", 0.5),
                                            ("thumbnail", 0.5), ("baseline", -2)])
def test_truncated_jpeg_is_refused_quietly(tmp_path: Path, capfd: pytest.CaptureFixture[str], kind: str,
                                           keep: float) -> None:
    data = _jpeg(tmp_path, progressive=kind == "progressive").read_bytes()
    if kind == "thumbnail":  # the thumbnail's FFD9 must not pass for the image's end-of-image marker
        data = _with_exif_thumbnail(data)
    cut = _write(tmp_path, "cut.jpg", data[:-2] if keep == -2 else data[:int(len(data) * keep)])
    for min_side in (None, 16):  # full and reduced-scale decoding
        assert _refused(cut, min_side) == "truncated JPEG (ends before its end-of-image marker)"
    assert capfd.readouterr().err == ""  # refused before libjpeg runs: nothing printed


def test_jpeg_cut_inside_its_header_is_refused(tmp_path: Path) -> None:
    data = _with_exif_thumbnail(_jpeg(tmp_path).read_bytes())
    assert _refused(_write(tmp_path, "head.jpg", data[:40])) == "truncated JPEG (ends inside its header)"


def test_jpeg_with_bytes_after_its_end_marker_loads(tmp_path: Path) -> None:
    data = _with_exif_thumbnail(_jpeg(tmp_path).read_bytes())
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    path = _write(tmp_path, "padded.jpg", data + b"\x00" * 100)  # some cameras pad their files
    assert np.array_equal(load_image(path), expected)


# 2. truncated PNG

@pytest.mark.parametrize(("cut", "reason"), [(0.5, "truncated PNG (ends inside its IDAT chunk)"),
                                             (-12, "truncated PNG (ends before its IEND chunk)")])
def test_truncated_png_is_refused_quietly(tmp_path: Path, capfd: pytest.CaptureFixture[str], cut: float,
                                          reason: str) -> None:
    data = _pil_bytes(Image.fromarray(_noise_rgb(120, 160)), "PNG")
    path = _write(tmp_path, "cut.png", data[:int(cut)] if cut < 0 else data[:int(len(data) * cut)])
    assert _refused(path) == reason
    assert capfd.readouterr().err == ""  # libpng would print "PNG input buffer is incomplete"


# 3. CMYK JPEG

_PATCHES = [(200, 30, 60), (20, 160, 90), (240, 220, 40), (128, 128, 128)]  # RGB


def _patch_image() -> np.ndarray:
    """Four 32x32 patches of known colour side by side (RGB)."""
    return np.concatenate([np.full((32, 32, 3), c, np.uint8) for c in _PATCHES], axis=1)


@pytest.mark.parametrize("min_side", [None, 8])
def test_cmyk_jpeg_gives_the_right_rgb(tmp_path: Path, min_side: int | None) -> None:
    data = _pil_bytes(Image.fromarray(_patch_image()).convert("CMYK"), "JPEG", quality=95)
    assert b"Adobe" in data  # Pillow writes Adobe's inverted CMYK, as Photoshop does
    rgb = load_image(_write(tmp_path, "cmyk.jpg", data), min_side)
    side = rgb.shape[0]
    for i, colour in enumerate(_PATCHES):
        centre = rgb[side // 2, side * i + side // 2].astype(int)
        # Pillow's CMYK conversion is naive (C = 255 - R, K = 0), so the colours come back closely
        assert np.abs(centre - colour).max() <= 6, (i, centre, colour)


# 4. 16-bit PNG

def test_16_bit_png_keeps_the_top_8_bits(tmp_path: Path) -> None:
    rgb16 = np.array([[[65535, 32768, 0], [257, 32767, 65280]]], np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), rgb16[..., ::-1])  # OpenCV writes BGR
    assert load_image(tmp_path / "deep.png").tolist() == [[[255, 128, 0], [1, 127, 255]]]


@pytest.mark.parametrize("alpha", [False, True])
def test_16_bit_grey_png(tmp_path: Path, alpha: bool) -> None:
    grey16 = np.array([[65535, 32768, 256, 0]], np.uint16)
    if alpha:  # grey + alpha, 16 bit, fully opaque: through the alpha path
        cv2.imwrite(str(tmp_path / "g.png"), np.dstack([grey16] * 3 + [np.full_like(grey16, 65535)]))
    else:
        Image.fromarray(grey16).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").tolist() == [[[v] * 3 for v in (255, 128, 1, 0)]]


# 5. greyscale

@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_greyscale_gives_three_equal_channels(tmp_path: Path, fmt: str) -> None:
    grey = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    rgb = load_image(_write(tmp_path, f"grey.{fmt.lower()}", _pil_bytes(Image.fromarray(grey), fmt, quality=95)))
    assert rgb.shape == (16, 16, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    assert np.abs(rgb[..., 0].astype(int) - grey).max() <= (0 if fmt == "PNG" else 8)


# 6. transparency: composited over white, whatever colour hides under alpha 0

def _rgba(hidden: tuple[int, int, int]) -> np.ndarray:
    """4x6 opaque (10, 20, 30), a transparent pixel hiding ``hidden``, a half-transparent black one."""
    img = np.zeros((4, 6, 4), np.uint8)
    img[...] = (10, 20, 30, 255)
    img[0, 0] = (*hidden, 0)
    img[1, 1] = (0, 0, 0, 128)
    return img


def _expected_rgba_composite() -> np.ndarray:
    out = np.zeros((4, 6, 3), np.uint8)
    out[...] = (10, 20, 30)
    out[0, 0] = 255  # white shows through full transparency
    out[1, 1] = 127  # black at alpha 128 over white: 255 * 127 / 255
    return out


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_transparent_pixels_are_white_whatever_they_hide(tmp_path: Path, fmt: str) -> None:
    kwargs = {"lossless": True, "exact": True} if fmt == "WEBP" else {}  # exact: keep the hidden colour
    loaded = [load_image(_write(tmp_path, f"{i}.{fmt.lower()}", _pil_bytes(Image.fromarray(_rgba(hidden)), fmt,
                                                                          **kwargs)))
              for i, hidden in enumerate([(255, 0, 0), (0, 255, 0)])]
    assert np.array_equal(loaded[0], loaded[1])
    assert np.array_equal(loaded[0], _expected_rgba_composite())


def test_grey_alpha_png(tmp_path: Path) -> None:
    la = np.zeros((2, 3, 2), np.uint8)
    la[...] = (40, 255)
    la[0, 0] = (200, 0)  # hidden grey under full transparency
    rgb = load_image(_write(tmp_path, "la.png", _pil_bytes(Image.fromarray(la, "LA"), "PNG")))
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[1, 2].tolist() == [40, 40, 40]


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_a_transparent_index(tmp_path: Path, fmt: str) -> None:
    pal = Image.new("P", (3, 2), 1)
    pal.putpalette([200, 0, 0, 0, 0, 200] + [0] * 762)  # index 0 red, index 1 blue
    pal.putpixel((0, 0), 0)
    rgb = load_image(_write(tmp_path, f"pal.{fmt.lower()}", _pil_bytes(pal, fmt, transparency=0)))
    assert rgb.shape == (2, 3, 3)
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[1, 2].tolist() == [0, 0, 200]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_alpha_path_applies_exif_orientation_as_opencv_does(tmp_path: Path, fmt: str, orientation: int) -> None:
    # IMREAD_UNCHANGED (needed to see alpha) ignores EXIF orientation, so load_image applies it: for
    # an image whose only transparent pixel hides white, the result must equal OpenCV's IMREAD_COLOR.
    img = np.random.default_rng(orientation).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    img[..., 3] = 255
    img[4, 6] = (255, 255, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    kwargs = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
    path = _write(tmp_path, f"o.{fmt.lower()}", _pil_bytes(Image.fromarray(img), fmt, exif=exif.tobytes(), **kwargs))
    expected = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert expected.shape[:2] == ((7, 5) if orientation >= 5 else (5, 7))
    assert np.array_equal(load_image(path), expected)


@pytest.mark.parametrize(("name", "fmt", "flag"), [
    ("plain.jpg", "JPEG", cv2.IMREAD_COLOR), ("reduced.jpg", "JPEG", cv2.IMREAD_REDUCED_COLOR_4),
    ("plain.png", "PNG", cv2.IMREAD_COLOR), ("plain.bmp", "BMP", cv2.IMREAD_COLOR),
    ("plain.webp", "WEBP", cv2.IMREAD_COLOR), ("plain.tif", "TIFF", cv2.IMREAD_COLOR)])
def test_ordinary_images_decode_exactly_as_opencv_decodes_them(tmp_path: Path, name: str, fmt: str,
                                                                flag: int) -> None:
    # The checks above must not change anything for an ordinary opaque image, reduced-scale JPEGs included.
    path = _write(tmp_path, name, _pil_bytes(Image.fromarray(_noise_rgb(120, 160)), fmt))
    expected = cv2.cvtColor(cv2.imdecode(np.fromfile(path, np.uint8), flag), cv2.COLOR_BGR2RGB)
    assert np.array_equal(load_image(path, 30 if flag != cv2.IMREAD_COLOR else None), expected)


# 7. GIF: first frame, told by magic bytes

_FRAME_COLOURS = [(220, 20, 20), (20, 220, 20), (20, 20, 220)]


def _three_frame_gif() -> bytes:
    frames = [Image.new("RGB", (12, 8), c) for c in _FRAME_COLOURS]
    return _pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


@pytest.mark.parametrize("name", ["anim.gif", "anim.png", "anim"])
def test_animated_gif_gives_its_first_frame_whatever_its_name(tmp_path: Path, name: str) -> None:
    rgb = load_image(_write(tmp_path, name, _three_frame_gif()))
    assert rgb.shape == (8, 12, 3)
    assert np.abs(rgb.reshape(-1, 3).astype(int) - _FRAME_COLOURS[0]).max() <= 4


def test_png_named_gif_is_read_as_png(tmp_path: Path) -> None:
    rgb = load_image(_write(tmp_path, "really-a-png.gif", _pil_bytes(Image.fromarray(_patch_image()), "PNG")))
    assert np.array_equal(rgb, _patch_image())


# 8. tiny and extreme shapes, through the backbones' resize

@pytest.mark.parametrize("shape", [(1, 1), (1, 5000), (5000, 1)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_tiny_and_thin_images_embed_to_finite_vectors(tmp_path: Path, shape: tuple[int, int], fmt: str) -> None:
    from framesim.backbones import get_backbone

    ramp = np.linspace(0, 255, shape[0] * shape[1]).astype(np.uint8).reshape(shape)
    path = _write(tmp_path, f"thin.{fmt.lower()}", _pil_bytes(Image.fromarray(ramp).convert("RGB"), fmt, quality=95))
    for name in ("tiny-image", "phash"):
        backbone = get_backbone(name)
        # what matching._example_loader + embeddings.embed_missing do: load at min_side, resize, embed
        rgb = load_image(path, backbone.input_size)
        assert rgb.shape == (*shape, 3)
        vector = backbone.embed([rgb])
        assert vector.shape == (1, backbone.dim) and np.isfinite(vector).all()
        if shape != (1, 1):  # a ramp has structure: a unit vector (a single pixel is uniform: tiny-image gives 0)
            assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


# 9. EXIF orientation, full and reduced-scale decoding

@pytest.mark.parametrize(("orientation", "corner"), [(1, "top-left"), (3, "bottom-right"), (6, "top-right"),
                                                     (8, "bottom-left")])
@pytest.mark.parametrize("min_side", [None, 16])
def test_exif_orientation_is_respected(tmp_path: Path, orientation: int, corner: str, min_side: int | None) -> None:
    stored = np.full((128, 256, 3), 40, np.uint8)
    stored[:64, :64] = (230, 20, 20)  # a red square in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _write(tmp_path, "rot.jpg", _pil_bytes(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes()))
    rgb = load_image(path, min_side)
    scale = 1 if min_side is None else 8  # 128 // 8 = 16 >= min_side: decoded at 1/8 scale
    upright = (256, 128) if orientation in (6, 8) else (128, 256)
    assert rgb.shape == (upright[0] // scale, upright[1] // scale, 3)
    h, w = rgb.shape[:2]
    q = 32 // scale  # the middle of the red square's 64x64 corner
    row = q if corner.startswith("top") else h - 1 - q
    col = q if corner.endswith("left") else w - 1 - q
    assert np.abs(rgb[row, col].astype(int) - (230, 20, 20)).max() <= 12
    assert np.abs(rgb[h - 1 - row, w - 1 - col].astype(int) - 40).max() <= 12  # the opposite corner is grey


# 10. not images at all

def test_non_images_with_image_names_are_refused(tmp_path: Path, make_video: Any) -> None:
    text = _write(tmp_path, "notes.jpg", b"these are notes, not a photo\n")
    assert _refused(text) == "not an image (looks like text)"
    video = make_video("clip.mp4", n_frames=3)
    mp4 = _write(tmp_path, "clip.png", video.read_bytes())
    assert _refused(mp4) == "not an image (looks like an MP4/QuickTime file, e.g. a video)"
    noise = _write(tmp_path, "noise.png", bytes(range(7, 256)))
    assert _refused(noise) == "not an image (unrecognised data starting with 07 08 09 0a 0b 0c 0d 0e)"
    assert _refused(_write(tmp_path, "empty.png", b"")) == "empty file"


# 11. file system: permissions, odd names

def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "secret.png", _pil_bytes(Image.fromarray(_patch_image()), "PNG"))
    path.chmod(0)
    # in a child: as root it runs without the capabilities that ignore a file's mode
    child = "import sys\nfrom framesim.images import ImageError, load_image\ntry:\n    load_image(sys.argv[1])\n" \
            "except ImageError as exc:\n    print(exc)\n"
    try:
        proc = subprocess.run([sys.executable, "-c", child, str(path)], capture_output=True, text=True, check=True,
                              preexec_fn=without_file_override if os.geteuid() == 0 else None)
    finally:
        path.chmod(0o644)
    assert proc.stdout.strip() == f"{path}: cannot read (Permission denied)"


def test_missing_file_and_directory_are_refused(tmp_path: Path) -> None:
    assert _refused(tmp_path / "nope.png") == "cannot read (No such file or directory)"
    (tmp_path / "folder.png").mkdir()
    assert _refused(tmp_path / "folder.png") == "cannot read (Is a directory)"


@pytest.mark.parametrize("name", ["with spaces.png", "ünïcødé 写真.jpg", "-leading-dash.png", "--.gif"])
def test_odd_file_names_load(tmp_path: Path, name: str) -> None:
    data = _pil_bytes(Image.fromarray(_patch_image()), "JPEG" if name.endswith(".jpg") else "PNG", quality=95)
    assert load_image(_write(tmp_path, name, data)).shape == (32, 128, 3)


# 12. WebP and TIFF

@pytest.mark.parametrize("kwargs", [{"lossless": True}, {"quality": 90}])
def test_webp(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    rgb = load_image(_write(tmp_path, "x.webp", _pil_bytes(Image.fromarray(_patch_image()), "WEBP", **kwargs)))
    if kwargs.get("lossless"):
        assert np.array_equal(rgb, _patch_image())
    else:  # lossy WebP subsamples colour: compare the patches' centres
        for i, colour in enumerate(_PATCHES):
            assert np.abs(rgb[16, 32 * i + 16].astype(int) - colour).max() <= 6


def test_multi_page_tiff_gives_its_first_page(tmp_path: Path) -> None:
    pages = [Image.new("RGB", (10, 6), c) for c in _FRAME_COLOURS]
    data = _pil_bytes(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert load_image(_write(tmp_path, "pages.tif", data)).reshape(-1, 3).tolist() == [list(_FRAME_COLOURS[0])] * 60


def test_decode_image_gives_the_pixels_load_image_gives(tmp_path: Path) -> None:
    # the server decodes uploads in memory: same pixels as the file on disk, errors naming the upload
    from framesim.images import decode_image

    rgb = textured_image(3)
    for name in ("a.jpg", "a.png"):
        path = tmp_path / name
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        for min_side in (None, 64):
            assert np.array_equal(decode_image(path.read_bytes(), name, min_side=min_side),
                                  load_image(path, min_side=min_side))
    with pytest.raises(ImageError, match=r"^upload\.png: not an image"):
        decode_image(b"hello, not a picture", "upload.png")
