"""Engines: the same dataset and embedding cache whatever runs the tasks, in whatever order, retried or not.

``ShuffledEngine`` is a real engine (the base class's contract, no Ray): it runs each task in this
process after a pickle round trip, as a cluster would, last task first, and can lose a task's worker
once mid-run (the test hook raises at a committed chunk) or after it wrote its output, then runs it
again, as Ray's ``max_retries`` does. Ray itself is in ``test_engines_ray.py`` and, as a multi-node
cluster with a node killed, in ``test_engine_cluster.py``.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import framesim
from framesim import frame_writer, video_run
from framesim.backbones import get_backbone
from framesim.cli import cli
from framesim.collection import index
from framesim.dataset import FrameDataset
from framesim.embed_job import _recipe
from framesim.engines import Engine, EngineUnavailable, LocalEngine, get_engine


class WorkerDied(BaseException):
    """What a killed worker looks like to the task: it stops wherever it is."""


class ShuffledEngine(Engine):
    name = "shuffled"
    distributed = True

    def __init__(self, lose: int | None = None, lose_after_output: int | None = None, at_chunk: int = 2) -> None:
        self.lose, self.lose_after_output, self.at_chunk = lose, lose_after_output, at_chunk
        self.attempts: list[int] = []

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], *, label: str,
            cpus: float = 1.0) -> Iterator[tuple[int, Any]]:
        for position in reversed(range(len(tasks))):
            if position == self.lose:
                self._run_and_die(fn, tasks[position])
            if position == self.lose_after_output:
                self._attempt(fn, tasks[position])  # wrote everything, then died before reporting
            yield position, self._attempt(fn, tasks[position])

    def _attempt(self, fn: Callable[[Any], Any], task: Any) -> Any:
        self.attempts.append(task.position if hasattr(task, "position") else task.number)
        return fn(pickle.loads(pickle.dumps(task)))

    def _run_and_die(self, fn: Callable[[Any], Any], task: Any) -> None:
        flushed = 0

        def hook(event: str) -> None:
            nonlocal flushed
            flushed += event == "chunk_flushed"
            if flushed >= self.at_chunk:
                raise WorkerDied

        frame_writer._test_hook = hook
        try:
            with pytest.raises(WorkerDied):
                self._attempt(fn, task)
        finally:
            frame_writer._test_hook = None
        assert flushed >= self.at_chunk, "the lost attempt was meant to die mid-video"


def _videos(make_video: Callable[..., Path]) -> list[Path]:
    # different lengths and cuts: different content, so different videos (identity is by content)
    return [make_video(f"v{i}.mp4", n_frames=30 + 10 * i, scene_starts=(0, 12 + i)) for i in range(4)]


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "frames").rglob("*")) if p.is_file()}


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.parent.name == "pending"]


def _same_datasets(a: Path, b: Path) -> None:
    ma, mb = FrameDataset(a).manifest(), FrameDataset(b).manifest()
    assert len(ma) > 0
    assert ma.equals(mb)
    assert _files(a) == _files(b)
    assert not _leftovers(b)


def test_extract_gives_the_local_dataset_whatever_order_the_tasks_finish(
        make_video: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video_run, "CHUNK_ROWS", 4)  # several manifest chunks per video
    videos = _videos(make_video)
    copy = tmp_path / "copy-of-v1.mp4"
    copy.write_bytes(videos[1].read_bytes())  # same content under another path: one video
    inputs = [videos[0], tmp_path / "missing.mp4", videos[1], copy, videos[2], videos[3]]
    local = framesim.extract(inputs, tmp_path / "local", fps=10, progress=False)
    engine = ShuffledEngine()
    shuffled = framesim.extract(inputs, tmp_path / "shuffled", fps=10, progress=False, engine=engine)
    _same_datasets(tmp_path / "local", tmp_path / "shuffled")
    assert engine.attempts == [5, 4, 2, 0]  # one task per distinct video, last first
    for field in ("frames_added", "frames_existing", "videos_done", "failures", "notes"):
        assert getattr(local, field) == getattr(shuffled, field), field
    assert local.failures == [(str(tmp_path / "missing.mp4"), "no such file")]
    again = framesim.extract(inputs, tmp_path / "shuffled", fps=10, progress=False, engine=ShuffledEngine())
    assert again.frames_added == 0 and again.frames_existing == local.frames_added + local.frames_existing


def test_a_task_run_again_after_its_worker_died_mid_video_adds_nothing_twice(
        make_video: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video_run, "CHUNK_ROWS", 4)
    videos = _videos(make_video)
    local = framesim.extract(videos, tmp_path / "local", fps=10, progress=False)
    engine = ShuffledEngine(lose=1, lose_after_output=2, at_chunk=2)
    retried = framesim.extract(videos, tmp_path / "retried", fps=10, progress=False, engine=engine)
    assert engine.attempts.count(1) == 2 and engine.attempts.count(2) == 2
    _same_datasets(tmp_path / "local", tmp_path / "retried")
    assert retried.frames_added + retried.frames_existing == local.frames_added
    assert retried.videos_done == local.videos_done and not retried.failures


def _cache_map(dataset: Path, backbone: str) -> dict[bytes, np.ndarray]:
    out: dict[bytes, np.ndarray] = {}
    folder = next((dataset / "embeddings" / backbone).rglob("header.json")).parent
    for sidecar in sorted(folder.glob("shard-*.json")):
        stem = str(sidecar)[:-len(".json")]
        for key, vec in zip(np.load(f"{stem}.keys.npy"), np.load(f"{stem}.vecs.npy"), strict=True):
            assert key not in out, f"{key!r} twice in the cache"
            out[key] = vec
    return out


def test_embedding_shards_give_the_local_cache_and_collection(
        make_video: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    videos = _videos(make_video)
    for name in ("local", "sharded"):
        framesim.extract(videos, tmp_path / name, fps=10, progress=False)
    monkeypatch.setenv("FRAMESIM_EMBED_SHARD", "7")
    local = index(tmp_path / "local", ["tiny-image"], progress=False, dedupe=0)
    engine = ShuffledEngine(lose_after_output=1)
    sharded = index(tmp_path / "sharded", ["tiny-image"], progress=False, dedupe=0, engine=engine)
    n = local[0].embed.embedded
    assert sharded[0].embed.embedded == n > 14 and len(engine.attempts) == -(-n // 7) + 1
    a, b = _cache_map(tmp_path / "local", "tiny-image"), _cache_map(tmp_path / "sharded", "tiny-image")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert local[0].store["checksum"] == sharded[0].store["checksum"]
    assert not list((tmp_path / "sharded" / "embeddings").rglob("*.tmp"))
    # the next run finds everything cached: no task at all
    rerun = ShuffledEngine()
    assert index(tmp_path / "sharded", ["tiny-image"], progress=False, dedupe=0, engine=rerun)[0].added == 0
    assert rerun.attempts == []


def test_models_that_differ_per_process_are_refused_on_a_cluster() -> None:
    model = get_backbone("tiny-image")
    assert _recipe(model)[0] == "tiny-image"
    model.weights = "random (weights=None)"
    with pytest.raises(ValueError, match="random weights, which differ in every process"):
        _recipe(model)


def test_engine_names_and_addresses() -> None:
    assert isinstance(get_engine("local"), LocalEngine)
    with pytest.raises(ValueError, match="unknown engine 'spark'; known: local, ray"):
        get_engine("spark")
    with pytest.raises(ValueError, match="--ray-address needs --engine ray"):
        get_engine("local", address="10.0.0.1:6379")
    assert list(LocalEngine().map(str, [3, 1, 2], label="x")) == [(0, "3"), (1, "1"), (2, "2")]


def test_asking_for_ray_without_it_installed_says_so_in_one_line(
        make_video: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does when it is not installed
    with pytest.raises(EngineUnavailable, match=r"needs Ray, which is not installed: pip install 'framesim\[ray\]'"):
        get_engine("ray")
    video = make_video()
    res = CliRunner().invoke(cli, ["extract", str(video), "-o", str(tmp_path / "ds"), "--engine", "ray", "-q"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: --engine ray needs Ray, which is not installed: pip install 'framesim[ray]'"]
    assert not (tmp_path / "ds" / "manifest.parquet").exists()


def test_match_and_duplicates_embed_through_the_engine(make_video: Callable[..., Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    videos = _videos(make_video)
    examples = tmp_path / "examples"
    examples.mkdir()
    for name in ("local", "sharded"):
        framesim.extract(videos, tmp_path / name, fps=10, progress=False)
    frame = FrameDataset(tmp_path / "local").manifest()["path"].iloc[5]
    (examples / "shot.jpg").write_bytes((tmp_path / "local" / frame).read_bytes())
    monkeypatch.setenv("FRAMESIM_EMBED_SHARD", "9")
    common = {"top_k": 3, "score": "cosine", "progress": False, "dedupe": 0, "verify": None}
    local = framesim.match(examples, tmp_path / "local", ["tiny-image"], **common)
    engine = ShuffledEngine()
    sharded = framesim.match(examples, tmp_path / "sharded", ["tiny-image"], engine=engine, **common)
    assert len(engine.attempts) > 1
    columns = ["example", "frame_id", "score", "rank"]
    assert local.pairs[columns].equals(sharded.pairs[columns])
    assert sharded.pairs["frame_id"].iloc[0] == FrameDataset(tmp_path / "local").manifest()["frame_id"].iloc[5]
    shutil.rmtree(tmp_path / "sharded" / "embeddings" / "tiny-image")  # embedded again, by duplicates
    engine = ShuffledEngine()
    dups = {name: framesim.find_duplicates(tmp_path / name, "tiny-image", report=False, progress=False, dedupe=0,
                                           engine=engine if name == "sharded" else "local")
            for name in ("local", "sharded")}
    assert len(engine.attempts) > 1
    assert len(dups["local"].frame_pairs) and dups["local"].frame_pairs.equals(dups["sharded"].frame_pairs)


def test_an_address_nothing_answers_at_fails_in_seconds(tmp_path: Path, make_video: Callable[..., Path]) -> None:
    pytest.importorskip("ray")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    res = CliRunner().invoke(cli, ["extract", str(make_video()), "-o", str(tmp_path / "ds"), "--engine", "ray",
                                   "--ray-address", f"127.0.0.1:{port}", "-q"])
    assert res.exit_code == 2 and time.monotonic() - started < 30
    assert res.output.strip() == f"error: cannot reach the Ray cluster at 127.0.0.1:{port}: connection refused"
    with pytest.raises(EngineUnavailable, match="expected HOST:PORT"):
        get_engine("ray", address="127.0.0.1:http")
