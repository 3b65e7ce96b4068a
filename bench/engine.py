"""Engines: the local engine against Ray (a local Ray instance on the same cores) for extract and embed.

    python -m bench engine             # 8 clips of 15 s at 2 fps, 3 repeats (~3 min on 2 cores)
    python -m bench engine --quick     # 8 clips of 5 s, 1 repeat (~1 min)

Inputs: ``--videos`` clips cut (stream copy at keyframes) from consecutive parts of the bench video
(``bench.pipeline.make_video``: real footage, 720p30 H.264, a keyframe a second), so every clip is a
different video: framesim identifies videos by content, so copies of one file would count as one.

Ray is started first, ``ray.init(num_cpus=--cpus)`` (default: this machine's cores, which the local
engine uses too), and timed on its own line with its idle CPU rate; ``RayEngine`` joins that instance
and does not shut it down, so the runs time the work and not Ray's start. Then rounds, each running
every variant (starting with the next one each round, so load from other processes hits them alike):

* extract: the clips at ``--fps`` into a fresh dataset, local and ray (one task per video);
* embed: that dataset's frames with the default backbone into a fresh embedding cache
  (``framesim.embed_job.embed_frames``, as ``index`` and ``match`` run it): local; ray with the default
  shard size (``SHARD_KEYS``, or ``$FRAMESIM_EMBED_SHARD``: one task when there are fewer frames); and
  ray with the frames cut into one shard per CPU, so that every core works.

Round 0 is printed on its own as the cold run (the driver imports and builds the model; Ray's workers,
one per CPU that ``ray.init`` started and so counted in its start-up, import framesim and load the
model) and the medians are of the ``--repeat`` rounds after it.

CPU seconds are user + system of the process tree, read from /proc: the driver and all its descendants
(Ray's GCS, raylet, agents and workers are all started under the driver), sampled before and after each
run while Ray is up, so workers that outlive their tasks are counted. A process that exits during a run
counts through its parent's cutime/cstime when a process of the tree reaped it (including what it used
before the run) and is lost otherwise; the number of processes that vanished is printed. Local runs
count the driver alone (and the children it reaped), so Ray's idle background is not billed to them.

Overheads: (ray - local) CPU-s per video for extract and per batch of 32 frames for embed, and
(ray - local) wall per video (negative where Ray's parallel tasks finished sooner). The Ray Core task
round trip: ``NOOP_TASKS`` no-op tasks submitted at once, and ``SERIAL_TASKS`` one after another.
Every run's output is checked against the first local run's: the manifest (all columns) for extract,
the cache's vector of every key (bit-equal, read back from disk) for embed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from bench.pipeline import _ffmpeg, make_video

#: the bench video the clips are cut from (at least this long: --quick and full runs share one encoding)
SOURCE_SECONDS = 120
BATCH = 32
NOOP_TASKS = 200
SERIAL_TASKS = 50
IDLE_S = 5.0
_TICK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------ CPU time of the process tree


def _proc_table() -> dict[int, tuple[int, int, float]]:
    """pid -> (parent pid, start time in ticks, CPU seconds: utime + stime + cutime + cstime)."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # exited while we looked
            continue
        fields = stat[stat.rindex(b")") + 2:].split()  # after "(comm)", which may hold spaces
        table[int(entry.name)] = (int(fields[1]), int(fields[19]), sum(int(x) for x in fields[11:15]) / _TICK)
    return table


def cpu_sample(tree: bool) -> dict[tuple[int, int], float]:
    """(pid, start time) -> CPU seconds of this process and, with ``tree``, of each of its descendants."""
    table = _proc_table()
    keep, stack = {os.getpid()}, [os.getpid()]
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _, _) in table.items():
        children[ppid].append(pid)
    while tree and stack:
        for child in children[stack.pop()]:
            keep.add(child)
            stack.append(child)
    return {(pid, table[pid][1]): table[pid][2] for pid in keep if pid in table}


@dataclass
class Run:
    wall: float
    cpu: float
    vanished: int
    processes: int
    result: Any = None


def measure(fn: Callable[[], Any], tree: bool) -> Run:
    """Wall seconds and CPU seconds (``cpu_sample``) of ``fn()``; keyed by (pid, start time), so a reused
    pid is a new process."""
    before = cpu_sample(tree)
    started = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - started
    after = cpu_sample(tree)
    cpu = sum(v - before.get(k, 0.0) for k, v in after.items())
    return Run(wall, cpu, len(before.keys() - after.keys()), len(after), result)


@dataclass
class Variant:
    label: str
    run: Callable[[int], Run]
    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str) -> float:
        values = [getattr(r, attr) for r in self.runs[1:]] or [getattr(self.runs[0], attr)]
        return statistics.median(values)


# --------------------------------------------------------------------------------------- the work


def make_clips(folder: Path, n: int, seconds: int) -> list[Path]:
    """``n`` clips of ``seconds``, consecutive parts of the bench video (each starts on a keyframe)."""
    source = make_video(max(SOURCE_SECONDS, n * seconds))
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(n):
        clip = folder / f"clip{i:02d}.mp4"
        _ffmpeg("-ss", str(i * seconds), "-i", str(source), "-t", str(seconds), "-c", "copy", "-an", str(clip))
        clips.append(clip.absolute())
    return clips


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


class Bench:
    def __init__(self, work: Path, clips: list[Path], fps: float) -> None:
        self.work, self.clips, self.fps = work, clips, fps
        self.manifest: Any = None  # the first local run's: every run's output is compared to it
        self.vectors: np.ndarray | None = None
        self.mismatches: dict[str, list[str]] = defaultdict(list)
        self.frames = 0
        self.backbones: dict[str, Any] = {}

    # -- extract
    def extract(self, engine: str) -> Callable[[int], Run]:
        def run(round_: int) -> Run:
            from framesim import extract
            from framesim.dataset import FrameDataset

            dataset = self.work / f"ds-{engine}-{round_}"
            r = measure(lambda: extract(self.clips, dataset, fps=self.fps, progress=False, engine=engine),
                        tree=engine != "local")
            if not r.result.ok:
                raise click.ClickException(f"extract ({engine}) failed: {r.result.failures[:3]}")
            manifest = FrameDataset(dataset).manifest().reset_index(drop=True)
            if self.manifest is None:
                self.manifest, self.frames = manifest, len(manifest)
                if manifest["video_id"].nunique() != len(self.clips):
                    raise click.ClickException(f"{manifest['video_id'].nunique()} distinct videos among "
                                               f"{len(self.clips)} clips")
            elif not manifest.equals(self.manifest):
                differ = [c for c in manifest.columns if c not in self.manifest
                          or not manifest[c].equals(self.manifest[c])] or ["rows"]
                self.mismatches["extract"].append(f"{engine} round {round_}: {', '.join(differ)}")
            if round_ or engine != "local":  # the first local dataset is the one embedded
                shutil.rmtree(dataset)
            return r
        return run

    # -- embed
    def embed(self, engine: str, shard: int | None) -> Callable[[int], Run]:
        name = f"{engine}-{shard}"

        def run(round_: int) -> Run:
            from framesim.backbones import get_backbone
            from framesim.dataset import FrameDataset
            from framesim.embed_job import SHARD_ENV, embed_frames
            from framesim.embeddings import EmbeddingCache
            from framesim.engines import get_engine
            from framesim.matching import DEFAULT_BACKBONE

            ds = FrameDataset(self.work / "ds-local-0")
            shutil.rmtree(ds.root / "embeddings", ignore_errors=True)
            frames = ds.manifest().drop_duplicates("sha256")
            keys = list(frames["sha256"])

            def work() -> Any:
                # the model is built inside the first (cold) run of each engine: a CLI run pays it too
                backbone = self.backbones.get(name) or self.backbones.setdefault(name, get_backbone(DEFAULT_BACKBONE))
                cache = EmbeddingCache(ds.root / "embeddings", backbone)
                with _env(SHARD_ENV, None if shard is None else str(shard)):
                    stats = embed_frames(backbone, cache, keys, ds, frames, engine=get_engine(engine),
                                         batch_size=BATCH, progress=False)
                cache.flush()
                return stats

            r = measure(work, tree=engine != "local")
            if r.result.failures or r.result.embedded != len(keys):
                raise click.ClickException(f"embed ({engine}) failed: {r.result.failures[:3]}")
            cache = EmbeddingCache(ds.root / "embeddings", self.backbones[name])  # what is on disk
            vectors = cache.get(keys) if len(cache) == len(keys) and not cache.missing(keys) else None
            if self.vectors is None and vectors is not None and engine == "local":
                self.vectors = vectors
            elif vectors is None or self.vectors is None or not np.array_equal(vectors, self.vectors):
                self.mismatches["embed"].append(f"{engine} (shard {shard}) round {round_}")
            return r
        return run


def ray_round_trip(ray: Any) -> tuple[Run, Run]:
    """(NOOP_TASKS no-op tasks at once, SERIAL_TASKS one after another), after a warm-up."""
    @ray.remote
    def noop() -> None:  # a local function: shipped by value, no module to import on the worker
        return None

    ray.get([noop.remote() for _ in range(20)])
    burst = measure(lambda: ray.get([noop.remote() for _ in range(NOOP_TASKS)]), tree=True)
    serial = measure(lambda: [ray.get(noop.remote()) for _ in range(SERIAL_TASKS)], tree=True)
    return burst, serial


def _rounds(variants: list[Variant], rounds: int) -> None:
    for round_ in range(rounds):
        shift = round_ % len(variants)
        for v in variants[shift:] + variants[:shift]:
            v.runs.append(v.run(round_))
            print(f"  round {round_} {v.label}: {v.runs[-1].wall:.1f} s, {v.runs[-1].cpu:.1f} CPU-s", flush=True)


# ----------------------------------------------------------------------------------------------- CLI


@click.command()
@click.option("--videos", default=8, show_default=True, help="Clips (distinct videos) to extract.")
@click.option("--seconds", default=15, show_default=True, help="Length of each clip.")
@click.option("--fps", default=2.0, show_default=True, help="Sampling rate of extract.")
@click.option("--cpus", default=os.cpu_count() or 1, show_default=True, help="num_cpus of the local Ray.")
@click.option("--repeat", default=3, show_default=True, help="Rounds after the cold one (medians of these).")
@click.option("--quick", is_flag=True, help="5 s clips, 1 repeat: ~1 min.")
def engine(videos: int, seconds: int, fps: float, cpus: int, repeat: int, quick: bool) -> None:
    """Local engine vs Ray on the same cores: extract and embed wall, CPU-s, Ray's overheads."""
    if quick:
        seconds, repeat = min(seconds, 5), 1
    t0 = time.perf_counter()
    import ray  # (an optional extra of framesim)

    work = Path(tempfile.mkdtemp(prefix="framesim-engine-"))
    try:
        clips = make_clips(work / "clips", videos, seconds)
        bench = Bench(work, clips, fps)
        start = measure(lambda: ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                                         logging_level=logging.WARNING), tree=True)
        try:
            idle = measure(lambda: time.sleep(IDLE_S), tree=True)
            extract = [Variant("extract local", bench.extract("local")), Variant("extract ray", bench.extract("ray"))]
            _rounds(extract, repeat + 1)
            frames, slots = bench.frames, int(ray.cluster_resources().get("CPU", 1))
            from framesim.embed_job import shard_keys

            size, split = shard_keys(), math.ceil(frames / slots)
            embed = [Variant("embed local", bench.embed("local", None)),
                     Variant(f"embed ray, {math.ceil(frames / size)} x {min(size, frames)} keys",
                             bench.embed("ray", None)),
                     Variant(f"embed ray, {math.ceil(frames / split)} x {split} keys", bench.embed("ray", split))]
            _rounds(embed, repeat + 1)
            burst, serial = ray_round_trip(ray)
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{videos} clips of {seconds} s (720p30 H.264, distinct parts of the bench video) at {fps:g} fps: "
          f"{frames} frames; embed efficientnet-lite0 (default descriptor), batches of {BATCH}: "
          f"{math.ceil(frames / BATCH)}")
    _print(bench, extract, embed, {"start": start, "idle": idle, "burst": burst, "serial": serial}, ray.__version__,
           cpus, repeat)
    print(f"total {time.perf_counter() - t0:.0f} s")


def _print(bench: Bench, extract: list[Variant], embed: list[Variant], ray_runs: dict[str, Run], version: str,
           cpus: int, repeat: int) -> None:
    start, idle, burst, serial = (ray_runs[k] for k in ("start", "idle", "burst", "serial"))
    videos, frames = len(bench.clips), bench.frames
    batches = math.ceil(frames / BATCH)
    tree = max(r.processes for var in extract + embed if "ray" in var.label for r in var.runs)
    print(f"Ray {version}, local instance with num_cpus={cpus} on {os.cpu_count()} CPUs; "
          f"start-up (ray.init): {start.wall:.1f} s wall, {start.cpu:.1f} CPU-s, {start.processes - 1} processes "
          f"besides the driver, a worker per CPU among them (up to {tree - 1} during the runs); idle: "
          f"{idle.cpu / IDLE_S:.3f} CPU-s per s")
    print(f"medians of {repeat} round(s) after a cold one; CPU-s: local = the driver, ray = driver + every "
          "descendant (Ray's)")
    print(f"{'variant':30s} {'wall s':>8s} {'CPU-s':>8s} {'cold wall':>10s} {'cold CPU-s':>11s}")
    for var in extract + embed:
        print(f"{var.label:30s} {var.median('wall'):8.2f} {var.median('cpu'):8.2f} {var.runs[0].wall:10.2f} "
              f"{var.runs[0].cpu:11.2f}")
    ext_l, ext_r = extract
    print(f"\nextract ray/local: wall {ext_r.median('wall') / ext_l.median('wall'):.2f}, "
          f"CPU-s {ext_r.median('cpu') / ext_l.median('cpu'):.2f}")
    print(f"  Ray overhead per video: {(ext_r.median('cpu') - ext_l.median('cpu')) / videos:+.3f} CPU-s "
          f"(cold {(ext_r.runs[0].cpu - ext_l.runs[0].cpu) / videos:+.3f}), "
          f"{(ext_r.median('wall') - ext_l.median('wall')) / videos:+.3f} s wall")
    emb_l = embed[0]
    for var in embed[1:]:
        print(f"{var.label} / local: wall {var.median('wall') / emb_l.median('wall'):.2f}, "
              f"CPU-s {var.median('cpu') / emb_l.median('cpu'):.2f}")
        print(f"  Ray overhead per batch of {BATCH}: {(var.median('cpu') - emb_l.median('cpu')) / batches:+.3f} "
              f"CPU-s (cold {(var.runs[0].cpu - emb_l.runs[0].cpu) / batches:+.3f}), "
              f"{(var.median('wall') - emb_l.median('wall')) / batches:+.3f} s wall")
    print(f"Ray Core task round trip: {NOOP_TASKS} no-op tasks at once {burst.wall / NOOP_TASKS * 1e3:.2f} ms "
          f"wall, {burst.cpu / NOOP_TASKS * 1e3:.2f} ms CPU per task; one at a time "
          f"{serial.wall / SERIAL_TASKS * 1e3:.2f} ms wall, {serial.cpu / SERIAL_TASKS * 1e3:.2f} ms CPU per task")
    vanished = sum(r.vanished for var in extract + embed for r in var.runs)
    runs = len(extract[0].runs)
    print(f"outputs: manifests of all {2 * runs} extract runs identical: "
          f"{'yes' if not bench.mismatches['extract'] else 'NO: ' + '; '.join(bench.mismatches['extract'])}; "
          f"embedding caches of all {3 * runs} embed runs identical ({frames} keys, bit-equal vectors): "
          f"{'yes' if not bench.mismatches['embed'] else 'NO: ' + '; '.join(bench.mismatches['embed'])}")
    print(f"processes that exited during a run (not counted unless reaped in the tree): {vanished}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
