"""What ``framesim serve`` checks before it trusts a request: the token, the Host header, how many searches
may queue, the upload's size, format and declared pixel count, paths that must stay inside a folder, and
the search parameters.

Everything here answers a bad request with an ``HTTPException`` (4xx, one-line ``detail``) that the app
turns into ``{"error": ...}``; the ASGI middleware at the end adds the security headers to every response
and turns anything unexpected into a generic 500 (the trace goes to the server's log only).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
from starlette.datastructures import FormData, Headers
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request, cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from framesim.images import ImageError, _looks_like, declared_size, decode_image, image_format, load_image

log = logging.getLogger("framesim.server")

CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self'; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer")]
COOKIE = "framesim_token"
#: routes that answer without the token (/login checks the token it is given itself)
OPEN_PATHS = frozenset({"/api/health", "/login"})
#: formats whose header we can read the dimensions from: anything else could not be checked before decoding
ACCEPTED_FORMATS = ("JPEG", "PNG", "WebP", "GIF", "BMP")
#: bytes a multipart body may carry besides the file (boundaries, part headers, the small form fields)
MULTIPART_SLACK = 64 * 1024


def client_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> HTTPException:
    return HTTPException(status, message, headers=dict(headers) if headers else None)


# -- where requests come from -----------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_matches(expected: str, given: str | None) -> bool:
    # compare_digest on bytes: constant time whatever the characters (on str it refuses non-ASCII)
    return given is not None and hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))


def _request_token(headers: Headers) -> str | None:
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return cookie_parser(headers.get("cookie", "")).get(COOKIE)


def _host_allowed(host_header: str, bound: str) -> bool:
    """Without a token only loopback names may appear in Host: a page on another site that rebinds its
    DNS name to 127.0.0.1 would otherwise read the API with the browser's help."""
    host = host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    return is_loopback(host) or (bool(host) and host == bound.strip("[]"))


class GuardMiddleware:
    """Outermost layer: security headers on every response, the token (or, without one, the Host check),
    and a last-resort 500 that shows no trace."""

    def __init__(self, app: ASGIApp, token: str | None, host: str) -> None:
        self.app, self.token, self.host = app, token, host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        headers = Headers(scope=scope)
        refusal = None
        if self.token is None:
            if not _host_allowed(headers.get("host", ""), self.host):
                refusal = (400, "this server answers only requests for localhost (unexpected Host header)")
        elif scope["path"] not in OPEN_PATHS and not token_matches(self.token, _request_token(headers)):
            refusal = (401, "missing or wrong token: send Authorization: Bearer TOKEN or open /login?token=TOKEN")
        try:
            if refusal:
                await json_error(send_with_headers, *refusal)
            else:
                await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("error while answering %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await json_error(send_with_headers, 500, "internal error (see the server's log)")


async def json_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# -- admission -------------------------------------------------------------------------------------------------
class Gate:
    """Admission for searches: ``workers`` run, ``max_waiting`` wait, more are refused (503). Counted on the
    event loop's thread only, so the counter needs no lock."""

    def __init__(self, workers: int, max_waiting: int) -> None:
        self.workers, self.max_waiting, self.active = workers, max_waiting, 0
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, fn: Callable[[], Any]) -> Any:
        if self.active >= self.workers + self.max_waiting:
            raise client_error(503, f"busy: {self.active} searches running or waiting; retry",
                               {"Retry-After": "1"})
        self.active += 1
        try:
            if self._limiter is None:  # made on the loop that serves (a limiter belongs to one event loop)
                self._limiter = anyio.CapacityLimiter(self.workers)
            return await anyio.to_thread.run_sync(fn, limiter=self._limiter)
        finally:
            self.active -= 1


# -- the upload ---------------------------------------------------------------------------------------------
async def read_form(request: Request, max_file_bytes: int) -> FormData:
    """The multipart form of a search, refusing a body larger than the limit before it is all read (413)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise client_error(415, "expected multipart/form-data with the image in the part named 'file'")
    limit = max_file_bytes + MULTIPART_SLACK
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise client_error(413, f"upload of {int(declared)} bytes: over the {max_file_bytes} byte limit")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise client_error(413, f"upload over the {max_file_bytes} byte limit")
            chunks.append(chunk)
    except ClientDisconnect:
        raise client_error(400, "the client went away before the upload ended") from None
    body = b"".join(chunks)

    async def once() -> AsyncIterator[bytes]:
        yield body

    try:
        return await MultiPartParser(request.headers, once(), max_files=1, max_fields=100,
                                     max_part_size=16 * 1024).parse()
    except MultiPartException as exc:
        raise client_error(422, f"bad multipart body: {exc.message}") from None
    except (KeyError, ValueError, UnicodeDecodeError):  # e.g. a Content-Type without a boundary parameter
        raise client_error(422, "bad multipart body") from None


def check_upload(data: bytes, max_pixels: int, max_bytes: int) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) of an uploaded image, read from its header; 413/415/422 otherwise."""
    if len(data) > max_bytes:
        raise client_error(413, f"file: {len(data)} bytes, over the {max_bytes} byte limit")
    if not data:
        raise client_error(422, "file: empty upload")
    fmt = image_format(data[:64])
    if fmt is None:
        raise client_error(415, f"file: not an image ({_looks_like(data[:512])})")
    if fmt not in ACCEPTED_FORMATS:
        raise client_error(415, f"file: {fmt} is not accepted; upload {', '.join(ACCEPTED_FORMATS)}")
    size = image_dimensions(data, fmt)
    if size is None or min(size) <= 0:
        raise client_error(422, f"file: corrupt {fmt} (its header declares no usable dimensions)")
    if size[0] * size[1] > max_pixels:
        raise client_error(413, f"file: declares {size[0]}x{size[1]} pixels, over the {max_pixels} pixel limit")
    return fmt, size


def image_dimensions(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) a header declares, without decoding: images.declared_size plus what it lacks
    (WebP; JPEGs whose frame header sits past the first 64 KiB; GIF frames larger than the screen;
    OS/2 BMPs with 16-bit sizes)."""
    if fmt == "WebP":
        return _webp_size(data)
    if fmt == "BMP" and len(data) >= 26 and int.from_bytes(data[14:18], "little") == 12:
        return int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
    size = declared_size(data)
    if fmt == "JPEG" and size is None:
        size = _jpeg_size(data)
    if fmt == "GIF" and size is not None:
        frame = _gif_first_frame_extent(data)
        if frame is not None:
            size = (max(size[0], frame[0]), max(size[1], frame[1]))
    return size


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk every header segment (images.jpeg_size stops after 64 KiB: big ICC or EXIF blocks go past it)."""
    pos, n = 2, len(data)
    while pos + 9 < n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = int.from_bytes(data[pos + 5:pos + 7], "big"), int.from_bytes(data[pos + 7:pos + 9], "big")
            return (w, h) if w and h else None
        elif marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
        elif marker == 0xDA:  # a scan before any frame header: not a JPEG we can check
            return None
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    kind, body = data[12:16], data[20:]
    if kind == b"VP8X" and len(body) >= 10:  # extended: the canvas, 24-bit sizes minus one
        return int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1
    if kind == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":  # lossy: 14-bit sizes after the tag
        return int.from_bytes(body[6:8], "little") & 0x3FFF, int.from_bytes(body[8:10], "little") & 0x3FFF
    if kind == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:  # lossless: 14-bit sizes minus one
        bits = int.from_bytes(body[1:5], "little")
        return (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1
    return None


def _gif_first_frame_extent(data: bytes) -> tuple[int, int] | None:
    """(right, bottom) edge of a GIF's first image descriptor: a frame may exceed the logical screen."""
    if len(data) < 13:
        return None
    pos = 13 + ((3 << ((data[10] & 7) + 1)) if data[10] & 0x80 else 0)  # after the global colour table
    while pos < len(data):
        if data[pos] == 0x2C and pos + 9 <= len(data):
            left, top, w, h = (int.from_bytes(data[pos + i:pos + i + 2], "little") for i in (1, 3, 5, 7))
            return left + w, top + h
        if data[pos] != 0x21 or pos + 2 >= len(data):
            return None
        pos += 2
        while pos < len(data) and data[pos]:  # the extension's sub-blocks, each led by its length
            pos += 1 + data[pos]
        pos += 1
    return None


def decode_upload(data: bytes, fmt: str, min_side: int, name: str = "file") -> np.ndarray:
    """RGB pixels of a checked upload, decoded as ``framesim search`` decodes a file (``images.decode_image``,
    JPEGs at a reduced DCT scale), so a query gives the same vector here as on the command line."""
    try:
        return decode_image(data, name, min_side=min_side)
    except ImageError as exc:
        reason = str(exc).removeprefix(f"{name}: ")
        raise client_error(413 if "pixel limit" in reason else 422, f"{name}: {reason}") from None


def load_frame(path: Path, min_side: int, frame_id: str) -> np.ndarray:
    try:
        return load_image(path, min_side=min_side)
    except ImageError as exc:
        raise client_error(422, f"frame {frame_id}: {str(exc).removeprefix(f'{path}: ')}") from None


# -- paths ------------------------------------------------------------------------------------------------------
def inside(root_real: str, path: Path) -> Path | None:
    """``path`` with symlinks resolved if it is a file under ``root_real`` (a realpath), else None: a frame
    file that is a symlink pointing out of the dataset is not served."""
    real = os.path.realpath(path)
    try:
        within = os.path.commonpath([root_real, real]) == root_real
    except ValueError:
        return None
    return Path(real) if within and os.path.isfile(real) else None


# -- parameters ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchParams:
    top_k: int
    min_score: float | None
    backbone: str
    videos: list[str] | None


def search_params(getlist: Callable[[str], Sequence[Any]], backbones: Sequence[str],
                  videos: set[str]) -> SearchParams:
    """top_k, min_score, backbone, video from a form or a query string; 422 naming the field otherwise."""

    def one(name: str) -> str | None:
        values = [v for v in getlist(name) if v != ""]  # an empty field (an HTML form's) means "not given"
        if len(values) > 1:
            raise client_error(422, f"{name}: given {len(values)} times")
        if values and not isinstance(values[0], str):
            raise client_error(422, f"{name}: expected a text field, not a file")
        return values[0] if values else None

    top_k, min_score, backbone = one("top_k"), one("min_score"), one("backbone")
    k = 10
    if top_k is not None:
        try:
            k = int(top_k)
        except ValueError:
            raise client_error(422, f"top_k: {_shown(top_k)} is not a whole number (1..100)") from None
        if not 1 <= k <= 100:
            raise client_error(422, f"top_k: {k} is outside 1..100")
    score = None
    if min_score is not None:
        try:
            score = float(min_score)
        except ValueError:
            raise client_error(422, f"min_score: {_shown(min_score)} is not a number (-1..1)") from None
        if not (math.isfinite(score) and -1 <= score <= 1):
            raise client_error(422, f"min_score: {_shown(min_score)} is outside -1..1")
    if backbone is None:
        backbone = backbones[0]
    elif backbone not in backbones:
        raise client_error(422, f"backbone: {_shown(backbone)} is not served here (one of {', '.join(backbones)})")
    chosen = [v for v in getlist("video") if v != ""]
    for v in chosen:
        if not isinstance(v, str) or v not in videos:
            raise client_error(422, f"video: {_shown(v)} is no video of the dataset")
    return SearchParams(k, score, backbone, list(dict.fromkeys(chosen)) or None)


def _shown(value: object) -> str:
    """A client's value in a message: quoted, on one line, not too long."""
    text = repr(value if isinstance(value, str) else type(value).__name__)
    return text if len(text) <= 80 else text[:77] + "..."
