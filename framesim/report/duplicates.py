"""The duplicates view of the HTML report: one self-contained, offline page for the output folder of
``framesim duplicates`` (``duplicates.json``, ``segments.parquet``, ``groups.parquet``,
``frame_pairs.parquet``; the shared contract of issue #14).

Segments are cards with a paired timeline: two bars, each a video's whole length (estimated from
the dataset manifest: its last sampled frame plus one sampling step), the copied span highlighted on
both, a band joining the two spans and thin lines joining the matched frame pairs behind the segment.
Beside it, thumbnails at the segment's start, middle and end on both sides: on side a the manifest
frame of that video nearest to each time (preferring frames inside the span); on side b the frame
nearest to the same moment mapped through the segment's own extents (linear from ``start_a..end_a``
to ``start_b..end_b``), so each column shows what should be the same picture. Cards sort client-side
by score or length. Groups are a gallery, largest first, the representative marked.

Escaping follows the match report (``framesim.report.html``): every name goes through ``esc``, the
thumbnails travel as JSON made script-safe, the script writes no text as HTML, and a
Content-Security-Policy admits only the page's own two scripts by hash.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from framesim._io import write_bytes
from framesim.dataset import DataFileError, FrameDataset, checked_numbers
from framesim.report.duplicates_assets import COLOR_A, COLOR_B, document, hero, side_label, timeline_svg
from framesim.report.html import esc
from framesim.report.thumbnails import FRAME_THUMB, ThumbSpec, build_thumbnails
from framesim.timecode import format_timestamp

FORMAT = "framesim-duplicates"
SEGMENT_COLUMNS = ("video_a", "start_a", "end_a", "video_b", "start_b", "end_b", "score", "n_frames", "offset_s")
GROUP_COLUMNS = ("group", "frame_id", "video", "timestamp_s", "representative", "size")
#: matched frame pairs drawn per segment timeline (evenly thinned beyond that)
MAX_LINKS = 60
#: member rows listed as text under a group beyond its thumbnails
MAX_MEMBER_ROWS = 200


def _read_info(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "duplicates.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataFileError(f"{path}: missing; is {out_dir} the output folder of framesim duplicates?") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise DataFileError(f"{path}: not readable JSON ({reason})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DataFileError(f"{path}: not a framesim duplicates file (format must be {FORMAT!r})")
    version = info.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > 1:
        raise DataFileError(f"{path}: version {version!r} is not one this framesim can read (1)")
    for key, kind in (("counts", dict), ("params", dict), ("seconds", dict)):
        if not isinstance(info.get(key, {}), kind):
            info[key] = {}
    return info


def _read_table(out_dir: Path, name: str, columns: Iterable[str], notes: list[str]) -> tuple[pd.DataFrame, Path]:
    """``name``.parquet (else ``name``.csv) with at least ``columns``; a missing table is a note and empty."""
    columns = list(columns)
    path = out_dir / f"{name}.parquet"
    if not path.exists() and (out_dir / f"{name}.csv").exists():
        path = out_dir / f"{name}.csv"
    if not path.exists():
        notes.append(f"{name}.parquet is missing: its part of the report is empty.")
        return pd.DataFrame({c: [] for c in columns}), path
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False)
    except Exception as exc:  # pyarrow, pandas and the file system each raise their own kinds
        raise DataFileError(f"{path}: not a readable table ({type(exc).__name__})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataFileError(f"{path}: lacks column(s) {', '.join(missing)}")
    return df, path


def _texts(values: pd.Series, path: Path) -> list[str]:
    out = values.tolist()
    if not all(isinstance(v, str) for v in out):
        raise DataFileError(f"{path}: column {values.name} must hold text in every row")
    return out


def _numbers(df: pd.DataFrame, column: str, path: Path, whole: bool) -> np.ndarray:
    return checked_numbers(df[column].reset_index(drop=True), path, path.stem, whole=whole)


def _segments(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Segments with contract dtypes, highest score first; ``length`` = the span on video a."""
    n = len(df)
    out = pd.DataFrame({c: _texts(df[c], path) for c in ("video_a", "video_b")}, index=range(n))
    for c in ("start_a", "end_a", "start_b", "end_b", "score", "offset_s", "n_frames", "segment", "inliers"):
        whole = c in ("n_frames", "segment", "inliers")
        out[c] = _numbers(df, c, path, whole) if c in df.columns else np.arange(n) if c == "segment" else -1
    out["length"] = np.maximum(out["end_a"] - out["start_a"], 0.0)
    return out.sort_values(["score", "segment"], ascending=[False, True], kind="stable").reset_index(drop=True)


def _groups(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    out = pd.DataFrame({"frame_id": [str(v) for v in df["frame_id"].tolist()],
                        "representative": [str(v) for v in df["representative"].tolist()],
                        "video": _texts(df["video"], path)})
    for c in ("group", "size", "timestamp_s"):
        out[c] = _numbers(df, c, path, whole=c != "timestamp_s")
    return out


@dataclass
class _Frames:
    """The dataset's frames by id, and per video its sampled times (sorted) for nearest-frame lookup."""

    dataset: FrameDataset | None = None
    rows: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # frame id -> (path, width, height)
    times: dict[str, np.ndarray] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)
    duration: dict[str, float] = field(default_factory=dict)

    def file(self, frame_id: str | None) -> tuple[Path, int | None, int | None] | None:
        """The image of a frame (with its size, for a reduced decode), or None if the dataset has none."""
        row = self.rows.get(frame_id) if frame_id is not None else None
        if row is None or self.dataset is None:
            return None
        try:
            return self.dataset.frame_path(row[0]), row[1] or None, row[2] or None
        except ValueError:  # a manifest path never leads the report out of the dataset
            return None

    def nearest(self, video: str, t: float, lo: float, hi: float) -> tuple[str | None, float]:
        """The frame of ``video`` nearest to ``t`` among those in [lo, hi) (any frame if none is): a segment's
        end is its last matched frame's time plus a sampling step, so the frame at ``hi`` is past it."""
        times = self.times.get(video)
        if times is None or not len(times):
            return None, t
        i0, i1 = np.searchsorted(times, lo - 1e-6, "left"), np.searchsorted(times, hi - 1e-6, "left")
        if i1 <= i0:
            i0, i1 = 0, len(times)
        j = i0 + int(np.argmin(np.abs(times[i0:i1] - t)))
        return self.ids[video][j], float(times[j])


def _load_frames(dataset: object, notes: list[str]) -> _Frames:
    """The manifest of the dataset named in duplicates.json; problems only cost thumbnails (a note)."""
    if not isinstance(dataset, str) or not dataset:
        notes.append("duplicates.json names no dataset: thumbnails are unavailable.")
        return _Frames()
    ds = FrameDataset(dataset)
    try:
        man = ds.manifest()
    except (OSError, ValueError) as exc:
        notes.append(f"The dataset's manifest is unreadable ({str(exc)[:200]}): thumbnails are unavailable.")
        return _Frames()
    if man.empty:
        notes.append(f"No frames found in the dataset {dataset}: thumbnails are unavailable.")
        return _Frames()
    frames = _Frames(ds, dict(zip(man["frame_id"], zip(man["path"], man["width"].tolist(), man["height"].tolist(),
                                                       strict=True), strict=True)))
    for video, rows in man.groupby("video", sort=False):
        rows = rows.sort_values("timestamp_s", kind="stable")
        t = rows["timestamp_s"].to_numpy(dtype=np.float64)
        frames.times[str(video)], frames.ids[str(video)] = t, rows["frame_id"].tolist()
        # the video's length: its last sampled frame plus one sampling step
        frames.duration[str(video)] = float(t[-1]) + (float(np.median(np.diff(t))) if len(t) > 1 else 0.0)
    return frames


def _links(out_dir: Path, segs: pd.DataFrame, notes: list[str]) -> dict[int, list[tuple[float, float]]]:
    """Per segment row, up to MAX_LINKS matched frame pairs (time a, time b) inside its two spans."""
    path = out_dir / "frame_pairs.parquet"
    if segs.empty or not path.exists():
        return {}
    try:
        fp = pd.read_parquet(path, columns=["video_a", "timestamp_a", "video_b", "timestamp_b"])
        fp = fp[fp["video_a"].isin(set(segs["video_a"]) | set(segs["video_b"]))]
        by_pair = {(str(k[0]), str(k[1])): (g["timestamp_a"].to_numpy(np.float64),
                                            g["timestamp_b"].to_numpy(np.float64))
                   for k, g in fp.groupby(["video_a", "video_b"], sort=False)}
    except Exception as exc:  # only decoration: a damaged file costs the lines, not the page
        notes.append(f"frame_pairs.parquet is unreadable ({type(exc).__name__}): matched frames are not drawn.")
        return {}
    out: dict[int, list[tuple[float, float]]] = {}
    empty = (np.empty(0), np.empty(0))
    for row in segs.itertuples():
        # either orientation (a same-video pair may be stored later-first); np.unique drops a pair seen twice
        ta1, tb1 = by_pair.get((row.video_a, row.video_b), empty)
        tb2, ta2 = by_pair.get((row.video_b, row.video_a), empty)
        ta, tb = np.concatenate([ta1, ta2]), np.concatenate([tb1, tb2])
        inside = ((ta >= row.start_a - 1e-6) & (ta <= row.end_a + 1e-6)
                  & (tb >= row.start_b - 1e-6) & (tb <= row.end_b + 1e-6))
        ta, tb = np.unique(np.stack([ta[inside], tb[inside]], axis=1), axis=0).T.reshape(2, -1)
        if len(ta) > MAX_LINKS:
            keep = np.linspace(0, len(ta) - 1, MAX_LINKS).round().astype(int)
            ta, tb = ta[keep], tb[keep]
        out[int(row.Index)] = list(zip(ta.tolist(), tb.tolist(), strict=True))
    return out


class _Thumbs:
    """Frame ids -> short keys of the thumbnail JSON; each frame embedded once."""

    def __init__(self, frames: _Frames) -> None:
        self.frames = frames
        self.keys: dict[str, str] = {}
        self.files: dict[str, tuple[Path, int | None, int | None]] = {}

    def key(self, frame_id: str | None) -> str | None:
        if frame_id in self.keys:
            return self.keys[frame_id]
        file = self.frames.file(frame_id)
        if file is None:
            return None
        self.files[key := f"t{len(self.keys)}"] = file
        self.keys[frame_id] = key  # type: ignore[index]
        return key

    def build(self, spec: ThumbSpec, workers: int | None) -> dict[str, str]:
        return build_thumbnails(self.files, spec, workers)


def _image(key: str | None, thumbs: dict[str, str], alt: str) -> str:
    if key is not None and key in thumbs:
        return f'<img data-k="{key}" alt="{esc(alt)}" decoding="async">'
    return '<div class="ph">frame image not available</div>'


def _segment_shots(row: Any, frames: _Frames) -> list[tuple[str, str, str | None, float]]:
    """(side, position, frame id or None, its time) at start, middle and end, side A then side B."""
    ratio = (row.end_b - row.start_b) / (row.end_a - row.start_a) if row.end_a > row.start_a else 1.0
    side_a, side_b = [], []
    for label, t in (("start", row.start_a), ("middle", (row.start_a + row.end_a) / 2), ("end", row.end_a)):
        side_a.append(("A", label, *frames.nearest(row.video_a, t, row.start_a, row.end_a)))
        t_b = row.start_b + (side_a[-1][3] - row.start_a) * ratio  # the A frame's moment, mapped onto B
        side_b.append(("B", label, *frames.nearest(row.video_b, t_b, row.start_b, row.end_b)))
    return side_a + side_b


def _segment_card(row: Any, order: int, frames: _Frames, shots: list[tuple[str, str, str | None, float]],
                  tk: _Thumbs, thumbs: dict[str, str], links: list[tuple[float, float]]) -> str:
    dur_a = max(frames.duration.get(row.video_a, 0.0), row.end_a, 1e-3)
    dur_b = max(frames.duration.get(row.video_b, 0.0), row.end_b, 1e-3)
    cells = []
    for side, label, fid, ts in shots:
        video, color = (row.video_a, COLOR_A) if side == "A" else (row.video_b, COLOR_B)
        alt = f"{side} {label}: {video} at {format_timestamp(ts)}"
        cells.append(f'<figure class="shot" style="--c:{color}"><div class="im">{_image(tk.key(fid), thumbs, alt)}'
                     f"</div><figcaption>{esc(format_timestamp(ts) if fid else '—')}</figcaption></figure>")
    length_b = row.end_b - row.start_b
    length = f"{row.length:.2f} s" + (f" / {length_b:.2f} s" if abs(length_b - row.length) > 0.05 * row.length + 0.01
                                      else "")
    badges = [f'<span class="badge">length {esc(length)}</span>',
              f'<span class="badge">{row.n_frames:,} frame pair{"s" if row.n_frames != 1 else ""}</span>']
    if row.inliers >= 0:
        badges.append(f'<span class="badge match">{row.inliers:,} local-feature inliers</span>')
    if row.video_a == row.video_b:
        badges.append('<span class="badge same">within one video</span>')
    strip = ("<span></span>" + "".join(f'<span class="colh">{h}</span>' for h in ("start", "middle", "end"))
             + f'<span class="ab" style="--c:{COLOR_A}">A</span>' + "".join(cells[:3])
             + f'<span class="ab" style="--c:{COLOR_B}">B</span>' + "".join(cells[3:]))
    sign = "+" if row.offset_s >= 0 else "−"
    return (f'<article class="seg" data-score="{row.score:.6f}" data-length="{row.length:.6f}" data-order="{order}" '
            f'data-segment="{row.segment}"><div class="seg-head"><span class="num">#{row.segment}</span>'
            f'<span class="score">score {row.score:.3f}</span>{"".join(badges)}</div>'
            f'<div class="pair">{side_label("A", COLOR_A, row.video_a, row.start_a, row.end_a, dur_a)}'
            f"{timeline_svg(row, dur_a, dur_b, links)}"
            f'{side_label("B", COLOR_B, row.video_b, row.start_b, row.end_b, dur_b)}'
            f'<div class="offset">offset <b>{sign}{abs(row.offset_s):.3f} s</b> (B time − A time)'
            f'{" · lines: matched frame pairs" if links else ""}</div></div>'
            f'<div class="strip">{strip}</div></article>')


def _base(video: str) -> str:
    """A video's file name without its folders (the full name is the tile's tooltip)."""
    return video.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or video


def _ordered_members(members: pd.DataFrame) -> pd.DataFrame:
    """A group's rows: its representative first, then by video and time."""
    rep = members["representative"].iloc[0]
    return members.assign(_rep=members["frame_id"] != rep).sort_values(["_rep", "video", "timestamp_s"],
                                                                       kind="stable")


def _group_card(members: pd.DataFrame, tk: _Thumbs, thumbs: dict[str, str], max_members: int) -> str:
    rep = members["representative"].iloc[0]
    shown, rest = members.iloc[:max_members], members.iloc[max_members:]
    keys = [tk.key(f) for f in shown["frame_id"]]
    tiles = []
    for key, fid, video, ts in zip(keys, shown["frame_id"], shown["video"], shown["timestamp_s"], strict=True):
        is_rep = fid == rep
        when = format_timestamp(ts)
        tiles.append(f'<div class="member{" rep" if is_rep else ""}" title="{esc(video)}&#10;{esc(when)}">'
                     f'<div class="im">{_image(key, thumbs, f"{video} at {when}")}'
                     + ('<span class="kept">kept</span>' if is_rep else "") + "</div>"
                     f'<span class="ts">{esc(when)}</span><span class="vid">{esc(_base(video))}</span></div>')
    more = ""
    if len(rest):
        rows = "".join(f"<tr><td>{esc(format_timestamp(ts))}</td><td>{esc(v)}</td></tr>"
                       for v, ts in zip(rest["video"][:MAX_MEMBER_ROWS], rest["timestamp_s"][:MAX_MEMBER_ROWS],
                                        strict=True))
        extra = f" (first {MAX_MEMBER_ROWS} listed)" if len(rest) > MAX_MEMBER_ROWS else ""
        more = (f'<details class="morelist"><summary>{len(rest):,} more frame{"s" if len(rest) != 1 else ""}'
                f"{extra}</summary><table>{rows}</table></details>")
    size = int(members["size"].iloc[0]) if len(members) else 0
    n_videos, gid = members["video"].nunique(), int(members["group"].iloc[0])
    return (f'<article class="grp" data-group="{gid}"><div class="grp-head">'
            f'<h3>Group {gid}</h3><span class="badge">{max(size, len(members)):,} frames</span>'
            f'<span class="badge">{n_videos:,} video{"s" if n_videos != 1 else ""}</span></div>'
            f'<div class="members">{"".join(tiles)}</div>{more}</article>')


def render_duplicates_report(out_dir: str | os.PathLike[str], *, max_segments: int = 500, max_groups: int = 200,
                             max_group_members: int = 12, thumb: ThumbSpec = FRAME_THUMB,
                             workers: int | None = None) -> str:
    """The duplicates page for the output folder ``out_dir`` as a string (nothing written)."""
    for name, value in (("max_segments", max_segments), ("max_groups", max_groups),
                        ("max_group_members", max_group_members)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0, not {value!r}")
    out_dir = Path(out_dir)
    info = _read_info(out_dir)
    notes: list[str] = []
    seg_df, seg_path = _read_table(out_dir, "segments", SEGMENT_COLUMNS, notes)
    grp_df, grp_path = _read_table(out_dir, "groups", GROUP_COLUMNS, notes)
    segs_all, groups = _segments(seg_df, seg_path), _groups(grp_df, grp_path)
    segs = segs_all.iloc[:max_segments]
    frames = _load_frames(info.get("dataset"), notes)
    links = _links(out_dir, segs, notes)
    group_ids = (groups.groupby("group")["frame_id"].size().rename("n").reset_index()
                 .sort_values(["n", "group"], ascending=[False, True], kind="stable")["group"].tolist())
    by_group = dict(iter(groups.groupby("group", sort=False)))
    shown_groups = [_ordered_members(by_group[g]) for g in group_ids[:max_groups]]

    tk = _Thumbs(frames)
    rows = list(segs.itertuples())
    shots = [_segment_shots(r, frames) for r in rows]
    for fid in (s[2] for row_shots in shots for s in row_shots):  # every frame shown gets a key first
        tk.key(fid)
    for members in shown_groups:
        for fid in members["frame_id"].iloc[:max_group_members]:
            tk.key(fid)
    thumbs = tk.build(thumb, workers)

    min_score = info.get("min_score")
    at = f" at score ≥ {min_score:.3f}" if isinstance(min_score, int | float) else ""
    if rows:
        cap = (f'<p class="capnote">Showing the {len(segs):,} highest-scoring of {len(segs_all):,} segments; '
               "all are in <code>segments.csv</code>.</p>" if len(segs_all) > len(segs) else "")
        seg_body = (cap + '<div class="sortbar">sort by <button type="button" data-key="score" aria-pressed="true" '
                    'data-dir="desc">score <span class="arrow">↓</span></button><button type="button" '
                    'data-key="length" aria-pressed="false">length <span class="arrow"></span></button>'
                    '<span>(click again to reverse)</span></div><div id="seg-list">'
                    + "".join(_segment_card(r, i, frames, shots[i], tk, thumbs, links.get(int(r.Index), []))
                              for i, r in enumerate(rows)) + "</div>")
    else:
        seg_body = ('<div class="empty">No copied segments found: no stretch of one video matched a stretch of '
                    f"another{esc(at)}.</div>")
    if shown_groups:
        cap = (f'<p class="capnote">Showing the {len(shown_groups):,} largest of {len(group_ids):,} groups; '
               "all are in <code>groups.csv</code>.</p>" if len(group_ids) > len(shown_groups) else "")
        grp_body = cap + '<div class="groups">' + "".join(
            _group_card(m, tk, thumbs, max_group_members) for m in shown_groups) + "</div>"
    else:
        grp_body = f'<div class="empty">No near-duplicate frames found{esc(at)}.</div>'
    sections = [
        ("segments", "Copied segments",
         "Each card is a stretch of video <b>A</b> that reappears in video <b>B</b>. The two bars are the whole "
         "videos; the coloured spans are the copy on each, joined by a band. The thumbnails are the frames "
         "nearest to the segment's <b>start</b>, <b>middle</b> and <b>end</b> on both sides, so each column "
         "should show the same picture. <b>Score</b> (0–1) is how certain the match is.", seg_body),
        ("groups", "Groups of near-duplicate frames",
         "Each group is a set of frames linked by near-duplicate pairs, largest first. The frame marked "
         "<b>kept</b> is the group's representative (the one to keep when keeping one of each).", grp_body),
    ]
    now = _dt.datetime.now().replace(microsecond=0).isoformat(sep=" ")
    footer = (f"Generated by framesim on {esc(now)} from <code>{esc(out_dir)}</code>. Thumbnails are downscaled "
              "JPEGs; all rows are in the folder's CSV files.")
    title = f"framesim · duplicates · {Path(str(info.get('dataset') or out_dir)).name}"
    return document(title, hero(info, out_dir), notes, sections, thumbs, footer)


def write_duplicates_report(out_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
                            max_segments: int = 500, max_groups: int = 200, max_group_members: int = 12,
                            thumb: ThumbSpec = FRAME_THUMB, workers: int | None = None) -> Path:
    """Write the duplicates report of a ``framesim duplicates`` output folder; returns the path written.

    ``out`` defaults to ``out_dir / "report.html"`` (written atomically). At most ``max_segments``
    segments (highest score first) and ``max_groups`` groups (largest first, ``max_group_members``
    thumbnails each) are shown; the page says when it leaves some out. Raises ``DataFileError`` (a
    ValueError, one line naming the file) when duplicates.json is missing or damaged or a table breaks
    the contract; a missing table, dataset or frame image only gives a note or a placeholder.
    """
    html_text = render_duplicates_report(out_dir, max_segments=max_segments, max_groups=max_groups,
                                         max_group_members=max_group_members, thumb=thumb, workers=workers)
    out_path = Path(out) if out is not None else Path(out_dir) / "report.html"
    write_bytes(out_path, html_text.encode("utf-8"))
    return out_path
