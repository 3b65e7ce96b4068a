"""From a loaded run to the page: numbers, figures, thumbnails, sections."""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from framesim.report import figures, metrics
from framesim.report.data import RunData, format_duration, format_timestamp
from framesim.report.evaluation import evaluation_section
from framesim.report.html import Page, Section, esc, safe_script_text, script_json
from framesim.report.threshold import METHOD, Threshold, backbone_thresholds
from framesim.report.thumbnails import EXAMPLE_THUMB, FRAME_THUMB, ThumbSpec, build_thumbnails


@dataclass(frozen=True)
class ReportOptions:
    """Knobs of the page; the defaults keep a 1,000-example run within a few tens of MB."""

    #: thumbnails per backbone per example; lower ranks are listed as text
    thumbs_per_backbone: int = 8
    #: at most this many distinct frame thumbnails in one report (~3.6 KB each as base64); when the
    #: run would need more, fewer ranks per backbone get thumbnails (the page says so)
    max_frame_thumbnails: int = 6000
    #: text rows after the thumbnails, per backbone per example
    max_text_rows: int = 50
    #: examples per page in the examples section (rendered lazily, one page at a time)
    page_size: int = 20
    #: timelines plot ranks 1..timeline_ranks, for at most timeline_videos videos (most matches first)
    timeline_ranks: int = 10
    timeline_videos: int = 300
    frame_thumb: ThumbSpec = FRAME_THUMB
    example_thumb: ThumbSpec = EXAMPLE_THUMB
    workers: int | None = None


def _num(x: Any, digits: int = 4) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return round(v, digits) if math.isfinite(v) else None


def _fmt(x: Any, spec: str = ".3f", missing: str = "—") -> str:
    v = _num(x, 12)
    return missing if v is None else format(v, spec)


def _fig_json(fig: go.Figure) -> dict[str, Any]:
    """Figure as a plain dict without its template (the page sends the template once)."""
    d = json.loads(pio.to_json(fig, validate=False, remove_uids=True))
    d.get("layout", {}).pop("template", None)
    return d


def _template_json() -> dict[str, Any]:
    fig = go.Figure(layout={"template": "plotly_white"})
    return json.loads(pio.to_json(fig, validate=False))["layout"]["template"]


# ---------------------------------------------------------------- header and tables


def _hero(run: RunData, colors: Mapping[str, str], thresholds: Mapping[str, Threshold]) -> str:
    info = run.info
    n_ex = info.get("n_examples", len(run.examples))
    failed = len(run.failed_examples)
    bbs = run.backbones
    stats = [
        ("videos", info.get("n_videos", run.pairs["video"].nunique()), ""),
        ("frames", info.get("n_frames", "—"), "in the dataset"),
        ("examples", n_ex, f"+{failed} unreadable, skipped" if failed else "all readable"),
        ("backbones", len(bbs), ", ".join(bbs)),
        ("index", info.get("index", "—"), f"top-K = {info.get('top_k', '—')}"
         + (f" · min score {info['min_score']}" if info.get("min_score") is not None else "")
         + (" · by L2 distance" if info.get("metric") == "l2" else "")),
        ("time taken", format_duration(info.get("seconds")), "whole match run"),
    ]
    cards = "".join(
        f'<div class="stat"><div class="k">{esc(k)}</div><div class="v">'
        f'{esc(f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else v)}</div>'
        + (f'<div class="d">{esc(d)}</div>' if d else "") + "</div>"
        for k, v, d in stats)
    sub = []
    if info.get("dataset"):
        sub.append(f"<span>dataset <code>{esc(info['dataset'])}</code></span>")
    if info.get("examples_root"):
        sub.append(f"<span>examples <code>{esc(info['examples_root'])}</code></span>")
    if info.get("created"):
        sub.append(f"<span>created {esc(str(info['created']).replace('T', ' '))}</span>")
    sub.append(f"<span>run directory <code>{esc(run.run_dir)}</code></span>")
    title = f"Run {info['run']}" if info.get("run") else "Match run"
    chips = []
    bb_info = run.backbone_info
    for b in bbs:
        bi = bb_info.get(b, {})
        t = thresholds.get(b)
        parts = []
        if _num(bi.get("images_per_s")) is not None:
            parts.append(f"{_fmt(bi['images_per_s'], '.1f')} images/s")
        if _num(bi.get("embed_seconds")) is not None:
            parts.append(f"embedding {format_duration(bi['embed_seconds'])}")
        if t is not None and t.value is not None:
            parts.append(f"threshold {t.value:.3f}")
        chips.append(f'<div class="bb-chip"><span class="sw" style="background:{colors[b]}"></span>'
                     f'<b>{esc(b)}</b><span>{esc(" · ".join(parts))}</span></div>')
    return (f'<div class="brand">framesim · match report</div><h1>{esc(title)}</h1>'
            f'<p class="sub">{"".join(sub)}</p><div class="stats">{cards}</div>'
            f'<div class="bb-chips">{"".join(chips)}</div>')


def _backbone_table(run: RunData, colors: Mapping[str, str], thresholds: Mapping[str, Threshold],
                    stats: Mapping[str, Mapping[str, float | None]],
                    curves: Mapping[str, metrics.PRCurve]) -> str:
    info = run.backbone_info
    gt = bool(curves)
    head = ["backbone", "dim · input", "weights", "frames embedded (cached)", "embed time", "images/s",
            "search time", "pairs", "median top-1", "median rank ≥ 2", "median margin top-1 − top-2",
            "top-1 vs rest AUC", "threshold", "η"]
    if gt:
        head += ["µAP", "recall at 90 % precision (at score)", "best F1 (at score)"]
    rows = []
    for b in run.backbones:
        bi = info.get(b, {})
        t = thresholds[b]
        st = stats[b]
        n_pairs = int((run.pairs["backbone"] == b).sum())
        weak = ' <span class="weak" title="no clear gap between two groups of scores">weak</span>' if t.weak else ""
        dim = f"{bi['dim']}" if bi.get("dim") is not None else "—"
        size = f" · {bi['input_size']} px" if bi.get("input_size") else ""
        emb = bi.get("frames_embedded")
        cached = bi.get("frames_cached")
        frames = (f"{emb:,}" if isinstance(emb, int) else "—") + (f" ({cached:,})" if isinstance(cached, int) else "")
        cells = [
            f'<span class="sw" style="background:{colors[b]}"></span>{esc(b)}',
            esc(dim + size), esc(bi.get("weights") or "—"), esc(frames),
            esc(format_duration(bi.get("embed_seconds"))), esc(_fmt(bi.get("images_per_s"), ".1f")),
            esc(format_duration(bi.get("search_seconds"))), esc(f"{n_pairs:,}"),
            esc(_fmt(st["top1_median"])), esc(_fmt(st["rest_median"])), esc(_fmt(st["margin_median"])),
            esc(_fmt(st["auc"], ".2f")), "<b>" + esc(_fmt(t.value)) + "</b>" + weak, esc(_fmt(t.eta, ".2f")),
        ]
        if gt:
            c = curves.get(b)
            cells += [esc(_fmt(c.average_precision if c else None)),
                      esc(f"{c.recall_at_p90:.3f} ({_fmt(c.threshold_at_p90)})" if c and c.threshold_at_p90 is not None
                          else "0 (—)" if c else "—"),
                      esc(f"{c.best_f1:.3f} ({_fmt(c.best_f1_threshold)})" if c and c.best_f1_threshold is not None
                          else "—")]
        rows.append("<tr>" + "".join(
            f'<td class="name">{v}</td>' if i == 0 else f"<td>{v}</td>" for i, v in enumerate(cells)) + "</tr>")
    return ('<div class="table-wrap"><table class="bb"><thead><tr>'
            + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>" + "".join(rows)
            + "</tbody></table></div>")


# ---------------------------------------------------------------- examples data


def thumbs_per_backbone(pairs: pd.DataFrame, wanted: int, cap: int) -> int:
    """The most ranks per (backbone, example) that can get thumbnails, up to ``wanted``, while the
    number of distinct frames needing one stays within ``cap`` (at least 1)."""
    if pairs.empty or wanted <= 1:
        return max(1, wanted)
    pos = pairs.groupby(["backbone", "example"], sort=False).cumcount().to_numpy() + 1
    first_pos = pd.Series(pos, index=pairs.index).groupby(pairs["frame_key"]).min()
    need = np.bincount(np.minimum(first_pos.to_numpy(), wanted + 1), minlength=wanted + 2).cumsum()
    fits = [n for n in range(1, wanted + 1) if need[n] <= cap]
    return fits[-1] if fits else 1


def _examples_payload(run: RunData, colors: Mapping[str, str], thresholds: Mapping[str, Threshold],
                      opts: ReportOptions) -> tuple[dict[str, Any], set[str]]:
    """The compact JSON the page renders examples from, and the frame keys that get thumbnails."""
    pairs = run.pairs
    bb_index = {b: i for i, b in enumerate(run.backbones)}
    n_thumbs = thumbs_per_backbone(pairs, opts.thumbs_per_backbone, opts.max_frame_thumbnails)
    if pairs.empty:
        keep = pairs
    else:
        pos = pairs.groupby(["backbone", "example"], sort=False).cumcount()
        keep = pairs[pos < n_thumbs + opts.max_text_rows]
    # one row per (example, frame, backbone), so summing the bits is their OR
    mask_series = (keep.drop_duplicates(["example", "frame_key", "backbone"])
                   .assign(bit=lambda d: [1 << bb_index[b] for b in d["backbone"]])
                   .groupby(["example", "frame_key"], sort=False)["bit"].sum()
                   if not keep.empty else pd.Series(dtype=np.int64))
    masks: dict[tuple[str, str], int] = {k: int(v) for k, v in mask_series.items()}
    has_gt = "correct" in keep.columns
    results: dict[str, list[list[list[Any]]]] = {ex: [[] for _ in run.backbones] for ex in run.examples}
    thumb_keys: set[str] = set()
    frames: dict[str, list[Any]] = {}
    cols = [keep[c].tolist() for c in ("backbone", "example", "frame_key", "score", "rank")]
    corr = keep["correct"].tolist() if has_gt else [None] * len(keep)
    counts: dict[tuple[str, str], int] = {}
    for b, ex, fk, score, rank, c in zip(*cols, corr, strict=True):
        lst = results.setdefault(ex, [[] for _ in run.backbones])[bb_index[b]]
        gt = -1 if c is None or c is pd.NA else int(bool(c))
        lst.append([fk, _num(score), int(rank), masks.get((ex, fk), 0), gt])
        n = counts[(b, ex)] = counts.get((b, ex), 0) + 1
        if n <= n_thumbs:
            thumb_keys.add(fk)
    first = keep.drop_duplicates("frame_key")
    for fk, video, ts, fi in zip(first["frame_key"], first["video"], first["timestamp_s"], first["frame_index"],
                                 strict=True):
        frames[fk] = [video, format_timestamp(ts), int(fi) if np.isfinite(fi) else None]
    summaries = metrics.example_summaries(pairs, run.examples, run.backbones)
    examples = []
    for i, ex in enumerate(results):
        s = summaries.get(ex) or metrics.ExampleSummary(ex, None, 0, 0)
        examples.append({"n": ex, "i": i, "b": _num(s.best_score), "a": s.top1_agree, "k": s.n_with_results,
                         "r": results[ex]})
    payload = {
        "backbones": [{"name": b, "color": colors[b], "threshold": _num(thresholds[b].value)} for b in run.backbones],
        "examples": examples, "frames": frames, "thumbs": n_thumbs, "pageSize": opts.page_size,
        "groundTruth": has_gt,
    }
    return payload, thumb_keys


# ---------------------------------------------------------------- the page


def _timelines(run: RunData, colors: Mapping[str, str], thresholds: Mapping[str, Threshold],
               max_rank: int, max_videos: int) -> tuple[list[dict[str, Any]], int]:
    """Per video (most top-1 matches first, at most ``max_videos``) its timeline figure over the pairs
    of rank <= ``max_rank``; also the number of videos left out."""
    pairs = run.pairs
    if pairs.empty:
        return [], 0
    pairs = pairs[pairs["rank"] <= max_rank]
    top1 = pairs[pairs["rank"] == 1].groupby("video").size()
    n_all = pairs.groupby("video").size()
    videos = sorted(n_all.index, key=lambda v: (-int(top1.get(v, 0)), -int(n_all[v]), str(v)))
    by_video = dict(iter(pairs.groupby("video", sort=False)))
    out = []
    for v in videos[:max_videos]:
        fig = figures.timeline_figure(by_video[v], run.backbones, colors, thresholds, title=str(v))
        n1 = int(top1.get(v, 0))
        label = f"{v} — {n1} top-1 match{'es' if n1 != 1 else ''}, {int(n_all[v])} pairs"
        out.append({"label": label, "fig": _fig_json(fig)})
    return out, max(0, len(videos) - max_videos)


def build_page(run: RunData, opts: ReportOptions | None = None) -> tuple[Page, dict[str, Any]]:
    """Assemble the page (sections + data blocks) for ``run``; also returns a few numbers
    about it (for logging and tests)."""
    opts = opts or ReportOptions()
    pairs = run.pairs
    colors = figures.backbone_colors(run.backbones)
    thresholds = backbone_thresholds(pairs, run.backbones)
    stats = {b: metrics.score_stats(pairs, b) for b in run.backbones}
    curves: dict[str, metrics.PRCurve] = {}
    if run.has_ground_truth:
        n_pos, _ = _n_positives(run)
        curves = {b: metrics.pr_curve(pairs, b, n_pos) for b in run.backbones}

    sections: list[Section] = []
    sections.append(Section(
        "backbones", "Backbones", "One row per backbone. <b>images/s</b> is embedding throughput on this machine; "
        "<b>median margin</b> is how far each example's best frame stands out from its runner-up (bigger = more "
        "decisive); <b>top-1 vs rest AUC</b> is the chance that a best score beats a lower-ranked one "
        "(0.5 = no separation, 1 = perfect); <b>threshold</b> and <b>η</b> are explained in the next section."
        + (" <b>µAP</b> is micro-average precision against the ground truth (defined in the precision–recall "
           "section)." if curves else ""),
        _backbone_table(run, colors, thresholds, stats, curves)))

    figs: dict[str, Any] = {"template": _template_json()}
    if pairs.empty:
        score_body = '<div class="empty">No pairs in this run (no frame scored above the minimum).</div>'
    else:
        figs["scores"] = _fig_json(figures.score_distribution_figure(
            pairs, run.backbones, colors, thresholds, auc={b: stats[b]["auc"] for b in run.backbones}))
        score_body = f'<p class="method">{esc(METHOD)}</p><div class="chart" id="fig-scores"></div>'
    sections.append(Section(
        "scores", "Score distributions and thresholds",
        "Per backbone, <b>coloured bars</b> are each example's best (top-1) score and <b>grey bars</b> the scores "
        "of ranks 2…K. A backbone separates well when the coloured bars sit far right of the grey ones; the "
        "<b>dashed line</b> is the score above which you would call a frame a match on this run.",
        score_body, nav="Scores & thresholds"))

    if len(run.backbones) >= 2 and not pairs.empty:
        jac, top1 = metrics.agreement_matrices(pairs, run.backbones)
        figs["agreement"] = _fig_json(figures.agreement_figure(jac, top1))
        agree_body = '<div class="chart" id="fig-agreement"></div>'
    else:
        agree_body = '<div class="empty">Only one backbone in this run: nothing to compare.</div>'
    sections.append(Section(
        "agreement", "Agreement between backbones",
        "Each cell compares two backbones over all examples: <b>left</b>, how often they pick the very same best "
        "frame; <b>right</b>, how much their top-K frame sets overlap (1 = identical sets). Low agreement means "
        "the choice of backbone matters on this data — look at the examples where they disagree.",
        agree_body, nav="Agreement"))

    timelines, videos_left_out = _timelines(run, colors, thresholds, opts.timeline_ranks, opts.timeline_videos)
    if timelines:
        tl_body = ('<div class="controls"><label>video <select id="tl-select"></select></label></div>'
                   '<div class="chart" id="fig-timeline"></div>')
        if videos_left_out:
            tl_body += (f'<p class="howto">{videos_left_out:,} more videos with fewer matches are not listed; '
                        "their pairs are in <code>pairs.csv</code>.</p>")
    else:
        tl_body = '<div class="empty">No matches to place on a timeline.</div>'
    deep = int(pairs["rank"].max()) > opts.timeline_ranks if not pairs.empty else False
    sections.append(Section(
        "timeline", "Where the examples matched, per video",
        "Pick a video: each dot is a frame some example matched"
        + (f" (ranks 1–{opts.timeline_ranks})" if deep else "")
        + ", placed at its <b>time in the video</b> and its <b>score</b>, in the backbone's colour. <b>Big dots</b> "
        "are top-1 matches, small rings lower ranks; dashed lines are the thresholds. Hover a dot for the "
        "example's name. Videos are listed by number of top-1 matches.", tl_body, nav="Timelines"))

    if curves:
        figs["pr"] = _fig_json(figures.pr_figure(curves, colors, thresholds))
        n_pos, stated = _n_positives(run)
        sections.append(Section(
            "pr", "Precision and recall against the ground truth",
            "Each curve lowers the score threshold from the top through all pairs of all examples (one list, "
            "as in the DISC21 copy-detection challenge): further <b>up and right</b> is better; AP (micro-average "
            "precision, µAP) sums it up. An example counts once, at its first correct frame (later correct frames "
            "of the same example are left out); every wrong pair, distractors' included, lowers precision. The "
            "<b>diamond</b> marks where the derived threshold lands, the <b>star</b> the threshold with the best "
            f"F1, the <b>triangle</b> the highest recall at 90 % precision. Recall counts the {n_pos:,} examples"
            + (" with a known source." if stated
               else " with a correct frame found by any backbone (pooled), so it compares backbones but is not "
               "absolute recall."),
            '<div class="chart" id="fig-pr"></div>', nav="Precision–recall"))

    evaluation = run.info.get("evaluation")
    if isinstance(evaluation, dict) and evaluation.get("table"):
        section, fig = evaluation_section(evaluation, run.backbones, colors)
        sections.insert(1, section)  # right after the backbone table: it is what an evaluation run is for
        if fig is not None:
            figs["edits"] = _fig_json(fig)

    payload, thumb_keys = _examples_payload(run, colors, thresholds, opts)
    longest = int(pairs.groupby(["backbone", "example"]).size().max()) if not pairs.empty else 0
    if longest <= payload["thumbs"]:
        thumbs_note = "Every rank gets a thumbnail."
    else:
        thumbs_note = (f"Only the top {payload['thumbs']} ranks get thumbnails"
                       + (" (fewer than asked, to keep this big report small)"
                          if payload["thumbs"] < opts.thumbs_per_backbone else "")
                       + "; lower ranks are listed as text.")
    frame_items = {k: run.frame_files[k] for k in thumb_keys if k in run.frame_files}
    thumbs = {"f" + k: v for k, v in build_thumbnails(frame_items, opts.frame_thumb, opts.workers).items()}
    ex_items = {str(i): (run.example_path(ex), None, None) for i, ex in enumerate(payload_names(payload))}
    thumbs.update({"e" + k: v for k, v in build_thumbnails(ex_items, opts.example_thumb, opts.workers).items()})
    keys_html = (
        '<div class="keys">'
        + "".join(f'<span class="chip"><span class="sw" style="background:{colors[b]}"></span>{esc(b)}</span>'
                  for b in run.backbones)
        + "<span><b>#n</b> rank</span><span>dots = the backbones that found that same frame</span>"
        "<span>faded = below the backbone's threshold</span>"
        + ("<span>✓ / ✗ = correct / wrong per ground truth</span>" if curves else "") + "</div>")
    controls = (
        '<div class="controls"><input type="search" id="ex-q" placeholder="filter by example or video name"'
        ' aria-label="filter examples">'
        '<label>sort <select id="ex-sort"><option value="run">run order</option><option value="name">name</option>'
        '<option value="best">best score first</option><option value="worst">weakest best score first</option>'
        '<option value="disagree">backbones disagree first</option></select></label>'
        + ('<label><input type="checkbox" id="ex-dis"> only where backbones disagree on top-1</label>'
           if len(run.backbones) > 1 else "")
        + f'<label>per page <select id="ex-ps">{_page_size_options(opts.page_size)}</select></label>'
        '<div class="pager"><button class="prev" type="button">◀ prev</button><span class="info"></span>'
        '<button class="next" type="button">next ▶</button></div></div>')
    bottom_pager = ('<div class="pager bottom"><button class="prev" type="button">◀ prev</button>'
                    '<span class="info"></span><button class="next" type="button">next ▶</button></div>')
    sections.append(Section(
        "examples", "Examples and the frames each backbone found",
        "For each example image, the backbones side by side with their best frames (rank, score, time "
        "<b>hh:mm:ss.mmm</b>, video). A dark outline and coloured dots mark a frame that several backbones found "
        "for the same example. " + thumbs_note + " All pairs are in <code>pairs.csv</code>.",
        keys_html + controls + '<div id="ex-list"></div>' + bottom_pager, nav="Examples"))

    if run.failed_examples:
        items = "".join(f"<li><code>{esc(f['example'])}</code> — {esc(f['reason'])}</li>" for f in run.failed_examples)
        sections.append(Section("failed", f"Examples that could not be used ({len(run.failed_examples)})",
                                "These files were skipped by the match run.", f'<ul class="failed">{items}</ul>',
                                nav="Skipped examples"))

    data_blocks = {
        "fs-data": script_json(payload),
        "fs-thumbs": script_json(thumbs),
        "fs-figures": safe_script_text(json.dumps(figs, separators=(",", ":"), allow_nan=False)),
        "fs-timelines": safe_script_text(json.dumps(timelines, separators=(",", ":"), allow_nan=False)),
    }
    now = _dt.datetime.now().replace(microsecond=0).isoformat(sep=" ")
    footer = (f"Generated by framesim on {esc(now)} from <code>{esc(run.run_dir)}</code>. "
              "Thumbnails are downscaled JPEGs; higher scores are more alike (what a score is: run.json postprocess).")
    title = f"framesim · {run.info.get('run') or run.run_dir.name}"
    page = Page(title=title, hero=_hero(run, colors, thresholds), sections=sections, data_blocks=data_blocks,
                notes=run.notes, footer=footer)
    facts = {"thresholds": thresholds, "n_thumbnails": len(thumbs), "n_frame_thumbs_wanted": len(thumb_keys),
             "thumb_bytes": sum(len(v) for v in thumbs.values())}
    return page, facts


def _n_positives(run: RunData) -> tuple[int, bool]:
    """The recall denominator and whether the run states it: ``ground_truth.n_positives`` (set by
    ``framesim evaluate``), else ``n_examples_with_source`` (set by ``match --ground-truth``), else the
    examples any backbone found a correct frame for."""
    gt = run.info.get("ground_truth")
    if isinstance(gt, dict):
        for key in ("n_positives", "n_examples_with_source"):
            if isinstance(gt.get(key), int) and not isinstance(gt.get(key), bool) and gt[key] > 0:
                return int(gt[key]), True
    return metrics.positives_pool(run.pairs), False


def payload_names(payload: Mapping[str, Any]) -> list[str]:
    return [x["n"] for x in payload["examples"]]


def _page_size_options(default: int) -> str:
    sizes = sorted({10, 20, 50, 100, default})
    return "".join(f'<option value="{s}"{" selected" if s == default else ""}>{s}</option>' for s in sizes)
