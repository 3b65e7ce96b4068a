"""Embedding a dataset's frames through an engine: in this process, or as shards of tasks on a cluster.

``embed_frames`` is what ``index``, ``match`` and ``duplicates`` call for their frames. With the local
engine it is ``embeddings.embed_missing`` as before. With a distributed one the driver cuts the keys
the cache lacks into shards of ``SHARD_KEYS`` and numbers them before any task starts; each task
(``run_shard_task``) builds the same model from its recipe (once per worker process), loads and
embeds its frames with the same code as the local path (``embed_missing``), and writes exactly its
shard, ``shard-<number>``, into the cache. A task run again after its worker died writes the same
shard again, so the cache never holds a key twice; the driver then takes the new shards in.

Vectors do not depend on which engine, batch size or thread count made them for the ONNX Runtime and
OpenVINO runtimes (bit-identical at batch 1/7/32 and 1/2/4/8 threads for EfficientNet-Lite0);
TensorFlow's own kernels are not (they differ by ~1e-7 with the batch size and the threads). The
tasks use the runtime the driver resolved, so "auto" cannot pick another one on another machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from framesim.backbones.base import Backbone
from framesim.dataset import FrameDataset
from framesim.distance import RAW_SUFFIX, UnnormalisedVectors
from framesim.embeddings import EmbeddingCache, EmbedStats, embed_missing, write_shard
from framesim.engines.base import Engine, Progress, TaskLost
from framesim.examples import frame_loader

#: keys per embedding task (``$FRAMESIM_EMBED_SHARD`` overrides it): a lost worker costs at most one shard
SHARD_KEYS = 1024
SHARD_ENV = "FRAMESIM_EMBED_SHARD"


def shard_keys() -> int:
    value = os.environ.get(SHARD_ENV, "").strip()
    if not value:
        return SHARD_KEYS
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{SHARD_ENV}={value!r}: expected a positive whole number")
    return int(value)


@dataclass(frozen=True)
class ShardTask:
    dataset: str
    cache_dir: str
    number: int
    recipe: tuple[str, str, dict[str, Any]]
    spec: str
    dim: int
    keys: list[str]
    paths: list[str]
    batch_size: int
    threads: int = 1


@dataclass
class ShardResult:
    number: int
    embedded: int
    seconds: float
    failures: list[str] = field(default_factory=list)


def embed_frames(backbone: Backbone, cache: EmbeddingCache, keys: Sequence[str], ds: FrameDataset,
                 frames_by_key: pd.DataFrame, *, engine: Engine | None = None, batch_size: int = 32,
                 progress: bool = True, desc: str = "frames", workers: int = 2) -> EmbedStats:
    """Embed the frames (by pixel sha256, ``frames_by_key`` giving their paths) the cache lacks."""
    if engine is None or not engine.distributed:
        return embed_missing(backbone, cache, keys, frame_loader(ds, frames_by_key, backbone.input_size),
                             batch_size=batch_size, progress=progress, desc=desc, workers=workers)
    stats = EmbedStats(requested=len(set(keys)))
    todo = cache.missing(keys)
    stats.cached = stats.requested - len(todo)
    if not todo:
        return stats
    recipe = _recipe(backbone)
    path_of = dict(zip(frames_by_key["sha256"], frames_by_key["path"], strict=True))
    cache.flush()  # (before numbering: a flush takes the next number)
    size, first = shard_keys(), cache.next_shard_number()
    tasks = [ShardTask(str(ds.root), str(cache.dir), first + i, recipe, backbone.spec, backbone.dim,
                       todo[start:start + size], [path_of[k] for k in todo[start:start + size]], batch_size)
             for i, start in enumerate(range(0, len(todo), size))]
    engine.check_shared([ds.root])
    started = time.perf_counter()
    bar = Progress(len(tasks), f"{desc} [{backbone.name}]", "shard", "img", progress)
    try:
        for i, result in engine.map(run_shard_task, tasks, label="framesim-embed", cpus=1):
            if isinstance(result, TaskLost):
                stats.failures.append(f"{len(tasks[i].keys)} frames of shard {tasks[i].number} not embedded: "
                                      f"{result.reason}")
                bar.done(0)
                continue
            stats.embedded += result.embedded
            stats.failures += result.failures
            bar.done(result.embedded)
    finally:
        bar.close()
        cache.refresh()
    stats.seconds = time.perf_counter() - started
    return stats


def _recipe(backbone: Backbone) -> tuple[str, str, dict[str, Any]]:
    if backbone.recipe is None:
        raise ValueError(f"backbone {backbone.name}: not made by get_backbone, so a cluster cannot build it; "
                         "use --engine local")
    if str(backbone.weights).startswith("random"):
        raise ValueError(f"backbone {backbone.name} has random weights, which differ in every process: "
                         "--engine ray needs weights by name or from a file")
    return backbone.recipe


#: the model of each recipe, built by the first task a worker process runs
_MODELS: dict[str, Backbone] = {}


class _ShardSink:
    """The cache as ``embed_missing`` sees it, writing exactly one shard with a given number."""

    def __init__(self, folder: Path, number: int, dim: int) -> None:
        self.folder, self.number, self.dim = folder, number, dim
        self.keys: list[str] = []
        self.vectors: list[np.ndarray] = []

    def missing(self, keys: Sequence[str]) -> list[str]:
        return list(dict.fromkeys(keys))

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        self.keys.extend(keys)
        self.vectors.append(vectors)

    def flush(self) -> None:
        if self.keys:
            write_shard(self.folder, self.number, self.keys, np.concatenate(self.vectors), self.dim)


def run_shard_task(task: ShardTask) -> ShardResult:
    """On a worker: embed one shard's frames and write the shard."""
    from framesim.backbones import get_backbone
    from framesim.backbones.runtime import THREADS_ENV

    key = repr(task.recipe)
    model = _MODELS.get(key)
    if model is None:
        os.environ[THREADS_ENV] = str(task.threads)  # what the task was given, not every core of the node
        spec, runtime, kwargs = task.recipe
        model = _MODELS[key] = get_backbone(spec, runtime=runtime, **kwargs)
    if task.spec.endswith(RAW_SUFFIX):  # --metric l2: the vectors before normalisation
        model = UnnormalisedVectors(model)
    if model.spec != task.spec or model.dim != task.dim:
        raise ValueError(f"the worker built {model.spec} (dim {model.dim}), the driver {task.spec} (dim {task.dim})")
    frames = pd.DataFrame({"sha256": task.keys, "path": task.paths})
    sink = _ShardSink(Path(task.cache_dir), task.number, task.dim)
    stats = embed_missing(model, sink, task.keys, frame_loader(FrameDataset(task.dataset), frames, model.input_size),  # type: ignore[arg-type]
                          batch_size=task.batch_size, progress=False)
    return ShardResult(task.number, stats.embedded, stats.seconds, stats.failures)
