"""The ``framesim serve`` app: FastAPI over one dataset and its collections (``CONTRACT.md`` is the spec).

Everything slow happens once, in ``create_app``: the manifest is read, each backbone is built and its
collection opened (or, lacking one, built in a temporary FAISS folder), each video file is found and its
fingerprint checked. A search then decodes one image, embeds it and asks the collection, in a worker
thread: at most ``workers`` run at once, ``max_waiting`` more may queue, the rest get 503.
"""

from __future__ import annotations

import contextlib
import math
import mimetypes
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from framesim import __version__
from framesim.backbones.base import Backbone, get_backbone, weights_for
from framesim.dataset import FrameDataset
from framesim.extraction import video_fingerprint
from framesim.server import openapi, safety
from framesim.server.batching import QueryBatcher
from framesim.stores import StoreError, VectorStore, collection_folder, open_store, parse_store
from framesim.stores.base import MANIFEST_NAME
from framesim.timecode import format_timestamp

STATIC = Path(__file__).parent / "static"


@dataclass
class ServerConfig:
    """What ``framesim serve`` was asked for (its options, in the same units)."""

    dataset: str | os.PathLike[str]
    backbones: Sequence[str] = ("efficientnet-lite0",)
    store: str | None = None
    weights: Mapping[str, str | None] | None = None
    runtime: str = "auto"
    token: str | None = None
    #: the address bound: without a token, Host headers must name it or a loopback name
    host: str = "127.0.0.1"
    video_root: str | os.PathLike[str] | None = None
    max_upload_mb: float = 20.0
    max_pixels: int = 50_000_000
    max_waiting: int = 8
    #: searches running at once: decode and embed run in parallel, and the queries that meet at a store
    #: are answered by one call (``QueryBatcher``), so more workers than cores still pays
    workers: int = 4
    static_dir: str | os.PathLike[str] = STATIC
    on_note: Callable[[str], None] | None = None


@dataclass
class Served:
    """One backbone and its open collection."""

    model: Backbone
    store: VectorStore
    temp: Path | None = None  # the temporary collection's folder, removed on close
    lock: threading.Lock = field(default_factory=threading.Lock)  # engines differ on thread safety: one call at a time
    batcher: QueryBatcher = field(init=False)

    def __post_init__(self) -> None:
        self.batcher = QueryBatcher(self.store, self.lock)


@dataclass
class Video:
    path: Path
    stat: tuple[int, int]  # (size, mtime_ns) when the fingerprint was checked


class ServerState:
    """The dataset, its videos and the served collections, loaded once."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.note = config.on_note or (lambda msg: print(f"note: {msg}", file=sys.stderr))
        self.ds = FrameDataset(config.dataset)
        if not self.ds.root.is_dir():
            raise ValueError(f"{self.ds.root}: no such dataset folder")
        manifest = self.ds.manifest()
        if manifest.empty:
            raise ValueError(f"{self.ds.root}: the dataset has no frames; run `framesim extract` first")
        self.manifest = manifest
        self.root_real = os.path.realpath(self.ds.root)
        self.frames: dict[str, tuple[str, int, int]] = {
            f: (p, int(w), int(h)) for f, p, w, h in zip(manifest["frame_id"], manifest["path"], manifest["width"],
                                                           manifest["height"], strict=True)}
        self.video_names = set(manifest["video"])
        self.videos = self._find_videos()
        self.video_stats = self._video_stats()
        self.served: dict[str, Served] = {}
        try:
            for spec in dict.fromkeys(config.backbones):
                self._serve(spec)
        except BaseException:
            self.close()
            raise
        self.max_bytes = int(config.max_upload_mb * 1024 * 1024)
        self.gate = safety.Gate(max(1, config.workers), max(0, config.max_waiting))

    # -- start ------------------------------------------------------------------------------------------
    def _serve(self, spec: str) -> None:
        model = get_backbone(spec, runtime=self.config.runtime, **weights_for(spec, self.config.weights))
        for name, other in self.served.items():
            # two spellings of one model share one collection, which one process cannot open twice
            if (other.model.spec, other.model.weights) == (model.spec, model.weights):
                self.note(f"-b {spec} is the same model as {name}: served once, as {name}")
                return
        self.served[model.name] = self._open(model)

    def _open(self, model: Backbone) -> Served:
        parsed = parse_store(self.config.store)
        if parsed.backend != "qdrant-server":
            folder = Path(parsed.path) if parsed.path else collection_folder(self.ds.root, model, parsed.backend)
            if not (folder / MANIFEST_NAME).exists():
                return self._build_temporary(model, f"no collection at {folder}")
        try:
            return Served(model, open_store(parsed, dataset=self.ds.root, backbone=model, create=False))
        except StoreError as exc:
            if parsed.backend == "qdrant-server" and "no such collection" in str(exc):
                return self._build_temporary(model, str(exc))
            raise

    def _build_temporary(self, model: Backbone, why: str) -> Served:
        """A FAISS collection of the dataset in a temporary folder. Its embedding cache lives there too and
        near-duplicate runs are not computed (they cache thumbnails): nothing is written to the dataset."""
        from framesim.collection import sync_collection
        from framesim.dedupe import dataset_runs
        from framesim.embeddings import EmbeddingCache

        temp = Path(tempfile.mkdtemp(prefix="framesim-serve-"))
        self.note(f"{model.name}: {why}; building a temporary one in {temp} (run framesim index to keep one)")
        store: VectorStore | None = None
        try:
            store = open_store(parse_store(f"faiss:{temp / 'faiss'}"), dataset=self.ds.root, backbone=model)
            frames_by_key = self.manifest.drop_duplicates("sha256")
            runs = dataset_runs(self.ds, self.manifest, frames_by_key, 0.0, 1)
            summary = sync_collection(store, self.ds, self.manifest, frames_by_key, runs, model,
                                      EmbeddingCache(temp / "embeddings", model), progress=sys.stderr.isatty())
        except BaseException:
            if store is not None:
                store.close()
            shutil.rmtree(temp, ignore_errors=True)
            raise
        for msg in summary.failures:
            self.note(msg)
        self.note(f"{model.name}: {store.count()} frames in the temporary collection")
        return Served(model, store, temp)

    def _find_videos(self) -> dict[str, Video]:
        """video_id -> file, for the videos found where the contract says and whose fingerprint matches."""
        found: dict[str, Video] = {}
        root = self.config.video_root
        pairs = self.manifest[["video", "video_id"]].drop_duplicates()
        for video, vid in zip(pairs["video"], pairs["video_id"], strict=True):
            if not vid or vid in found:
                continue
            given = Path(video)
            candidates = [given] + ([] if given.is_absolute() else [self.ds.root.parent / given])
            if root is not None:
                candidates.append(Path(root) / PurePath(video).name)
            for path in candidates:
                with contextlib.suppress(OSError):
                    if path.is_file() and video_fingerprint(path) == vid:
                        st = path.stat()
                        found[vid] = Video(path.absolute(), (st.st_size, st.st_mtime_ns))
                        break
        return found

    def _video_stats(self) -> list[dict[str, Any]]:
        out = []
        for (video, vid), rows in self.manifest.groupby(["video", "video_id"], sort=False):
            stamps = rows["timestamp_s"].to_numpy(np.float64)
            stamps = stamps[np.isfinite(stamps)]
            out.append({"video": str(video), "video_id": str(vid), "frames": len(rows),
                        "duration_s": round(float(stamps.max()), 3) if len(stamps) else 0.0,
                        "playable": vid in self.videos})
        return out

    def close(self) -> None:
        for served in self.served.values():
            with contextlib.suppress(Exception):  # closing one must not keep the others open
                served.store.close()
            if served.temp is not None:
                shutil.rmtree(served.temp, ignore_errors=True)
        self.served = {}

    # -- requests ------------------------------------------------------------------------------------------
    def video_file(self, vid: str) -> Path | None:
        video = self.videos.get(vid)
        if video is None:
            return None
        try:
            st = video.path.stat()
            if (st.st_size, st.st_mtime_ns) != video.stat:  # changed since start: check its content again
                if video_fingerprint(video.path) != vid:
                    return None
                video.stat = (st.st_size, st.st_mtime_ns)
        except OSError:
            return None
        return video.path

    def frame_file(self, frame_id: str) -> Path | None:
        entry = self.frames.get(frame_id)
        if entry is None:
            return None
        try:
            path = self.ds.frame_path(entry[0])
        except ValueError:
            return None
        return safety.inside(self.root_real, path)

    def search(self, served: Served, load: Callable[[], np.ndarray], params: safety.SearchParams,
               query: dict[str, Any]) -> dict[str, Any]:
        """One search, in a worker thread: decode, embed, ask the collection, fetch payloads."""
        t0 = time.perf_counter()
        vectors = served.model.embed(served.model.resize(load())[None])
        scores, ids = served.batcher.search(vectors[0], params.top_k, params.videos)
        keep = ids >= 0
        if params.min_score is not None:
            keep &= scores >= params.min_score
        ids_k, scores_k = ids[keep], scores[keep].astype(np.float64)
        with served.lock:
            payload = served.store.payloads(ids_k).reindex(ids_k)
        results = []
        for pid, score in zip(ids_k, scores_k, strict=True):
            row = payload.loc[pid]
            if not isinstance(row["frame_id"], str):  # a point without payload: nothing to show
                continue
            ts = float(row["timestamp_s"])
            ts_ok = math.isfinite(ts)
            vid = str(row["video_id"])
            video_url = None
            if vid in self.videos:
                video_url = f"/videos/{vid}" + (f"#t={round(ts, 3)}" if ts_ok else "")
            results.append({
                "rank": len(results) + 1, "frame_id": row["frame_id"], "video": str(row["video"]), "video_id": vid,
                "frame_index": int(row["frame_index"]), "timestamp_s": ts if ts_ok else None,
                "time": format_timestamp(ts if ts_ok else None), "score": round(float(score), 6),
                "cosine": round(float(score), 6), "thumbnail_url": f"/frames/{quote(row['frame_id'])}",
                "video_url": video_url})
        return {"backbone": served.model.name, "took_ms": round(1000 * (time.perf_counter() - t0), 2),
                "query": query, "results": results}

    def params(self, getlist: Callable[[str], Sequence[Any]]) -> tuple[Served, safety.SearchParams]:
        params = safety.search_params(getlist, list(self.served), self.video_names)
        return self.served[params.backbone], params


def create_app(config: ServerConfig) -> FastAPI:
    """The app, with the dataset, models and collections loaded (errors here are the CLI's to print)."""
    state = ServerState(config)
    static = Path(config.static_dir)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()  # releases the collections' locks (framesim index may run again)

    app = FastAPI(title="framesim", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json", version=__version__,
                  description="Search a frame dataset's collections by picture. See CONTRACT.md for the limits.")
    app.state.framesim = state
    app.add_middleware(safety.GuardMiddleware, token=config.token, host=config.host)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> Response:
        lines = str(exc.detail).strip().splitlines() or ["error"]
        return JSONResponse({"error": lines[0][:500]}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body", "path"))
        return JSONResponse({"error": f"{where or 'request'}: {first.get('msg', 'invalid')}"[:500]}, 422)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """Up, with how many frames and which backbones (needs no token)."""
        return {"status": "ok", "frames": len(state.frames), "backbones": list(state.served)}

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        """The dataset's videos and frames, and each backbone's collection."""
        backbones = []
        for name, served in state.served.items():
            with served.lock:
                info = served.store.info()
            backbones.append({"name": name, "spec": served.model.spec, "dim": served.model.dim, "store": info})
        return {"dataset": str(config.dataset), "frames": len(state.frames), "videos": state.video_stats,
                "backbones": backbones}

    @app.post("/api/search", openapi_extra=openapi.UPLOAD_SEARCH)
    async def search_upload(request: Request) -> dict[str, Any]:
        """The frames nearest an uploaded picture, best first."""
        form = await safety.read_form(request, state.max_bytes)
        try:
            served, params = state.params(form.getlist)
            files = form.getlist("file")
            if len(files) != 1 or not isinstance(files[0], UploadFile):
                raise safety.client_error(422, "file: required (the image, as a file part named 'file')")
            data = await files[0].read(state.max_bytes + 1)
        finally:
            await form.close()
        fmt, (width, height) = safety.check_upload(data, config.max_pixels, state.max_bytes)
        # browsers send '"', CR and LF of a multipart file name percent-encoded (HTML standard): undo just those
        name = (files[0].filename or "upload").replace("%22", '"').replace("%0D", "\r").replace("%0A", "\n")[:200]
        query = {"name": name, "width": width, "height": height}
        size = served.model.input_size
        return await state.gate.run(lambda: state.search(
            served, lambda: safety.decode_upload(data, fmt, size), params, query))

    @app.get("/api/search", openapi_extra=openapi.FRAME_SEARCH)
    async def search_frame(request: Request) -> dict[str, Any]:
        """The frames nearest a frame of the dataset, best first."""
        served, params = state.params(request.query_params.getlist)
        given = request.query_params.getlist("frame_id")
        if len(given) != 1:
            raise safety.client_error(422, "frame_id: give one frame id (or POST an image)")
        frame_id = given[0]
        path = state.frame_file(frame_id)
        if path is None:
            raise safety.client_error(404, f"frame_id {safety._shown(frame_id)}: no such frame in the dataset")
        _, width, height = state.frames[frame_id]
        query = {"name": frame_id, "width": width, "height": height}
        size = served.model.input_size
        return await state.gate.run(lambda: state.search(
            served, lambda: safety.load_frame(path, size, frame_id), params, query))

    @app.api_route("/frames/{frame_id:path}", methods=["GET", "HEAD"])
    def frame(frame_id: str) -> Response:
        """A frame's image (only frames the manifest names)."""
        path = state.frame_file(frame_id)
        if path is None:
            raise safety.client_error(404, "no such frame")
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    @app.api_route("/videos/{video_id}", methods=["GET", "HEAD"])
    def video(video_id: str) -> Response:
        """A video file, with HTTP Range (only when its content id matches the manifest's)."""
        path = state.video_file(video_id)
        if path is None:
            raise safety.client_error(404, "no such video (or its file was not found)")
        # FileResponse answers Range requests itself (206, Content-Range; 416 when unsatisfiable)
        return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        # Swagger UI loads from a CDN, which neither the offline rule nor the CSP allows: our own page
        # renders /openapi.json instead
        return FileResponse(static / "docs.html", media_type="text/html")

    @app.get("/login")
    def login(token: str = "") -> Response:
        if config.token is not None and not safety.token_matches(config.token, token):
            raise safety.client_error(401, "wrong token")
        response = RedirectResponse("/", status_code=303)
        if config.token is not None:
            response.set_cookie(safety.COOKIE, config.token, httponly=True, samesite="strict", path="/")
        return response

    @app.get("/")
    def page() -> Response:
        index = static / "index.html"
        if not index.is_file():
            raise safety.client_error(404, "the page is missing (framesim/server/static/index.html)")
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})

    if static.is_dir():
        app.mount("/static", StaticFiles(directory=static), name="static")
    return app
