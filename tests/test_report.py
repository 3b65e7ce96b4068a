"""The HTML report: a synthetic run directory (real small images, hostile names) in, one file out."""

from __future__ import annotations

import base64
import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from framesim.report import PLOTLY_SIDECAR, ReportOptions, format_timestamp, otsu_threshold, write_report
from framesim.report.data import RunError, load_run
from framesim.report.html import safe_script_text, script_json
from framesim.report.metrics import agreement_matrices, pr_curve, separation_auc

HOSTILE_VIDEO = "<img src=x onerror=alert(1)>.mp4"
HOSTILE_EXAMPLE = "sub/\"quoted\" & 'amp' <b>.jpg"
BACKBONES = ("alpha-net", "beta-net")


def _frame_image(video: int, index: int, size: tuple[int, int] = (320, 180)) -> np.ndarray:
    """BGR frame: a per-video colour and texture that drifts slowly, with the frame number drawn."""
    w, h = size
    rng = np.random.default_rng(video * 7919 + index // 10)  # a new 'scene' every 10 frames
    base = rng.integers(40, 220, size=3)
    tex = cv2.resize(rng.integers(0, 256, (h // 20 + 1, w // 20 + 1, 3), dtype=np.uint8), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    img = (0.55 * base + 0.45 * tex).astype(np.uint8)
    cv2.circle(img, (int(w * (0.2 + 0.6 * ((index % 10) / 10))), h // 2), h // 5, (255, 255, 255), -1)
    cv2.putText(img, f"v{video} #{index}", (8, h - 12), cv2.FONT_HERSHEY_SIMPLEX, h / 260, (20, 20, 20), 2)
    return img


def make_run(root: Path, n_examples: int = 6, n_frames: int = 40, videos: tuple[str, ...] | None = None,
             top_k: int = 5, ground_truth: bool = False, seed: int = 0,
             frame_size: tuple[int, int] = (320, 180)) -> Path:
    """A run directory consistent with the `framesim match` contract, with real images on disk.

    Example i is a crop of one 'source' frame; both backbones score it high (rank 1) and the
    rest of their top-K low, except that beta-net misses every third example (a disagreement).
    Returns the run directory; the dataset and examples live next to it under ``root``.
    """
    rng = np.random.default_rng(seed)
    videos = videos or ("street walk.mp4", HOSTILE_VIDEO, "clip & co.mp4")
    dataset, ex_root, run_dir = root / "dataset", root / "examples", root / "run"
    rows = []
    fid = 0
    per_video = max(1, n_frames // len(videos))
    for vi, video in enumerate(videos):
        stem = f"v{vi}"
        for i in range(per_video):
            rel = f"frames/{stem}/{i:06d}.jpg"
            path = dataset / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            img = _frame_image(vi, i, frame_size)
            cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 85])
            rows.append({"frame_id": fid, "video": video, "frame_index": i * 5,
                         "timestamp_s": i * 5 / 25.0 + 3600 * (vi == 2),  # the third video starts at 1 h
                         "width": frame_size[0], "height": frame_size[1], "path": rel, "sha256": f"{fid:064x}"})
            fid += 1
    manifest = pd.DataFrame(rows)
    manifest.to_parquet(dataset / "manifest.parquet", index=False)
    frame_imgs = {r["frame_id"]: dataset / r["path"] for r in rows}

    examples = [HOSTILE_EXAMPLE] + [f"crop_{i:03d}.jpg" for i in range(1, n_examples)]
    sources = rng.choice(len(manifest), size=n_examples, replace=len(manifest) < n_examples)
    for ex, src in zip(examples, sources, strict=True):
        img = cv2.imread(str(frame_imgs[int(src)]))
        h, w = img.shape[:2]
        crop = img[h // 8: h - h // 8, w // 10: w - w // 6]
        (ex_root / ex).parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".jpg", crop)
        assert ok
        buf.tofile(str(ex_root / ex))

    pairs = []
    for bi, bb in enumerate(BACKBONES):
        for ei, (ex, src) in enumerate(zip(examples, sources, strict=True)):
            others = rng.choice(np.setdiff1d(np.arange(len(manifest)), [src]), size=top_k - 1, replace=False)
            miss = bi == 1 and ei % 3 == 2
            top = rng.uniform(0.55, 0.7) if miss else rng.uniform(0.82, 0.97) - 0.04 * bi
            rest = np.sort(rng.uniform(0.35, 0.62, size=top_k - 1))[::-1]
            others = [int(o) for o in others]
            ids = [int(src), *others] if not miss else [others[0], int(src), *others[1:]]
            scores = [top, *rest] if not miss else [top, rest[0] * 0.98, *rest[1:]]
            for rank, (f, s) in enumerate(zip(ids, scores, strict=True), start=1):
                m = manifest.iloc[f]
                row = {"backbone": bb, "example": ex, "frame_id": f, "video": m["video"],
                       "frame_index": int(m["frame_index"]), "timestamp_s": float(m["timestamp_s"]),
                       "score": float(s), "rank": rank}
                if ground_truth:
                    row["correct"] = f == int(src)
                pairs.append(row)
    pairs_df = pd.DataFrame(pairs)
    run_dir.mkdir(parents=True)
    pairs_df.to_parquet(run_dir / "pairs.parquet", index=False)
    pairs_df.to_csv(run_dir / "pairs.csv", index=False)
    info = {
        "format": "framesim-run", "version": 1, "run": "20261123-120000", "created": "2026-11-23T12:00:00",
        "dataset": str(dataset), "examples_root": str(ex_root), "examples": examples,
        "failed_examples": [{"example": "bad <script>.jpg", "reason": "not a readable image"}],
        "n_videos": len(videos), "n_frames": len(manifest), "n_examples": len(examples), "index": "Flat",
        "top_k": top_k, "min_score": None, "seconds": 12.3,
        "backbones": [{"name": bb, "dim": 1280 if bi == 0 else 2048, "input_size": 224, "weights": "imagenet",
                       "frames_embedded": len(manifest), "frames_cached": 0, "examples_embedded": len(examples),
                       "embed_seconds": 3.1 * (bi + 1), "images_per_s": 38.9 / (bi + 1), "search_seconds": 0.01}
                      for bi, bb in enumerate(BACKBONES)],
        "ground_truth": {"n_positives": len(examples)} if ground_truth else None,
    }
    (run_dir / "run.json").write_text(json.dumps(info, indent=2))
    return run_dir


def _data_block(html: str, block_id: str) -> object:
    m = re.search(rf'<script type="application/json" id="{block_id}">(.*?)</script>', html, re.S)
    assert m, block_id
    return json.loads(m.group(1))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path)


# ---------------------------------------------------------------- units


def test_format_timestamp() -> None:
    assert format_timestamp(0) == "00:00:00.000"
    assert format_timestamp(3723.4567) == "01:02:03.457"
    assert format_timestamp(59.9996) == "00:01:00.000"
    assert format_timestamp(float("nan")) == "—"
    assert format_timestamp(None) == "—"


def test_otsu_splits_two_modes_and_reports_effectiveness() -> None:
    rng = np.random.default_rng(1)
    scores = np.r_[rng.normal(0.9, 0.02, 100), rng.normal(0.5, 0.05, 400)]
    t = otsu_threshold(scores)
    assert t.value is not None and 0.6 < t.value < 0.85
    assert t.eta > 0.8 and not t.weak
    assert t.n_above == int((scores >= t.value).sum()) == 100
    flat = otsu_threshold(rng.uniform(0, 1, 500))
    assert flat.value is not None and flat.eta < 0.8  # uniform: a split, but no gap
    assert otsu_threshold([0.7, 0.7, 0.7]).value is None
    assert otsu_threshold([]).value is None
    assert otsu_threshold([0.2, 0.8]).value == pytest.approx(0.5)


def test_separation_auc() -> None:
    assert separation_auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert separation_auc(np.array([0.5]), np.array([0.5])) == 0.5
    assert separation_auc(np.array([0.1]), np.array([0.9, 0.2])) == 0.0
    assert separation_auc(np.array([]), np.array([0.3])) is None


def test_script_json_cannot_close_the_script() -> None:
    evil = {"v": "</script><script>alert(1)</script><!-- & \u2028"}
    text = script_json(evil)
    assert "</" not in text and "<!--" not in text and "<" not in text
    assert json.loads(text) == evil
    assert json.loads(safe_script_text(json.dumps(evil))) == evil


def test_agreement_and_pr(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path, n_examples=9, ground_truth=True))
    jac, top1 = agreement_matrices(run.pairs, run.backbones)
    assert jac.loc["alpha-net", "alpha-net"] == 1.0
    assert top1.loc["alpha-net", "beta-net"] == pytest.approx(6 / 9)  # beta misses every third
    curve = pr_curve(run.pairs, "alpha-net", n_positives=9)
    assert curve.average_precision == pytest.approx(1.0)  # alpha ranks every source first, high
    assert curve.best_f1 == pytest.approx(1.0)


# ---------------------------------------------------------------- the report


def test_report_has_every_section_and_escapes_names(run_dir: Path) -> None:
    out = write_report(run_dir)
    assert out == run_dir / "report.html" and out.is_file()
    html = out.read_text(encoding="utf-8")
    for section_id in ("backbones", "scores", "agreement", "timeline", "examples", "failed"):
        assert f'<section id="{section_id}">' in html
    for chart in ("fig-scores", "fig-agreement", "fig-timeline"):
        assert f'id="{chart}"' in html
    assert "Otsu" in html  # the threshold method is stated in the page
    assert html.count("<script>") == 3  # error hook, plotly.js, app: nothing else executable
    assert "Content-Security-Policy" in html
    # hostile names only ever appear escaped
    assert "<img src=x" not in html and "<b>.jpg" not in html and "bad <script>" not in html
    assert "bad &lt;script&gt;.jpg" in html  # the failed example, in server-written HTML
    data = _data_block(html, "fs-data")
    names = [x["n"] for x in data["examples"]]
    assert HOSTILE_EXAMPLE in names
    assert HOSTILE_VIDEO in {f[0] for f in data["frames"].values()}
    timelines = _data_block(html, "fs-timelines")
    labels = [t["label"] for t in timelines]
    assert any(lab.startswith(HOSTILE_VIDEO) for lab in labels)
    # inside Plotly figures (which render some HTML tags) the name is entity-escaped
    figs_text = json.dumps([t["fig"] for t in timelines])
    assert "&lt;img src=x onerror=alert(1)&gt;.mp4" in figs_text
    assert "sub/\\\"quoted\\\" &amp; 'amp' &lt;b&gt;.jpg" in figs_text
    # header facts
    assert "20261123-120000" in html and "Flat" in html and "12.3 s" in html and "38.9" in html


def test_report_rows_and_timestamps(run_dir: Path) -> None:
    html = write_report(run_dir).read_text(encoding="utf-8")
    data = _data_block(html, "fs-data")
    pairs = pd.read_parquet(run_dir / "pairs.parquet")
    assert [b["name"] for b in data["backbones"]] == list(BACKBONES)
    assert all(b["threshold"] is not None for b in data["backbones"])
    ex0 = data["examples"][0]
    assert [len(r) for r in ex0["r"]] == [5, 5]
    fk, score, rank, mask, gt = ex0["r"][0][0]
    row = pairs[(pairs["backbone"] == "alpha-net") & (pairs["example"] == ex0["n"]) & (pairs["rank"] == 1)].iloc[0]
    assert fk == str(row["frame_id"]) and rank == 1 and score == pytest.approx(row["score"], abs=1e-4)
    assert mask == 0b11  # both backbones found the source frame of the first example
    assert gt == -1  # no ground truth in this run
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d\d\d", data["frames"][fk][1])
    assert data["frames"][fk][1] == format_timestamp(row["timestamp_s"])


def test_thumbnails_are_small_jpegs(run_dir: Path) -> None:
    html = write_report(run_dir).read_text(encoding="utf-8")
    thumbs = _data_block(html, "fs-thumbs")
    frames = {k: v for k, v in thumbs.items() if k.startswith("f")}
    examples = {k: v for k, v in thumbs.items() if k.startswith("e")}
    assert frames and len(examples) == 6
    for key, b64 in thumbs.items():
        raw = base64.b64decode(b64)
        assert raw[:3] == b"\xff\xd8\xff", key
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        limit = (240, 180) if key.startswith("e") else (160, 120)
        assert img.shape[1] <= limit[0] and img.shape[0] <= limit[1], (key, img.shape)
        assert len(raw) < 20_000, key
    assert np.mean([len(v) for v in frames.values()]) < 8_000


def test_missing_images_give_placeholders_not_errors(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    info = json.loads((run_dir / "run.json").read_text())
    (Path(info["examples_root"]) / "crop_001.jpg").unlink()
    man = pd.read_parquet(Path(info["dataset"]) / "manifest.parquet")
    first = pd.read_parquet(run_dir / "pairs.parquet").iloc[0]
    (Path(info["dataset"]) / man.set_index("frame_id").loc[first["frame_id"], "path"]).unlink()
    html = write_report(run_dir).read_text(encoding="utf-8")
    thumbs = _data_block(html, "fs-thumbs")
    data = _data_block(html, "fs-data")
    i = [x["n"] for x in data["examples"]].index("crop_001.jpg")
    assert f"e{i}" not in thumbs and "e0" in thumbs
    assert f"f{first['frame_id']}" not in thumbs
    assert str(first["frame_id"]) in data["frames"]  # still listed, shown with a placeholder

    # a deleted dataset: every frame thumbnail missing, a note says why, still a report
    import shutil

    shutil.rmtree(info["dataset"])
    html = write_report(run_dir).read_text(encoding="utf-8")
    assert not [k for k in _data_block(html, "fs-thumbs") if k.startswith("f")]
    assert "manifest not found" in html


def test_csv_only_no_run_json_and_empty_pairs(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    (run_dir / "pairs.parquet").unlink()
    (run_dir / "run.json").unlink()
    html = write_report(run_dir, tmp_path / "elsewhere" / "r.html").read_text(encoding="utf-8")
    assert "run.json is missing" in html and '<section id="examples">' in html

    empty = tmp_path / "empty"
    empty.mkdir()
    pd.DataFrame(columns=["backbone", "example", "frame_id", "video", "frame_index", "timestamp_s", "score",
                          "rank"]).to_csv(empty / "pairs.csv", index=False)
    (empty / "run.json").write_text(json.dumps({"examples": ["a.jpg"], "backbones": [{"name": "x"}]}))
    html = write_report(empty).read_text(encoding="utf-8")
    assert "No pairs in this run" in html

    with pytest.raises(RunError, match="no pairs"):
        write_report(tmp_path / "nothing-here")


def test_ground_truth_adds_pr_section(tmp_path: Path) -> None:
    html = write_report(make_run(tmp_path, n_examples=9, ground_truth=True)).read_text(encoding="utf-8")
    assert '<section id="pr">' in html and 'id="fig-pr"' in html
    figs = _data_block(html, "fs-figures")
    names = [t.get("name", "") for t in figs["pr"]["data"]]
    assert any(n.startswith("alpha-net · AP 1.000") for n in names)
    data = _data_block(html, "fs-data")
    assert data["groundTruth"] and data["examples"][0]["r"][0][0][4] == 1


def test_write_is_atomic_and_sidecar_mode(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "site" / "r.html"
    write_report(run_dir, out, plotlyjs="sidecar")
    html = out.read_text(encoding="utf-8")
    assert f'<script src="{PLOTLY_SIDECAR}"></script>' in html
    assert (out.parent / PLOTLY_SIDECAR).stat().st_size > 1_000_000
    assert len(html) < 1_000_000
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    with pytest.raises(ValueError):
        write_report(run_dir, out, plotlyjs="cdn")  # type: ignore[arg-type]


def test_thumbnail_count_is_bounded(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, n_examples=4, n_frames=60, top_k=20)
    html = write_report(run_dir, options=ReportOptions(thumbs_per_backbone=3)).read_text(encoding="utf-8")
    data = _data_block(html, "fs-data")
    thumbs = _data_block(html, "fs-thumbs")
    assert data["thumbs"] == 3 and len(data["examples"][0]["r"][0]) == 20  # all ranks listed
    assert len([k for k in thumbs if k.startswith("f")]) <= 4 * 2 * 3
    # a global cap lowers the ranks that get thumbnails, and the page says so
    html = write_report(run_dir, options=ReportOptions(thumbs_per_backbone=8, max_frame_thumbnails=10)).read_text()
    data = _data_block(html, "fs-data")
    n_frame_thumbs = len([k for k in _data_block(html, "fs-thumbs") if k.startswith("f")])
    assert data["thumbs"] < 8 and 0 < n_frame_thumbs <= 10
    assert "fewer than asked" in html


@pytest.mark.slow
def test_report_size_for_200_examples_and_2000_frames(tmp_path: Path) -> None:
    """Measures the report for 200 examples x 2,000 frames x 2 backbones, top-10 (see the printout)."""
    run_dir = make_run(tmp_path, n_examples=200, n_frames=2000, top_k=10, videos=tuple(f"video {i:02d}.mp4"
                                                                                      for i in range(20)),
                       frame_size=(640, 360))
    t0 = time.perf_counter()
    out = write_report(run_dir)
    seconds = time.perf_counter() - t0
    size = out.stat().st_size
    thumbs = _data_block(out.read_text(encoding="utf-8"), "fs-thumbs")
    print(f"\nreport for 200 examples x 2000 frames x 2 backbones, top-10: {size / 1e6:.1f} MB "
          f"({len(thumbs)} thumbnails), written in {seconds:.1f} s")
    assert size < 20e6
    assert seconds < 120


# ---------------------------------------------------------------- hostile names everywhere

#: what a user-controlled string may contain: tags, a script end, attribute breakers, entities, unicode, newlines
HOSTILE = ["<script>alert(1)</script>", '"onmouseover=alert(2) x="', "</script><script>alert(3)</script>",
           "&amp;", "ünï©ødé 🎞", "line1\nline2", "' onerror='alert(4)"]


class _Tags(HTMLParser):
    """Every element, attribute and text node as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []
        self.text: list[str] = []
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        self._in.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data: str) -> None:
        if not self._in or self._in[-1] not in ("script", "style"):
            self.text.append(data)


def _parse(html: str) -> _Tags:
    p = _Tags()
    p.feed(html)
    p.close()
    return p


def _strings(obj: object) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in _strings(k) + _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


#: the tags the report's own Plotly labels use (Plotly renders this subset of HTML)
_PLOTLY_OWN_TAGS = re.compile(r"</?(b|br|extra)>")


def _hostile_run(root: Path, hostile: bool) -> Path:
    """make_run, then every user-controlled string (video, example, frame id, backbone, run name, dataset
    and weights, ground truth) replaced by a hostile one (or a harmless one of the same shape)."""
    h = (lambda i, s: f"{HOSTILE[i % len(HOSTILE)]}{s}") if hostile else (lambda i, s: f"name{i}{s}")
    videos = (h(0, ".mp4"), f"dir/{h(2, '')}/{h(1, '')}{h(3, '')}.mp4", h(4, h(5, ".avi")))
    run_dir = make_run(root, videos=videos, ground_truth=True)
    pairs = pd.read_parquet(run_dir / "pairs.parquet")
    backbones = {b: h(i + 5, f"-{b}") for i, b in enumerate(BACKBONES)}
    examples = {e: h(i, f"-{i}.jpg") for i, e in enumerate(pd.unique(pairs["example"]))}
    pairs["backbone"] = pairs["backbone"].map(backbones)
    pairs["frame_id"] = [h(int(f), f"/{int(f):06d}") for f in pairs["frame_id"]]
    for old, new in examples.items():  # the example files are renamed too: their thumbnails must still work
        src, dst = root / "examples" / old, root / "examples" / new
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)
    pairs["example"] = pairs["example"].map(examples)
    pairs.to_parquet(run_dir / "pairs.parquet", index=False)
    pairs.to_csv(run_dir / "pairs.csv", index=False)
    manifest = pd.read_parquet(root / "dataset" / "manifest.parquet")
    manifest["frame_id"] = [h(int(f), f"/{int(f):06d}") for f in manifest["frame_id"]]
    manifest.to_parquet(root / "dataset" / "manifest.parquet", index=False)
    info = json.loads((run_dir / "run.json").read_text())
    info["run"] = h(1, h(0, "run"))
    info["examples"] = [examples[e] for e in info["examples"]]
    info["failed_examples"] = [{"example": h(2, ".png"), "reason": h(0, "reason")}]
    info["index"] = h(3, "Flat")
    info["created"] = h(5, "2026")
    info["ground_truth"] = {"n_positives": 6, "file": h(0, "truth.csv"), "n_distractors": 0,
                            "top1_correct": {backbones[b]: 1 for b in BACKBONES}}
    for b in info["backbones"]:
        b["name"] = backbones[b["name"]]
        b["weights"], b["spec"], b["runtime"] = h(1, "w.npz"), h(2, "spec"), h(3, "rt")
    (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir


def test_hostile_names_are_escaped_in_every_context(tmp_path: Path) -> None:
    clean = write_report(_hostile_run(tmp_path / "clean", hostile=False)).read_text(encoding="utf-8")
    out = write_report(_hostile_run(tmp_path / "evil", hostile=True))
    html = out.read_text(encoding="utf-8")
    page, base = _parse(html), _parse(clean)
    # Same document structure as with harmless names: no injected element, attribute or script.
    assert page.tags == base.tags
    assert [(t, k) for t, k, _ in page.attrs] == [(t, k) for t, k, _ in base.attrs]
    assert not [k for _, k, _ in page.attrs if k.startswith("on")]
    assert html.count("<script") == clean.count("<script") == html.count("</script>")
    # The names are shown (as text) rather than dropped: the browser's text equals the raw name.
    text = "".join(page.text)
    for needle in (HOSTILE[0] + "run", HOSTILE[3] + "Flat", HOSTILE[5] + "-alpha-net", HOSTILE[6] + "-beta-net",
                   HOSTILE[2] + ".png", HOSTILE[1] + "w.npz", HOSTILE[0] + "reason"):
        assert needle in text, needle
    title = re.search(r"<title>(.*?)</title>", html, re.S)
    assert title and "<" not in title.group(1)
    # JSON data blocks give back the exact names (the page's script puts them into the DOM as text only).
    data = _data_block(html, "fs-data")
    assert {b["name"] for b in data["backbones"]} >= {HOSTILE[5] + "-alpha-net", HOSTILE[6] + "-beta-net"}
    assert HOSTILE[0] + "-0.jpg" in [x["n"] for x in data["examples"]]
    assert any(HOSTILE[2] in f[0] for f in data["frames"].values())
    assert any(k.startswith(HOSTILE[0]) for k in data["frames"])  # hostile frame ids as keys
    thumbs = _data_block(html, "fs-thumbs")  # keys: "f" + frame id, "e" + the example's position
    hostile_example = next(x["i"] for x in data["examples"] if x["n"] == HOSTILE[0] + "-0.jpg")
    assert any(k.startswith("f" + HOSTILE[0]) for k in thumbs) and f"e{hostile_example}" in thumbs
    # Plotly renders a subset of HTML in labels, titles and hover text: no tag of ours may come from a name.
    # (a timeline's "label" is not Plotly's: the page's script makes it an <option>'s text)
    plotly = [_data_block(html, "fs-figures"), [t["fig"] for t in _data_block(html, "fs-timelines")]]
    for s in _strings(plotly):
        assert "<" not in _PLOTLY_OWN_TAGS.sub("", s), s
    # ... and the names are there, entity-escaped
    figs_text = json.dumps(_data_block(html, "fs-timelines"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in figs_text and "&amp;amp;" in figs_text
