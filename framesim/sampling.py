"""Which decoded frames to keep: pure policy over (frame index, timestamp[, thumbnail]).

A sampler knows nothing of files or decoders. The extractor feeds it every decoded frame in order:

* ``wants(index, t)`` is asked first, with no pixels. Samplers that do not need pixels
  (``needs_pixels = False``) decide here, so the extractor can skip converting frames it drops.
* If ``needs_pixels`` is true and ``wants`` said yes, the extractor makes ``thumbnail(bgr)`` of
  the frame and asks ``keep(index, t, thumb)`` for the final answer.

Samplers carry state (the next target time, the last kept thumbnail), so feed each video to a
fresh sampler (``reset()``) from its first frame: decisions then depend only on the video, which
is what lets an interrupted extraction be resumed with exactly the same frames.
"""

from __future__ import annotations

import abc
import base64
import math
from typing import Any

import cv2
import numpy as np

#: tolerance (seconds) when comparing a frame's timestamp with a target time; stream timestamps
#: come back as float milliseconds (e.g. 25 * 0.04 s is not exactly 1.0)
TIME_EPS = 1e-6

#: thumbnail size (width, height) the scene sampler compares; small enough to be cheap and to
#: average away compression noise, large enough to see a cut in a part of the picture
SCENE_THUMB_SIZE = (32, 32)

#: default scene threshold: mean absolute difference of 32x32 colour thumbnails, on a 0..1 scale
DEFAULT_SCENE_THRESHOLD = 0.1


class Sampler(abc.ABC):
    """Decides, frame by frame, which frames of one video to keep."""

    #: True when the decision needs the frame's pixels (``keep`` with a thumbnail)
    needs_pixels: bool = False

    def reset(self) -> None:
        """Forget everything seen; call before the first frame of a video."""
        return None  # stateless by default

    @abc.abstractmethod
    def wants(self, index: int, t: float) -> bool:
        """Decide from the 0-based decoded frame index and its timestamp (seconds) alone.

        For samplers that need pixels, True means "show me this frame" (then ``keep`` decides).
        """

    def thumbnail(self, bgr: np.ndarray) -> np.ndarray:
        """The small summary of a frame that ``keep`` compares (unused by pixel-free samplers)."""
        return bgr

    def keep(self, index: int, t: float, thumb: np.ndarray) -> bool:
        """Final decision for samplers that need pixels; only called after ``wants`` said yes."""
        return True

    def state(self) -> dict[str, Any] | None:
        """JSON-able state that ``restore`` accepts, for samplers whose state cannot be rebuilt
        cheaply by replaying ``wants`` (those that need pixels); None otherwise."""
        return None

    def restore(self, state: dict[str, Any]) -> None:
        """Continue as if the frames that produced ``state`` had just been seen."""
        return None  # nothing to restore by default

    @abc.abstractmethod
    def spec(self) -> str:
        """A short canonical description, e.g. ``fps=1``; equal specs make equal decisions."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()})"


def _fmt(x: float) -> str:
    """Canonical short text for a number, so 1, 1.0 and 1.00 give the same spec."""
    return f"{x:.6g}"


class FpsSampler(Sampler):
    """Keep the first frame at or after each tick of a clock running at ``fps`` ticks per second.

    The ticks are ``origin + k / fps`` (origin = the range start, default 0), computed from k
    rather than accumulated, so there is no drift. Timestamps come from the stream, so variable
    frame rate videos are sampled evenly in time. After a gap longer than one tick (a frame
    rate lower than ``fps``), the next frame is kept once, not once per missed tick.
    """

    def __init__(self, fps: float = 1.0, origin: float = 0.0) -> None:
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        self.fps = float(fps)
        self.origin = float(origin)
        self.reset()

    def reset(self) -> None:
        self._next_t = -math.inf

    def wants(self, index: int, t: float) -> bool:
        if t + TIME_EPS < self._next_t:
            return False
        # the next tick strictly after t: origin + k/fps with k = floor((t - origin) * fps) + 1
        k = math.floor((t - self.origin) * self.fps + TIME_EPS * self.fps) + 1
        self._next_t = self.origin + k / self.fps
        return True

    def spec(self) -> str:
        return f"fps={_fmt(self.fps)}" + (f",origin={_fmt(self.origin)}" if self.origin else "")


class EveryNSampler(Sampler):
    """Keep decoded frames 0, N, 2N, ... (counted over all decoded frames of the video)."""

    def __init__(self, every: int) -> None:
        if isinstance(every, bool) or int(every) != every or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.every = int(every)

    def wants(self, index: int, t: float) -> bool:
        return index % self.every == 0

    def spec(self) -> str:
        return f"every={self.every}"


class SceneSampler(Sampler):
    """Keep a frame when the picture differs from the last kept frame by more than ``threshold``.

    Difference = mean absolute difference of 32x32 colour thumbnails (area-averaged, BGR), divided
    by 255, so it lies in 0..1: 0 = identical, ~0.01-0.05 = the same shot with motion or noise,
    ~0.15-0.5 = a different shot. Default 0.1. Comparing with the last *kept* frame (not the
    previous frame) means a slow pan or fade also yields a new frame once it has drifted far
    enough. The first frame the sampler sees is always kept.
    """

    needs_pixels = True

    def __init__(self, threshold: float = DEFAULT_SCENE_THRESHOLD) -> None:
        if not (math.isfinite(threshold) and 0 < threshold < 1):
            raise ValueError(f"scene threshold must be between 0 and 1 (exclusive), got {threshold!r}")
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        self._ref: np.ndarray | None = None
        self.last_difference: float | None = None

    def wants(self, index: int, t: float) -> bool:
        return True

    def thumbnail(self, bgr: np.ndarray) -> np.ndarray:
        return cv2.resize(bgr, SCENE_THUMB_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)

    def difference(self, a: np.ndarray, b: np.ndarray) -> float:
        """Mean absolute difference of two thumbnails on a 0..1 scale."""
        return float(np.mean(np.abs(a - b))) / 255.0

    def keep(self, index: int, t: float, thumb: np.ndarray) -> bool:
        if self._ref is None or self._ref.shape != thumb.shape:
            self._ref, self.last_difference = thumb, None
            return True
        self.last_difference = self.difference(thumb, self._ref)
        if self.last_difference > self.threshold:
            self._ref = thumb
            return True
        return False

    def state(self) -> dict[str, Any] | None:
        if self._ref is None:
            return {"ref": None}
        ref = self._ref.astype(np.uint8)  # thumbnails hold whole numbers (a uint8 image, resized)
        return {"ref": base64.b64encode(ref.tobytes()).decode("ascii"), "shape": list(ref.shape)}

    def restore(self, state: dict[str, Any]) -> None:
        self.reset()
        if state.get("ref") is not None:
            raw = np.frombuffer(base64.b64decode(state["ref"]), dtype=np.uint8)
            self._ref = raw.reshape(state["shape"]).astype(np.float32)

    def spec(self) -> str:
        return f"scene={_fmt(self.threshold)}"


class KeyframeSampler(Sampler):
    """For keyframe mode, where the extractor feeds only keyframes: keep them all, or with ``fps``
    only a keyframe at least 1/fps s after the last one kept.

    Thinning by distance, not by clock ticks: keyframes are not on a grid, and "no two frames
    closer than 1/fps" is what ``fps`` can promise about them. Its spec starts with ``keyframes``,
    so the extractor's resume records keep keyframe runs apart from runs over all frames.
    """

    def __init__(self, fps: float | None = None) -> None:
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        self.fps = None if fps is None else float(fps)
        self.reset()

    def reset(self) -> None:
        self._last_kept = -math.inf

    def wants(self, index: int, t: float) -> bool:
        if self.fps is not None and t + TIME_EPS < self._last_kept + 1.0 / self.fps:
            return False
        self._last_kept = t
        return True

    def spec(self) -> str:
        return "keyframes" + (f",fps={_fmt(self.fps)}" if self.fps is not None else "")


def make_sampler(fps: float | None = 1.0, every: int | None = None, scene: float | None = None,
                 *, origin: float = 0.0, keyframes: bool = False) -> Sampler:
    """The sampler for CLI-style options: ``scene`` or ``every`` if given, else ``fps``.

    ``fps`` is a default, so it yields to an explicit ``every`` or ``scene``; giving both ``every``
    and ``scene`` is an error. ``origin`` anchors the fps clock (the extraction range's start).
    ``keyframes``: a ``KeyframeSampler`` thinned by ``fps`` (None: every keyframe); ``every`` and
    ``scene`` need every decoded frame, so they cannot be combined with it.
    """
    if keyframes:
        if every is not None or scene is not None:
            raise ValueError("keyframes mode decodes only keyframes; every and scene need every frame "
                             "(use fps to thin keyframes)")
        return KeyframeSampler(fps)
    if every is not None and scene is not None:
        raise ValueError("give at most one of every and scene")
    if scene is not None:
        return SceneSampler(scene)
    if every is not None:
        return EveryNSampler(every)
    if fps is None:
        raise ValueError("give one of fps, every or scene")
    return FpsSampler(fps, origin=origin)
