"""Finding and decoding video files (OpenCV/FFmpeg), with timestamps taken from the stream.

``VideoReader`` walks a video one decoded frame at a time: iterating ``grab()``s the next frame
(decode only, no colour conversion) and yields ``(frame_index, timestamp_s)``; ``retrieve()``
converts the frame just grabbed to RGB, so frames nobody keeps are never converted.

Timestamps are ``CAP_PROP_POS_MSEC`` after each grab, not ``index / fps``: headers lie (tree.avi
declares 444 frames at 15 fps, 68 decode, spread over the same 29.5 s). Stream timestamps can be
garbage too (Megamind_bugy.avi reports 0.0 ms for its last frame, as FFmpeg does for a frame
without a pts), so a value that is not finite, negative, not after the previous one, or absurdly
far ahead is replaced by previous + typical frame interval; the result is strictly increasing.
"""

from __future__ import annotations

import collections
import math
import os
import statistics
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType

import cv2  # (quiet: framesim/__init__.py sets OPENCV_FFMPEG_LOGLEVEL before any cv2 import)
import numpy as np

VIDEO_EXTENSIONS: frozenset[str] = frozenset({
    ".mp4", ".m4v", ".mov", ".qt", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".mpe", ".m2v", ".vob",
    ".ts", ".mts", ".m2ts", ".wmv", ".asf", ".flv", ".f4v", ".3gp", ".3g2", ".ogv", ".ogg", ".mxf",
    ".divx", ".dv", ".y4m", ".rm", ".rmvb", ".nut",
})

#: how many recent frame intervals estimate the "typical" one used to repair timestamps
_INTERVAL_HISTORY = 25
#: a forward jump is garbage only if it is this many typical intervals and this many seconds ...
_ABSURD_JUMP_INTERVALS = 10_000
_ABSURD_JUMP_SECONDS = 600.0
#: ... and beyond the declared duration by this many seconds
_ABSURD_PAST_DURATION_S = 60.0
#: decoding that stops before this fraction of the declared duration means the file broke off
COMPLETE_FRACTION = 0.9


class VideoError(RuntimeError):
    """A video cannot be (fully) decoded; the message is ``"<path>: <reason>"``, one line."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(reason.split())  # one line, whatever the reason text holds
        super().__init__(f"{self.path}: {self.reason}")


def find_videos(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Video files among ``paths``, in the order given; folders are searched recursively.

    Inside a folder, files with a video extension (case-insensitive) are taken in sorted order,
    skipping hidden files and folders; symlinked folders are not followed (no loops). A path named
    explicitly is returned as is, whatever its extension and even if it does not exist, so that
    the caller reports it as a failure instead of silently ignoring it. Duplicates are dropped.
    """
    found: list[Path] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            found.append(p)

    for p in map(Path, paths):
        if not p.is_dir():
            add(p)
            continue
        hits: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(p, followlinks=False):
            here = Path(dirpath)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            hits.extend(here / f for f in filenames
                        if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_EXTENSIONS
                        and (here / f).is_file())
        for f in sorted(hits, key=lambda f: f.relative_to(p).parts):
            add(f)
    return found


def check_video_file(path: str | os.PathLike[str]) -> None:
    """Raise ``VideoError`` unless ``path`` is a non-empty regular file this process may read
    (checked before a decoder sees it, so the reason is precise and a FIFO never blocks)."""
    path = Path(path)
    if not path.exists():
        raise VideoError(path, "no such file")
    if not path.is_file():
        raise VideoError(path, "not a regular file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise VideoError(path, f"cannot read ({exc.strerror or exc})") from exc
    if size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise VideoError(path, "permission denied")


#: top-level box types that mark an ISO base media file (MP4, MOV, M4V, 3GP) from its first bytes
_ISO_BMFF_BOXES = frozenset({b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"})


def _iso_bmff_problem(path: Path) -> str | None:
    """What is wrong with an MP4/MOV's top-level boxes, or None (also for other formats).

    The index that says where each frame is (``moov``) usually comes last, so a download or copy that
    stopped early has frame data but no index and no decoder can use it: say so, instead of FFmpeg's
    "invalid data". Reads only the box headers.
    """
    size = path.stat().st_size
    seen: set[bytes] = set()
    with open(path, "rb") as fh:
        if fh.read(8)[4:8] not in _ISO_BMFF_BOXES:
            return None
        pos = 0
        while pos < size:
            fh.seek(pos)
            header = fh.read(16)
            if len(header) < 8:
                return f"truncated MP4/MOV: it ends inside a box header at byte {pos:,}"
            box_size, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if box_size == 1 and len(header) == 16:  # a 64-bit size follows the type
                box_size = int.from_bytes(header[8:16], "big")
            elif box_size == 0:  # the box runs to the end of the file
                box_size = size - pos
            if box_size < 8:
                return f"corrupt MP4/MOV structure (a box of impossible size at byte {pos})"
            seen.add(kind)
            if pos + box_size > size:
                where = "" if b"moov" in seen else ", before the index (moov box) that locates the frames"
                return (f"truncated MP4/MOV: it ends inside its {kind.decode('latin-1')!r} box{where}, at {size:,} "
                        f"of {pos + box_size:,} bytes (an interrupted download or copy?)")
            pos += box_size
    if b"moov" not in seen:
        return "incomplete MP4/MOV: no index (moov box), as a recording that was never finished"
    return None


def unopenable_reason(path: str | os.PathLike[str]) -> str:
    """Why a decoder could not open ``path``, as precisely as the file allows: truncated MP4/MOV,
    no video stream (audio only), not a video at all, or a codec the decoder lacks."""
    path = Path(path)
    try:
        problem = _iso_bmff_problem(path)
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    if problem:
        return problem
    import av  # PyAV probes what FFmpeg makes of the file: only here, when OpenCV gave up

    from framesim.keyframes import open_container

    try:
        container, fh = open_container(path)
    except av.error.InvalidDataError:
        return "not a video (FFmpeg recognises no format in it, or the file is corrupt)"
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        return f"cannot open as a video ({getattr(exc, 'strerror', None) or exc})"
    try:
        streams = collections.Counter(s.type for s in container.streams)
        if not container.streams.video:
            held = ", ".join(f"{n} {kind}" for kind, n in sorted(streams.items())) or "nothing"
            return f"no video stream (the file holds {held} stream{'s' if sum(streams.values()) != 1 else ''})"
        ctx = container.streams.video[0].codec_context
        if ctx is None:
            return "cannot open as a video (its video stream names no codec FFmpeg knows: a damaged header?)"
        return f"cannot open as a video (its {ctx.name} stream: a codec or container variant the decoder lacks?)"
    finally:
        container.close()
        if fh is not None:
            fh.close()


def _open_capture(path: Path) -> cv2.VideoCapture:
    """Open with the FFmpeg backend by absolute path.

    Absolute, because FFmpeg reads ``name:...`` as a protocol; FFmpeg explicitly, because the
    automatic choice may pick the image-sequence backend, which reads ``%d`` in a name as a
    pattern. OpenCV's own warnings about a file it cannot open are silenced: we raise instead.
    """
    api = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
    log = cv2.utils.logging
    old_level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(os.path.abspath(path), api)
    finally:
        log.setLogLevel(old_level)


class TimestampRepair:
    """Turns the stream's per-frame positions (ms) into strictly increasing timestamps (s).

    A value is genuine unless it is not finite, negative (first frame), not after the last genuine
    value, or an absurd jump ahead (more than 10 000 typical intervals and 600 s, and past the
    declared duration + 60 s). A value that is not genuine becomes previous + the smaller of the
    typical interval (median of the last 25 genuine intervals; before any: 1 / nominal fps, else 1/25 s)
    and the last genuine interval, which follows a change of frame rate at once. A genuine value is
    taken as is, or just after the previous timestamp while a repaired one ran ahead of the stream:
    the clock falls back onto the stream's own instead of drifting (a variable-frame-rate H.264 with
    a repeated pts once pushed every later frame 0.2 s further out). Causal (depends only on earlier
    frames), so a resumed pass repeats it exactly.
    """

    def __init__(self, nominal_fps: float = 0.0, declared_duration: float | None = None) -> None:
        self.nominal_fps = nominal_fps
        self.declared_duration = declared_duration
        self.first: float | None = None
        self.last: float | None = None
        #: how many values were replaced or moved
        self.repaired = 0
        self._intervals: collections.deque[float] = collections.deque(maxlen=_INTERVAL_HISTORY)
        self._last_genuine: float | None = None  # the stream's last usable value, as it gave it
        self._last_was_genuine = False

    @property
    def typical_interval(self) -> float:
        if self._intervals:
            return statistics.median(self._intervals)
        return 1.0 / self.nominal_fps if self.nominal_fps > 0 else 0.04

    def _is_absurd_jump(self, raw: float, since: float) -> bool:
        # the typical interval (a median) only when needed: this runs for every decoded frame
        return (raw - since > _ABSURD_JUMP_SECONDS and raw - since > _ABSURD_JUMP_INTERVALS * self.typical_interval
                # only provably absurd: beyond what the header says the video lasts
                and self.declared_duration is not None and raw > self.declared_duration + _ABSURD_PAST_DURATION_S)

    def __call__(self, raw_ms: float) -> float:
        raw = raw_ms / 1000.0
        prev, since = self.last, self._last_genuine
        genuine = math.isfinite(raw) and raw >= 0 and (since is None or (raw > since
                                                                         and not self._is_absurd_jump(raw, since)))
        if prev is None:
            t = raw if genuine else 0.0
        elif genuine:
            t = raw if raw > prev else math.nextafter(prev, math.inf)
        else:
            step = self.typical_interval
            if self._intervals and self._last_was_genuine:
                step = min(step, self._intervals[-1])
            t = prev + step
        if genuine:
            if self._last_was_genuine and since is not None:  # learn intervals from genuine pairs only
                self._intervals.append(raw - since)
            self._last_genuine = raw
        self._last_was_genuine = genuine
        self.repaired += t != raw
        if self.first is None:
            self.first = t
        self.last = t
        return t


class VideoReader:
    """A context manager over ``cv2.VideoCapture`` that yields frames with repaired timestamps.

    >>> with VideoReader("clip.mp4") as video:       # doctest: +SKIP
    ...     for index, t in video:                    # grab only
    ...         if index % 25 == 0:
    ...             rgb = video.retrieve()            # decode to RGB only what is kept
    ...     problem = video.incomplete_reason()       # None, or why it looks broken off

    Header values (``fps``, ``frame_count``, ``width``, ``height``) are what the container says,
    0 when it says nothing sensible; trust the decoded frames' shapes and ``timestamps`` instead.
    Opening raises ``VideoError`` for a missing, empty or undecodable file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        check_video_file(self.path)
        try:
            self._cap = _open_capture(self.path)
        except cv2.error as exc:
            raise VideoError(path, f"cannot open as a video ({exc})") from exc
        if not self._cap.isOpened():
            self._cap.release()
            raise VideoError(path, unopenable_reason(path))

        fps = self._cap.get(cv2.CAP_PROP_FPS)
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        #: nominal frame rate from the header; 0.0 when missing or absurd
        self.fps: float = float(fps) if math.isfinite(fps) and 0 < fps <= 1000 else 0.0
        #: frame count the header declares (often an estimate); 0 when unknown
        self.frame_count: int = int(count) if math.isfinite(count) and 0 < count < 2**40 else 0
        self.width: int = max(0, int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)))
        self.height: int = max(0, int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        #: frames grabbed so far (the next frame's index)
        self.frames_decoded = 0
        #: True once decoding has run to the end of what the file gives
        self.ended = False
        self._clock = TimestampRepair(self.fps, self.declared_duration)
        self._iterating = False

    # -- header ---------------------------------------------------------------------------------
    @property
    def declared_duration(self) -> float | None:
        """frame_count / fps from the header, or None when either is unknown."""
        return self.frame_count / self.fps if self.frame_count and self.fps else None

    @property
    def typical_interval(self) -> float:
        """Median of recent frame intervals; before any, 1 / nominal fps (or 1/25 s)."""
        return self._clock.typical_interval

    @property
    def frames_read(self) -> int:
        """Frames of the stream gone through so far (here: grabbed; see KeyframeReader)."""
        return self.frames_decoded

    @property
    def timestamps_repaired(self) -> int:
        """How many stream timestamps were unusable and replaced."""
        return self._clock.repaired

    @property
    def first_timestamp(self) -> float | None:
        return self._clock.first

    @property
    def last_timestamp(self) -> float | None:
        return self._clock.last

    # -- decoding -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[int, float]]:
        """Grab frames to the end, yielding ``(index, timestamp_s)``; one pass per reader."""
        if self._iterating or self.frames_decoded:
            raise RuntimeError(f"{self.path}: a VideoReader can be iterated only once")
        self._iterating = True
        return self._frames()

    def _frames(self) -> Iterator[tuple[int, float]]:
        while True:
            try:
                ok = self._cap.grab()
            except cv2.error as exc:
                raise VideoError(self.path, f"decoding failed after {self.frames_decoded} frames ({exc})") from exc
            if not ok:
                self.ended = True
                return
            t = self._clock(self._cap.get(cv2.CAP_PROP_POS_MSEC))
            index = self.frames_decoded
            self.frames_decoded += 1
            yield index, t

    def retrieve_bgr(self) -> np.ndarray:
        """The frame last grabbed, as BGR uint8 (OpenCV's native order)."""
        if not self.frames_decoded:
            raise RuntimeError("retrieve() before the first grab")
        try:
            ok, bgr = self._cap.retrieve()
        except cv2.error as exc:
            raise VideoError(self.path, f"frame {self.frames_decoded - 1} could not be decoded ({exc})") from exc
        if not ok or bgr is None or bgr.size == 0:
            raise VideoError(self.path, f"frame {self.frames_decoded - 1} could not be decoded")
        if bgr.ndim == 2:  # some backends hand out greyscale for grey sources
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        return bgr

    def retrieve_bgr_deferred(self) -> Callable[[], np.ndarray]:
        """The frame last grabbed as a function returning BGR uint8 (the interface KeyframeReader
        offers; OpenCV must convert the frame before the next grab, so this converts now)."""
        bgr = self.retrieve_bgr()
        return lambda: bgr

    def retrieve(self) -> np.ndarray:
        """The frame last grabbed, as RGB uint8 (H, W, 3)."""
        return cv2.cvtColor(self.retrieve_bgr(), cv2.COLOR_BGR2RGB)

    # -- after decoding -------------------------------------------------------------------------
    def incomplete_reason(self) -> str | None:
        """Once decoding has ended: why the video looks broken off, or None if it looks whole.

        Frame counts in headers are often estimates, and variable-frame-rate files can declare
        many more frames than they hold (tree.avi: 444 declared, 68 decoded over the declared
        29.6 s). So the rule compares *time*: decoding that stops before 90 % of the declared
        duration (frame_count / fps) is a file that broke off (truncated, corrupt). Without a
        usable fps it falls back to 90 % of the declared frames. Missing at most 1 frame is fine.
        """
        n, m = self.frames_decoded, self.frame_count
        if n == 0:
            return "no frame could be decoded"
        if not m or m - n < 2:
            return None
        declared = self.declared_duration
        if declared is not None and self.last_timestamp is not None:
            covered = self.last_timestamp + self.typical_interval
            if covered >= COMPLETE_FRACTION * declared:
                return None
            return (f"decoded {n} of {m} frames the header declares; decoding stopped at "
                    f"{self.last_timestamp:.2f} s of {declared:.2f} s (truncated or corrupt file?)")
        if n >= COMPLETE_FRACTION * m:
            return None
        return f"decoded {n} of {m} frames the header declares (truncated or corrupt file?)"

    def header_note(self) -> str | None:
        """A remark when the header disagrees with what decoded but the video still looks whole."""
        n, m = self.frames_decoded, self.frame_count
        notes = []
        if self.ended and m and n != m and self.incomplete_reason() is None and abs(n - m) >= 2:
            notes.append(f"decoded {n} of {m} frames the header declares, over its whole duration "
                         f"(variable frame rate or dropped frames)")
        if self.timestamps_repaired:
            notes.append(f"repaired {self.timestamps_repaired} unusable stream timestamp(s)")
        return "; ".join(notes) or None

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"VideoReader({str(self.path)!r}, {self.width}x{self.height}, fps={self.fps:.3f}, "
                f"frame_count={self.frame_count})")
