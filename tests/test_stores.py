"""One conformance suite for every VectorStore backend, then what only the local ones promise.

Every backend is checked against a numpy brute force on the same float16-rounded data: FAISS and
Qdrant Edge in a temporary folder, the Qdrant server backend against qdrant-client's local mode
(``:memory:``, the same client calls as a server) and, where ``FRAMESIM_QDRANT_URL`` is set, a live
server (``QDRANT_API_KEY`` if it needs one).
"""

from __future__ import annotations

import glob
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from framesim.stores import StoreError, StoreLockedError, VectorStore, parse_store
from framesim.stores.base import PAYLOAD_FIELDS, as_stored, content_checksum, payload_frame, point_ids
from framesim.stores.faiss_store import FaissStore
from framesim.stores.qdrant_edge import QdrantEdgeStore
from framesim.stores.qdrant_server import QdrantServerStore, default_collection_name

REPO = Path(__file__).resolve().parents[1]
DIM, N, K = 64, 2000, 10
BACKBONE = "test-backbone [seed0]"
VIDEOS = [f"clip{j}.mp4" for j in range(5)]
LIVE_URL = os.environ.get("FRAMESIM_QDRANT_URL")
LOCAL = {"faiss": FaissStore, "qdrant": QdrantEdgeStore}
ALL = ["faiss", "qdrant", "qdrant-server",
       pytest.param("qdrant-server-live", marks=pytest.mark.skipif(
           not LIVE_URL, reason="set FRAMESIM_QDRANT_URL to a Qdrant server to test against it"))]


# -- data and reference --------------------------------------------------------------------------------
@dataclass
class Data:
    ids: np.ndarray
    vectors: np.ndarray  # float32 as made
    rows: pd.DataFrame  # fake manifest rows (PAYLOAD_FIELDS)

    @property
    def stored(self) -> np.ndarray:
        return as_stored(self.vectors, DIM)

    def part(self, sl: slice) -> Data:
        return Data(self.ids[sl], self.vectors[sl], self.rows.iloc[sl].reset_index(drop=True))


def make_data(n: int = N, seed: int = 0) -> Data:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    video = rng.integers(0, len(VIDEOS), n)
    index = np.arange(n)
    rows = pd.DataFrame({
        "frame_id": [f"clip{v}/{i:06d}.jpg" for v, i in zip(video, index, strict=True)],
        "video": [VIDEOS[v] for v in video], "video_id": [f"clip{v}" for v in video],
        "frame_index": index, "timestamp_s": index / 25.0,
        "sha256": [f"{rng.integers(2**63):016x}" for _ in index], "path": [f"frames/{i:06d}.jpg" for i in index]})
    rows.loc[3, "timestamp_s"] = np.nan  # a frame without a timestamp: null in the payload
    return Data(point_ids(list(rows["frame_id"])), vectors, rows)


@pytest.fixture(scope="module")
def data() -> Data:
    return make_data()


def queries(data: Data, n: int = 16, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    near = data.vectors[rng.choice(len(data.ids), n // 2, replace=False)] + 0.1 * rng.standard_normal((n // 2, DIM))
    far = rng.standard_normal((n - n // 2, DIM))
    q = np.vstack([near, far]).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def brute_force(data: Data, q: np.ndarray, k: int, videos: list[str] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product of the float16-rounded queries and vectors (float64 sums)."""
    s = as_stored(q, DIM).astype(np.float64) @ data.stored.astype(np.float64).T
    if videos is not None:
        s[:, ~data.rows["video"].isin(videos).to_numpy()] = -np.inf
    s = np.hstack([s, np.full((len(s), k), -np.inf)])  # fewer than k points: padded like the stores
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(s, order, 1)
    return scores, np.where(np.isfinite(scores), np.append(data.ids, [-1] * k)[order], -1)


def scan_all(store: VectorStore, batch: int = 300) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    parts = list(store.scan(batch))
    if not parts:
        return np.zeros(0, np.int64), np.zeros((0, DIM), np.float32), payload_frame(pd.DataFrame())
    return (np.concatenate([p[0] for p in parts]), np.vstack([p[1] for p in parts]),
            pd.concat([p[2] for p in parts], ignore_index=True))


def assert_search(store: VectorStore, data: Data, q: np.ndarray, k: int = K, videos: list[str] | None = None) -> None:
    scores, ids = store.search(q, k, videos=videos)
    ref_scores, ref_ids = brute_force(data, q, k, videos)
    assert scores.shape == ids.shape == (len(q), k) and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


# -- backends ----------------------------------------------------------------------------------------------
class Backend:
    """Opens one kind of store again and again on the same collection (reopen = same folder, or the
    same client for a server), and closes what it opened."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        from qdrant_client import QdrantClient

        self.kind, self.folder, self.notes, self.opened = kind, tmp_path / kind, [], []
        self.client = None
        self.collection = f"framesim-test-{uuid.uuid4().hex[:12]}"
        if kind == "qdrant-server":
            self.client = QdrantClient(":memory:")
        elif kind == "qdrant-server-live":
            self.client = QdrantClient(url=LIVE_URL, api_key=os.environ.get("QDRANT_API_KEY"), timeout=60)

    def open(self, *, create: bool = True, dim: int = DIM, backbone: str = BACKBONE) -> VectorStore:
        if self.client is not None:
            store = QdrantServerStore(self.client, self.collection, dim, backbone, create=create, owns_client=False)
        else:
            store = LOCAL[self.kind](self.folder, dim, backbone, create=create, on_note=self.notes.append)
        self.opened.append(store)
        return store

    def filled(self, data: Data, chunk: int = 700) -> VectorStore:
        store = self.open()
        for start in range(0, len(data.ids), chunk):
            part = data.part(slice(start, start + chunk))
            store.upsert(part.ids, part.vectors, part.rows)
        return store

    def cleanup(self) -> None:
        for store in self.opened:
            store.close()
        if self.client is not None:
            if self.kind == "qdrant-server-live" and self.client.collection_exists(self.collection):
                self.client.delete_collection(self.collection)
            self.client.close()


@pytest.fixture(params=ALL)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path)
    yield b
    b.cleanup()


@pytest.fixture(params=list(LOCAL))
def local(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path)
    yield b
    b.cleanup()


# -- conformance: every backend ------------------------------------------------------------------------------
def test_exact_search_equals_brute_force(backend: Backend, data: Data) -> None:
    store = backend.filled(data)
    assert store.count() == N
    assert_search(store, data, queries(data))
    # a stored vector finds itself first, with its squared float16 norm
    scores, ids = store.search(data.vectors[:5], 1)
    np.testing.assert_array_equal(ids[:, 0], data.ids[:5])
    np.testing.assert_allclose(scores[:, 0], (data.stored[:5].astype(np.float64) ** 2).sum(1), atol=1e-5)


def test_backends_agree(tmp_path: Path, data: Data) -> None:
    kinds = ["faiss", "qdrant", "qdrant-server"] + (["qdrant-server-live"] if LIVE_URL else [])
    q, expected = queries(data, seed=7), content_checksum(data.ids, data.stored)
    results = {}
    for kind in kinds:
        b = Backend(kind, tmp_path)
        try:
            store = b.filled(data, chunk=512)
            results[kind] = store.search(q, 25), store.search(q, 7, videos=VIDEOS[1:3])
            ids, vectors, _ = scan_all(store)
            assert content_checksum(ids, vectors) == expected, kind
            if kind in LOCAL:
                assert store.info()["checksum"] == f"{expected:016x}"
        finally:
            b.cleanup()
    first = results[kinds[0]]
    for kind in kinds[1:]:
        for (s0, i0), (s1, i1) in zip(first, results[kind], strict=True):
            np.testing.assert_array_equal(i1, i0, err_msg=kind)
            np.testing.assert_allclose(s1, s0, atol=1e-6, err_msg=kind)


def test_video_filter(backend: Backend, data: Data) -> None:
    store = backend.filled(data)
    chosen = [VIDEOS[1], VIDEOS[3]]
    q = queries(data)
    assert_search(store, data, q, videos=chosen)
    _, ids = store.search(q, K, videos=chosen)
    assert set(store.payloads(ids.ravel())["video"]) <= set(chosen)
    assert sorted(store.ids_of_videos(chosen)) == sorted(data.ids[data.rows["video"].isin(chosen)])
    scores, ids = store.search(q, K, videos=["no-such-video.mp4"])
    assert (ids == -1).all() and np.isneginf(scores).all()
    assert (store.search(q, K, videos=[])[1] == -1).all()


def test_upsert_replaces(backend: Backend, data: Data) -> None:
    store = backend.filled(data)
    rng = np.random.default_rng(5)
    pick = rng.choice(N, 20, replace=False)
    new = rng.standard_normal((20, DIM)).astype(np.float32)
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    rows = data.rows.iloc[pick].reset_index(drop=True).assign(frame_index=lambda r: r["frame_index"] + 100_000)
    store.upsert(data.ids[pick], new, rows)
    assert store.count() == N
    changed = Data(data.ids, data.vectors.copy(), data.rows.copy())
    changed.vectors[pick] = new
    changed.rows.loc[pick, "frame_index"] += 100_000
    assert_search(store, changed, np.vstack([new[:4], queries(data)]))
    assert store.search(new[:1], 1)[1][0, 0] == data.ids[pick[0]]
    assert (store.payloads(data.ids[pick])["frame_index"].to_numpy() >= 100_000).all()
    ids, vectors, _ = scan_all(store)
    assert len(ids) == N and content_checksum(ids, vectors) == content_checksum(changed.ids, changed.stored)
    if backend.kind in LOCAL:
        assert store.info()["checksum"] == f"{content_checksum(changed.ids, changed.stored):016x}"


def test_delete_and_delete_videos(backend: Backend, data: Data) -> None:
    store = backend.filled(data)
    gone = data.ids[[0, 10, 20, 30, 40]]
    store.delete(np.append(gone, 12345))  # an id not stored is ignored
    assert store.count() == N - 5
    assert store.payloads(gone).empty
    keep = ~np.isin(data.ids, gone)
    rest = Data(data.ids[keep], data.vectors[keep], data.rows[keep].reset_index(drop=True))
    assert_search(store, rest, queries(data))
    in_video = int(rest.rows["video"].eq(VIDEOS[2]).sum())
    assert store.delete_videos([VIDEOS[2]]) == in_video > 0
    assert store.count() == N - 5 - in_video
    assert not len(store.ids_of_videos([VIDEOS[2]]))
    assert store.delete_videos([VIDEOS[2]]) == 0
    keep = ~rest.rows["video"].eq(VIDEOS[2]).to_numpy()
    rest = Data(rest.ids[keep], rest.vectors[keep], rest.rows[keep].reset_index(drop=True))
    assert_search(store, rest, queries(data))
    assert sorted(store.ids()) == sorted(rest.ids)


def test_payload_round_trip(backend: Backend, data: Data) -> None:
    store = backend.filled(data)
    order = [7, 3, 1999, 0, 500]
    asked = np.insert(data.ids[order], 2, 99)  # 99: not stored, left out
    got = store.payloads(asked)
    assert list(got.index) == list(data.ids[order]) and list(got.columns) == PAYLOAD_FIELDS
    assert got["frame_index"].dtype == np.int64 and got["timestamp_s"].dtype == np.float64
    expected = payload_frame(data.rows.iloc[order]).set_axis(pd.Index(data.ids[order], name="id"))
    pd.testing.assert_frame_equal(got, expected, check_names=False)
    assert np.isnan(got.loc[data.ids[3], "timestamp_s"])
    assert isinstance(got["frame_index"].iloc[0], np.integer | int)
    assert list(store.payloads([]).columns) == PAYLOAD_FIELDS


def test_reopen_keeps_count_and_results(backend: Backend, data: Data) -> None:
    store = backend.filled(data)
    before = store.search(queries(data), K)
    store.close()
    again = backend.open(create=False)
    assert again.count() == N
    after = again.search(queries(data), K)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], atol=1e-7)
    info = again.info()
    assert info["count"] == N and info["dim"] == DIM and info["backbone"] == BACKBONE
    assert info["backend"] == again.name and info["engine"]


def test_scan_returns_every_point_once(backend: Backend, data: Data) -> None:
    store = backend.filled(data)
    ids, vectors, rows = scan_all(store, batch=300)
    assert len(ids) == len(set(ids.tolist())) == N and vectors.shape == (N, DIM) and len(rows) == N
    pos = pd.Series(np.arange(N), index=data.ids)[ids].to_numpy()
    np.testing.assert_array_equal(vectors, data.stored[pos])  # exactly the float16 values
    pd.testing.assert_frame_equal(rows, payload_frame(data.rows.iloc[pos].reset_index(drop=True)))
    assert sorted(store.ids().tolist()) == sorted(data.ids.tolist())


def test_k_larger_than_count_pads(backend: Backend, data: Data) -> None:
    small = data.part(slice(0, 5))
    store = backend.filled(small)
    scores, ids = store.search(queries(data, 3), 8)
    assert (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert_search(store, small, queries(data, 3), k=8)


def test_empty_collection(backend: Backend, data: Data) -> None:
    store = backend.open()
    scores, ids = store.search(queries(data, 4), 5)
    assert scores.shape == (4, 5) and (ids == -1).all() and np.isneginf(scores).all()
    assert store.count() == 0 and not len(store.ids()) and not list(store.scan())
    assert store.payloads(data.ids[:3]).empty
    assert store.search(np.zeros((0, DIM), np.float32), 5)[1].shape == (0, 5)
    store.upsert(np.zeros(0, np.int64), np.zeros((0, DIM), np.float32), data.rows.iloc[:0])
    assert store.count() == 0


def test_missing_collection_not_created(backend: Backend) -> None:
    with pytest.raises(StoreError, match="no collection here|no such collection"):
        backend.open(create=False)


def test_other_backbone_or_dim_refused(backend: Backend, data: Data) -> None:
    backend.filled(data.part(slice(0, 50))).close()
    with pytest.raises(StoreError, match="built for backbone"):
        backend.open(backbone="other-backbone [x]")
    with pytest.raises(StoreError, match="built for backbone"):
        backend.open(dim=32)


# -- the server backend ---------------------------------------------------------------------------------------
def test_server_identity_in_metadata(data: Data) -> None:
    from qdrant_client import QdrantClient, models

    client = QdrantClient(":memory:")
    with QdrantServerStore(client, "coll", DIM, BACKBONE, owns_client=False) as store:
        store.upsert(data.ids[:10], data.vectors[:10], data.rows.iloc[:10])
        info = store.info()
        assert info["location"] == ":memory:/coll" and info["engine"].startswith("qdrant-client ")
        assert (info["shards"], info["replicas"], info["count"]) == (1, 1, 10)
    meta = client.get_collection("coll").config.metadata["framesim"]
    assert (meta["backbone"], meta["dim"], meta["format"]) == (BACKBONE, DIM, "framesim-collection")
    client.create_collection("foreign", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT))
    with pytest.raises(StoreError, match="not a framesim collection"):
        QdrantServerStore(client, "foreign", DIM, BACKBONE)


def test_server_default_collection_name(tmp_path: Path) -> None:
    name = default_collection_name(tmp_path / "my data", "resnet50:pool=gem/3")
    assert name == "framesim-my-data-resnet50-pool-gem-3"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Backbone:
    spec, dim, name = "efficientnet-lite0", DIM, "efficientnet-lite0"


def _open_url(url: str, tmp_path: Path) -> None:
    from unittest import mock

    with mock.patch("framesim.stores.qdrant_server.backbone_identity", return_value=BACKBONE):
        QdrantServerStore.from_spec(parse_store(url), dataset=tmp_path, backbone=_Backbone(), timeout=5)


def test_server_down_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(StoreError) as err:
        _open_url(f"qdrant+{url}/coll", tmp_path)
    assert url in str(err.value) and "cannot reach" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
@pytest.mark.parametrize("status", [401, 403])
def test_server_refusing_the_key_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            body = b'{"status": {"error": "Must provide an API key or an Authorization bearer token"}}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("QDRANT_API_KEY", "secret-key-123")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(StoreError) as err:
            _open_url(f"qdrant+{url}/coll", tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    msg = str(err.value)
    assert url in msg and str(status) in msg and "QDRANT_API_KEY" in msg
    assert "secret-key-123" not in msg and "\n" not in msg


# -- local backends: framesim's manifest and lock ------------------------------------------------------------
def test_second_opener_in_process_is_refused(local: Backend) -> None:
    local.open()
    with pytest.raises(StoreLockedError, match=f"process {os.getpid()} "):
        local.open()


_HOLD = """
import sys
from framesim.stores.{module} import {cls}
store = {cls}(sys.argv[1], {dim}, {backbone!r})
print("ready", flush=True)
sys.stdin.read()
"""


def _child(code: str, *args: str, **kwargs: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env, cwd=REPO, **kwargs)


def _source(kind: str, template: str) -> str:
    cls = LOCAL[kind]
    return template.format(module=cls.__module__.rpartition(".")[2], cls=cls.__name__, dim=DIM, backbone=BACKBONE)


def test_second_opener_in_another_process_is_refused(local: Backend) -> None:
    proc = _child(_source(local.kind, _HOLD), str(local.folder))
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match=f"process {proc.pid} "):
            local.open()
    finally:
        proc.stdin.close()
        proc.wait(30)
    local.open().close()  # the holder's lock went with it


def test_foreign_folder_refused(local: Backend) -> None:
    local.folder.mkdir()
    (local.folder / "notes.txt").write_text("mine")
    (local.folder / "blob.bin").write_bytes(os.urandom(100))
    with pytest.raises(StoreError, match="not a framesim collection"):
        local.open()
    assert sorted(p.name for p in local.folder.iterdir() if p.name != ".lock") == ["blob.bin", "notes.txt"]


def _damage(folder: Path, pattern: str, offset: int) -> None:
    files = sorted(glob.glob(str(folder / pattern)))
    assert files, f"no {pattern} in {folder}"
    path = Path(files[0])
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # in place: same size, other bytes
        fh.seek(offset)
        old = fh.read(64)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in old))
    assert path.stat().st_size == size


@pytest.mark.parametrize(("kind", "damage"), [
    ("faiss", "index bytes"), ("faiss", "points missing"),
    ("qdrant", "vector bytes"), ("qdrant", "segment gone"),
    ("faiss", "manifest truncated"), ("qdrant", "manifest truncated"),
    ("faiss", "manifest garbage"), ("qdrant", "manifest garbage"),
])
def test_damaged_collection_refused(tmp_path: Path, data: Data, kind: str, damage: str) -> None:
    import shutil

    b = Backend(kind, tmp_path)
    # ten upserts: Edge's write-ahead log keeps only the last ones, so a lost segment is lost points (had
    # the log kept them all, Edge would rebuild the segment from it and the checksum would vouch for it)
    b.filled(data.part(slice(0, 500)), chunk=50).close()
    manifest = b.folder / "collection.json"
    if damage == "index bytes":
        _damage(b.folder, "index-*.faiss", 4096)
    elif damage == "points missing":
        next(b.folder.glob("points-*.parquet")).unlink()
    elif damage == "vector bytes":  # the engine opens this happily; our checksum must not
        _damage(b.folder, "shard/segments/*/vector_storage/vectors/chunk_*.mmap", 1000)
    elif damage == "segment gone":
        shutil.rmtree(next((b.folder / "shard" / "segments").iterdir()))
    elif damage == "manifest truncated":
        manifest.write_text(manifest.read_text()[:120])
    else:
        manifest.write_bytes(os.urandom(300))
    with pytest.raises(StoreError, match="damaged") as err:
        b.open()
    assert "\n" not in str(err.value)
    b.cleanup()


_KILLED = """
import sys
import numpy as np
import pandas as pd
from framesim.stores.{module} import {cls}
folder, data, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
arrays, rows = np.load(data + ".npz"), pd.read_pickle(data + ".pkl")
ids, vectors = arrays["ids"], arrays["vectors"]
store = {cls}(folder, {dim}, {backbone!r}, on_note=lambda msg: None)
for start in range(0, len(ids), batch):
    store.upsert(ids[start:start + batch], vectors[start:start + batch], rows.iloc[start:start + batch])
    if {cls} is not QdrantEdgeStore:
        store.flush()  # FAISS keeps nothing it has not flushed; Edge's write-ahead log has every update
    print(start + batch, flush=True)
print("done", flush=True)
"""


def test_killed_mid_upsert_recovers(local: Backend, data: Data, tmp_path: Path) -> None:
    batch = 50
    np.savez(tmp_path / "data.npz", ids=data.ids, vectors=data.vectors)
    data.rows.to_pickle(tmp_path / "data.pkl")
    code = "from framesim.stores.qdrant_edge import QdrantEdgeStore\n" + _source(local.kind, _KILLED)
    proc = _child(code, str(local.folder), str(tmp_path / "data"), str(batch))
    acked = 0
    for line in proc.stdout:
        acked = int(line)
        if acked >= N // 3:
            proc.send_signal(signal.SIGKILL)  # mid-way: the next upsert is under way
            break
    assert proc.wait(30) == -signal.SIGKILL and acked >= N // 3

    store = local.open()  # unclean shutdown: recovered, manifest re-derived from the engine
    count = store.count()
    assert acked <= count < N and count % batch == 0  # whole upserts only, none acknowledged lost
    if local.kind == "qdrant":  # its manifest, last written when the child opened it, said 0 points
        assert any("unclean shutdown" in note for note in local.notes)
    ids, vectors, _ = scan_all(store)
    assert store.info()["checksum"] == f"{content_checksum(ids, vectors):016x}"
    np.testing.assert_array_equal(np.sort(ids), np.sort(data.ids[:count]))
    for start in range(0, N, 700):  # the rerun: upsert everything again
        part = data.part(slice(start, start + 700))
        store.upsert(part.ids, part.vectors, part.rows)
    store.close()

    clean = Backend(local.kind, tmp_path / "uninterrupted")
    try:
        clean.filled(data).close()
        again, uninterrupted = local.open(), clean.open()
        assert again.count() == uninterrupted.count() == N
        assert again.info()["checksum"] == uninterrupted.info()["checksum"] == \
            f"{content_checksum(data.ids, data.stored):016x}"
    finally:
        clean.cleanup()
