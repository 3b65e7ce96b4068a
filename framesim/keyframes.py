"""Decoding only a video's keyframes with PyAV (FFmpeg): fast, coarse sampling.

Needs PyAV 15 or later (``CodecContext.flush_buffers`` came in 13, ``VideoFrame.rotation`` in 15).

``KeyframeReader`` offers the extractor the interface of ``VideoReader``: iterating yields
``(frame_index, timestamp_s)`` of each keyframe, ``retrieve_bgr()`` gives the one just yielded, and
``incomplete_reason()`` / ``header_note()`` judge the file afterwards. Every packet is read, but
only those the container flags as keyframes reach the decoder, each on its own (and the decoder
is told ``skip_frame = "NONKEY"``), which is a small part of the work of full decoding: 720p H.264
with a keyframe a second decodes at about 250x real time on one core (writing the frames costs more).

What the numbers mean, chosen so that a frame found by both modes is the same dataset frame:

* ``timestamp_s`` = (pts - stream start time) x time base: what the OpenCV path reports.
* ``frame_index`` = how many of the stream's packets (frames) come before the keyframe in
  presentation order, counted by their timestamps while demuxing (every packet is read; only
  keyframes are decoded): the frame's 0-based number in the stream, computed from its time. It is
  the number full decoding gives the same frame, also for variable-frame-rate video (tree.avi:
  68 frames over 29.5 s), as long as every packet decodes to one frame; packets the container
  marks as discarded are not counted. The pixels are identical too (with the PyAV and OpenCV
  wheels tested), and so is the sha256.
* Pixels are FFmpeg's BGR conversion, turned by the stream's display rotation like OpenCV does.

Keyframes are where the encoder put them, not on a clock: every GOP (often 1-10 s; one for a
short clip with a single keyframe) plus, with many encoders, scene cuts. All-intra codecs (MJPEG)
flag every frame, so there every frame is decoded. A keyframe without a usable timestamp, or not
after the previous one, is skipped and counted in ``header_note()``. Checked against full
decoding on H.264 (closed and open GOP, mp4/mkv/ts), VP9, MPEG-4 part 2 (also packed B-frames in
AVI), MJPEG, cinepak and a rotated mp4: same frame numbers, timestamps and pixels.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import av
import cv2
import numpy as np

from framesim.video import COMPLETE_FRACTION, VideoError, check_video_file, unopenable_reason

#: decode order runs at most this many packets ahead of presentation order (H.264/HEVC allow 16)
_REORDER_PACKETS = 16
#: packet times remembered for numbering keyframes (covers the reordering plus decoder delay)
_RECENT_PACKETS = 128
#: display rotation (degrees counter-clockwise, as FFmpeg gives it) -> the cv2.rotate that undoes it
_ROTATIONS = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}


def _reason(exc: BaseException) -> str:
    """FFmpeg's message without the file name PyAV appends (the caller names the file)."""
    return str(getattr(exc, "strerror", None) or exc)


def open_container(path: Path) -> tuple[Any, BinaryIO | None]:
    """(container, the Python file it reads, if one had to be opened)."""
    name = os.path.abspath(path)  # absolute: FFmpeg reads "name:..." as a protocol
    try:
        return av.open(name, metadata_errors="replace"), None
    except UnicodeEncodeError:  # a file name that is not valid UTF-8: Python opens it for FFmpeg
        fh = open(name, "rb")  # noqa: SIM115 (closed in KeyframeReader.close)
        try:
            return av.open(fh, metadata_errors="replace"), fh
        except BaseException:
            fh.close()
            raise


class KeyframeReader:
    """The keyframes of a video's first video stream, with times and frame numbers (see module doc).

    >>> with KeyframeReader("clip.mp4") as video:    # doctest: +SKIP
    ...     for index, t in video:
    ...         bgr = video.retrieve_bgr()
    ...     problem = video.incomplete_reason()

    Header values (``fps``, ``frame_count``, ``width``, ``height``, ``declared_duration``) are what
    the container says, 0/None when it says nothing. Opening raises ``VideoError`` for a missing,
    empty or undecodable file, or one without a video stream.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        check_video_file(self.path)
        try:
            self._container, self._file = open_container(self.path)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise VideoError(path, unopenable_reason(self.path)) from exc
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        if not self._container.streams.video:
            raise VideoError(self.path, unopenable_reason(self.path))
        stream = self._stream = self._container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None:  # a stream whose codec FFmpeg cannot tell (a damaged sample description)
            raise VideoError(self.path, unopenable_reason(self.path))
        ctx.skip_frame = "NONKEY"
        rate = next((r for r in (stream.average_rate, stream.guessed_rate, stream.base_rate)
                     if r and 0 < float(r) <= 1000), None)
        #: nominal frame rate from the header; 0.0 when missing or absurd
        self.fps: float = float(rate) if rate is not None else 0.0
        self._time_base: Fraction = stream.time_base or Fraction(1, 1)
        self._start_pts: int = stream.start_time or 0
        # like the OpenCV path: frame count / rate first (FFmpeg measures a truncated AVI's duration
        # from what is left of it, while its header still declares every frame), else durations
        duration = None
        if stream.frames and self.fps:
            duration = stream.frames / self.fps
        elif stream.duration:
            duration = float(stream.duration * self._time_base)
        elif self._container.duration:
            duration = self._container.duration / av.time_base
        #: duration the header declares (seconds), or None
        self.declared_duration: float | None = duration if duration and duration > 0 else None
        #: frame count the header declares (or duration x rate); 0 when unknown
        self.frame_count: int = int(stream.frames or round((self.declared_duration or 0) * self.fps))
        self.width: int = int(ctx.width or 0)
        self.height: int = int(ctx.height or 0)
        #: keyframes decoded so far
        self.frames_decoded = 0
        #: True once demuxing has run to the end of what the file gives
        self.ended = False
        #: keyframes skipped: no timestamp, or not after the previous one
        self.keyframes_skipped = 0
        #: packets the decoder rejected
        self.packets_failed = 0
        self._last_t = -math.inf
        self._last_index = -1
        self._last_packet_end: float | None = None  # stream time reached by demuxing
        self._packets = 0  # frame packets demuxed so far
        self._recent: collections.deque[float] = collections.deque(maxlen=_RECENT_PACKETS)  # their times
        self._last_dts: int | None = None
        self._since_key = 0  # packets demuxed since the oldest keyframe waiting for its number
        self._waiting: collections.deque[tuple[Any, int, float]] = collections.deque()  # (frame, ts, t)
        self._frame: Any = None
        self._iterating = False

    # -- decoding -------------------------------------------------------------------------------
    def _seconds(self, ts: int) -> float:
        # computed exactly as the OpenCV path does (double, via milliseconds), so both modes give
        # a frame the same timestamp_s
        tb = self._time_base
        return float(ts - self._start_pts) * (tb.numerator / tb.denominator) * 1000.0 / 1000.0

    def __iter__(self) -> Iterator[tuple[int, float]]:
        """Decode to the end, yielding ``(index, timestamp_s)`` per keyframe; one pass per reader."""
        if self._iterating:
            raise RuntimeError(f"{self.path}: a KeyframeReader can be iterated only once")
        self._iterating = True
        return self._frames()

    def _frames(self) -> Iterator[tuple[int, float]]:
        try:
            for packet in self._container.demux(self._stream):
                self._track_packet(packet)
                if packet.is_keyframe and packet.size:
                    for frame in self._decode_alone(packet):
                        self._accept(frame)
                if self._waiting:
                    yield from self._numbered(final=False)
        except av.error.FFmpegError as exc:
            raise VideoError(self.path, f"decoding failed after {self.frames_decoded} keyframes "
                                        f"({_reason(exc)})") from exc
        yield from self._numbered(final=True)
        self.ended = True

    def _decode_alone(self, packet: Any) -> list[Any]:
        """Decode one keyframe packet and drain the decoder, so the frame comes out now, stamped
        with this packet's time. Fed a stream with its other frames missing, decoders that reorder
        output hold keyframes back and stamp them wrongly (H.264 open GOP: 3 of 8 keyframes, in
        reverse order; MPEG-4 packed B-frames: the last keyframe at the last packet's time)."""
        ctx = self._stream.codec_context
        try:
            return list(ctx.decode(packet)) + list(ctx.decode(None))
        except av.error.FFmpegError:  # a damaged packet: go on with the next keyframe
            self.packets_failed += 1
            return []
        finally:
            ctx.flush_buffers()

    def _track_packet(self, packet: Any) -> None:
        if not packet.size or packet.is_discard:  # the final flush packet; edit-list leftovers
            return
        ts = packet.pts if packet.pts is not None else packet.dts
        self._packets += 1
        self._recent.append(-math.inf if ts is None else ts)
        self._since_key += 1
        if packet.dts is not None:
            self._last_dts = packet.dts
        if ts is not None:
            end = self._seconds(ts + (packet.duration or 0))
            if self._last_packet_end is None or end > self._last_packet_end:
                self._last_packet_end = end

    def _accept(self, frame: Any) -> None:
        """Queue a decoded keyframe until its number is known."""
        if not frame.key_frame:  # a decoder that ignores skip_frame hands out every frame
            return
        self.frames_decoded += 1
        ts = frame.pts if frame.pts is not None else frame.dts
        t = self._seconds(ts) if ts is not None else math.nan
        if not (math.isfinite(t) and t > self._last_t):
            self.keyframes_skipped += 1
            return
        if not self._waiting:
            self._since_key = 0
        self._last_t = t
        self._waiting.append((frame, ts, t))

    def _numbered(self, final: bool) -> Iterator[tuple[int, float]]:
        """Yield the waiting keyframes whose count of earlier packets is complete: no packet still
        to come can show before them once decode timestamps have passed theirs (decode order runs
        at most _REORDER_PACKETS ahead of presentation order when a stream gives no dts)."""
        while self._waiting:
            frame, ts, t = self._waiting[0]
            done = final or (self._last_dts is not None and self._last_dts >= ts) or self._since_key >= _REORDER_PACKETS
            if not done:
                return
            self._waiting.popleft()
            self._since_key = 0
            # packets older than the recent window all come before it (reordering is local)
            index = self._packets - sum(1 for p in self._recent if p >= ts)
            if index <= self._last_index:
                self.keyframes_skipped += 1
                continue
            self._last_index, self._frame = index, frame
            yield index, t

    def retrieve_bgr(self) -> np.ndarray:
        """The keyframe last yielded, as BGR uint8, turned upright like OpenCV does."""
        return self.retrieve_bgr_deferred()()

    def retrieve_bgr_deferred(self) -> Callable[[], np.ndarray]:
        """A function that converts the keyframe last yielded to BGR when called, from any thread
        and after decoding has moved on (the decoded frame is kept alive until then; PyAV converts
        without holding the GIL). Raises ``VideoError`` when the conversion fails."""
        frame, index, path = self._frame, self._last_index, self.path
        if frame is None:
            raise RuntimeError("retrieve_bgr() before the first keyframe")

        def convert() -> np.ndarray:
            try:
                bgr = frame.to_ndarray(format="bgr24")
            except (av.error.FFmpegError, ValueError) as exc:
                raise VideoError(path, f"keyframe {index} could not be converted ({_reason(exc)})") from exc
            rotation = _ROTATIONS.get(round(frame.rotation or 0) % 360)
            return cv2.rotate(bgr, rotation) if rotation is not None else bgr

        return convert

    def retrieve(self) -> np.ndarray:
        """The keyframe last yielded, as RGB uint8 (H, W, 3)."""
        return cv2.cvtColor(self.retrieve_bgr(), cv2.COLOR_BGR2RGB)

    # -- after decoding -------------------------------------------------------------------------
    @property
    def frames_read(self) -> int:
        """Frames of the stream gone through so far: packets demuxed (most not decoded)."""
        return self._packets

    def incomplete_reason(self) -> str | None:
        """Once decoding has ended: why the video looks broken off, or None if it looks whole.

        Keyframes can be far apart, so the test is on the packets: demuxing that stops before
        90 % of the declared duration means a truncated or corrupt file.
        """
        if self.frames_decoded == 0:
            return "no keyframe could be decoded"
        declared, reached = self.declared_duration, self._last_packet_end
        if declared is None or reached is None or reached >= COMPLETE_FRACTION * declared:
            return None
        return (f"the file ends at {reached:.2f} s of the {declared:.2f} s its header declares "
                f"(truncated or corrupt file?)")

    def header_note(self) -> str | None:
        """A remark on keyframes skipped or packets that would not decode, if any."""
        notes = []
        if self.keyframes_skipped:
            notes.append(f"skipped {self.keyframes_skipped} keyframe(s) without a usable timestamp")
        if self.packets_failed:
            notes.append(f"{self.packets_failed} packet(s) could not be decoded")
        return "; ".join(notes) or None

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        self._frame = None
        self._container.close()
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> KeyframeReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"KeyframeReader({str(self.path)!r}, {self.width}x{self.height}, fps={self.fps:.3f}, "
                f"frame_count={self.frame_count})")
