"""Extraction of one opened video under one sampling spec (``_VideoRun``, used by ``framesim.extraction``).

Decodes the video, asks the sampler which frames to keep, hands kept frames to the frame writer
(``framesim.frame_writer``) and commits them in chunks of ``CHUNK_ROWS`` kept frames or
``CHUNK_SECONDS``, in the order the ``framesim.extraction`` docstring gives (the chunk's images
fsync'ed, then its rows, then the video's state record with the checkpoint a resume starts from:
last frame index, frames selected, sampler state).

Test hook: ``framesim.frame_writer._test_hook``, called here with "chunk_flushed".
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from framesim import frame_writer
from framesim.dataset import _now
from framesim.sampling import TIME_EPS
from framesim.video import VideoError, VideoReader

if TYPE_CHECKING:
    from framesim.extraction import _Extraction
    from framesim.keyframes import KeyframeReader

#: flush kept frames to the manifest after this many rows ...
CHUNK_ROWS = 100
#: ... or after this many seconds, whichever comes first
CHUNK_SECONDS = 10.0


class _VideoRun:
    """Extraction of one opened video under one sampling spec."""

    def __init__(self, job: _Extraction, reader: VideoReader | KeyframeReader, video: str, vid: str,
                 record: dict[str, Any], run: dict[str, Any], present: dict[int, str]) -> None:
        self.job, self.reader, self.video, self.vid = job, reader, video, vid
        self.record, self.present = record, present
        self.sampler = job.sampler
        # frames handed to the writer since the last flush: (manifest row or None for an image
        # put back under an existing row, its file, future of its sha256, width, height)
        self.pending: list[tuple[dict[str, Any] | None, Path, Future[tuple[str, int, int]]]] = []
        self.folder_made = False
        self.selected = 0
        self.last_index = -1  # last frame decided
        self.last_flush = time.monotonic()
        self.resume_after = -1
        self.sampler.reset()
        # Samplers that look at pixels can't cheaply replay the frames already done, so resume them
        # from their saved state; the others just replay wants(), which costs nothing.
        if (run.get("status") in ("partial", "error") and run.get("sampler_state") is not None
                and self.sampler.needs_pixels and int(run.get("last_index", -1)) >= 0):
            self.sampler.restore(run["sampler_state"])
            self.resume_after = self.last_index = int(run["last_index"])
            self.selected = int(run.get("frames_selected", 0))
            job.summary.frames_existing += self.selected  # selected before the interruption, on disk
        # (last index, frames selected, sampler state) at the last point where all three agree and
        # every frame selected so far is on disk: what a resume may start from
        self.checkpoint: tuple[int, int, dict[str, Any] | None] = (
            self.last_index, self.selected, self.sampler.state() if self.resume_after >= 0 else None)

    def run(self) -> None:
        job, reader, summary = self.job, self.reader, self.job.summary
        decoded_before = reader.frames_decoded
        bar = tqdm(total=reader.frame_count or None, unit="frame", desc=self.record["name"][:40],
                   file=sys.stderr, disable=not job.progress, dynamic_ncols=True)
        try:
            with bar:
                self._loop(bar)
                if reader.ended:  # headers over- or under-declare; end the bar where the stream ended
                    bar.update(reader.frames_read - bar.n)
                    bar.total = reader.frames_read
                    bar.refresh()
            self._written_rows(strict=True, keep=True)  # a failed write ends the run here, as an exception
        except VideoError as exc:
            self._flush("error", exc.reason, consistent=False)
            job.writer.check()  # a failed write is ours, not the video's: it still ends the run
            job.fail(self.video, exc.reason)
            return
        except BaseException:
            # interrupted (Ctrl-C) or failing on our side (disk full): keep what is complete
            with contextlib.suppress(Exception):
                self._flush("partial", consistent=False)
            raise
        finally:
            summary.frames_decoded += reader.frames_decoded - decoded_before
        note = reader.header_note()
        if note:
            summary.notes.append((self.video, note))
        problem = reader.incomplete_reason() if reader.ended else None
        if problem:
            self._flush("error", problem, note)
            job.fail(self.video, problem)
        else:
            self._flush("done", None, note)
            summary.videos_done.append(self.video)

    def _loop(self, bar: Any) -> None:
        job, reader, sampler = self.job, self.reader, self.sampler
        start = job.start if job.start is not None else -math.inf
        end = job.end if job.end is not None else math.inf
        for index, t in reader:
            bar.update(index + 1 - bar.n)  # keyframe mode jumps ahead; the bar counts frames of video
            if index <= self.resume_after or t < start - TIME_EPS:
                continue
            if t >= end - TIME_EPS:
                return
            if sampler.wants(index, t):
                bgr = reader.retrieve_bgr() if sampler.needs_pixels else None
                if bgr is None or sampler.keep(index, t, sampler.thumbnail(bgr)):
                    self._keep(index, t, bgr)
                    if job.max_frames is not None and self.selected >= job.max_frames:
                        self.last_index = index
                        return
            self.last_index = index
            if len(self.pending) >= CHUNK_ROWS or time.monotonic() - self.last_flush >= CHUNK_SECONDS:
                self._flush("partial")
                bar.set_postfix(kept=self.selected, refresh=False)

    def _keep(self, index: int, t: float, bgr: np.ndarray | None) -> None:
        ds, summary = self.job.ds, self.job.summary
        rel = self.present.get(index)
        if rel is not None and ds.frame_path(rel).exists():
            summary.frames_existing += 1
            self.selected += 1
            return
        pixels = self.reader.retrieve_bgr_deferred() if bgr is None else (lambda: bgr)
        nbytes = bgr.nbytes if bgr is not None else self.reader.width * self.reader.height * 3
        writer = self.job.writer
        if rel is not None:  # in the manifest but the image is gone: put it back, same row
            path = ds.frame_path(rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.pending.append((None, path, writer.submit(path, pixels, nbytes)))
            summary.frames_existing += 1
            self.selected += 1
            return
        rel = f"frames/{self.record['name']}/{index:08d}.{self.job.ext}"
        path = ds.root / rel
        if not self.folder_made:  # here, by this thread: writer threads only write files
            path.parent.mkdir(parents=True, exist_ok=True)
            self.folder_made = True
        future = writer.submit(path, pixels, nbytes)
        self.present[index] = rel
        self.pending.append(({  # sha256, width and height come from the writer
            "frame_id": f"{self.record['name']}/{index:08d}", "video": self.video, "frame_index": index,
            "timestamp_s": t, "width": 0, "height": 0, "path": rel, "sha256": "", "video_id": self.vid,
        }, path, future))
        self.selected += 1

    def _written_rows(self, strict: bool, keep: bool = False) -> list[dict[str, Any]]:
        """Wait for the frames handed to the writer, make their images durable; the rows of those
        now on disk, completed.

        ``strict``: if a frame failed, raise the error (the writer's first, else the frame's
        VideoError) and keep ``pending`` for a non-strict call, which drops the failed frames: a
        resumed run decides and writes them again. ``keep``: only wait and check.
        """
        wait_for([future for _, _, future in self.pending])
        if strict:
            self.job.writer.check()
            for _, _, future in self.pending:
                if future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
        if keep:
            return []
        written = [(row, path, future) for row, path, future in self.pending if future.exception() is None]
        self.job.writer.sync([path for _, path, _ in written])
        rows = []
        for row, _, future in written:
            if row is not None:
                row["sha256"], row["width"], row["height"] = future.result()
                rows.append(row)
        self.pending = []
        return rows

    def _flush(self, status: str, error: str | None = None, note: str | None = None, *,
               consistent: bool = True) -> None:
        """Images, then rows, then the state that says they are there: a crash in between only
        repeats work.

        ``consistent``: called between frames (the sampler has seen exactly the frames up to
        last_index). After an exception mid-frame it is not, and the state keeps the previous
        checkpoint: the frames after it are decided again on resume (same answers) and found present.
        """
        job = self.job
        rows = self._written_rows(strict=consistent)
        if rows:
            job.append(pd.DataFrame(rows))
            job.summary.frames_added += len(rows)
        if consistent:
            self.checkpoint = (self.last_index, self.selected, self.sampler.state())
        last_index, selected, sampler_state = self.checkpoint
        self.record["runs"][job.key] = {
            "status": status, "last_index": last_index, "frames_selected": selected,
            "frames_decoded": self.reader.frames_decoded, "sampler": self.sampler.spec(),
            "start": job.start, "end": job.end, "max_frames": job.max_frames,
            "sampler_state": sampler_state, "error": error, "note": note, "updated": _now(),
        }
        job.ds.write_video_state(self.vid, self.record)
        self.last_flush = time.monotonic()
        if frame_writer._test_hook is not None:  # looked up now: tests set it on frame_writer
            frame_writer._test_hook("chunk_flushed")
