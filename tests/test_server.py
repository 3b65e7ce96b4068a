"""framesim serve (issue #13): a real uvicorn process over a small synthetic dataset, checked against
framesim/server/CONTRACT.md: searches find the source scene, files are served (with Range), traversal and
bad input get a 4xx JSON error (never a 500 or a trace), the token guards every route but health, a full
queue answers 503. Plus a hypothesis fuzz of uploads and parameters through the in-process app.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import httpx
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framesim.cli import cli

REPO = Path(__file__).resolve().parents[1]
# (starlette's TestClient warns that it will move to httpx2: not ours to act on)
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
#: FRAMESIM_FUZZ_EXAMPLES=1500 for a longer hunt (1500 took 70 s)
FUZZ = settings(max_examples=int(os.environ.get("FRAMESIM_FUZZ_EXAMPLES", 60)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@dataclass
class World:
    root: Path
    ds: Path
    manifest: pd.DataFrame
    a: str  # the manifest's video values
    b: str

    def frame(self, video: str, index: int) -> pd.Series:
        rows = self.manifest[(self.manifest["video"] == video) & (self.manifest["frame_index"] == index)]
        return rows.iloc[0]

    def query_jpeg(self, video: str, index: int) -> bytes:
        """A re-encoded, shrunk copy of a dataset frame: a query whose source is known."""
        img = cv2.imread(str(self.ds / self.frame(video, index)["path"]))
        ok, buf = cv2.imencode(".jpg", cv2.resize(img, (80, 60)), [cv2.IMWRITE_JPEG_QUALITY, 80])
        assert ok
        return buf.tobytes()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Two videos (a: 160x120, scenes at 0 and 15; b: 192x144, scenes at 0 and 10; other sizes give other
    textures, so no frame of one looks like the other's), every 2nd frame, indexed with tiny-image in the
    default store (the main server), a FAISS store (the token server) and a FAISS folder (in-process)."""
    from conftest import write_video

    from framesim.collection import index
    from framesim.extraction import extract

    root = tmp_path_factory.mktemp("serve")
    a = write_video(root / "videos" / "a.mp4", 30, fps=10, size=(160, 120), scene_starts=(0, 15))
    b = write_video(root / "videos" / "b.mp4", 30, fps=10, size=(192, 144), scene_starts=(0, 10))
    ds = root / "ds"
    assert extract([str(a), str(b)], ds, every=2, progress=False).ok
    for store in (None, "faiss", f"faiss:{root / 'inprocess-faiss'}"):
        index(ds, ["tiny-image"], store=store, progress=False, dedupe=0)
    manifest = pd.read_parquet(ds / "manifest.parquet")
    return World(root, ds, manifest, str(a), str(b))


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


def start_server(args: list[str], log: Path, script: str | None = None, timeout: float = 60) -> Server:
    """``framesim serve ARGS`` (or ``python -c SCRIPT`` given the port as argv[1]) on a free port of
    127.0.0.1; returns once /api/health answers."""
    port = free_port()
    cmd = ([sys.executable, "-c", script, str(port)] if script else
           [sys.executable, "-m", "framesim", "serve", *args, "--port", str(port)])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return Server(url, port, proc, log)
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"no /api/health after {timeout} s:\n{log.read_text()}")


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[Server]:
    s = start_server(["-d", str(world.ds), "-b", "tiny-image", "--max-upload-mb", "1"], world.root / "serve.log")
    yield s
    stop_server(s)
    assert "Traceback" not in s.log.read_text()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def ok_json(r: httpx.Response, status: int = 200) -> Any:
    assert "Traceback" not in r.text
    assert r.status_code == status, r.text
    return r.json()


def error(r: httpx.Response, status: int, *words: str) -> str:
    """The one-line error of a refused request (checks the status, the JSON shape and that it names the reason)."""
    body = ok_json(r, status)
    assert set(body) == {"error"} and "\n" not in body["error"], body
    for w in words:
        assert w in body["error"], body
    return body["error"]


def raw_get(server: Server, path: str) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (httpx would normalise ../ and re-quote)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


# -- the main server ------------------------------------------------------------------------------------------
def test_health_and_stats(client: httpx.Client, world: World) -> None:
    assert ok_json(client.get("/api/health")) == {"status": "ok", "frames": 30, "backbones": ["tiny-image"]}
    stats = ok_json(client.get("/api/stats"))
    assert stats["frames"] == 30 and stats["dataset"] == str(world.ds)
    assert [(v["video"], v["frames"], v["playable"]) for v in stats["videos"]] == [(world.a, 15, True),
                                                                                 (world.b, 15, True)]
    assert stats["videos"][0]["duration_s"] == pytest.approx(2.8)
    (bb,) = stats["backbones"]
    assert bb["name"] == "tiny-image" and bb["dim"] == 256
    assert bb["store"]["backend"] == "qdrant" and bb["store"]["count"] == 30


def test_the_api_is_described_at_openapi_json_and_docs(client: httpx.Client) -> None:
    spec = ok_json(client.get("/openapi.json"))
    upload = spec["paths"]["/api/search"]["post"]
    fields = upload["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"file", "top_k", "min_score", "backbone", "video"} <= set(fields) and fields["file"]["format"] == "binary"
    by_frame = {p["name"] for p in spec["paths"]["/api/search"]["get"]["parameters"]}
    assert {"frame_id", "top_k", "video"} <= by_frame
    assert {"/api/health", "/api/stats", "/frames/{frame_id}", "/videos/{video_id}"} <= set(spec["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/docs.js" in docs.text and "cdn" not in docs.text.lower()
    assert "script-src 'self'" in docs.headers["content-security-policy"]
    assert client.get("/static/docs.js").status_code == 200


def test_every_response_has_the_security_headers(client: httpx.Client) -> None:
    for path in ("/api/health", "/api/stats", "/", "/nope", "/frames/nope"):
        r = client.get(path)
        assert r.headers["content-security-policy"].startswith("default-src 'self'; img-src 'self' blob: data:")
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"


def test_search_by_upload_finds_the_source_scene(client: httpx.Client, world: World) -> None:
    source = world.frame(world.b, 14)
    r = client.post("/api/search", files={"file": ("q.jpg", world.query_jpeg(world.b, 14), "image/jpeg")},
                    data={"top_k": "3"})
    body = ok_json(r)
    assert body["backbone"] == "tiny-image" and body["took_ms"] > 0
    assert body["query"] == {"name": "q.jpg", "width": 80, "height": 60}
    results = body["results"]
    # tiny-image tells scenes apart, not the numbers drawn within one: the best are of b's second scene
    assert [x["rank"] for x in results] == [1, 2, 3]
    assert all(x["video"] == world.b and x["frame_index"] >= 10 for x in results)
    assert results[0]["score"] > 0.95 and results[0]["cosine"] == results[0]["score"]
    assert [x["score"] for x in results] == sorted((x["score"] for x in results), reverse=True)
    first = results[0]
    assert first["video_id"] == source["video_id"]
    assert first["time"] == f"00:00:0{first['timestamp_s']:.3f}"
    assert first["thumbnail_url"] == "/frames/" + quote(first["frame_id"])
    assert first["video_url"] == f"/videos/{source['video_id']}#t={first['timestamp_s']}"


def test_search_by_frame_id_filters_and_min_score(client: httpx.Client, world: World) -> None:
    source = world.frame(world.a, 20)
    body = ok_json(client.get("/api/search", params={"frame_id": source["frame_id"], "top_k": 5}))
    assert body["query"] == {"name": source["frame_id"], "width": 160, "height": 120}
    assert body["results"][0]["score"] > 0.99
    assert all(x["video"] == world.a and x["frame_index"] >= 15 for x in body["results"])
    # only b's frames: a scene that is not the query's, so lower scores
    only_b = ok_json(client.get("/api/search", params={"frame_id": source["frame_id"], "video": world.b}))
    assert len(only_b["results"]) == 10 and {x["video"] for x in only_b["results"]} == {world.b}
    assert only_b["results"][0]["score"] < body["results"][-1]["score"]
    both = ok_json(client.get("/api/search", params=[("frame_id", source["frame_id"]), ("video", world.a),
                                                     ("video", world.b), ("top_k", "30")]))
    assert len(both["results"]) == 30
    threshold = body["results"][2]["score"]
    kept = ok_json(client.get("/api/search", params={"frame_id": source["frame_id"], "min_score": threshold}))
    assert kept["results"] and all(x["score"] >= threshold for x in kept["results"])
    assert len(kept["results"]) < 10
    form = ok_json(client.post("/api/search", files={"file": ("q.jpg", world.query_jpeg(world.a, 20))},
                               data={"video": world.b, "min_score": "-1"}))
    assert {x["video"] for x in form["results"]} == {world.b}
    error(client.get("/api/search", params={"frame_id": "nope/00000000"}), 404, "frame_id", "no such frame")
    error(client.get("/api/search"), 422, "frame_id")


def test_thumbnails_and_videos_are_served_with_range(client: httpx.Client, world: World) -> None:
    body = ok_json(client.get("/api/search", params={"frame_id": world.frame(world.b, 4)["frame_id"], "top_k": 1}))
    hit = body["results"][0]
    thumb = client.get(hit["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content == (world.ds / world.frame(hit["video"], hit["frame_index"])["path"]).read_bytes()
    url = hit["video_url"].partition("#")[0]
    size = Path(world.b).stat().st_size
    part = client.get(url, headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100
    assert part.headers["content-range"] == f"bytes 0-99/{size}" and part.headers["accept-ranges"] == "bytes"
    assert part.content == Path(world.b).read_bytes()[:100]
    full = client.get(url)
    assert full.status_code == 200 and len(full.content) == size and full.headers["content-type"] == "video/mp4"
    assert client.get(url, headers={"Range": f"bytes={size}-"}).status_code == 416


def test_traversal_and_unknown_ids_are_404(server: Server, client: httpx.Client, world: World) -> None:
    real, vid = world.frame(world.a, 0)[["frame_id", "video_id"]]
    other_id = vid[:-1] + ("1" if vid[-1] == "0" else "0")
    for path in ["/frames/../../etc/passwd", "/frames/..%2f..%2f..%2fetc%2fpasswd",
                 "/frames/%2e%2e%2f%2e%2e%2fetc/passwd",
                 "/frames/%2e%2e/%2e%2e/manifest.csv", "/frames//etc/passwd", "/frames/%2Fetc%2Fpasswd",
                 "/frames/" + real.replace("/", "%2F") + "%2F..%2F..%2Fmanifest.csv", "/frames/frames/" + real,
                 "/frames/" + real + ".jpg", "/frames/", "/frames/..", "/frames/%00", "/static/../manifest.csv",
                 "/static/%2e%2e%2fapp.py", "/static/..%2f..%2fcli.py", "/videos/" + "0" * 64, "/videos/../a.mp4",
                 "/videos/%2e%2e%2fa.mp4", "/videos/" + other_id]:
        status, body = raw_get(server, path)
        assert status == 404, (path, body)
        assert b"Traceback" not in body and json.loads(body).keys() == {"error"}
    # a frame id sent with encoded slashes is the same id: served
    assert raw_get(server, "/frames/" + real.replace("/", "%2F"))[0] == 200


def test_a_frame_that_is_a_symlink_out_of_the_dataset_is_404(client: httpx.Client, world: World) -> None:
    frame = world.frame(world.a, 28)
    path = world.ds / frame["path"]
    outside = world.root / "outside.jpg"
    shutil.copy(path, outside)
    backup = path.with_name("backup.jpg")
    path.rename(backup)
    try:
        path.symlink_to(outside)
        error(client.get("/frames/" + quote(frame["frame_id"])), 404)
        error(client.get("/api/search", params={"frame_id": frame["frame_id"]}), 404)
        path.unlink()
        path.symlink_to(backup.name)  # a symlink that stays inside is fine
        assert client.get("/frames/" + quote(frame["frame_id"])).status_code == 200
    finally:
        path.unlink(missing_ok=True)
        backup.rename(path)


def test_bad_uploads_are_refused_with_the_reason(client: httpx.Client, world: World) -> None:
    def post(data: bytes, name: str = "q.png", **fields: str) -> httpx.Response:
        return client.post("/api/search", files={"file": (name, data, "application/octet-stream")}, data=fields)

    error(post(b"just some text\n"), 415, "not an image", "text")
    error(post(b"%PDF-1.4 ..."), 415, "PDF")
    error(post(b""), 422, "empty")
    tiff = cv2.imencode(".tiff", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    error(post(tiff), 415, "TIFF")
    jpeg = world.query_jpeg(world.a, 0)
    error(post(jpeg[: len(jpeg) // 2]), 422, "truncated JPEG")
    error(post(png_header(64, 64)[:40]), 422, "PNG")
    error(post(png_header(100_000, 100_000)), 413, "100000x100000", "pixel limit")
    error(post(png_header(9000, 9000)), 413, "9000x9000", "50000000")  # under images.py's own limit: ours
    error(post(b"GIF89a" + struct.pack("<HH", 60_000, 60_000) + b"\x00" * 20), 413, "pixel limit")
    error(post(b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x00\x00\x00\x00" + b"\xff\xff\x3f" * 2), 413,
          "pixel limit")
    # over --max-upload-mb 1: declared by Content-Length, or streamed without one
    error(post(png_header(8, 8) + b"\x00" * 1_100_000), 413, "limit")
    chunks = (b"\x00" * 65536 for _ in range(40))
    r = client.post("/api/search", content=chunks, headers={"Content-Type": "multipart/form-data; boundary=xx"})
    error(r, 413, "limit")
    error(post(jpeg, top_k="0"), 422, "top_k")
    error(post(jpeg, top_k="101"), 422, "top_k")
    error(post(jpeg, top_k="ten"), 422, "top_k")
    error(post(jpeg, min_score="2"), 422, "min_score")
    error(post(jpeg, min_score="nan"), 422, "min_score")
    error(post(jpeg, backbone="resnet50"), 422, "backbone")
    error(post(jpeg, video="nope.mp4"), 422, "video")
    error(client.post("/api/search", data={"top_k": "3"}), 415, "multipart")
    error(client.post("/api/search", files={"other": ("q.jpg", jpeg)}), 422, "file")
    error(client.post("/api/search", files={"file": ("q.jpg", jpeg)},
                      headers={"Content-Type": "multipart/form-data"}), 422, "multipart")
    error(client.get("/api/search", params={"frame_id": "x", "top_k": "-1"}), 422, "top_k")
    error(client.put("/api/search"), 405)


def test_non_loopback_host_needs_a_token(world: World) -> None:
    res = CliRunner().invoke(cli, ["serve", "-d", str(world.ds), "-b", "tiny-image", "--host", "0.0.0.0"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "--token" in lines[0] and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["serve", "-d", str(world.ds), "-b", "no-such-model"])
    assert res.exit_code == 2 and "unknown backbone" in res.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        res = CliRunner().invoke(cli, ["serve", "-d", str(world.ds), "-b", "tiny-image", "--port",
                                       str(busy.getsockname()[1])])
    assert res.exit_code == 2 and "cannot listen" in res.output and len(res.output.strip().splitlines()) == 1
    from framesim.server.safety import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.2", "example.com", "127.0.0.1.example.com"]))
    (world.root / "empty").mkdir(exist_ok=True)
    res = CliRunner().invoke(cli, ["serve", "-d", str(world.root / "empty"), "-b", "tiny-image"])
    assert res.exit_code == 2 and "no frames" in res.output


def test_a_locked_collection_is_one_line(server: Server, world: World) -> None:
    res = CliRunner().invoke(cli, ["serve", "-d", str(world.ds), "-b", "tiny-image"])  # the server holds it
    assert res.exit_code == 2 and "in use by" in res.output and len(res.output.strip().splitlines()) == 1


# -- the token ---------------------------------------------------------------------------------------------------
def test_with_a_token_every_route_but_health_needs_it(world: World) -> None:
    s = start_server(["-d", str(world.ds), "-b", "tiny-image", "--store", "faiss", "--token", "s3cr3t"],
                     world.root / "token.log")
    try:
        frame = world.frame(world.a, 2)
        vid = frame["video_id"]
        routes: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/api/stats", {}), ("GET", "/api/search", {"params": {"frame_id": frame["frame_id"]}}),
            ("POST", "/api/search", {"files": {"file": ("q.jpg", world.query_jpeg(world.a, 2))}}),
            ("GET", "/frames/" + quote(frame["frame_id"]), {}), ("GET", f"/videos/{vid}", {}), ("GET", "/", {})]
        with httpx.Client(base_url=s.url, timeout=30) as anon:
            assert ok_json(anon.get("/api/health"))["status"] == "ok"
            for method, path, kw in [*routes, ("GET", "/nope", {})]:
                error(anon.request(method, path, **kw), 401, "token")
                error(anon.request(method, path, headers={"Authorization": "Bearer s3cr3tx"}, **kw), 401)
                error(anon.request(method, path, headers={"Cookie": "framesim_token=wrong"}, **kw), 401)
            error(anon.get("/login", params={"token": "nope"}), 401)
        with httpx.Client(base_url=s.url, timeout=30, headers={"Authorization": "Bearer s3cr3t"}) as bearer:
            for method, path, kw in routes:
                assert bearer.request(method, path, **kw).status_code == 200, path
            assert ok_json(bearer.get("/api/stats"))["backbones"][0]["store"]["backend"] == "faiss"
        with httpx.Client(base_url=s.url, timeout=30) as browser:
            r = browser.get("/login", params={"token": "s3cr3t"}, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == "/"
            cookie = r.headers["set-cookie"]
            assert "framesim_token=s3cr3t" in cookie and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
            browser.cookies.set("framesim_token", "s3cr3t")
            for method, path, kw in routes:
                assert browser.request(method, path, **kw).status_code == 200, path
    finally:
        stop_server(s)
    assert "Traceback" not in s.log.read_text()


# -- a full queue ------------------------------------------------------------------------------------------------
SLOW_SERVER = textwrap.dedent("""
    import sys, time
    import uvicorn
    from framesim.backbones.base import register_backbone
    from framesim.backbones.tiny import TinyImageBackbone
    from framesim.server import ServerConfig, create_app

    class Slow(TinyImageBackbone):
        name = "slow-tiny"
        def _forward(self, batch):
            time.sleep(0.5)  # every search holds the worker this long
            return batch

    register_backbone("slow-tiny", dim=Slow.dim, input_size=Slow.input_size)(lambda weights=None: Slow())
    app = create_app(ServerConfig(dataset=sys.argv[2], backbones=["slow-tiny"], max_waiting=1, workers=1))
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
""")


def test_a_full_queue_answers_503_and_a_backbone_without_collection_gets_a_temporary_one(world: World) -> None:
    s = start_server([], world.root / "slow.log", script=SLOW_SERVER.replace("sys.argv[2]", repr(str(world.ds))))
    try:
        assert "no collection at" in s.log.read_text() and "temporary" in s.log.read_text()
        query = world.query_jpeg(world.b, 12)
        answers: list[httpx.Response] = []

        def one() -> None:
            with httpx.Client(base_url=s.url, timeout=30) as c:
                answers.append(c.post("/api/search", files={"file": ("q.jpg", query)}))

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r.status_code for r in answers)
        # one runs, one waits, the others arrive while both are taken
        assert set(statuses) == {200, 503} and statuses.count(200) >= 2, statuses
        for r in answers:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1"
                error(r, 503, "busy")
            else:
                assert r.json()["results"][0]["video"] == world.b  # found in the temporary collection
    finally:
        stop_server(s)
    assert "Traceback" not in s.log.read_text()
    assert not list(world.ds.glob("collections/slow-tiny*")), "a search must not write to the dataset"


# -- in process ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_client(world: World) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from framesim.server import ServerConfig, create_app

    app = create_app(ServerConfig(dataset=world.ds, backbones=["tiny-image"], max_upload_mb=0.5,
                                  store=f"faiss:{world.root / 'inprocess-faiss'}", max_pixels=1_000_000))
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        yield c


def test_host_header_must_be_local_without_a_token(app_client: Any) -> None:
    assert app_client.get("/api/health").status_code == 200
    assert app_client.get("/api/health", headers={"Host": "localhost:8000"}).status_code == 200
    assert app_client.get("/api/health", headers={"Host": "[::1]:8000"}).status_code == 200
    r = app_client.get("/api/stats", headers={"Host": "attacker.example:8000"})
    assert r.status_code == 400 and "Host" in r.json()["error"]


def test_a_video_whose_file_changed_is_not_playable(tmp_path: Path, make_video: Callable[..., Path]) -> None:
    from fastapi.testclient import TestClient

    from framesim.extraction import extract
    from framesim.server import ServerConfig, create_app

    kept, changed = make_video("kept.mp4", n_frames=10), make_video("changed.mp4", n_frames=10, size=(96, 64))
    assert extract([kept, changed], tmp_path / "ds", every=5, progress=False).ok
    changed.write_bytes(changed.read_bytes()[:-10])  # other content: another fingerprint
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    kept.rename(moved / kept.name)  # found only through --video-root
    app = create_app(ServerConfig(dataset=tmp_path / "ds", backbones=["tiny-image"], video_root=moved,
                                  on_note=lambda msg: None))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        videos = {Path(v["video"]).name: v for v in c.get("/api/stats").json()["videos"]}
        assert videos["kept.mp4"]["playable"] and not videos["changed.mp4"]["playable"]
        assert c.get(f"/videos/{videos['kept.mp4']['video_id']}").status_code == 200
        assert c.get(f"/videos/{videos['changed.mp4']['video_id']}").status_code == 404
        frame = pd.read_parquet(tmp_path / "ds" / "manifest.parquet")
        changed_frame = frame[frame["video"].str.endswith("changed.mp4")]["frame_id"].iloc[0]
        res = c.get("/api/search", params={"frame_id": changed_frame, "top_k": 1}).json()["results"]
        assert res[0]["video"].endswith("changed.mp4") and res[0]["video_url"] is None


def _real_images(world: World) -> list[bytes]:
    img = cv2.imread(str(world.ds / world.frame(world.a, 0)["path"]))
    return [cv2.imencode(ext, img)[1].tobytes() for ext in (".png", ".jpg", ".webp", ".bmp")]


@st.composite
def uploads(draw: st.DrawFn, images: list[bytes]) -> bytes:
    real = draw(st.sampled_from(images))
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "magic", "real"]))
    if kind == "random":
        return draw(st.binary(max_size=3000))
    if kind == "truncated":
        return real[:draw(st.integers(0, len(real)))]
    if kind == "flipped":
        data = bytearray(real)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, min(len(data) - 1, 400)))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "magic":
        head = draw(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM",
                                     b"RIFF\x00\x00\x00\x00WEBP"]))
        return head + draw(st.binary(max_size=600))
    return real


#: short strings of the pieces that break parsers and paths: digits, signs, dots, slashes, escapes, odd unicode
TEXT = st.lists(st.sampled_from(list("0123456789.-+eE /%\\é\u202e\x00abc_") + ["..", "../", "%2e", "%2F", "💥"]),
                max_size=12).map("".join)


def _never_500(r: Any) -> None:
    assert r.status_code < 500, r.text
    assert "Traceback" not in r.text
    if r.status_code >= 400:
        assert set(r.json()) == {"error"}


@FUZZ
@given(data=st.data())
def test_fuzz_uploads_and_parameters_never_give_500(app_client: Any, world: World, data: st.DataObject) -> None:
    body = data.draw(uploads(_real_images(world)), label="upload")
    fields: dict[str, Any] = {}
    for name, values in (("top_k", st.one_of(st.integers(-5, 200).map(str), TEXT)),
                         ("min_score", st.one_of(st.floats().map(str), TEXT)),
                         ("backbone", st.one_of(st.just("tiny-image"), TEXT)),
                         ("video", st.lists(st.one_of(st.sampled_from([world.a, world.b]), TEXT), max_size=3))):
        if data.draw(st.booleans(), label=f"has {name}"):
            fields[name] = data.draw(values, label=name)
    filename = data.draw(st.one_of(st.just("q.png"), st.text(max_size=40)), label="filename")
    r = app_client.post("/api/search", files={"file": (filename, body, "image/png")}, data=fields)
    _never_500(r)
    if r.status_code == 200:
        top_k = fields.get("top_k") or "10"  # (an empty field is "not given")
        assert len(r.json()["results"]) <= int(top_k)
    frame_id = data.draw(st.one_of(st.sampled_from(list(world.manifest["frame_id"])), TEXT), label="frame_id")
    _never_500(app_client.get("/api/search", params={"frame_id": frame_id, **fields}))
    _never_500(app_client.get("/frames/" + quote(frame_id, safe=data.draw(st.sampled_from(["/", "/%", ""])))))
    _never_500(app_client.get("/videos/" + quote(frame_id, safe="")))
