"""Plotly figure builders: pure functions of DataFrames and small result objects.

Every string that came from a file name (video, example, backbone) goes through ``plot_text``
before it reaches Plotly, because Plotly renders a subset of HTML in labels and hover text: the
escaped form is shown literally. Data that is only numbers stays numeric.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from framesim.report.data import format_timestamp
from framesim.report.metrics import PRCurve, operating_point
from framesim.report.threshold import Threshold

#: Tableau 10: distinct, colour-blind-tolerant, readable on white; backbone i gets colour i
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
           "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
REST_COLOR = "#9aa3ad"
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"


def plot_text(s: object) -> str:
    """Escape text for Plotly labels/hover (it interprets tags such as <b> and <img>)."""
    return html.escape(str(s), quote=False)


def backbone_colors(backbones: Sequence[str]) -> dict[str, str]:
    return {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(backbones)}


def _base_layout(fig: go.Figure, height: int, **kw: object) -> go.Figure:
    kw.setdefault("margin", {"l": 60, "r": 24, "t": 48, "b": 48})
    kw.setdefault("legend", {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0})
    fig.update_layout(template="plotly_white", height=height, font={"family": FONT, "size": 12},
                      hoverlabel={"font": {"family": FONT}}, **kw)
    return fig


def _bins(scores: np.ndarray, n: int = 40) -> np.ndarray:
    lo, hi = (float(scores.min()), float(scores.max())) if scores.size else (0.0, 1.0)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.01, hi + 0.01
    pad = (hi - lo) * 0.02
    return np.linspace(lo - pad, hi + pad, n + 1)


def score_distribution_figure(pairs: pd.DataFrame, backbones: Sequence[str], colors: Mapping[str, str],
                              thresholds: Mapping[str, Threshold],
                              auc: Mapping[str, float | None] | None = None) -> go.Figure:
    """One panel per backbone: histogram of rank-1 scores (backbone colour) over rank>=2 scores
    (grey), with the derived threshold as a dashed line. Shared score axis across panels.

    Counts are binned here (bars, not raw values), so the figure's size does not grow with the run.
    """
    n = max(1, len(backbones))
    titles = []
    for b in backbones:
        t = thresholds.get(b)
        if t is None or t.value is None:
            title = f"<b>{plot_text(b)}</b> · no threshold (too few distinct scores)"
        else:
            weak = " — weak split" if t.weak else ""
            title = f"<b>{plot_text(b)}</b> · threshold {t.value:.3f} · η {t.eta:.2f}{weak}"
        a = (auc or {}).get(b)
        titles.append(title + (f" · top-1 vs rest AUC {a:.2f}" if a is not None else ""))
    fig = make_subplots(rows=n, cols=1, shared_xaxes=True, vertical_spacing=min(0.12, 0.35 / n),
                        subplot_titles=titles or ["no pairs"])
    edges = _bins(pairs["score"].to_numpy(dtype=np.float64))
    centres = (edges[:-1] + edges[1:]) / 2
    width = float(edges[1] - edges[0])
    for i, b in enumerate(backbones, start=1):
        sub = pairs[pairs["backbone"] == b]
        top1 = sub.loc[sub["rank"] == 1, "score"].to_numpy(dtype=np.float64)
        rest = sub.loc[sub["rank"] >= 2, "score"].to_numpy(dtype=np.float64)
        for label, vals, color, opacity in (("rank ≥ 2", rest, REST_COLOR, 0.55), ("top-1", top1, colors[b], 0.8)):
            counts, _ = np.histogram(vals, bins=edges)
            fig.add_trace(go.Bar(
                x=centres, y=counts, width=width, name=label, marker={"color": color, "line": {"width": 0}},
                opacity=opacity, legendgroup=label, showlegend=(i == 1),
                customdata=np.stack([edges[:-1], edges[1:]], axis=1),
                hovertemplate=f"{plot_text(b)} · {label}<br>score %{{customdata[0]:.3f}}–%{{customdata[1]:.3f}}"
                              "<br>%{y} pairs<extra></extra>",
            ), row=i, col=1)
        t = thresholds.get(b)
        if t is not None and t.value is not None:
            fig.add_vline(x=t.value, line={"color": colors[b], "dash": "dash", "width": 2}, row=i, col=1,
                          annotation={"text": f"threshold {t.value:.3f}", "font": {"color": colors[b]},
                                      "bgcolor": "rgba(255,255,255,0.8)"},
                          annotation_position="top left")
        fig.update_yaxes(title_text="pairs", row=i, col=1)
    fig.update_xaxes(title_text="score (higher = more alike; its meaning: run.json postprocess)", row=n, col=1)
    fig.update_layout(barmode="overlay", bargap=0)
    for ann in fig.layout.annotations[: len(backbones)]:
        ann.update(x=0, xanchor="left", font={"size": 13})
    return _base_layout(fig, height=90 + 210 * n,
                        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1})


def _seconds_to_axis(ts: np.ndarray) -> list[str | None]:
    """Seconds -> 'YYYY-mm-dd HH:MM:SS.fff' on 1970-01-01 so Plotly's date axis shows clock time."""
    out: list[str | None] = []
    for t in ts:
        if not np.isfinite(t) or t < 0:
            out.append(None)
            continue
        ms = int(round(float(t) * 1000))
        days, rem = divmod(ms, 86_400_000)
        h, rem = divmod(rem, 3_600_000)
        m, rem = divmod(rem, 60_000)
        s, ms_ = divmod(rem, 1000)
        out.append(f"1970-01-{1 + days:02d} {h:02d}:{m:02d}:{s:02d}.{ms_:03d}")
    return out


def timeline_figure(pairs_video: pd.DataFrame, backbones: Sequence[str], colors: Mapping[str, str],
                    thresholds: Mapping[str, Threshold], title: str | None = None) -> go.Figure:
    """Where examples matched in one video: score against timestamp, one trace per backbone.

    Rank-1 matches are large filled dots, lower ranks small open circles; the dashed lines are the
    backbones' thresholds. Hover names the example, the rank, the time and the frame index.
    """
    fig = go.Figure()
    for b in backbones:
        sub = pairs_video[pairs_video["backbone"] == b].sort_values("timestamp_s", kind="stable")
        if sub.empty:
            continue
        ranks = sub["rank"].to_numpy()
        hover = [f"{plot_text(ex)}<br>rank {r} · score {s:.3f}<br>{format_timestamp(t)} · frame "
                 f"{'' if not np.isfinite(fi) else int(fi)}"
                 for ex, r, s, t, fi in zip(sub["example"], ranks, sub["score"], sub["timestamp_s"],
                                            sub["frame_index"], strict=True)]
        x = _seconds_to_axis(sub["timestamp_s"].to_numpy(dtype=np.float64))
        y = np.round(sub["score"].to_numpy(dtype=np.float64), 4)
        name = plot_text(b)
        for top in (False, True):  # lower ranks first, so top-1 dots are drawn on top
            sel = np.flatnonzero((ranks == 1) == top)
            if sel.size == 0:
                continue
            marker = ({"color": colors[b], "size": 11, "line": {"width": 1, "color": "white"}} if top else
                      {"color": colors[b], "size": 7, "symbol": "circle-open", "line": {"width": 1.5},
                       "opacity": 0.75})
            fig.add_trace(go.Scatter(
                x=[x[i] for i in sel], y=y[sel], mode="markers", marker=marker,
                name=name if top else f"{name} · rank ≥ 2", legendgroup=name, showlegend=top or not (ranks == 1).any(),
                text=[hover[i] for i in sel], hovertemplate="<b>" + name + "</b><br>%{text}<extra></extra>",
            ))
        t = thresholds.get(b)
        if t is not None and t.value is not None:
            fig.add_hline(y=t.value, line={"color": colors[b], "dash": "dash", "width": 1.5}, opacity=0.8)
    fig.update_xaxes(title_text="time in video (hh:mm:ss)", type="date", hoverformat="%H:%M:%S.%L",
                     tickformatstops=[{"dtickrange": [None, 1000], "value": "%H:%M:%S.%L"},
                                      {"dtickrange": [1000, None], "value": "%H:%M:%S"}])
    fig.update_yaxes(title_text="score")
    if title:
        fig.update_layout(title={"text": plot_text(title), "x": 0, "xanchor": "left", "font": {"size": 14}})
    return _base_layout(fig, height=440, margin={"l": 60, "r": 24, "t": 80, "b": 48})


def agreement_figure(jaccard: pd.DataFrame, top1: pd.DataFrame) -> go.Figure:
    """Two heatmaps over backbone pairs: share of examples with the same rank-1 frame, and mean
    Jaccard overlap of the top-K frame sets."""
    names = [plot_text(b) for b in jaccard.index]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.18,
                        subplot_titles=("same top-1 frame (share of examples)", "top-K overlap (mean Jaccard)"))
    for col, mat in ((1, top1), (2, jaccard)):
        z = mat.to_numpy(dtype=np.float64)
        text = [[("—" if not np.isfinite(v) else f"{v:.0%}" if col == 1 else f"{v:.2f}") for v in row] for row in z]
        fig.add_trace(go.Heatmap(
            z=np.where(np.isfinite(z), z, None).tolist(), x=names, y=names, zmin=0, zmax=1, text=text,
            texttemplate="%{text}", colorscale="Blues", showscale=(col == 2),
            colorbar={"title": {"text": "agreement"}, "len": 0.9},
            hovertemplate="%{y} vs %{x}: %{text}<extra></extra>",
        ), row=1, col=col)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    side = max(260, 70 * len(names) + 140)
    return _base_layout(fig, height=side)


def pr_figure(curves: Mapping[str, PRCurve], colors: Mapping[str, str],
              thresholds: Mapping[str, Threshold]) -> go.Figure:
    """Precision against recall per backbone (AP in the legend); a diamond marks where each
    backbone's derived threshold lands, a star its best-F1 point."""
    fig = go.Figure()
    for b, c in curves.items():
        if c.scores.size == 0:
            continue
        step = max(1, c.scores.size // 2000)  # at most ~2000 points per curve
        idx = np.unique(np.r_[np.arange(0, c.scores.size, step), c.scores.size - 1])
        fig.add_trace(go.Scatter(
            x=np.round(c.recall[idx], 4), y=np.round(c.precision[idx], 4), mode="lines",
            line={"color": colors[b], "width": 2.5, "shape": "hv"},
            name=f"{plot_text(b)} · AP {c.average_precision:.3f}", legendgroup=plot_text(b),
            customdata=np.round(c.scores[idx], 4),
            hovertemplate=f"{plot_text(b)}<br>score ≥ %{{customdata:.3f}}<br>recall %{{x:.3f}} · "
                          "precision %{y:.3f}<extra></extra>",
        ))
        t = thresholds.get(b)
        op = operating_point(c, t.value if t else None)
        if op is not None and t is not None and t.value is not None:
            fig.add_trace(go.Scatter(
                x=[op[0]], y=[op[1]], mode="markers", legendgroup=plot_text(b), showlegend=False,
                marker={"color": colors[b], "size": 13, "symbol": "diamond", "line": {"color": "white", "width": 1.5}},
                hovertemplate=f"{plot_text(b)} · derived threshold {t.value:.3f}<br>recall %{{x:.3f}} · "
                              "precision %{y:.3f}<extra></extra>",
            ))
        if c.best_f1_threshold is not None:
            k = int(np.sum(c.scores >= c.best_f1_threshold))
            fig.add_trace(go.Scatter(
                x=[float(c.recall[k - 1])], y=[float(c.precision[k - 1])], mode="markers",
                legendgroup=plot_text(b), showlegend=False,
                marker={"color": colors[b], "size": 14, "symbol": "star", "line": {"color": "white", "width": 1}},
                hovertemplate=f"{plot_text(b)} · best F1 {c.best_f1:.3f} at score {c.best_f1_threshold:.3f}"
                              "<extra></extra>",
            ))
        if c.threshold_at_p90 is not None:
            k = int(np.sum(c.scores >= c.threshold_at_p90))
            fig.add_trace(go.Scatter(
                x=[c.recall_at_p90], y=[float(c.precision[k - 1])], mode="markers", legendgroup=plot_text(b),
                showlegend=False,
                marker={"color": colors[b], "size": 12, "symbol": "triangle-up",
                        "line": {"color": "white", "width": 1}},
                hovertemplate=f"{plot_text(b)} · recall {c.recall_at_p90:.3f} at precision ≥ 0.9 "
                              f"(score ≥ {c.threshold_at_p90:.3f})<extra></extra>",
            ))
    fig.add_hline(y=0.9, line={"color": REST_COLOR, "dash": "dot", "width": 1})
    fig.update_xaxes(title_text="recall", range=[0, 1.02])
    fig.update_yaxes(title_text="precision", range=[0, 1.05])
    return _base_layout(fig, height=440)


def edit_bars_figure(table: pd.DataFrame, backbones: Sequence[str], colors: Mapping[str, str],
                     edits: Sequence[str]) -> go.Figure:
    """Per edit, grouped bars per backbone: µAP (top panel) and top-1 within 1 s (bottom panel),
    from an evaluation table (``framesim.evaluation.metrics.TABLE_COLUMNS``)."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("µAP (the edit's examples + all distractors)",
                                        "top-1 within 1 s (share of the edit's examples)"))
    labels = [plot_text(e) for e in edits]
    for b in backbones:
        sub = table[table["backbone"] == b].set_index("edit")
        n = [int(sub.at[e, "n_examples"]) if e in sub.index else 0 for e in edits]
        for row, col in ((1, "micro_ap"), (2, "top1_within_1s")):
            vals = [float(sub.at[e, col]) if e in sub.index and pd.notna(sub.at[e, col]) else None for e in edits]
            fig.add_trace(go.Bar(
                x=labels, y=[None if v is None else round(v, 4) for v in vals], name=plot_text(b),
                marker={"color": colors[b]}, legendgroup=plot_text(b), showlegend=(row == 1), customdata=n,
                hovertemplate=f"{plot_text(b)} · %{{x}}<br>{'µAP' if row == 1 else 'top-1 within 1 s'} "
                              "%{y:.3f}<br>%{customdata} examples<extra></extra>",
            ), row=row, col=1)
        fig.update_yaxes(range=[0, 1.02])
    fig.update_layout(barmode="group", bargap=0.25, bargroupgap=0.05)
    return _base_layout(fig, height=620, margin={"l": 60, "r": 24, "t": 64, "b": 110})
