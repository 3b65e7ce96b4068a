"""``extract()`` as tasks: one per video, run by an engine (``framesim.engines``), the same result on any.

The driver (``run_extraction``) holds the dataset lock for the whole run, folds earlier pending chunks
into the manifest, and decides per video, in input order: unreadable (a failure), a second path to
content already in this run (done after the others, when it is found complete), complete for this
sampling (skipped), or a task. A task (``run_video_task``) does the per-video work of ``extraction``
and ``video_run``: it writes the video's frames under its own folder and its manifest rows as chunks
named by the video's input position, so the consolidated manifest lists the videos in input order
whichever task finished first. Every file is written through a temp file and a rename, so a task run
again after its worker died overwrites what the lost attempt left: it resumes from the state record
and the chunks that attempt committed, and adds no row twice. The driver consolidates at the end and
removes temp files a killed attempt left.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from framesim.dataset import FrameDataset, _read_manifest_part
from framesim.engines.base import Engine, LocalEngine, Progress, TaskLost, engine_session
from framesim.extraction import (
    MAX_PENDING_CHUNKS,
    ExtractOptions,
    ExtractSummary,
    _display_path,
    _Extraction,
    chunk_prefix,
    done_frames,
    video_fingerprint,
)


@dataclasses.dataclass(frozen=True)
class VideoTask:
    """Everything one video's task needs, as plain data (it may run on another machine)."""

    dataset: str
    path: str
    position: int
    video_id: str
    options: ExtractOptions
    #: frame_index -> manifest path of the frames of this video the dataset had when the run started
    present: dict[int, str]
    progress: bool = False


def run_video_task(task: VideoTask) -> ExtractSummary:
    """Extract one video into the dataset (the driver holds the lock); what it did."""
    from framesim.frame_writer import _FrameWriter

    ds = FrameDataset(task.dataset)
    present = dict(task.present)
    # Run again after its worker died: the rows the lost attempt committed are in this position's chunks.
    for chunk in sorted(ds._pending_dir.glob(f"{chunk_prefix(task.position)}*.parquet")):
        rows = _read_manifest_part(chunk)
        mine = rows[rows["video_id"] == task.video_id]
        present.update(zip(mine["frame_index"].astype(int), mine["path"].astype(str), strict=True))
    summary = ExtractSummary()
    with _FrameWriter() as writer:
        job = _Extraction(ds, task.options, position=task.position, present={task.video_id: present},
                          progress=task.progress, summary=summary, writer=writer)
        job.run_video(Path(task.path))
    return summary


def run_extraction(videos: Sequence[Path], ds: FrameDataset, options: ExtractOptions, *,
                   engine: str | Engine = "local", ray_address: str | None = None, progress: bool = True,
                   on_error: Callable[[str], None] | None = None) -> ExtractSummary:
    """The driver of ``extract()`` (module docstring); the summary lists videos in input order."""
    with ds.lock(), engine_session(engine, address=ray_address) as runner:  # locked first: fails fast
        ds._ensure_layout()
        for folder in (ds.root, ds._pending_dir, ds._videos_dir):
            ds._remove_stale_temp_files(folder)
        ds.consolidate()
        try:
            return _Driver(ds, options, runner, progress, on_error).run(videos)
        finally:
            ds.consolidate()


class _Driver:
    def __init__(self, ds: FrameDataset, options: ExtractOptions, engine: Engine, progress: bool,
                 on_error: Callable[[str], None] | None) -> None:
        self.ds, self.options, self.engine, self.progress, self.on_error = ds, options, engine, progress, on_error
        self.key = options.run_key()
        self.outcomes: dict[int, ExtractSummary] = {}  # input position -> what happened to that video

    def _outcome(self, position: int, result: ExtractSummary) -> None:
        self.outcomes[position] = result
        for video, reason in result.failures:
            if self.on_error is not None:
                self.on_error(f"{video}: {reason}")

    def _failed(self, position: int, video: str, reason: str) -> None:
        self._outcome(position, ExtractSummary(failures=[(video, " ".join(reason.split()))]))

    def run(self, videos: Sequence[Path]) -> ExtractSummary:
        ds = self.ds
        present = present_frames(ds)
        tasks, later, seen = [], [], set()
        for position, path in enumerate(videos):
            video = _display_path(path)
            if not path.is_file():  # checked first: opening a FIFO to fingerprint it would block
                self._failed(position, video, "no such file" if not path.exists() else "not a regular file")
                continue
            try:
                vid = video_fingerprint(path)
            except OSError as exc:
                self._failed(position, video, f"cannot read ({exc.strerror or exc})")
                continue
            if vid in seen:  # the same content under another path: after the first one is done
                later.append((position, path, vid))
                continue
            seen.add(vid)
            done = done_frames(ds.video_state(vid), self.key, present.get(vid, {}))
            if done is not None:
                self._outcome(position, ExtractSummary(frames_existing=done, videos_done=[video]))
                continue
            tasks.append(VideoTask(str(ds.root), str(path), position, vid, self.options, present.get(vid, {}),
                                   progress=self.progress and not self.engine.distributed))
        try:
            if tasks and self.engine.distributed:
                self.engine.check_shared([ds.root, *(Path(t.path) for t in tasks)])
            self._run_tasks(tasks)
            if later:  # quick: found complete (unless the first path failed, then tried again here)
                present = present_frames(ds)
                self._run_tasks([VideoTask(str(ds.root), str(path), position, vid, self.options,
                                           present.get(vid, {}), progress=self.progress)
                                 for position, path, vid in later], LocalEngine())
        finally:
            self._remove_temp_files({t.video_id for t in tasks})
        total = ExtractSummary()
        for position in sorted(self.outcomes):
            part = self.outcomes[position]
            total.frames_added += part.frames_added
            total.frames_existing += part.frames_existing
            total.frames_decoded += part.frames_decoded
            total.videos_done += part.videos_done
            total.failures += part.failures
            total.notes += part.notes
        return total

    def _run_tasks(self, tasks: list[VideoTask], engine: Engine | None = None) -> None:
        engine = engine or self.engine
        bar = Progress(len(tasks), "extract", "video", "frames", self.progress and engine.distributed and bool(tasks))
        try:
            for i, result in engine.map(run_video_task, tasks, label="framesim-extract"):
                task = tasks[i]
                if isinstance(result, TaskLost):
                    self._failed(task.position, _display_path(Path(task.path)), result.reason)
                    bar.done(0)
                    continue
                self._outcome(task.position, result)
                bar.done(result.frames_decoded)
                # One task at a time here, in input order: folding chunks in keeps the manifest's order.
                if not engine.distributed and len(self.ds._pending_chunks()) >= MAX_PENDING_CHUNKS:
                    self.ds.consolidate()
        finally:
            bar.close()

    def _remove_temp_files(self, video_ids: set[str]) -> None:
        """Temp files of attempts killed mid-write (no task of this run is alive now)."""
        for vid in video_ids:
            record = self.ds.video_state(vid) or {}
            if record.get("name"):
                self.ds._remove_stale_temp_files(self.ds.root / "frames" / str(record["name"]))
        for folder in (self.ds.root, self.ds._pending_dir, self.ds._videos_dir):
            with contextlib.suppress(OSError):
                self.ds._remove_stale_temp_files(folder)


def present_frames(ds: FrameDataset) -> dict[str, dict[int, str]]:
    """video_id -> {frame_index: path} of every frame in the dataset's manifest."""
    manifest = ds.manifest()
    present: dict[str, dict[int, str]] = {}
    for vid, idx, rel in zip(manifest["video_id"], manifest["frame_index"], manifest["path"], strict=True):
        present.setdefault(str(vid), {})[int(idx)] = str(rel)
    return present
