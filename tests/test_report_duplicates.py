"""The duplicates view of the report: a real small dataset (synthetic videos through ``framesim.extract``),
contract-shaped output files written by hand for it, one page out; checked as HTML text and, in a real
headless Chromium driven by Playwright, as a rendered page (thumbnails decoded, sorting, escaping,
offline, no script errors). Screenshots go to test-artifacts/duplicates-report*.png.

The browser tests are skipped without Playwright or Chromium, unless FRAMESIM_REQUIRE_BROWSER=1 (CI).
FRAMESIM_CHROMIUM may name the browser (never `playwright install`: the system Chromium is used).
"""

from __future__ import annotations

import datetime as _dt
import html as html_lib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from framesim.dataset import FrameDataset
from framesim.extraction import extract
from framesim.report.duplicates import render_duplicates_report, write_duplicates_report

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"

HOSTILE = 'a <b> & "c".mp4'
OTHER, THIRD = "plain.mp4", "clip 3.mp4"  # string order: HOSTILE < THIRD < OTHER
SEGMENT_COLS = ["video_a", "start_a", "end_a", "video_b", "start_b", "end_b", "score", "n_frames", "offset_s",
                "segment", "inliers"]
GROUP_COLS = ["group", "frame_id", "video", "timestamp_s", "representative", "size"]
PAIR_COLS = ["frame_id_a", "video_a", "frame_index_a", "timestamp_a", "frame_id_b", "video_b", "frame_index_b",
             "timestamp_b", "score"]
#: (video_a, start_a, end_a, video_b, start_b, score, inliers): by score 0,1,2,3; by length 2,0,1,3
SEGMENTS = [(HOSTILE, 0.4, 2.4, OTHER, 1.4, 0.95, 40), (HOSTILE, 2.6, 3.8, OTHER, 4.0, 0.80, -1),
            (THIRD, 0.0, 3.0, OTHER, 2.0, 0.70, 12), (OTHER, 0.0, 0.8, OTHER, 4.8, 0.60, -1)]


@dataclass
class Fixture:
    out_dir: Path
    dataset: Path
    manifest: pd.DataFrame

    def frame_at(self, video: str, t: float) -> pd.Series:
        rows = self.manifest[self.manifest["video"] == video]
        return rows.iloc[int(np.argmin(np.abs(rows["timestamp_s"].to_numpy() - t)))]


def write_outputs(out_dir: Path, dataset: Path, segments: pd.DataFrame, groups: pd.DataFrame,
                  pairs: pd.DataFrame, n_frames: int = 0, n_videos: int = 0) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, df in (("segments", segments), ("groups", groups), ("frame_pairs", pairs)):
        df.to_parquet(out_dir / f"{name}.parquet", index=False)
        df.to_csv(out_dir / f"{name}.csv", index=False)
    info = {"format": "framesim-duplicates", "version": 1, "dataset": str(dataset.resolve()),
            "backbone": "tiny-image", "min_score": 0.9, "created": _dt.datetime.now().isoformat(),
            "counts": {"frames": n_frames, "videos": n_videos, "frame_pairs": len(pairs),
                       "groups": int(groups["group"].nunique()) if len(groups) else 0, "segments": len(segments)},
            "params": {"k": 10, "min_score": 0.9}, "seconds": {"total": 1.25}}
    (out_dir / "duplicates.json").write_text(json.dumps(info), encoding="utf-8")


@pytest.fixture
def dup(tmp_path: Path, make_video: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> Fixture:
    """Three extracted videos (4, 6 and 4 s at 25 fps, sampled at 5 fps), four segments, two groups."""
    for name, n, scenes in ((HOSTILE, 100, (0, 50)), (OTHER, 150, (0, 60, 110)), (THIRD, 100, (0, 40))):
        make_video(f"videos/{name}", n_frames=n, scene_starts=scenes)
    dataset = tmp_path / "dataset"
    monkeypatch.chdir(tmp_path / "videos")  # the manifest names videos as given: here just the file names
    extract(["."], dataset, fps=5, progress=False)
    man = FrameDataset(dataset).manifest()
    assert set(man["video"]) == {HOSTILE, OTHER, THIRD}, set(man["video"])
    fx = Fixture(tmp_path / "dups", dataset, man)

    seg_rows, pair_rows = [], []
    for i, (va, sa, ea, vb, sb, score, inliers) in enumerate(SEGMENTS):
        n = 0
        for ta in np.arange(sa, ea + 1e-9, 0.2):
            fa, fb = fx.frame_at(va, ta), fx.frame_at(vb, ta + sb - sa)
            pair_rows.append([fa.frame_id, va, fa.frame_index, fa.timestamp_s, fb.frame_id, vb, fb.frame_index,
                              fb.timestamp_s, score])
            n += 1
        seg_rows.append([va, sa, ea, vb, sb, sb + ea - sa, score, n, sb - sa, i, inliers])
    group_rows = []
    for g, (members, rep) in enumerate(((((HOSTILE, 1.0), (OTHER, 2.0), (THIRD, 0.6)), 1),
                                        (((HOSTILE, 3.0), (OTHER, 4.4)), 1))):
        frames = [fx.frame_at(v, t) for v, t in members]
        group_rows += [[g, f.frame_id, f.video, f.timestamp_s, frames[rep].frame_id, len(frames)] for f in frames]
    write_outputs(fx.out_dir, dataset, pd.DataFrame(seg_rows, columns=SEGMENT_COLS),
                  pd.DataFrame(group_rows, columns=GROUP_COLS), pd.DataFrame(pair_rows, columns=PAIR_COLS),
                  len(man), 3)
    return fx


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags_of(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


# ---------------------------------------------------------------- the HTML text


def test_page_escapes_names_and_embeds_thumbnails(dup: Fixture) -> None:
    path = write_duplicates_report(dup.out_dir)
    assert path == dup.out_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    assert HOSTILE not in page and "<b> &" not in page  # never raw, anywhere (the thumbnails JSON holds no names)
    assert html_lib.escape(HOSTILE, quote=True) in page
    tags = tags_of(page)
    # the only <b> elements are the page's own words in its explanations, none from a name
    assert all(t != "b" or not a for t, a in tags)
    assert not [a for t, a in tags if any(k.startswith("on") for k in a)], "an event handler attribute"
    assert sum(1 for t, a in tags if t == "article" and a.get("class") == "seg") == 4
    assert sum(1 for t, a in tags if t == "article" and a.get("class") == "grp") == 2
    thumbs = json.loads(re.search(r'<script type="application/json" id="dup-thumbs">(.*?)</script>', page,
                                  re.S).group(1))
    keys = [a["data-k"] for t, a in tags if t == "img" and "data-k" in a]
    assert len(keys) == 4 * 6 + 5 and set(keys) <= set(thumbs) and "frame image not available" not in page
    # a script policy by hash: only the page's own two scripts may run
    csp = next(a["content"] for t, a in tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and csp.count("'sha256-") == 2 and "unsafe-eval" not in csp
    # default order: by score, highest first; the header carries the run
    assert [int(s) for s in re.findall(r'data-segment="(\d+)"', page)] == [0, 1, 2, 3]
    assert "tiny-image" in page and "0.900" in page and "Copied segments" in page


def test_thumbnails_show_the_start_middle_and_end_frames_on_both_sides(dup: Fixture) -> None:
    """Segment 0 maps A 0.4..2.4 s onto B 1.4..3.4 s: the thumbnails' captions are those moments (the end
    is exclusive, the last matched frame's time plus a step: its thumbnail is the frame before, 2.2 s)."""
    page = render_duplicates_report(dup.out_dir)
    card = re.search(r'<article class="seg"[^>]*data-segment="0">(.*?)</article>', page, re.S).group(1)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", card)
    assert captions == ["00:00:00.400", "00:00:01.400", "00:00:02.200", "00:00:01.400", "00:00:02.400",
                        "00:00:03.200"]
    # the timelines: video A is 4 s long (last frame 3.8 s + one 0.2 s step), so its span starts at 10 %
    assert 'class="hl-a" x="100.0"' in card and card.count('class="link"') == 11


def test_missing_frame_files_give_placeholders(dup: Fixture) -> None:
    gone = dup.frame_at(HOSTILE, 0.4)
    FrameDataset(dup.dataset).frame_path(gone.path).unlink()
    page = render_duplicates_report(dup.out_dir)
    assert page.count("frame image not available") == 1  # segment 0's A start; every other image is there
    # the dataset itself gone: every image a placeholder, and a note says why
    FrameDataset(dup.dataset).manifest_path.unlink()
    for p in (dup.dataset / "state" / "pending").glob("*.parquet"):
        p.unlink()
    page = render_duplicates_report(dup.out_dir)
    assert page.count("frame image not available") == 4 * 6 + 5 and "thumbnails are unavailable" in page


def test_empty_outputs_read_well(dup: Fixture) -> None:
    write_outputs(dup.out_dir, dup.dataset, pd.DataFrame(columns=SEGMENT_COLS), pd.DataFrame(columns=GROUP_COLS),
                  pd.DataFrame(columns=PAIR_COLS))
    page = write_duplicates_report(dup.out_dir).read_text(encoding="utf-8")
    assert "No copied segments found" in page and "No near-duplicate frames found at score ≥ 0.900." in page
    assert "<article" not in page and 'id="dup-thumbs">{}</script>' in page


def test_caps_keep_the_best_and_say_so(dup: Fixture) -> None:
    page = render_duplicates_report(dup.out_dir, max_segments=2, max_groups=1, max_group_members=2)
    assert [int(s) for s in re.findall(r'data-segment="(\d+)"', page)] == [0, 1]
    assert "Showing the 2 highest-scoring of 4 segments" in page and "Showing the 1 largest of 2 groups" in page
    grp = re.search(r'<article class="grp"[^>]*>(.*?)</article>', page, re.S).group(1)
    assert len(re.findall(r'class="member(?: rep)?"', grp)) == 2 and 'class="member rep"' in grp
    assert "1 more frame" in grp
    with pytest.raises(ValueError, match="max_segments"):
        render_duplicates_report(dup.out_dir, max_segments=-1)


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]", '{"format": "framesim-frames", "version": 1}',
                                     '{"format": "framesim-duplicates", "version": 7}'])
def test_missing_or_damaged_duplicates_json_is_one_line(dup: Fixture, content: str | None) -> None:
    info = dup.out_dir / "duplicates.json"
    if content is None:
        info.unlink()
    else:
        info.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        write_duplicates_report(dup.out_dir)
    assert str(err.value).startswith(str(info)) and "\n" not in str(err.value)
    assert not (dup.out_dir / "report.html").exists()


def test_damaged_tables_name_the_file(dup: Fixture) -> None:
    seg = dup.out_dir / "segments.parquet"
    seg.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError, match=re.escape(str(seg))):
        render_duplicates_report(dup.out_dir)
    pd.DataFrame({"video_a": ["x"]}).to_parquet(seg)
    with pytest.raises(ValueError, match=r"segments.parquet: lacks column\(s\) start_a"):
        render_duplicates_report(dup.out_dir)
    bad = pd.read_csv(dup.out_dir / "segments.csv")
    bad.loc[1, "score"] = float("nan")
    bad.to_parquet(seg, index=False)
    with pytest.raises(ValueError, match="column score has 1 value"):
        render_duplicates_report(dup.out_dir)
    # a table that is simply missing costs its section only, with a note
    seg.unlink()
    (dup.out_dir / "segments.csv").unlink()
    page = render_duplicates_report(dup.out_dir)
    assert "segments.parquet is missing" in page and "No copied segments found" in page


# ---------------------------------------------------------------- in a real browser


@dataclass
class Opened:
    page: Page
    errors: list[str]
    requests: list[str]


def open_report(browser: Browser, report: Path) -> Opened:
    """The report in a fresh page; console errors, page errors and any request off the file itself recorded
    (and refused: the page must work offline)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
    page = context.new_page()
    opened = Opened(page, [], [])
    page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: opened.errors.append(str(e)))

    def route(r: object) -> None:
        url = r.request.url  # type: ignore[attr-defined]
        if url.startswith(("data:", report.resolve().as_uri())):
            r.continue_()  # type: ignore[attr-defined]
        else:
            opened.requests.append(url)
            r.abort()  # type: ignore[attr-defined]

    context.route("**/*", route)
    page.goto(report.resolve().as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    return opened


def assert_clean(o: Opened) -> None:
    assert not o.errors, o.errors
    assert not o.requests, f"the page asked the network for {o.requests}"
    assert o.page.eval_on_selector("#fs-errors", "e => [e.hidden, e.textContent]") == [True, ""]
    assert o.page.evaluate("window.__framesimErrors.length") == 0


_DECODED = """sel => Promise.all([...document.querySelectorAll(sel)].map(i => i.decode().then(() => i.naturalWidth,
() => 0)))"""
_ORDER = "() => [...document.querySelectorAll('#seg-list article.seg')].map(a => +a.dataset.segment)"


@pytest.mark.browser
@pytest.mark.slow
def test_report_in_chromium(browser: Browser, dup: Fixture) -> None:
    FrameDataset(dup.dataset).frame_path(dup.frame_at(THIRD, 2.8).path).unlink()  # segment 2's A end
    o = open_report(browser, write_duplicates_report(dup.out_dir))
    page = o.page
    assert page.locator("article.seg").count() == 4
    widths = page.evaluate(_DECODED, "article.seg img")
    assert len(widths) == 4 * 6 - 1 and all(w > 0 for w in widths), widths
    assert page.locator("article.seg .ph").count() == 1

    # sorting: by length (longest first), reversed, back to score (highest first), reversed
    assert page.evaluate(_ORDER) == [0, 1, 2, 3]
    page.click(".sortbar button[data-key=length]")
    assert page.evaluate(_ORDER) == [2, 0, 1, 3]
    page.click(".sortbar button[data-key=length]")
    assert page.evaluate(_ORDER) == [3, 1, 0, 2]
    page.click(".sortbar button[data-key=score]")
    assert page.evaluate(_ORDER) == [0, 1, 2, 3]
    assert page.get_attribute(".sortbar button[data-key=score]", "aria-pressed") == "true"
    assert page.get_attribute(".sortbar button[data-key=length]", "aria-pressed") == "false"
    page.click(".sortbar button[data-key=score]")
    assert page.evaluate(_ORDER) == [3, 2, 1, 0]
    page.click(".sortbar button[data-key=score]")

    # the hostile name: literal text, no element made from it
    names = page.eval_on_selector_all(".vname", "es => es.map(e => [e.textContent, e.childElementCount])")
    assert [HOSTILE, 0] in names and all(n == 0 for _, n in names)
    assert page.evaluate("document.querySelectorAll('main .vname b, main .vid b, main figcaption *').length") == 0

    # the groups gallery: the representative first and marked in each group, its image decoded
    reps = page.eval_on_selector_all("article.grp", """gs => gs.map(g => [g.querySelectorAll('.member.rep').length,
        g.querySelector('.member').classList.contains('rep'), g.querySelector('.member.rep .vid').textContent,
        !!g.querySelector('.member.rep .kept')])""")
    assert reps == [[1, True, OTHER, True], [1, True, OTHER, True]]
    widths = page.evaluate(_DECODED, "article.grp img")
    assert len(widths) == 5 and all(w > 0 for w in widths)
    assert_clean(o)

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "duplicates-report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000
    page.locator("article.seg").first.screenshot(path=str(ARTIFACTS / "duplicates-report-segment.png"))
    page.context.close()


@pytest.mark.browser
@pytest.mark.slow
def test_empty_report_in_chromium(browser: Browser, dup: Fixture) -> None:
    write_outputs(dup.out_dir, dup.dataset, pd.DataFrame(columns=SEGMENT_COLS), pd.DataFrame(columns=GROUP_COLS),
                  pd.DataFrame(columns=PAIR_COLS), len(dup.manifest), 3)
    o = open_report(browser, write_duplicates_report(dup.out_dir))
    texts = o.page.eval_on_selector_all("main .empty", "es => es.map(e => e.textContent)")
    assert len(texts) == 2 and texts[0].startswith("No copied segments found")
    assert_clean(o)
    ARTIFACTS.mkdir(exist_ok=True)
    o.page.screenshot(path=str(ARTIFACTS / "duplicates-report-empty.png"), full_page=True)
    o.page.context.close()
