"""--engine ray on a real multi-node Ray cluster: killing a worker node mid-run changes nothing.

A head with 0 CPUs and two worker nodes of 2 CPUs (``ray.cluster_utils.Cluster``) run in a loopback-only
network namespace (tests/ray_cluster.py). ``framesim extract`` and ``framesim index`` run once with
``--engine local`` and once with ``--engine ray``; during each Ray run every process of the worker node
running a task is SIGKILLed. The Ray runs must exit 0 and leave exactly what the local runs leave: the
same manifest, byte-identical frames, the same embedding cache (key -> vector), and no temp files.

Skipped without Ray or ``unshare`` unless FRAMESIM_REQUIRE_RAY=1 (CI), where that is a failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import scene_colour
from ray_cluster import require_ray_namespace, run_scenario, token_processes

from framesim.dataset import FrameDataset

pytestmark = pytest.mark.slow

N_VIDEOS = 8  # 4 task slots on the two workers: both nodes get work, and a killed task has somewhere to go
N_FRAMES = 500  # 20 s at 25 fps; --every 5 keeps 100 frames a video
SIZE = (320, 240)
SCENE_FRAMES = 125  # a cut every 5 s: distinct content for the CNN (dedupe keeps ~1 vector per scene change)
EMBED_SHARD = "16"  # keys per embedding task: many shards, so the kill lands among them
CNN_CACHE = Path("embeddings", "efficientnet-lite0", "gem", "imagenet")


def write_videos(folder: Path) -> list[Path]:
    """N_VIDEOS mp4s whose frames no other video has (scene numbers differ per video): a cut every
    SCENE_FRAMES, the frame number drawn on each frame."""
    folder.mkdir(parents=True, exist_ok=True)
    w, h = SIZE
    paths = []
    for v in range(N_VIDEOS):
        path = folder / f"clip{v}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, SIZE)
        assert writer.isOpened(), f"cannot open VideoWriter for {path}"
        base = None
        for i in range(N_FRAMES):
            if i % SCENE_FRAMES == 0:  # one texture per scene (cheaper than conftest.synthetic_frame per frame)
                scene = 100 * v + i // SCENE_FRAMES
                rng = np.random.default_rng(scene)
                texture = cv2.resize(rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8), SIZE,
                                     interpolation=cv2.INTER_NEAREST)
                base = (0.5 * np.array(scene_colour(scene), np.float32) + 0.5 * texture).astype(np.uint8)
            frame = base.copy()
            cv2.putText(frame, str(i), (w // 10, h // 2), cv2.FONT_HERSHEY_SIMPLEX, h / 120, (255, 255, 255), 2)
            writer.write(frame)
        writer.release()
        paths.append(path)
    return paths


def files(root: Path) -> dict[str, Path]:
    """Relative POSIX path -> path of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def cache_map(folder: Path) -> dict[bytes, np.ndarray]:
    """key -> vector of every complete shard (one with its .json sidecar) of an embedding cache."""
    out: dict[bytes, np.ndarray] = {}
    for sidecar in sorted(folder.glob("shard-*.json")):
        stem = sidecar.with_suffix("")
        keys = np.load(f"{stem}.keys.npy", allow_pickle=False)
        vecs = np.load(f"{stem}.vecs.npy", allow_pickle=False)
        assert len(keys) == len(vecs), f"{stem}: {len(keys)} keys but {len(vecs)} vectors"
        for key, vec in zip(keys.tolist(), vecs, strict=True):
            assert key not in out, f"{stem}: key {key!r} is in two shards"
            out[key] = vec
    return out


def caches(ds: Path) -> dict[str, dict[bytes, np.ndarray]]:
    """Every embedding cache of a dataset (the CNN's, the dedupe thumbnails'), by folder."""
    return {p.parent.relative_to(ds).as_posix(): cache_map(p.parent)
            for p in sorted((ds / "embeddings").rglob("header.json"))}


def temp_files(ds: Path) -> list[str]:
    return [rel for rel, p in files(ds).items()
            if (p.name.startswith(".") and p.name.endswith(".tmp")) or rel.startswith("state/pending/")]


def step_report(step: dict[str, Any]) -> str:
    kill = {k: v for k, v in step.get("kill", {}).items() if k != "processes"}
    return (f"{step['name']}: exit {step['exit_code']} after {step['seconds']} s; kill: {kill or 'none'}\n"
            f"--- stderr ---\n{step['stderr_tail']}\n--- stdout ---\n{step['stdout_tail']}")


def scenario(videos: list[str], ds_local: Path, ds_ray: Path, log_dir: Path) -> dict[str, Any]:
    """The ray_cluster spec: extract then index, local and ray, a worker node killed in each ray run."""
    framesim = [sys.executable, "-m", "framesim"]
    ray_flags = ["--engine", "ray", "--ray-address", "{address}"]
    extract = ["extract", *videos, "--every", "5", "-q"]
    # a node has a task running and something of the run is on disk: then that node dies
    kill_extract = {"task": "framesim-extract", "min_task_seconds": 0.1,
                    "glob": str(ds_ray / "frames" / "*" / "*.jpg"), "min_files": 1}
    kill_embed = {"task": "framesim-embed", "min_task_seconds": 0.2,
                  "glob": str(ds_ray / CNN_CACHE / "shard-*.json"), "min_files": 1}
    return {
        "workers": 2, "cpus_per_worker": 2, "head_cpus": 0, "log_dir": str(log_dir),
        # the same shard size for both engines: the comparison is about the engine, nothing else
        "env": {"FRAMESIM_EMBED_SHARD": EMBED_SHARD},
        "steps": [
            {"name": "extract-local", "argv": [*framesim, *extract, "-o", str(ds_local)], "timeout": 120},
            {"name": "extract-ray", "argv": [*framesim, *extract, "-o", str(ds_ray), *ray_flags], "timeout": 180,
             "kill": kill_extract},
            {"name": "index-local", "argv": [*framesim, "index", "-d", str(ds_local), "-q"], "timeout": 180},
            {"name": "index-ray", "argv": [*framesim, "index", "-d", str(ds_ray), *ray_flags, "-q"],
             "timeout": 180, "kill": kill_embed},
            {"name": "info-local", "argv": [*framesim, "store", "info", "-d", str(ds_local)], "timeout": 60},
            {"name": "info-ray", "argv": [*framesim, "store", "info", "-d", str(ds_ray)], "timeout": 60},
        ],
    }


def test_ray_engine_survives_a_killed_worker_node(tmp_path: Path) -> None:
    require_ray_namespace()
    videos = [str(p) for p in write_videos(tmp_path / "videos")]
    ds_local, ds_ray = tmp_path / "ds_local", tmp_path / "ds_ray"
    spec = scenario(videos, ds_local, ds_ray, tmp_path / "logs")
    result = run_scenario(spec, timeout=720)
    (tmp_path / "cluster-result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")  # post-mortem
    steps = {s["name"]: s for s in result["steps"]}
    assert result["harness_exit"] == 0 and len(steps) == 6, \
        f"harness failed: {result.get('error')}\n{result['harness_output_tail']}"
    assert result["leftover_processes"] == [], f"cluster processes outlived the harness: {result['leftover_processes']}"
    assert not token_processes(result.get("token", "-")), "cluster processes still alive"

    for step in steps.values():
        assert step["exit_code"] == 0, step_report(step)
    for name in ("extract-ray", "index-ray"):
        kill = steps[name]["kill"]
        assert kill["killed"], f"{name}: no worker node was killed (tasks seen: {kill['tasks_seen']})\n" \
                               + step_report(steps[name])
        # tasks_when_killed: processes caught (frozen) running the task just before the SIGKILL
        assert kill["tasks_when_killed"] and kill["step_running_after_kill"], f"{name}: not killed mid-run: {kill}"
        assert kill["all_dead"], f"{name}: processes of the killed node survived SIGKILL: {kill['processes']}"
        assert kill["detected_dead_after_s"] is not None, f"{name}: the cluster never saw the node die: {kill}"

    # the manifest, order and all
    pd.testing.assert_frame_equal(FrameDataset(ds_ray).manifest(), FrameDataset(ds_local).manifest())
    # the frames, byte for byte
    frames_local, frames_ray = files(ds_local / "frames"), files(ds_ray / "frames")
    assert frames_local, "the local run wrote no frames"
    assert sorted(frames_ray) == sorted(frames_local), (
        f"frame files differ: only ray {sorted(set(frames_ray) - set(frames_local))[:5]}, "
        f"only local {sorted(set(frames_local) - set(frames_ray))[:5]}")
    different = [rel for rel in frames_local if frames_local[rel].read_bytes() != frames_ray[rel].read_bytes()]
    assert not different, f"{len(different)} frame files differ in content, e.g. {different[:5]}"
    # the embedding caches, key -> vector
    local_caches, ray_caches = caches(ds_local), caches(ds_ray)
    assert CNN_CACHE.as_posix() in local_caches and local_caches[CNN_CACHE.as_posix()], local_caches.keys()
    assert sorted(ray_caches) == sorted(local_caches)
    for folder, local_map in local_caches.items():
        ray_map = ray_caches[folder]
        assert set(ray_map) == set(local_map), (f"{folder}: {len(set(ray_map) - set(local_map))} keys only in "
                                                f"ray, {len(set(local_map) - set(ray_map))} only in local")
        unequal = [k for k in local_map if not np.array_equal(local_map[k], ray_map[k])]
        worst = max((float(np.abs(local_map[k].astype(np.float32) - ray_map[k].astype(np.float32)).max())
                     for k in unequal), default=0.0)
        assert not unequal, f"{folder}: {len(unequal)} of {len(local_map)} vectors differ (max |diff| {worst:.2e})"
    # the collections: the same points and vectors (their content checksum)
    checksum = {name: [line for line in steps[f"info-{name}"]["stdout_tail"].splitlines()
                       if line.startswith("checksum:")] for name in ("local", "ray")}
    assert len(checksum["local"]) == 1 and checksum["local"] == checksum["ray"], checksum
    # nothing half-written, nothing of the Ray run's own left behind
    assert temp_files(ds_ray) == [], f"temp files left in the ray dataset: {temp_files(ds_ray)[:10]}"
    outside = ("embeddings/", "collections/")  # shard numbering and the Qdrant store's files may differ
    extra = sorted(rel for rel in set(files(ds_ray)) - set(files(ds_local)) if not rel.startswith(outside))
    assert extra == [], f"files the ray runs left that the local runs did not: {extra[:10]}"
