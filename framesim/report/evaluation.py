"""The report section of a ``framesim evaluate`` run: its table and per-edit bars, read from the
``evaluation`` block that ``framesim.evaluation.evaluate`` adds to run.json."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from framesim.report import figures
from framesim.report.html import Section, esc

_COLUMNS = [("n_examples", "examples", "int"), ("n_distractors", "distractors", "int"),
            ("top1_video", "top-1 video", "f"), ("top1_within_1s", "top-1 within 1 s", "f"),
            ("micro_ap", "µAP", "f"), ("recall_at_p90", "recall at 90 % precision", "f"),
            ("threshold_at_p90", "threshold", "f"), ("distractor_false_matches", "false matches on distractors", "int"),
            ("micro_ap_video", "µAP, video only", "f")]


def _cell(v: Any, kind: str) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(x):
        return "—"
    return f"{int(x):,}" if kind == "int" else f"{x:.3f}"


def evaluation_section(evaluation: Mapping[str, Any], backbones: Sequence[str],
                       colors: Mapping[str, str]) -> tuple[Section, go.Figure | None]:
    """The section (summary table + per-edit chart placeholder) and the per-edit figure."""
    table = pd.DataFrame(list(evaluation.get("table") or []))
    bench = evaluation.get("benchmark") if isinstance(evaluation.get("benchmark"), dict) else {}
    names = [b for b in backbones if b in set(table.get("backbone", []))] or list(
        dict.fromkeys(table.get("backbone", [])))
    summary = table[table["edit"] == "all"] if "edit" in table else table.iloc[0:0]
    rows = []
    for b in names:
        r = summary[summary["backbone"] == b]
        if r.empty:
            continue
        r0 = r.iloc[0]
        cells = [f'<span class="sw" style="background:{colors.get(b, "#999")}"></span>{esc(b)}'] + [
            esc(_cell(r0.get(c), k)) for c, _, k in _COLUMNS]
        rows.append("<tr>" + "".join(f'<td class="name">{v}</td>' if i == 0 else f"<td>{v}</td>"
                                     for i, v in enumerate(cells)) + "</tr>")
    head = "".join(f"<th>{esc(h)}</th>" for h in ["backbone"] + [h for _, h, _ in _COLUMNS])
    body = ('<div class="table-wrap"><table class="bb"><thead><tr>' + head + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></div>")
    edits = [e for e in (evaluation.get("edit_order") or []) if e != "all"] or [
        e for e in dict.fromkeys(table.get("edit", [])) if e != "all"]
    fig = None
    if edits and names:
        fig = figures.edit_bars_figure(table, names, colors, edits)
        body += '<div class="chart" id="fig-edits"></div>'
    held = bench.get("held_out_videos") or []
    dups = bench.get("duplicate_videos") or {}
    facts = [f"{_cell(bench.get('n_with_source'), 'int')} examples with a source and "
             f"{_cell(bench.get('n_distractors'), 'int')} distractors "
             f"({esc(bench.get('distractor_source', '—'))}), seed {esc(bench.get('seed', '—'))}"]
    if held:
        facts.append("held out of the index for distractors: " + ", ".join(f"<code>{esc(v)}</code>" for v in held))
    if dups:
        facts.append("left out as near-duplicates: " + ", ".join(
            f"<code>{esc(a)}</code> (of <code>{esc(b)}</code>)" for a, b in dups.items()))
    edit_desc = bench.get("edits") or {}
    if edit_desc:
        ordered = [e for e in edits if e in edit_desc] + [e for e in edit_desc if e not in edits]
        facts.append("edits: " + "; ".join(f"<b>{esc(k)}</b> {esc(edit_desc[k])}" for k in ordered))
    body += '<ul class="failed">' + "".join(f"<li>{f}</li>" for f in facts) + "</ul>"
    howto = ("A copy-detection benchmark built from this dataset: frames cut from the videos and edited the way "
             "re-uploads are, plus distractors from no indexed video, with known answers. "
             + esc(str(evaluation.get("definitions", ""))) + " The bars break µAP and top-1 down by edit.")
    return Section("evaluation", "Copy-detection benchmark", howto, body, nav="Benchmark"), fig
