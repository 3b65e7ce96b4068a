"""The `framesim serve` page in a real browser: a real server process over a small synthetic dataset,
driven by Playwright (headless Chromium) like a person would: upload, drop or paste a picture, read the
results, play the video from the matched moment, use the keyboard.

The dataset: four 9 s VP8/WebM videos (Chromium plays WebM whatever its build; H.264 needs proprietary
codecs), three scenes of 3 s each, every scene distinct (tiny-image tells scenes apart, not the frames
within one), one video with a hostile file name, and one whose file is deleted after extraction (its
results have no video). Each query is a frame of a known scene, resized and re-encoded as JPEG.

Skipped when Playwright or Chromium is missing, unless FRAMESIM_REQUIRE_BROWSER=1 (CI), where that fails.
FRAMESIM_CHROMIUM may name the browser binary (never `playwright install`: the system Chromium is used).
A full-page screenshot is kept as test-artifacts/serve-page.png (and the player as serve-player.png).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import pytest
from conftest import free_port, require_ffmpeg, synthetic_frame

from framesim.collection import index
from framesim.dataset import FrameDataset
from framesim.extraction import extract

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HOSTILE_VIDEO = "<img src=x onerror=alert(1)>&\"'.webm"
#: no '"': browsers send it as %22 in a multipart file name (WHATWG), and the server shows what it got
HOSTILE_UPLOAD = "<b>query</b> & 'it'.jpg"
SIZE = (160, 120)
FPS = 10
N_FRAMES = 90  # 9 s; scenes start at 0, 3 and 6 s
SCENE_S = 3.0
#: file name -> its three scenes (numbers for conftest.synthetic_frame)
VIDEOS = {"harbour dawn.webm": (0, 1, 2), "city & night.webm": (3, 4, 5), HOSTILE_VIDEO: (6, 7, 8),
          "gone.webm": (9, 10, 11)}
GONE = "gone.webm"  # deleted after extraction: in the collection, but not playable
SAMPLE_FPS = 2.0  # frames extracted per second: 6 per scene
PAGE_TOP_K = 12  # the page's default number of results
PLAYING = "() => { const v = document.getElementById('video'); return !v.paused && v.readyState >= 2; }"


def scene_of(index_: int, scenes: tuple[int, ...]) -> int:
    return scenes[index_ * len(scenes) // N_FRAMES]


def write_webm(path: Path, scenes: tuple[int, ...], ffmpeg: str) -> None:
    """VP8 in WebM from conftest's synthetic frames, piped to ffmpeg as raw BGR."""
    w, h = SIZE
    cmd = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}",
           "-r", str(FPS), "-i", "-", "-c:v", "libvpx", "-b:v", "400k", "-pix_fmt", "yuv420p", "-g", str(FPS),
           str(path)]
    raw = b"".join(synthetic_frame(i, scene_of(i, scenes), SIZE).tobytes() for i in range(N_FRAMES))
    proc = subprocess.run(cmd, input=raw, capture_output=True, check=False, timeout=120)
    assert proc.returncode == 0 and path.stat().st_size > 0, proc.stderr.decode(errors="replace")[-2000:]


def query_jpeg(video: str, at_s: float) -> bytes:
    """The frame of ``video`` at ``at_s`` as a user would have it: doubled in size, re-encoded as JPEG."""
    i = round(at_s * FPS)
    frame = cv2.resize(synthetic_frame(i, scene_of(i, VIDEOS[video]), SIZE), (SIZE[0] * 2, SIZE[1] * 2),
                       interpolation=cv2.INTER_LINEAR)
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return buf.tobytes()


def scene_span(at_s: float) -> tuple[float, float]:
    start = SCENE_S * (at_s // SCENE_S)
    return start, start + SCENE_S


@dataclass
class Server:
    url: str
    dataset: Path
    videos: dict[str, str]  # file name -> the manifest's `video` (the path as given to extract)
    manifest: Any


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Videos -> framesim.extract -> framesim.collection.index(tiny-image) -> `framesim serve` on a free port."""
    ffmpeg = require_ffmpeg()
    root = tmp_path_factory.mktemp("serve-browser")
    folder = root / "videos"
    folder.mkdir()
    for name, scenes in VIDEOS.items():
        write_webm(folder / name, scenes, ffmpeg)
    summary = extract([folder], root / "ds", fps=SAMPLE_FPS, progress=False)
    assert summary.ok and len(summary.videos_done) == len(VIDEOS), summary
    [indexed] = index(root / "ds", ["tiny-image"], progress=False)
    assert indexed.added == len(VIDEOS) * 9 * SAMPLE_FPS and not indexed.failures
    manifest = FrameDataset(root / "ds").manifest()
    videos = {Path(v).name: v for v in manifest["video"].unique()}
    assert set(videos) == set(VIDEOS)  # the hostile name survived extraction as given
    (folder / GONE).unlink()

    port = free_port()
    log = (root / "serve.log").open("w+")
    # phash has no collection: the server builds a temporary one at start (a second model to choose)
    cmd = [sys.executable, "-m", "framesim", "serve", "-d", str(root / "ds"), "-b", "tiny-image", "-b", "phash",
           "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"framesim serve exited with {proc.returncode}:\n{log.read()[-3000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url + "api/health", timeout=2) as resp:
                if json.load(resp)["status"] == "ok":
                    break
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"framesim serve did not answer within 120 s:\n{log.read()[-3000:]}")
            time.sleep(0.2)
        yield Server(url, root / "ds", videos, manifest)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class Watched:
    page: Page
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture
def watched(browser: Browser, server: Server) -> Iterator[Watched]:
    """A fresh page on the server's `/`, its console errors, uncaught errors and JS dialogs recorded."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    w = Watched(page)
    page.on("console", lambda m: w.console_errors.append(f"{m.text} @ {m.location}") if m.type == "error" else None)
    page.on("pageerror", lambda e: w.page_errors.append(str(e)))

    def on_dialog(d: Any) -> None:
        w.dialogs.append(f"{d.type}: {d.message}")
        d.dismiss()

    page.on("dialog", on_dialog)
    page.goto(server.url)
    page.wait_for_selector("body[data-ready='1']")
    yield w
    context.close()


def assert_clean(w: Watched, allow: str | None = None) -> None:
    """No console error (but those matching ``allow``), no uncaught error, no dialog, #fs-errors empty."""
    console = [m for m in w.console_errors if not (allow and re.search(allow, m))]
    assert not console, console
    assert not w.page_errors, w.page_errors
    assert not w.dialogs, f"a script ran from the data: {w.dialogs}"
    assert w.page.eval_on_selector("#fs-errors", "e => [e.hidden, e.textContent]") == [True, ""]
    assert w.page.evaluate("window.__framesimErrors.length") == 0


def upload(w: Watched, data: bytes, name: str) -> dict[str, Any]:
    """Choose ``data`` with the file input; returns the search answer the page got (and waits for its cards)."""
    with w.page.expect_response(lambda r: r.url.endswith("/api/search") and r.request.method == "POST") as info:
        w.page.set_input_files("#file", files=[{"name": name, "mimeType": "image/jpeg", "buffer": data}])
    return rendered(w, info.value)


def rendered(w: Watched, response: Any) -> dict[str, Any]:
    assert response.ok, response.text()
    answer: dict[str, Any] = response.json()
    ids = [r["frame_id"] for r in answer["results"]]
    w.page.wait_for_function("""ids => document.getElementById('busy').hidden && JSON.stringify(ids) ===
        JSON.stringify([...document.querySelectorAll('#results .result')].map(b => b.dataset.frameId))""", arg=ids)
    return answer


def cards(w: Watched) -> list[dict[str, str]]:
    return w.page.eval_on_selector_all("#results .result", """bs => bs.map(b => ({
        rank: b.querySelector('.rank').textContent, score: b.querySelector('.score').textContent,
        time: b.querySelector('.time').textContent, video: b.querySelector('.video').textContent,
        title: b.querySelector('.video').title, na: b.querySelector('.na') ? b.querySelector('.na').textContent : '',
        thumb: b.querySelector('img') ? b.querySelector('img').getAttribute('src') : ''}))""")


def video_state(w: Watched) -> dict[str, Any]:
    return w.page.evaluate("""() => { const v = document.getElementById('video');
        return {paused: v.paused, readyState: v.readyState, currentTime: v.currentTime, src: v.getAttribute('src'),
                muted: v.muted, hidden: v.hidden, open: document.getElementById('player').open}; }""")


def wait_closed(w: Watched) -> None:
    """The player closed: its 'close' handler (a task after `open` turns false) stopped the video."""
    w.page.wait_for_function("""() => { const v = document.getElementById('video');
        return !document.getElementById('player').open && v.paused && !v.getAttribute('src')
            && document.activeElement !== document.body; }""")


def assert_plays_from(w: Watched, result: dict[str, Any]) -> None:
    w.page.wait_for_function(PLAYING)
    state = video_state(w)
    assert state["open"] and state["muted"] and not state["hidden"]
    assert state["src"] == result["video_url"] and "#t=" in state["src"]
    assert abs(state["currentTime"] - result["timestamp_s"]) <= 1.0, (state, result["timestamp_s"])


def test_search_upload_play_and_hostile_names(watched: Watched, server: Server) -> None:
    w, page = watched, watched.page
    stats = page.text_content("#stats") or ""
    n_frames = len(VIDEOS) * 9 * int(SAMPLE_FPS)
    assert f"{n_frames} frames" in stats and f"{len(VIDEOS)} videos" in stats and "tiny-image" in stats
    assert page.eval_on_selector_all("#backbone option", "os => os.map(o => o.value)") == ["tiny-image", "phash"]
    options = page.eval_on_selector_all("#only option", "os => os.map(o => [o.value, o.textContent])")
    assert options[0] == ["", "All videos"]
    assert {v for v, _ in options[1:]} == set(server.videos.values())
    hostile_option = next(text for v, text in options if v == server.videos[HOSTILE_VIDEO])
    assert hostile_option.startswith(HOSTILE_VIDEO)  # as text: the option's textContent is the name itself
    assert "(no video file)" in next(text for v, text in options if v == server.videos[GONE])

    # a frame of "city & night" in its middle scene (3-6 s), re-encoded: that scene's frames come first
    at = 4.5
    answer = upload(w, query_jpeg("city & night.webm", at), HOSTILE_UPLOAD)
    results = answer["results"]
    assert len(results) == PAGE_TOP_K and answer["query"]["name"] == HOSTILE_UPLOAD
    lo, hi = scene_span(at)
    per_scene = int(SCENE_S * SAMPLE_FPS)
    for r in results[:per_scene]:
        assert r["video"] == server.videos["city & night.webm"] and lo <= r["timestamp_s"] < hi, r
    assert results[per_scene]["score"] < results[per_scene - 1]["score"] - 0.1  # a clear gap to other scenes
    shown = cards(w)
    first = results[0]
    assert shown[0] == {"rank": "#1", "score": f"{first['score']:.3f}", "time": first["time"],
                        "video": "city & night.webm", "title": first["video"], "na": "",
                        "thumb": first["thumbnail_url"]}
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", shown[0]["time"])
    assert [c["rank"] for c in shown] == [f"#{i}" for i in range(1, PAGE_TOP_K + 1)]
    # the preview and the results line name the upload as text
    assert page.eval_on_selector("#preview-img", "i => i.complete && i.naturalWidth") == SIZE[0] * 2
    assert HOSTILE_UPLOAD in (page.text_content("#preview-cap") or "")
    assert HOSTILE_UPLOAD in (page.text_content("#results-meta") or "")
    page.wait_for_function("() => [...document.querySelectorAll('#results .result img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")  # every thumbnail loaded

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)

    # click the best frame: the player opens and plays from its time
    page.click("#results .result >> nth=0")
    assert_plays_from(w, first)
    assert page.text_content("#player-title") == "city & night.webm"
    assert page.text_content("#player-time") == first["time"]
    page.screenshot(path=str(ARTIFACTS / "serve-player.png"), full_page=False)
    page.keyboard.press("Escape")
    wait_closed(w)
    assert page.evaluate("document.activeElement.dataset.index") == "0"  # focus back on the result

    # only the hostile video: every card names it, as text, and nothing was injected
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as info:
        page.select_option("#only", value=server.videos[HOSTILE_VIDEO])
    filtered = rendered(w, info.value)["results"]
    assert filtered and {r["video"] for r in filtered} == {server.videos[HOSTILE_VIDEO]}
    assert {(c["video"], c["title"]) for c in cards(w)} == {(HOSTILE_VIDEO, server.videos[HOSTILE_VIDEO])}
    page.screenshot(path=str(ARTIFACTS / "serve-hostile.png"), full_page=False)
    page.click("#results .result >> nth=0")
    assert_plays_from(w, filtered[0])
    assert page.text_content("#player-title") == HOSTILE_VIDEO
    page.click("#player-close")
    assert page.evaluate("document.querySelectorAll('img[src=x], [onerror], b, script:not([src])').length") == 0

    # top-k
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as info:
        page.fill("#topk", "3")
        page.press("#topk", "Enter")
    assert len(rendered(w, info.value)["results"]) == 3

    # the other model: the search is asked of it, and the stats line names it and its store
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as info:
        page.select_option("#backbone", "phash")
    assert rendered(w, info.value)["backbone"] == "phash"
    line = page.text_content("#stats") or ""
    assert "model phash (64-d)" in line and "store faiss" in line
    assert_clean(w)


def test_drop_and_paste(watched: Watched, server: Server) -> None:
    w, page = watched, watched.page
    m = server.manifest
    row = m[(m["video"] == server.videos["harbour dawn.webm"]) & (m["timestamp_s"] == 7.5)].iloc[0]
    thumb = "/frames/" + urllib.request.quote(row["frame_id"])
    # drop: a DataTransfer built in the page from bytes it fetched (a dataset frame of "harbour dawn", 6-9 s)
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as info:
        page.evaluate("""async url => {
            const blob = await (await fetch(url)).blob();
            const dt = new DataTransfer();
            dt.items.add(new File([blob], 'dropped frame.jpg', {type: blob.type || 'image/jpeg'}));
            const target = document.getElementById('drop');
            for (const type of ['dragenter', 'dragover', 'drop'])
                target.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""", thumb)
    results = rendered(w, info.value)["results"]
    assert results[0]["score"] > 0.99 and row["frame_id"] in {r["frame_id"] for r in results[:6]}
    assert {r["video"] for r in results[:6]} == {server.videos["harbour dawn.webm"]}
    assert page.is_hidden("#drop-overlay")
    assert "dropped frame.jpg" in (page.text_content("#preview-cap") or "")

    # paste (Ctrl+V): a ClipboardEvent carrying a re-encoded frame of the hostile video's first scene
    data = base64.b64encode(query_jpeg(HOSTILE_VIDEO, 1.2)).decode()
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as info:
        page.evaluate("""b64 => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'image.jpg', {type: 'image/jpeg'}));
            document.body.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true,
                                                                     cancelable: true}));
        }""", data)
    results = rendered(w, info.value)["results"]
    lo, hi = scene_span(1.2)
    assert results[0]["video"] == server.videos[HOSTILE_VIDEO] and lo <= results[0]["timestamp_s"] < hi
    assert "pasted" in (page.text_content("#preview-cap") or "")
    assert cards(w)[0]["video"] == HOSTILE_VIDEO
    assert_clean(w)


def test_keyboard(watched: Watched) -> None:
    w, page = watched, watched.page
    answer = upload(w, query_jpeg("city & night.webm", 7.0), "q.jpg")
    results = answer["results"]
    assert results[0]["video"].endswith("city & night.webm") and results[0]["timestamp_s"] >= 6.0

    page.focus("body")
    page.evaluate("document.activeElement.blur()")
    visited = []
    for _ in range(30):  # Tab from the top of the page to the first result, through the controls
        page.keyboard.press("Tab")
        active = page.evaluate("(() => { const a = document.activeElement; return a.id || a.className; })()")
        visited.append(active)
        if active == "result":
            break
    assert visited[-1] == "result", visited
    assert {"pick", "only", "topk", "again"} <= set(visited), visited
    assert page.evaluate("document.activeElement.dataset.index") == "0"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # the focus is visible
    label = page.evaluate("document.activeElement.getAttribute('aria-label')")
    assert label.startswith("Rank 1: city & night.webm at ") and results[0]["time"] in label

    page.keyboard.press("Enter")
    assert_plays_from(w, results[0])
    assert page.evaluate("document.activeElement.id") == "player-close"
    page.keyboard.press("Escape")
    wait_closed(w)
    assert page.evaluate("document.activeElement.dataset.index") == "0"

    page.keyboard.press("ArrowRight")  # arrows move between results; Space opens one too
    assert page.evaluate("document.activeElement.dataset.index") == "1"
    page.keyboard.press("Space")
    assert_plays_from(w, results[1])
    page.keyboard.press("Escape")
    wait_closed(w)
    assert page.evaluate("document.activeElement.dataset.index") == "1"

    # in the player: Next plays the following result; "Search with this frame" asks by frame_id
    page.keyboard.press("Enter")
    page.click("#player-next")
    assert_plays_from(w, results[2])
    assert page.text_content("#player-time") == results[2]["time"]
    with page.expect_response(lambda r: "/api/search?" in r.url and r.request.method == "GET") as info:
        page.click("#player-similar")
    again = rendered(w, info.value)
    assert "frame_id=" + urllib.request.quote(results[2]["frame_id"], safe="") in info.value.url
    best = {r["frame_id"]: r["score"] for r in again["results"][:int(SCENE_S * SAMPLE_FPS)]}  # its scene
    assert best.get(results[2]["frame_id"], 0) > 0.99, again["results"]
    assert not page.evaluate("document.getElementById('player').open")
    assert_clean(w)


def test_unplayable_video_and_errors(watched: Watched, server: Server) -> None:
    w, page = watched, watched.page
    # a frame of the video whose file was deleted: found, but "video not available"
    answer = upload(w, query_jpeg(GONE, 4.0), "gone.jpg")
    first = answer["results"][0]
    assert first["video"] == server.videos[GONE] and first["video_url"] is None
    assert cards(w)[0]["na"] == "video not available"
    page.click("#results .result >> nth=0")
    page.wait_for_function("() => document.getElementById('player').open")
    assert page.is_visible("#player-na") and page.is_hidden("#video")
    assert "video not available" in (page.text_content("#player-na") or "")
    page.keyboard.press("Escape")

    # the server refuses an image it cannot decode: its one-line error shows in the message area
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as info:
        page.set_input_files("#file", files=[{"name": "broken.jpg", "mimeType": "image/jpeg",
                                              "buffer": b"\xff\xd8\xff\xe0 this is not really a JPEG"}])
    response = info.value
    assert response.status in (415, 422), response.status
    error = response.json()["error"]
    page.wait_for_selector("#message.error")
    message = page.text_content("#message") or ""
    assert error in message and page.get_attribute("#message", "role") == "status"

    # a file that is not an image is refused by the page itself (no request)
    page.set_input_files("#file", files=[{"name": "<i>notes</i>.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    page.wait_for_function("() => document.getElementById('message').textContent.includes('is not an image')")
    assert "<i>notes</i>.txt" in (page.text_content("#message") or "")
    # Chromium logs the refused upload's 4xx itself; nothing else may reach the console
    assert_clean(w, allow=r"Failed to load resource: the server responded with a status of 4\d\d")


def test_the_api_docs_page_renders_offline(watched: Watched, server: Server) -> None:
    page = watched.page
    page.goto(server.url.rstrip("/") + "/docs")
    page.wait_for_selector(".route")
    titles = page.eval_on_selector_all(".route h2", "hs => hs.map(h => h.textContent)")
    assert any("POST /api/search" in t for t in titles) and any("GET /api/search" in t for t in titles)
    fields = page.eval_on_selector_all(".route td code", "cs => cs.map(c => c.textContent)")
    assert "file *" in fields and "frame_id *" in fields
    assert not watched.console_errors and not watched.page_errors and not watched.dialogs
