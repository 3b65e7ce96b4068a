"""Image edits of the kinds that re-uploads and re-edits show, for building copy-detection benchmarks.

Two layers:

* **primitives** (``crop``, ``jpeg``, ``rotate``, ``paste`` ...): pure functions of an RGB uint8 image
  and explicit parameters, no randomness;
* **edits** (``EDITS``): ``edit(image, rng, ctx) -> (edited, params)`` draws its parameters from the
  seeded ``rng`` within the ranges below, applies primitives and returns the parameters it used, so
  the same image, RNG state and context always give the same pixels.

Sizes are relative to the image (a blur of 1 % of the short side looks the same on a 176x144 clip as
on a 1280x720 one), so an edit is equally hard whatever the resolution of the source video.

=====================  ============================================================================
edit                   what, and the range its parameters are drawn from (uniform unless stated)
=====================  ============================================================================
rescale_jpeg           each side scaled by 0.25-0.6 (at least 32 px), then JPEG quality 15-50
crop_mild              keep 70-90 % of the width and of the height, anywhere in the frame
crop_strong            keep 40-60 % of the width and of the height (16-36 % of the area)
blur                   Gaussian, sigma 0.5-1.2 % of the short side
brightness_contrast    contrast x0.5-1.6, brightness -60..+60 grey levels (draws closer to no change
                       than x+-0.15 and +-15 are drawn again)
caption                a text band 10-20 % of the height at the top or bottom (black or white), or
                       outlined text with no band (1 in 3)
logo                   a filled disc or box with 2-3 letters, 12-25 % of the short side, opacity
                       0.6-1.0, in a corner
hflip                  mirror left-right
rotate                 3-15 degrees either way, same canvas, black corners
pip                    picture-in-picture: the frame scaled to 30-60 % of the canvas area, placed at a
                       random spot on another photo (canvas = that photo at the frame's size)
grayscale              luma only (ITU-R 601), as three equal channels
pad                    letterbox (top/bottom) or pillarbox (left/right): bars adding 15-50 % to that
                       side, split 30/70-70/30, black (70 %) or a random flat colour
stretch                width scaled by 0.65-0.8 or 1.25-1.55 (aspect ratio changed)
noise                  additive Gaussian noise, sigma 8-25 grey levels
perspective            each corner moved inwards by 0-12 % of the width and height, black fill
combo                  2-3 different edits from COMBO_POOL, applied in order
=====================  ============================================================================

The list follows the transformations of copy-detection benchmarks (DISC21 / AugLy, CC_WEB_VIDEO,
VCDB: crops, re-encoding, overlays of text and logos, flips, rotations, picture-in-picture, colour
changes, padding, aspect changes, noise, perspective, and chains of these). Left out: emoji and
"meme" templates (a caption covers them), pixel shuffling and vertical flips (rare in re-uploads).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

Image = np.ndarray
Params = dict[str, Any]

CAPTIONS = (
    "Reposted clip - watch till the end!", "you won't believe this", "@someone", "LIVE", "BREAKING NEWS",
    "original video in bio", "when the weekend finally arrives", "credit: unknown", "follow for more",
    "#viral #fyp", "day 3 of posting this", "HD REMASTER",
)


# ---------------------------------------------------------------------------------------- primitives


def _as_rgb(img: Image) -> Image:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {img.dtype} {img.shape}")
    return img


def crop(img: Image, x0: int, y0: int, width: int, height: int) -> Image:
    """The ``width`` x ``height`` region whose top-left corner is (x0, y0), clipped to the image."""
    h, w = img.shape[:2]
    x0, y0 = max(0, min(int(x0), w - 1)), max(0, min(int(y0), h - 1))
    return img[y0:min(h, y0 + max(1, int(height))), x0:min(w, x0 + max(1, int(width)))].copy()


def resize(img: Image, width: int, height: int) -> Image:
    """Resize to width x height (area averaging when shrinking, bilinear when enlarging)."""
    width, height = max(1, int(width)), max(1, int(height))
    shrink = width * height < img.shape[0] * img.shape[1]
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def jpeg(img: Image, quality: int) -> Image:
    """Encode as JPEG at ``quality`` (1-100) and decode again."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def gaussian_blur(img: Image, sigma: float) -> Image:
    return cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma), borderType=cv2.BORDER_REFLECT_101)


def brightness_contrast(img: Image, contrast: float, brightness: float) -> Image:
    """``contrast * pixel + brightness``, saturated to 0..255."""
    return cv2.convertScaleAbs(img, alpha=float(contrast), beta=float(brightness))


def hflip(img: Image) -> Image:
    return cv2.flip(img, 1)


def rotate(img: Image, degrees: float) -> Image:
    """Rotate about the centre by ``degrees`` (counter-clockwise), same canvas, black corners."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), float(degrees), 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def grayscale(img: Image) -> Image:
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def pad(img: Image, top: int, bottom: int, left: int, right: int, colour: Sequence[int] = (0, 0, 0)) -> Image:
    return cv2.copyMakeBorder(img, int(top), int(bottom), int(left), int(right), cv2.BORDER_CONSTANT,
                              value=tuple(int(c) for c in colour))


def add_noise(img: Image, noise: np.ndarray) -> Image:
    """Add a float noise field (same shape as ``img``), saturated to 0..255."""
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def perspective(img: Image, corners: np.ndarray) -> Image:
    """Map the image's corners (TL, TR, BR, BL) to ``corners`` (4x2 pixels) on the same canvas."""
    h, w = img.shape[:2]
    src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    m = cv2.getPerspectiveTransform(src, np.float32(corners))
    return cv2.warpPerspective(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def paste(canvas: Image, img: Image, x0: int, y0: int) -> Image:
    """A copy of ``canvas`` with ``img`` pasted with its top-left corner at (x0, y0) (clipped)."""
    out = canvas.copy()
    h, w = img.shape[:2]
    ch, cw = out.shape[:2]
    x0, y0 = int(x0), int(y0)
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(cw, x0 + w), min(ch, y0 + h)
    if xb > xa and yb > ya:
        out[ya:yb, xa:xb] = img[ya - y0:yb - y0, xa - x0:xb - x0]
    return out


def _fit_text(text: str, max_w: int, max_h: int, font: int, thickness: int) -> tuple[float, tuple[int, int], int]:
    """The font scale that makes ``text`` fit max_w x max_h; returns (scale, (w, h), baseline)."""
    (tw, th), base = cv2.getTextSize(text, font, 1.0, thickness)
    scale = max(0.2, min(max_w / max(tw, 1), max_h / max(th + base, 1)))
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    return scale, (tw, th), base


def draw_caption(img: Image, text: str, band: float, at_top: bool, style: str) -> Image:
    """A caption: ``style`` "black"/"white" draws a band ``band`` x height with the text in the
    opposite colour; "outline" draws white text with a black outline and no band."""
    out = img.copy()
    h, w = out.shape[:2]
    bh = max(8, int(round(band * h)))
    y0 = 0 if at_top else h - bh
    font = cv2.FONT_HERSHEY_DUPLEX
    thickness = max(1, bh // 14)
    scale, (tw, th), base = _fit_text(text, int(0.92 * w), int(0.62 * bh), font, thickness)
    org = ((w - tw) // 2, y0 + (bh + th) // 2)
    if style == "outline":
        cv2.putText(out, text, org, font, scale, (0, 0, 0), thickness + 2 * max(1, thickness // 2 + 1), cv2.LINE_AA)
        cv2.putText(out, text, org, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
        return out
    bg, fg = ((0, 0, 0), (255, 255, 255)) if style == "black" else ((255, 255, 255), (0, 0, 0))
    cv2.rectangle(out, (0, y0), (w - 1, y0 + bh - 1), bg, -1)
    cv2.putText(out, text, org, font, scale, fg, thickness, cv2.LINE_AA)
    return out


def draw_logo(img: Image, letters: str, size: int, corner: str, shape: str, colour: Sequence[int],
              opacity: float) -> Image:
    """A ``size`` px logo (filled disc or box with ``letters``) blended at ``opacity`` into a corner
    ("tl", "tr", "bl", "br"), with a margin of 3 % of the short side."""
    h, w = img.shape[:2]
    size = max(8, min(int(size), h, w))
    logo = np.zeros((size, size, 3), np.uint8)
    mask = np.zeros((size, size), np.uint8)
    if shape == "disc":
        cv2.circle(logo, (size // 2, size // 2), size // 2 - 1, tuple(int(c) for c in colour), -1, cv2.LINE_AA)
        cv2.circle(mask, (size // 2, size // 2), size // 2 - 1, 255, -1, cv2.LINE_AA)
    else:
        logo[:] = colour
        mask[:] = 255
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, max(1, size // 16)
    scale, (tw, th), _ = _fit_text(letters, int(0.7 * size), int(0.5 * size), font, thickness)
    lum = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ink = (0, 0, 0) if lum > 140 else (255, 255, 255)
    cv2.putText(logo, letters, ((size - tw) // 2, (size + th) // 2), font, scale, ink, thickness, cv2.LINE_AA)
    m = max(1, int(0.03 * min(h, w)))
    x0 = m if corner[1] == "l" else w - size - m
    y0 = m if corner[0] == "t" else h - size - m
    out = img.copy()
    region = out[y0:y0 + size, x0:x0 + size].astype(np.float32)
    alpha = (mask.astype(np.float32) / 255.0 * float(opacity))[..., None]
    out[y0:y0 + size, x0:x0 + size] = np.round(region * (1 - alpha) + logo.astype(np.float32) * alpha).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------- edits


@dataclass
class EditContext:
    """What some edits need besides the image: ``background(rng)`` returns an unrelated RGB photo
    (picture-in-picture canvases). The default is a smooth random colour field."""

    background: Callable[[np.random.Generator], Image] | None = None

    def get_background(self, rng: np.random.Generator, width: int, height: int) -> Image:
        if self.background is not None:
            return _as_rgb(self.background(rng))
        return synthetic_background(rng, width, height)


def synthetic_background(rng: np.random.Generator, width: int, height: int) -> Image:
    """A smooth colour field with a few flat shapes: a stand-in photo when no real one is at hand."""
    small = rng.integers(0, 256, size=(4, 6, 3)).astype(np.uint8)
    out = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(max(2, min(width, height) // 12), max(3, min(width, height) // 3)))
        cv2.circle(out, (cx, cy), r, colour, -1, cv2.LINE_AA)
    return out


EditFn = Callable[[Image, np.random.Generator, EditContext], tuple[Image, Params]]


@dataclass(frozen=True)
class Edit:
    name: str
    fn: EditFn
    description: str

    def __call__(self, img: Image, rng: np.random.Generator, ctx: EditContext | None = None) -> tuple[Image, Params]:
        out, params = self.fn(_as_rgb(img), rng, ctx or EditContext())
        return np.ascontiguousarray(out), params


def _u(rng: np.random.Generator, lo: float, hi: float, digits: int = 4) -> float:
    # rounded so the recorded parameters reproduce the edit exactly when applied again
    return round(float(rng.uniform(lo, hi)), digits)


def _rescale_jpeg(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, Params]:
    h, w = img.shape[:2]
    f = _u(rng, 0.25, 0.6)
    q = int(rng.integers(15, 51))
    nw, nh = max(32, round(w * f)), max(32, round(h * f))
    return jpeg(resize(img, nw, nh), q), {"scale": f, "quality": q}


def _crop_random(img: Image, rng: np.random.Generator, lo: float, hi: float) -> tuple[Image, Params]:
    h, w = img.shape[:2]
    kw, kh = _u(rng, lo, hi), _u(rng, lo, hi)
    cw, ch = max(8, round(w * kw)), max(8, round(h * kh))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return crop(img, x0, y0, cw, ch), {"keep_w": kw, "keep_h": kh, "x0": x0, "y0": y0}


def _crop_mild(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, Params]:
    return _crop_random(img, rng, 0.7, 0.9)


def _crop_strong(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, Params]:
    return _crop_random(img, rng, 0.4, 0.6)


def _blur(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, Params]:
    rel = _u(rng, 0.005, 0.012)
    sigma = round(rel * min(img.shape[:2]), 3)
    return gaussian_blur(img, sigma), {"sigma_rel": rel, "sigma_px": sigma}


def _brightness_contrast(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, Params]:
    while True:  # a draw that barely changes the picture would make this edit a no-op
        alpha, beta = _u(rng, 0.5, 1.6, 3), _u(rng, -60, 60, 1)
        if abs(alpha - 1) >= 0.15 or abs(beta) >= 15:
            break
    return brightness_contrast(img, alpha, beta), {"contrast": alpha, "brightness": beta}


def _caption(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, Params]:
    text = CAPTIONS[int(rng.integers(len(CAPTIONS)))]
    band = _u(rng, 0.10, 0.20, 3)
    at_top = bool(rng.random() < 0.5)
    style = ("black", "white", "outline")[int(rng.integers(3))]
    return draw_caption(img, text, band, at_top, style), {"text": text, "band": band, "top": at_top, "style": style}


def _logo(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, Params]:
    h, w = img.shape[:2]
    rel = _u(rng, 0.12, 0.25, 3)
    letters = "".join(chr(ord("A") + int(c)) for c in rng.integers(0, 26, int(rng.integers(2, 4))))
    corner = ("tl", "tr", "bl", "br")[int(rng.integers(4))]
    shape = ("disc", "box")[int(rng.integers(2))]
    colour = [int(c) for c in rng.integers(0, 256, 3)]
    opacity = _u(rng, 0.6, 1.0, 3)
    size = round(rel * min(h, w))
    out = draw_logo(img, letters, size, corner, shape, colour, opacity)
    return out, {"size_rel": rel, "letters": letters, "corner": corner, "shape": shape, "colour": colour,
                 "opacity": opacity}


def _hflip(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, Params]:
    return hflip(img), {}


def _rotate(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, Params]:
    deg = _u(rng, 3, 15, 2) * (1 if rng.random() < 0.5 else -1)
    return rotate(img, deg), {"degrees": deg}


def _pip(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, Params]:
    h, w = img.shape[:2]
    area = _u(rng, 0.30, 0.60, 3)
    canvas = resize(ctx.get_background(rng, w, h), w, h)
    s = area ** 0.5
    fw, fh = max(8, round(w * s)), max(8, round(h * s))
    x0, y0 = int(rng.integers(0, w - fw + 1)), int(rng.integers(0, h - fh + 1))
    return paste(canvas, resize(img, fw, fh), x0, y0), {"area": area, "x0": x0, "y0": y0, "w": fw, "h": fh}


def _grayscale(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, Params]:
    return grayscale(img), {}


def _pad(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, Params]:
    h, w = img.shape[:2]
    vertical = bool(rng.random() < 0.5)  # letterbox: bars above and below
    total = _u(rng, 0.15, 0.5, 3)
    split = _u(rng, 0.3, 0.7, 3)
    colour = [0, 0, 0] if rng.random() < 0.7 else [int(c) for c in rng.integers(0, 256, 3)]
    n = round(total * (h if vertical else w))
    a, b = round(n * split), n - round(n * split)
    out = pad(img, a, b, 0, 0, colour) if vertical else pad(img, 0, 0, a, b, colour)
    return out, {"letterbox": vertical, "added": total, "split": split, "colour": colour}


def _stretch(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, Params]:
    h, w = img.shape[:2]
    f = _u(rng, 0.65, 0.8, 3) if rng.random() < 0.5 else _u(rng, 1.25, 1.55, 3)
    return resize(img, max(8, round(w * f)), h), {"width_factor": f}


def _noise(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, Params]:
    sigma = _u(rng, 8, 25, 2)
    return add_noise(img, rng.normal(0.0, sigma, img.shape).astype(np.float32)), {"sigma": sigma}


def _perspective(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, Params]:
    h, w = img.shape[:2]
    d = np.round(rng.uniform(0, 0.12, size=(4, 2)), 4)
    inward = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], np.float64)
    base = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    corners = base + inward * d * np.array([w, h])
    return perspective(img, corners), {"shift": d.tolist()}


#: edits a combo chains (each at most once, in the order drawn)
COMBO_POOL = ("crop_mild", "rescale_jpeg", "caption", "logo", "brightness_contrast", "hflip", "blur", "pad",
              "grayscale", "rotate", "noise")


def _combo(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, Params]:
    k = int(rng.integers(2, 4))
    names = [COMBO_POOL[i] for i in rng.choice(len(COMBO_POOL), size=k, replace=False)]
    steps = []
    for name in names:
        img, p = EDITS[name](img, rng, ctx)
        steps.append({"edit": name, **p})
    return img, {"steps": steps}


EDITS: dict[str, Edit] = {e.name: e for e in [
    Edit("rescale_jpeg", _rescale_jpeg, "sides x0.25-0.6, JPEG quality 15-50"),
    Edit("crop_mild", _crop_mild, "keep 70-90 % of width and height"),
    Edit("crop_strong", _crop_strong, "keep 40-60 % of width and height"),
    Edit("blur", _blur, "Gaussian blur, sigma 0.5-1.2 % of the short side"),
    Edit("brightness_contrast", _brightness_contrast, "contrast x0.5-1.6, brightness -60..+60"),
    Edit("caption", _caption, "text band 10-20 % of the height, or outlined text"),
    Edit("logo", _logo, "logo 12-25 % of the short side in a corner, opacity 0.6-1"),
    Edit("hflip", _hflip, "mirrored left-right"),
    Edit("rotate", _rotate, "rotated 3-15 degrees, black corners"),
    Edit("pip", _pip, "frame at 30-60 % of the area on another photo"),
    Edit("grayscale", _grayscale, "luma only"),
    Edit("pad", _pad, "letterbox or pillarbox bars adding 15-50 %"),
    Edit("stretch", _stretch, "width x0.65-0.8 or x1.25-1.55"),
    Edit("noise", _noise, "Gaussian noise, sigma 8-25 levels"),
    Edit("perspective", _perspective, "corners moved in by 0-12 %"),
    Edit("combo", _combo, "2-3 of the above chained"),
]}

#: every edit, in table order
DEFAULT_EDITS: tuple[str, ...] = tuple(EDITS)


def get_edits(names: Sequence[str] | None = None) -> list[Edit]:
    """The edits called ``names`` (all of them for None); ValueError naming any unknown one."""
    if names is None:
        return list(EDITS.values())
    unknown = [n for n in names if n not in EDITS]
    if unknown:
        raise ValueError(f"unknown edit(s) {', '.join(unknown)}; known: {', '.join(EDITS)}")
    if not names:
        raise ValueError("give at least one edit")
    return [EDITS[n] for n in dict.fromkeys(names)]
