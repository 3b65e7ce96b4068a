"""The Ray engine on one machine (Ray started by framesim for the run), and what makes vectors engine-free.

Ray runs inside a loopback-only network namespace (``unshare --net``): Ray binds the machine's
address, not 127.0.0.1, and the namespace keeps it, and the test's traffic, on this machine. The
multi-node cluster with a node killed mid-run is ``test_engine_cluster.py``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ray_cluster import isolated_argv, require_ray_namespace

from framesim.dataset import FrameDataset

pytestmark = pytest.mark.slow


def _isolated(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """``args`` in a new network namespace with only lo, a fresh HOME (no stale ~/.ray token) and short
    RAY_TMPDIR (Ray's socket paths must stay under 107 bytes)."""
    tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    env = {**os.environ, "HOME": str(home), "RAY_TMPDIR": tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    try:
        return subprocess.run(isolated_argv(args), env=env, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _framesim(*args: str) -> list[str]:
    return [sys.executable, "-m", "framesim", *args]


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "frames" in p.parts}


def test_extract_and_index_on_ray_give_the_local_outputs(make_video: Callable[..., Path], tmp_path: Path) -> None:
    require_ray_namespace()
    videos = [str(make_video(f"v{i}.mp4", n_frames=40 + 10 * i, scene_starts=(0, 15 + i))) for i in range(3)]
    videos.append(str(tmp_path / "missing.mp4"))
    out = {}
    for engine in ("local", "ray"):
        ds = tmp_path / engine
        extract = _isolated(_framesim("extract", *videos, "-o", str(ds), "--fps", "5", "--engine", engine, "-q"),
                            tmp_path)
        index = _isolated(_framesim("index", "-d", str(ds), "-b", "tiny-image", "--engine", engine, "-q"), tmp_path)
        out[engine] = (extract, index)
        assert extract.returncode == 1, extract.stderr  # the missing video: reported, the others go on
        assert f"error: {tmp_path / 'missing.mp4'}: no such file" in extract.stderr
        assert index.returncode == 0, index.stderr
    assert out["local"][0].stdout.split(" in ")[0] == out["ray"][0].stdout.split(" in ")[0]  # "N frames added ..."
    local, ray = FrameDataset(tmp_path / "local").manifest(), FrameDataset(tmp_path / "ray").manifest()
    assert len(local) > 20 and local.equals(ray)
    assert _files(tmp_path / "local") == _files(tmp_path / "ray")
    assert out["local"][1].stdout.split("(")[0] == out["ray"][1].stdout.split("(")[0]
    assert not [p for p in (tmp_path / "ray").rglob("*") if p.name.endswith(".tmp")]


PROBE = """
import sys
from pathlib import Path
from framesim.engines import SharedStorageError, get_engine
engine = get_engine("ray")
try:
    engine.check_shared([Path(sys.argv[1])])
    print("seen")
    engine.check_shared([Path(sys.argv[1]), Path("/nonexistent/videos")])
except SharedStorageError as exc:
    print(exc)
finally:
    engine.close()
"""


def test_a_node_that_cannot_see_the_storage_is_named(tmp_path: Path) -> None:
    require_ray_namespace()
    res = _isolated([sys.executable, "-c", PROBE, str(tmp_path)], tmp_path)
    assert res.returncode == 0, res.stderr
    seen, error = res.stdout.strip().splitlines()
    assert seen == "seen"
    assert error.startswith("node 127.0.0.1 (id ") and ") cannot see /nonexistent/videos; videos and the" in error
    assert not list(tmp_path.glob(".probe-*"))


def test_efficientnet_lite0_vectors_do_not_depend_on_batch_size_or_threads(
        monkeypatch: pytest.MonkeyPatch, shared_media: Path) -> None:
    """What lets a cluster's shards equal one machine's cache: ONNX Runtime gives the same bits for an
    image whatever else is in its batch and however many threads run it (TensorFlow does not: ~1e-7)."""
    import cv2

    from framesim.backbones import get_backbone

    cap = cv2.VideoCapture(str(shared_media / "videos" / "bikes.mp4"))
    frames = []
    while len(frames) < 12:
        ok, bgr = cap.read()
        assert ok
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    runs = {}
    for threads in ("1", "2"):
        monkeypatch.setenv("FRAMESIM_THREADS", threads)
        model = get_backbone("efficientnet-lite0", runtime="onnxruntime")
        assert model.runtime == "onnxruntime" and model.runner.threads == int(threads)
        batch = np.stack([model.resize(f) for f in frames])
        for size in (1, 5, 12):
            runs[threads, size] = np.concatenate([model.embed(batch[i:i + size]) for i in range(0, len(batch), size)])
    reference = runs["1", 1]
    for key, vectors in runs.items():
        assert np.array_equal(vectors, reference), key
