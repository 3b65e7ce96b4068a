"""``extract()``: videos in, frame images + manifest rows out, into a ``framesim.dataset.FrameDataset``.

This module owns the extraction job: checking the options, the videos to do and the tally
(``ExtractSummary``), which videos are already done, their state records, and the identity and
folder name of a video (``video_fingerprint``, ``safe_stem``). Decoding, sampling and committing
one video's frames is ``framesim.video_run``; encoding and writing the images is
``framesim.frame_writer``; the dataset's layout and manifest are ``framesim.dataset``.

Crash safety: kept frames are encoded, hashed and written by background threads (``_FrameWriter``)
while decoding goes on. Extraction appends rows in chunks (every 100 kept frames or 10 s): first it
waits for the chunk's images and fsyncs them all at once, then writes the chunk of rows as a new
file under ``state/pending/``, then the video's state record; so the manifest never names an image
that is not durably on disk.

Identity: a video is identified by its content (size + sha256 of its first and last MiB), a frame
by (video, 0-based decoded frame index); so the same file under another path, a rerun, or a rerun
with another sampling spec never adds a frame twice.

Resume: a video whose record says "done" for the same spec (sampler + start/end/max_frames) is not
opened again. Otherwise it is decoded from its first frame again, with ``grab()`` only (frame
indices and repaired timestamps depend on every earlier frame, and seeking is not frame-exact),
and only frames not yet in the dataset are converted and written. The scene sampler, whose
decisions need pixels, restores its saved state instead of replaying up to the last checkpoint.
A video that breaks off (see ``VideoReader.incomplete_reason``) keeps its frames, gets status
"error" and is tried again by the next run.

Keyframe mode (``keyframes=True``) reads videos with ``framesim.keyframes.KeyframeReader``
(PyAV), which decodes only keyframes; its frames get the index, timestamp and pixels full
decoding gives them, so both modes can fill one dataset without duplicates. Its runs are recorded
under their own sampling spec (``keyframes`` or ``keyframes,fps=F``) and resume the same way.

Test hooks: ``framesim.frame_writer._test_hook`` ("frame_saved", "chunk_flushed"); chunk size:
``framesim.video_run.CHUNK_ROWS``; both are looked up where they are defined.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import pandas as pd

from framesim.dataset import STATE_VERSION, FrameDataset
from framesim.sampling import Sampler, make_sampler
from framesim.video import VideoError, VideoReader, find_videos
from framesim.video_run import _VideoRun

if TYPE_CHECKING:
    from framesim.engines import Engine
    from framesim.frame_writer import _FrameWriter
    from framesim.keyframes import KeyframeReader

#: fold pending chunks into manifest.parquet between videos once there are this many (local engine)
MAX_PENDING_CHUNKS = 200
#: bytes read from each end of a video file to identify it
FINGERPRINT_BYTES = 1 << 20
IMAGE_FORMATS = {"jpg": "jpg", "jpeg": "jpg", "png": "png"}


# -- naming -----------------------------------------------------------------------------------------
def safe_stem(stem: str, max_bytes: int = 100) -> str:
    """A file-system- and shell-friendly version of a video's stem.

    Keeps letters and digits of any script, '.', '-' and '_'; anything else (spaces, '<>&"/\\',
    control characters, undecodable bytes) becomes '_'. No leading '-' or '.', at most ``max_bytes``
    UTF-8 bytes, never empty. Uniqueness comes from the id suffix, not from the stem.
    """
    s = unicodedata.normalize("NFC", stem)
    s = re.sub(r"[^\w.\-]+", "_", s)
    s = re.sub(r"_{2,}", "_", s).strip("._-")
    while len(s.encode("utf-8", "replace")) > max_bytes:
        s = s[:-1]
    return s.rstrip("._-") or "video"


def _display_path(path: Path) -> str:
    """The path as the user gave it, as a string that can be stored (no lone surrogates)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def chunk_prefix(position: int) -> str:
    """Name prefix of the manifest chunks of the video at ``position`` in the input list."""
    return f"v{position:09d}-"


def video_fingerprint(path: str | os.PathLike[str]) -> str:
    """Content id of a video: sha256 over its size and its first and last MiB (64 hex)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        h = hashlib.sha256(f"framesim-video|{size}|".encode())
        h.update(fh.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            fh.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            h.update(fh.read(FINGERPRINT_BYTES))
    return h.hexdigest()


# -- extraction -------------------------------------------------------------------------------------
@dataclasses.dataclass
class ExtractSummary:
    """What one ``extract()`` call did."""

    frames_added: int = 0
    #: frames the sampling selected that were already in the dataset
    frames_existing: int = 0
    #: videos (as given) that are now complete for this sampling, including ones done before
    videos_done: list[str] = dataclasses.field(default_factory=list)
    #: (video as given, reason) for videos that could not be opened or broke off
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    frames_decoded: int = 0
    #: (video, remark) for oddities that are not failures (header/frame count mismatch, repaired timestamps)
    notes: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _run_key(sampler: Sampler, start: float | None, end: float | None, max_frames: int | None) -> str:
    return (f"{sampler.spec()};start={'' if start is None else f'{start:.6g}'};"
            f"end={'' if end is None else f'{end:.6g}'};max={'' if max_frames is None else max_frames}")


def done_frames(record: dict[str, Any] | None, key: str, present: dict[int, str]) -> int | None:
    """Frames selected, if the video's state ``record`` says it is complete for run ``key`` and the
    dataset has them all (``present``: its frames); else None."""
    run = (record or {}).get("runs", {}).get(key) or {}
    if run.get("status") == "done" and len(present) >= int(run.get("frames_selected", 0)):
        return int(run.get("frames_selected", 0))
    return None


def extract(inputs: Sequence[str | os.PathLike[str]], dataset: str | os.PathLike[str], *,
            fps: float | None = None, every: int | None = None, scene: float | None = None,
            keyframes: bool = False,
            start: float | None = None, end: float | None = None, max_frames: int | None = None,
            image_format: str = "jpg", progress: bool = True,
            on_error: Callable[[str], None] | None = None,
            engine: str | Engine = "local", ray_address: str | None = None) -> ExtractSummary:
    """Decode videos and add the sampled frames to the dataset at ``dataset``.

    ``inputs``: video files and/or folders (searched recursively, see ``find_videos``).
    Sampling (one applies; ``scene`` or ``every`` win over ``fps``, both is a ValueError; with none
    of them, ``fps=1``):

    * ``fps=F``: the first frame at or after each 1/F s tick of the stream clock (from ``start``).
    * ``every=N``: decoded frames 0, N, 2N, ...
    * ``scene=T``: a frame whenever the picture differs from the last kept frame by more than T,
      measured as the mean absolute difference of 32x32 colour thumbnails on a 0..1 scale (0.1 is
      a good default: cuts score ~0.15-0.5, motion within a shot ~0.01-0.05); the first frame in
      range is always kept.
    * ``keyframes=True``: decode only keyframes (PyAV; 720p with a keyframe a second: ~100x real
      time where full decoding manages ~15x; see ``framesim.keyframes``) and keep every one, or
      with ``fps=F`` only those at least 1/F s after the last one kept. Frames come at the
      encoder's keyframe times, not on a grid, and a long-GOP file gives few. ``every`` and
      ``scene`` need every frame: a ValueError. ``start`` does not seek: decoding starts at 0.

    ``start``/``end`` (seconds, stream time) limit sampling to frames with start <= t < end;
    decoding stops at ``end``. ``max_frames`` caps the frames selected per video (counting those
    already present). Images are JPEG (quality 95) or PNG (``image_format="png"``).

    ``engine``: where the per-video tasks run: ``"local"`` (this process, one video after another) or
    ``"ray"`` (a Ray cluster at ``ray_address``, else ``$RAY_ADDRESS``, else Ray started on this
    machine), or an ``framesim.engines.Engine``. Every engine gives the same dataset: each video's
    frames and manifest chunks are named by its position in the input list (see ``extraction_job``).

    Holds the dataset lock for the whole call (DatasetLockedError if another run holds it). A video
    that cannot be opened or breaks off mid-way is reported through ``on_error("<path>: <reason>")``
    and in ``failures``; the frames it gave are kept and the other videos go on.
    """
    if every is not None and scene is not None:
        raise ValueError("give at most one of every and scene")
    fmt = IMAGE_FORMATS.get(str(image_format).lower().lstrip("."))
    if fmt is None:
        raise ValueError(f"image_format must be one of {sorted(set(IMAGE_FORMATS))}, got {image_format!r}")
    if start is not None and not (math.isfinite(start) and start >= 0):
        raise ValueError(f"start must be a number of seconds >= 0, got {start!r}")
    if end is not None and not (end > (start or 0.0)):
        raise ValueError(f"end must be greater than start, got start={start!r} end={end!r}")
    if max_frames is not None:
        if isinstance(max_frames, bool) or int(max_frames) != max_frames or max_frames < 1:
            raise ValueError(f"max_frames must be a positive integer, got {max_frames!r}")
        max_frames = int(max_frames)
    if isinstance(inputs, (str, os.PathLike)):  # one path, not a sequence of characters
        inputs = [inputs]
    if fps is None and every is None and scene is None and not keyframes:
        fps = 1.0
    make_sampler(fps, every, scene, origin=start or 0.0, keyframes=keyframes)  # checks the options here
    options = ExtractOptions(fps=fps, every=every, scene=scene, keyframes=keyframes, start=start, end=end,
                             max_frames=max_frames, ext=fmt)
    from framesim.extraction_job import run_extraction

    t0 = time.monotonic()
    summary = run_extraction(find_videos(inputs), FrameDataset(dataset), options, engine=engine,
                             ray_address=ray_address, progress=progress, on_error=on_error)
    summary.seconds = time.monotonic() - t0
    return summary


@dataclasses.dataclass(frozen=True)
class ExtractOptions:
    """The sampling and output options of one extract() call: what every per-video task gets."""

    fps: float | None
    every: int | None
    scene: float | None
    keyframes: bool
    start: float | None
    end: float | None
    max_frames: int | None
    ext: str

    def sampler(self) -> Sampler:
        return make_sampler(self.fps, self.every, self.scene, origin=self.start or 0.0, keyframes=self.keyframes)

    def run_key(self) -> str:
        return _run_key(self.sampler(), self.start, self.end, self.max_frames)


class _Extraction:
    """The context of one per-video task: the dataset, the options, the frames already present, the tally.

    ``position``: the video's place in the input list, which names its manifest chunks (so their order,
    and the manifest's, does not depend on when the task ran); ``present``: video_id -> {frame_index:
    path} of the frames the dataset has.
    """

    def __init__(self, ds: FrameDataset, options: ExtractOptions, *, position: int,
                 present: dict[str, dict[int, str]], progress: bool, summary: ExtractSummary,
                 writer: _FrameWriter) -> None:
        self.ds, self.writer, self.keyframes = ds, writer, options.keyframes
        self.sampler = options.sampler()
        self.start, self.end, self.max_frames, self.ext = options.start, options.end, options.max_frames, options.ext
        self.progress, self.summary, self.position = progress, summary, position
        self.key = _run_key(self.sampler, self.start, self.end, self.max_frames)
        self.present = present

    def append(self, rows: pd.DataFrame) -> None:
        self.ds.append(rows, prefix=chunk_prefix(self.position))

    def fail(self, video: str, reason: str) -> None:
        reason = " ".join(reason.split())
        self.summary.failures.append((video, reason))

    def _name_for(self, vid: str, path: Path, record: dict[str, Any] | None) -> str:
        """Folder name of a video's frames; once chosen it sticks to the video's content id."""
        if record and record.get("name"):
            return str(record["name"])
        existing = self.present.get(vid)
        if existing:  # state lost but frames present: reuse their folder
            parts = PurePosixPath(next(iter(existing.values()))).parts
            if len(parts) >= 3:
                return parts[1]
        return f"{safe_stem(path.stem)}-{vid[:8]}"

    def run_video(self, path: Path) -> None:
        video = _display_path(path)
        if not path.is_file():  # checked first: opening a FIFO to fingerprint it would block
            self.fail(video, "no such file" if not path.exists() else "not a regular file")
            return
        try:
            vid = video_fingerprint(path)
        except OSError as exc:
            self.fail(video, f"cannot read ({exc.strerror or exc})")
            return
        record = self.ds.video_state(vid) or {}
        run = dict(record.get("runs", {}).get(self.key) or {})
        present = self.present.setdefault(vid, {})
        done = done_frames(record, self.key, present)
        if done is not None:
            self.summary.frames_existing += done
            self.summary.videos_done.append(video)
            return
        try:
            if self.keyframes:
                from framesim.keyframes import KeyframeReader

                reader: VideoReader | KeyframeReader = KeyframeReader(path)
            else:
                reader = VideoReader(path)
        except VideoError as exc:
            self.fail(video, exc.reason)
            return
        with reader:
            name = self._name_for(vid, path, record)
            self.ds._remove_stale_temp_files(self.ds.root / "frames" / name)
            record = {
                "format": "framesim-video-state", "version": STATE_VERSION, "video_id": vid,
                "name": name, "video": record.get("video", video),
                "size": path.stat().st_size,
                "header": {"fps": reader.fps, "frame_count": reader.frame_count,
                           "width": reader.width, "height": reader.height},
                "runs": dict(record.get("runs", {})),
            }
            _VideoRun(self, reader, video, vid, record, run, present).run()
