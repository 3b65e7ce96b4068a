"""Server load test: ``framesim serve`` answering concurrent ``POST /api/search`` uploads.

    python -m bench serve                                  # 4 clients x 50 searches, 100k frames (~5 min)
    python -m bench serve --frames 20000 --requests 10     # ~1-2 min
    python -m bench serve --keep /data/bench               # build the dataset once, reuse it on later runs

Setup: a dataset folder with a fake ``manifest.parquet`` of n frames (no frame images: the bench never
fetches thumbnails) and a Qdrant Edge collection of n synthetic vectors laid out as the default
backbone's (``bench.store``'s helpers: the same folders, so ``--keep`` shares them with ``bench store``).
In a fresh process, the parts of one search are timed without HTTP: decode + embed of each query image
(the real efficientnet-lite0) and one store search. Then ``framesim serve -d DATASET`` runs on a free
port of 127.0.0.1; after a few warm-ups, 1 client sends a short series of searches back to back, then C
clients (threads, one HTTP connection each) M each. The query images are real pictures
(``samples/examples`` and the shared media's photos), read once into memory, sent in turn (top_k=10).
A run stops sending after ``--cap`` seconds and reports what it has. Targets (issue #13): 4 clients on
100k frames, p50 < 150 ms, p99 < 500 ms, no errors.
"""

from __future__ import annotations

import collections
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from bench.store import BATCH, DIM, MODEL, REPO, _folder, _ingest, _payload

K = 10
WARMUP, SINGLE = 3, 20
TARGET_P50_MS, TARGET_P99_MS, TARGET_CLIENTS, TARGET_FRAMES = 150.0, 500.0, 4, 100_000
IMAGE_DIRS = [REPO / "samples" / "examples", REPO.parent / "shared" / "media" / "images"]


def _dataset(root: Path, n: int) -> Path:
    """The dataset folder of n fake frames (``bench.store``'s folder for the collection), built once."""
    import pyarrow.parquet as pq

    from bench.index import FrameVectors
    from bench.pipeline import in_fresh_process
    from framesim.dataset import EXTRA_COLUMNS, FORMAT, FORMAT_VERSION, MANIFEST_COLUMNS

    ds = root / f"dataset-{n}x{DIM}"
    manifest = ds / "manifest.parquet"
    if not (manifest.exists() and pq.read_metadata(manifest).num_rows == n):
        ds.mkdir(parents=True, exist_ok=True)
        (ds / "dataset.json").write_text(json.dumps({"format": FORMAT, "version": FORMAT_VERSION,
                                                     "manifest_columns": MANIFEST_COLUMNS + EXTRA_COLUMNS}))
        import pandas as pd

        vectors = FrameVectors(n, DIM)
        rows = pd.concat([_payload(vectors, s, min(n, s + BATCH))[1] for s in range(0, n, BATCH)], ignore_index=True)
        rows["width"], rows["height"] = 1280, 720
        rows[MANIFEST_COLUMNS + EXTRA_COLUMNS].to_parquet(manifest, index=False)
    built = in_fresh_process(_ingest, "qdrant", _folder(root, "qdrant", n, DIM), n, DIM)
    print(f"dataset {ds}: {n:,} frames, qdrant collection {'reused' if built['reused'] else 'built'}", flush=True)
    return ds


def _with_hnsw(root: Path, n: int) -> dict[str, Any]:
    """Build (once: kept collections keep it) the recall-gated HNSW graph of the bench collection."""
    from bench.store import _folder
    from framesim.stores.hnsw import build_hnsw

    folder = _folder(root, "qdrant", n, DIM)
    graph = json.loads((folder / "collection.json").read_text()).get("hnsw")
    if graph is None:
        graph = build_hnsw(folder, log=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
    built = f", built in {graph['build_seconds']:.0f} s" if "build_seconds" in graph else ""
    print(f"HNSW graph: m={graph['m']}, ef={graph['ef']}, recall@10 {graph['recall']:.3f} on the collection's "
          f"own frames{built}", flush=True)
    return graph


def _image_paths() -> list[Path]:
    return sorted(p for d in IMAGE_DIRS if d.is_dir() for p in d.rglob("*") if p.suffix.lower() in (".jpg", ".png"))


def _parts(ds: str, paths: list[str]) -> dict[str, float]:
    """p50 ms of a search's parts without HTTP (runs in a fresh process): image decode + embed, store search."""
    from framesim.backbones.base import get_backbone, weights_for
    from framesim.images import load_image
    from framesim.stores import open_store

    name = MODEL.spec.split(":")[0]  # the default descriptor, as framesim serve's default -b
    model = get_backbone(name, **weights_for(name, None))
    embed, search = [], []
    with open_store(None, dataset=ds, backbone=model, create=False) as store:
        for i, p in enumerate(paths * 2):
            t = time.perf_counter()
            q = model.embed([model.resize(load_image(p, min_side=model.input_size))])
            t1 = time.perf_counter()
            store.search(q, K)
            if i >= len(paths) // 2:  # the first ones warm up
                embed.append(t1 - t)
                search.append(time.perf_counter() - t1)
    return {"embed_ms": 1e3 * float(np.median(embed)), "search_ms": 1e3 * float(np.median(search))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(ds: Path, port: int, log: Path, timeout: float) -> subprocess.Popen[bytes]:
    import httpx

    cmd = [sys.executable, "-m", "framesim", "serve", "-d", str(ds), "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    t0, deadline = time.perf_counter(), time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"framesim serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).json()
            print(f"server up in {time.perf_counter() - t0:.1f} s: {health}", flush=True)
            return proc
        except (httpx.HTTPError, ValueError):
            time.sleep(0.5)
    proc.kill()
    raise click.ClickException(f"no /api/health after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _client(url: str, images: list[tuple[str, bytes]], start: int, m: int, deadline: float,
            out: list[dict[str, Any]]) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(m):
            if time.perf_counter() > deadline:
                return
            name, data = images[(start + i) % len(images)]
            mime = "image/png" if name.endswith(".png") else "image/jpeg"
            t = time.perf_counter()
            try:
                r = http.post("/api/search", files={"file": (name, data, mime)}, data={"top_k": str(K)})
                status, took = r.status_code, (r.json().get("took_ms") if r.status_code == 200 else None)
            except (httpx.HTTPError, ValueError) as exc:
                status, took = type(exc).__name__, None
            out.append({"ms": 1e3 * (time.perf_counter() - t), "status": status, "took_ms": took})


def _load(url: str, images: list[tuple[str, bytes]], clients: int, m: int, cap: float) -> dict[str, Any]:
    """C threads of M back-to-back searches each; latency percentiles, errors by status, throughput."""
    outs: list[list[dict[str, Any]]] = [[] for _ in range(clients)]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=_client, args=(url, images, c * 7, m, t0 + cap, outs[c]))
               for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, done = time.perf_counter() - t0, [r for o in outs for r in o]
    ok = [r for r in done if r["status"] == 200]
    ms = np.array([r["ms"] for r in ok]) if ok else np.array([np.nan])
    took = [r["took_ms"] for r in ok if isinstance(r["took_ms"], int | float)]
    return {"clients": clients, "requests": len(done), "asked": clients * m, "wall_s": wall,
            "errors": dict(collections.Counter(str(r["status"]) for r in done if r["status"] != 200)),
            **{f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)}, "max_ms": float(ms.max()),
            "throughput": len(ok) / wall, "took_p50_ms": float(np.median(took)) if took else float("nan"),
            "capped": len(done) < clients * m}


def _print(r: dict[str, Any]) -> None:
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "none"
    print(f"clients {r['clients']}, requests {r['requests']}{' (stopped by the cap)' if r['capped'] else ''}, "
          f"errors {errors}; latency ms p50 {r['p50_ms']:.0f} p90 {r['p90_ms']:.0f} p99 {r['p99_ms']:.0f} "
          f"max {r['max_ms']:.0f}; {r['throughput']:.1f} req/s; server took_ms p50 {r['took_p50_ms']:.0f} "
          f"vs client p50 {r['p50_ms']:.0f}", flush=True)


# ----------------------------------------------------------------------------------------------- CLI


@click.command()
@click.option("--frames", default=TARGET_FRAMES, show_default=True, help="Frames in the collection.")
@click.option("--clients", default=TARGET_CLIENTS, show_default=True, help="Concurrent clients.")
@click.option("--requests", "m", default=50, show_default=True, help="Searches per client.")
@click.option("--cap", default=300.0, show_default=True, help="Seconds after which a run stops sending.")
@click.option("--startup", default=180.0, show_default=True, help="Seconds to wait for /api/health.")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), help="Keep the dataset here and reuse it.")
@click.option("--hnsw", is_flag=True, help="Give the collection a recall-gated HNSW graph first (framesim store hnsw).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write results here.")
def serve(frames: int, clients: int, m: int, cap: float, startup: float, keep: Path | None, hnsw: bool,
          json_path: Path | None) -> None:
    """Load test of framesim serve: C clients x M image searches, latency percentiles, errors, throughput."""
    from bench.pipeline import in_fresh_process

    paths = _image_paths()
    images = [(p.name, p.read_bytes()) for p in paths]
    if not images:
        raise click.ClickException(f"no query images under {', '.join(map(str, IMAGE_DIRS))}")
    root = keep or Path(tempfile.mkdtemp(prefix="framesim-serve-"))
    began, proc = time.perf_counter(), None
    try:
        ds = _dataset(root, frames)
        graph = _with_hnsw(root, frames) if hnsw else None
        parts = in_fresh_process(_parts, str(ds), [str(p) for p in paths])
        print(f"{len(images)} query images ({sum(len(d) for _, d in images) / 2**20:.1f} MiB); without HTTP, "
              f"p50: decode + embed {parts['embed_ms']:.0f} ms, store search {parts['search_ms']:.1f} ms", flush=True)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        proc = _start(ds, port, root / "serve.log", startup)
        warm = _load(url, images, 1, WARMUP, cap)
        if warm["errors"]:
            raise click.ClickException(f"warm-up searches failed: {warm['errors']}; "
                                       f"log:\n{(root / 'serve.log').read_text()[-3000:]}")
        single = _load(url, images, 1, min(SINGLE, m), cap)
        print("single client: ", end="")
        _print(single)
        load = _load(url, images, clients, m, cap)
        _print(load)
        checks = {f"p50 < {TARGET_P50_MS:.0f} ms": load["p50_ms"] < TARGET_P50_MS,
                  f"p99 < {TARGET_P99_MS:.0f} ms": load["p99_ms"] < TARGET_P99_MS,
                  "zero errors": not load["errors"]}
        scope = "" if (clients, frames) == (TARGET_CLIENTS, TARGET_FRAMES) else "; not this run's"
        print(f"targets ({TARGET_CLIENTS} clients, {TARGET_FRAMES:,} frames{scope}): "
              + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in checks.items()))
        print(f"({time.perf_counter() - began:.0f} s)")
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps({"frames": frames, "images": len(images), "hnsw": graph, "parts": parts,
                                             "single": single,
                                             "load": load, "targets": checks}, indent=1) + "\n")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
