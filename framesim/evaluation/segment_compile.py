"""Rendering for the segment benchmark (``framesim.evaluation.segment_benchmark``): video-suitable
edits, fitting frames into the query canvas, slow pan/zoom clips of stills, collecting time spans of
a video in one decoding pass, and writing query videos.

* **Edits** (``VIDEO_EDITS``) are ``framesim.evaluation.edits`` edits, or chains of their
  primitives, that make sense for every frame of a clip. A segment's edit is applied to each frame
  with an RNG re-seeded from the segment's seed, so parameters drawn from it (crop box, caption,
  noise field, ...) are identical on every frame: the edit is constant over the clip, as when a
  re-uploader edits a video, not a new random edit every frame.
* **Canvas**: a query has one size and frame rate. A source frame is first scaled to the size it
  will occupy in the canvas (aspect kept), edited there (edit sizes are relative, so a caption looks
  the same; a re-encode degrades the picture as it will be seen), then letterboxed into the canvas
  (an edit that changes the aspect ratio, ``pad`` or a crop, is letterboxed again).
* **Spans** are collected in one sequential pass (seeking is not frame-exact): every decoded frame
  with ``start_s <= t < stop_s`` is kept, edited and letterboxed, as JPEG (quality 95) in memory
  (about 40 KB a frame at 480x270), with the time of the first frame after the span, which gives
  the last kept frame's duration.
* **Writing**: ffmpeg (libx264, CRF 23, preset superfast, so the whole query is re-encoded once more) when it is
  installed, else OpenCV's ``VideoWriter`` (MPEG-4 part 2, ``mp4v``); either way through a
  temporary file renamed over the target (``framesim._io.atomic_path``).
* **Ken Burns** clips (a slow pan and zoom over a still, after the documentary technique) make
  moving filler from photos: a window of the canvas's aspect, 1/zoom of the largest one the image
  holds, moves and zooms linearly from a start to an end placement.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np

from framesim._io import atomic_path
from framesim.evaluation.edits import EDITS, Edit, EditContext, add_noise, jpeg, resize
from framesim.video import VideoError, VideoReader

#: quality of the in-memory copies of rendered frames (visually lossless; the query is encoded after)
BUFFER_JPEG_QUALITY = 95
X264_CRF = 23
#: x264 speed preset: "superfast" encodes ~1.6x faster than "veryfast" for ~50 % more bytes at the same CRF
X264_PRESET = "superfast"
KEN_BURNS_ZOOM = (1.0, 1.35)
#: a Ken Burns start and end zoom at least this far apart, so the picture visibly moves
KEN_BURNS_MIN_ZOOM_CHANGE = 0.08

Image = np.ndarray


# ------------------------------------------------------------------------------ edits


def _uniform(rng: np.random.Generator, lo: float, hi: float, digits: int = 4) -> float:
    return round(float(rng.uniform(lo, hi)), digits)


def _reencode(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, dict[str, Any]]:
    h, w = img.shape[:2]
    scale = _uniform(rng, 0.25, 0.5)
    quality = int(rng.integers(20, 41))
    small = resize(img, max(16, round(w * scale)), max(16, round(h * scale)))
    return resize(jpeg(small, quality), w, h), {"scale": scale, "quality": quality}


def _crop_rescale(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, dict[str, Any]]:
    h, w = img.shape[:2]
    cropped, params = EDITS["crop_mild"](img, rng, ctx)
    return resize(cropped, w, h), params


def _caption_logo(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, dict[str, Any]]:
    out, caption = EDITS["caption"](img, rng, ctx)
    out, logo = EDITS["logo"](out, rng, ctx)
    return out, {"caption": caption, "logo": logo}


def _noise(img: Image, rng: np.random.Generator, ctx: EditContext) -> tuple[Image, dict[str, Any]]:
    # edits.EDITS["noise"] with a float32 field: a third of the time, which counts on every frame
    sigma = _uniform(rng, 8, 25, 2)
    return add_noise(img, rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)), {"sigma": sigma}


#: edits for clips, in table order (the default set of the segment benchmark)
VIDEO_EDITS: dict[str, Edit] = {e.name: e for e in [
    Edit("reencode", _reencode, "sides x0.25-0.5 and back, JPEG quality 20-40 per frame"),
    Edit("crop_rescale", _crop_rescale, "keep 70-90 % of width and height, scaled back to full size"),
    Edit("caption_logo", _caption_logo, "caption band or outlined text, plus a logo in a corner"),
    EDITS["hflip"], EDITS["brightness_contrast"], EDITS["blur"],
    Edit("noise", _noise, "Gaussian noise, sigma 8-25 levels (the same field on every frame)"),
    EDITS["grayscale"], EDITS["pad"],
]}


def get_video_edits(names: Sequence[str] | None = None) -> list[Edit]:
    """The clip edits called ``names`` (``VIDEO_EDITS``, or any image edit of ``edits.EDITS``);
    all of ``VIDEO_EDITS`` for None. ValueError naming an unknown one."""
    if names is None:
        return list(VIDEO_EDITS.values())
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("edits: give at least one edit")
    known = {**EDITS, **VIDEO_EDITS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown edit(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in dict.fromkeys(names)]


def apply_constant(edit: Edit, img: Image, seed: Sequence[int], ctx: EditContext) -> tuple[Image, dict[str, Any]]:
    """``edit`` with the RNG re-seeded from ``seed``: the same parameters on every frame of a clip."""
    return edit(img, np.random.default_rng(list(seed)), ctx)


# ------------------------------------------------------------------------------ canvas


def fit_rect(src_w: int, src_h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) of a ``src_w`` x ``src_h`` picture scaled to fit, centred, in width x height."""
    scale = min(width / src_w, height / src_h)
    w, h = min(width, max(2, round(src_w * scale))), min(height, max(2, round(src_h * scale)))
    return (width - w) // 2, (height - h) // 2, w, h


def prescale(img: Image, width: int, height: int) -> Image:
    """``img`` scaled to the size it will fill in a width x height canvas (aspect kept)."""
    _, _, w, h = fit_rect(img.shape[1], img.shape[0], width, height)
    return img if (w, h) == (img.shape[1], img.shape[0]) else resize(img, w, h)


def letterbox(img: Image, width: int, height: int) -> Image:
    """``img`` fitted, centred, into a black width x height canvas."""
    if img.shape[:2] == (height, width):
        return img
    x0, y0, w, h = fit_rect(img.shape[1], img.shape[0], width, height)
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas[y0:y0 + h, x0:x0 + w] = resize(img, w, h)
    return canvas


def render(img: Image, edit: Edit, seed: Sequence[int], ctx: EditContext,
           size: tuple[int, int]) -> tuple[Image, dict[str, Any]]:
    """A source frame as it appears in the query: prescaled, edited (constant per clip), letterboxed (RGB)."""
    edited, params = apply_constant(edit, prescale(img, *size), seed, ctx)
    return letterbox(edited, *size), params


def encode_frame(rgb: Image) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY,
                                                                          BUFFER_JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding of a rendered frame failed")
    return buf.tobytes()


def decode_frame_bgr(data: bytes) -> Image:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


# ------------------------------------------------------------------------------ Ken Burns


def ken_burns_params(rng: np.random.Generator) -> dict[str, float]:
    """Start and end zoom and placement (0..1 across the room the window has) of a pan/zoom."""
    while True:
        z0, z1 = _uniform(rng, *KEN_BURNS_ZOOM, 3), _uniform(rng, *KEN_BURNS_ZOOM, 3)
        if abs(z1 - z0) >= KEN_BURNS_MIN_ZOOM_CHANGE:
            break
    px0, py0, px1, py1 = (_uniform(rng, 0.0, 1.0, 3) for _ in range(4))
    return {"zoom0": z0, "zoom1": z1, "x0": px0, "y0": py0, "x1": px1, "y1": py1}


def ken_burns_frame(img: Image, params: dict[str, float], u: float, width: int, height: int) -> Image:
    """The pan/zoom's view at progress ``u`` (0 = start, 1 = end) of ``img``, as a width x height RGB."""
    ih, iw = img.shape[:2]
    bw = min(iw, ih * width / height)  # the largest window of the canvas's aspect the image holds
    z = params["zoom0"] + (params["zoom1"] - params["zoom0"]) * u
    cw, ch = bw / z, bw / z * height / width
    px = params["x0"] + (params["x1"] - params["x0"]) * u
    py = params["y0"] + (params["y1"] - params["y0"]) * u
    left, top = px * (iw - cw), py * (ih - ch)
    sx, sy = width / cw, height / ch
    m = np.float32([[sx, 0, -left * sx], [0, sy, -top * sy]])
    return cv2.warpAffine(img, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def shrink_for_canvas(img: Image, width: int, height: int) -> Image:
    """A still reduced (area averaging) to at most twice what the canvas shows of it: a pan over a
    20-megapixel photo would otherwise alias, and cost a full-size warp per frame."""
    ih, iw = img.shape[:2]
    f = min(1.0, 2 * max(width / iw, height / ih))
    return img if f >= 1.0 else resize(img, max(2, round(iw * f)), max(2, round(ih * f)))


# ------------------------------------------------------------------------------ collecting spans


@dataclasses.dataclass
class SpanRequest:
    """Frames of one video with ``start_s <= t < stop_s``, rendered under one constant edit."""

    start_s: float
    stop_s: float
    edit: Edit
    seed: tuple[int, ...]
    #: (source timestamp, rendered frame as JPEG) in decoding order
    frames: list[tuple[float, bytes]] = dataclasses.field(default_factory=list)
    #: timestamp of the first frame at or after stop_s; None when the stream ended first
    next_ts: float | None = None
    params: dict[str, Any] | None = None
    done: bool = False


def collect_spans(path: str | os.PathLike[str], spans: Sequence[SpanRequest], size: tuple[int, int],
                  ctx: EditContext) -> float:
    """Fill ``spans`` from one sequential decoding of ``path``, up to the last frame any of them
    needs, and return the video's typical frame interval (the duration of a frame the stream ends
    on). A file that breaks off mid-way leaves the spans it did not reach short; opening errors
    raise ``VideoError``."""
    pending = sorted(spans, key=lambda s: s.start_s)
    active: list[SpanRequest] = []
    with VideoReader(path) as reader:
        try:
            for _, t in reader:
                while pending and pending[0].start_s <= t + 1e-9:
                    active.append(pending.pop(0))
                for span in active:
                    if t >= span.stop_s - 1e-9:
                        span.next_ts, span.done = float(t), True
                active = [s for s in active if not s.done]
                if not active:
                    if not pending:
                        break
                    continue
                scaled = prescale(reader.retrieve(), *size)
                for span in active:
                    edited, params = apply_constant(span.edit, scaled, span.seed, ctx)
                    span.params = params if span.params is None else span.params
                    span.frames.append((float(t), encode_frame(letterbox(edited, *size))))
        except VideoError:
            pass  # what was decoded is good; the spans it did not reach stay short
        return float(reader.typical_interval)


# ------------------------------------------------------------------------------ writing


@functools.lru_cache(maxsize=1)
def _ffmpeg_has_x264(ffmpeg: str) -> bool:
    try:
        out = subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return "libx264" in out.stdout


def resolve_encoder(encoder: str) -> str:
    """"ffmpeg" or "opencv" for ``encoder`` ("auto": ffmpeg with libx264 when installed)."""
    if encoder not in ("auto", "ffmpeg", "opencv"):
        raise ValueError(f"encoder must be 'auto', 'ffmpeg' or 'opencv', got {encoder!r}")
    ffmpeg = shutil.which("ffmpeg")
    usable = ffmpeg is not None and _ffmpeg_has_x264(ffmpeg)
    if encoder == "ffmpeg" and not usable:
        raise ValueError("encoder 'ffmpeg': no ffmpeg command with libx264 on PATH")
    if encoder == "auto":
        return "ffmpeg" if usable else "opencv"
    return encoder


@contextlib.contextmanager
def query_writer(path: str | os.PathLike[str], size: tuple[int, int], fps: float,
                 encoder: str) -> Iterator[Callable[[Image], None]]:
    """Yield ``write(bgr_frame)``; the finished video replaces ``path`` only if the block succeeds."""
    width, height = size
    with atomic_path(path) as tmp:
        media = tmp.with_name(tmp.name + ".mp4")  # the encoders choose the container by extension
        proc: subprocess.Popen[bytes] | None = None
        writer: cv2.VideoWriter | None = None
        try:
            if encoder == "ffmpeg":
                cmd = [shutil.which("ffmpeg") or "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                       "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-framerate", f"{fps:g}",
                       "-i", "-", "-an", "-c:v", "libx264", "-preset", X264_PRESET, "-crf", str(X264_CRF),
                       "-g", str(max(1, round(2 * fps))), "-pix_fmt", "yuv420p", str(media)]
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
                stdin = proc.stdin
                assert stdin is not None

                def write(frame: Image) -> None:
                    stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))

                yield write
                stdin.close()
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                if proc.wait() != 0:
                    raise RuntimeError(f"{path}: ffmpeg failed ({' '.join(err.split())[-300:]})")
            else:
                writer = cv2.VideoWriter(str(media), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
                if not writer.isOpened():
                    raise RuntimeError(f"{path}: OpenCV cannot open an mp4v video writer")
                yield writer.write
                writer.release()
                writer = None
            os.replace(media, tmp)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc is not None and proc.stderr is not None:
                proc.stderr.close()
            if writer is not None:
                writer.release()
            with contextlib.suppress(FileNotFoundError):
                media.unlink()
