"""The look of the duplicates page: stylesheet, script, the document shell and the markup pieces that
hold no logic (summary header, paired timeline, side labels), on top of the match report's base
stylesheet and error hook. Every text from the data goes through ``esc``.

The page's HTML is built and escaped in Python; the script only fills thumbnails in from one JSON
block (a frame shown on several cards is embedded once) and reorders the segment cards. It reads
no text into ``innerHTML``.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from framesim.report._assets import CSS, ERROR_HOOK_JS
from framesim.report.html import esc, script_json
from framesim.timecode import format_duration, format_timestamp

#: side A and side B of a segment, everywhere on the page
COLOR_A, COLOR_B = "#3867d6", "#e07b24"

DUPLICATES_CSS = r"""
.sortbar{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin:0 0 14px;font-size:13px;color:var(--muted)}
.sortbar button{font:inherit;border:1px solid #cfd6e0;background:#fff;border-radius:999px;padding:4px 14px;
cursor:pointer;color:var(--ink)}
.sortbar button[aria-pressed=true]{background:var(--accent);border-color:var(--accent);color:#fff;font-weight:600}
.sortbar .arrow{display:inline-block;width:1em;text-align:center}
.capnote{font-size:13px;color:#6b5312;background:#fff8e6;border:1px solid #f3dfa6;border-radius:8px;padding:6px 12px;
margin:0 0 12px}
article.seg{border:1px solid var(--line);border-radius:12px;padding:12px 16px 14px;margin:0 0 14px;background:#fff;
display:grid;grid-template-columns:minmax(0,1fr) auto;gap:10px 24px}
.seg-head{grid-column:1/-1;display:flex;gap:6px 10px;align-items:center;flex-wrap:wrap}
.seg-head .num{font-weight:700;color:var(--muted);font-variant-numeric:tabular-nums;margin-right:2px}
.seg-head .score{font-size:16px}
.badge.same{background:#f3e8fc;color:#6b2fa0}
.pair{min-width:0;display:flex;flex-direction:column;gap:4px}
.side{display:grid;grid-template-columns:22px minmax(0,1fr);gap:0 8px;align-items:baseline}
.side .ab{font-weight:800;color:#fff;background:var(--c);border-radius:5px;text-align:center;font-size:12px;
line-height:20px}
.side .vname{font-weight:650;overflow-wrap:anywhere}
.side .span{grid-column:2;color:var(--muted);font-size:12.5px;font-variant-numeric:tabular-nums}
.tl{display:block;width:100%;height:86px;margin:2px 0}
.tl .bar{fill:#e6eaf0}
.tl .hl-a{fill:#3867d6}.tl .hl-b{fill:#e07b24}
.tl .band{fill:rgba(56,103,214,.16)}
.tl .link{stroke:rgba(28,36,48,.35);stroke-width:1;vector-effect:non-scaling-stroke}
.tl .mark{stroke:#1c2430;stroke-width:2;vector-effect:non-scaling-stroke}
.axis{display:flex;justify-content:space-between;font-size:11.5px;color:var(--muted);font-variant-numeric:tabular-nums}
.offset{font-size:12.5px;color:var(--muted)}
.offset b{color:var(--ink);font-variant-numeric:tabular-nums}
.strip{display:grid;grid-template-columns:22px repeat(3,150px);gap:6px 8px;align-items:center;align-self:start}
.strip .colh{font-size:11px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);text-align:center}
.strip .ab{font-weight:800;color:#fff;background:var(--c);border-radius:5px;text-align:center;font-size:12px;
line-height:20px}
.shot{margin:0;min-width:0}
.shot .im{aspect-ratio:4/3;background:var(--thumb-bg);border-radius:6px;overflow:hidden;display:flex;
align-items:center;justify-content:center;box-shadow:inset 0 -3px 0 var(--c)}
.shot img{width:100%;height:100%;object-fit:contain;display:block}
.shot figcaption{font-size:11.5px;color:var(--muted);text-align:center;font-variant-numeric:tabular-nums}
.groups{display:flex;flex-direction:column;gap:12px}
article.grp{border:1px solid var(--line);border-radius:12px;padding:12px 16px;background:#fff}
.grp-head{display:flex;gap:6px 10px;align-items:center;flex-wrap:wrap;margin:0 0 8px}
.grp-head h3{margin:0;font-size:14.5px}
.members{display:grid;gap:10px 8px;grid-template-columns:repeat(auto-fill,minmax(132px,1fr))}
.member{font-size:12px;line-height:1.35;min-width:0}
.member .im{position:relative;aspect-ratio:4/3;background:var(--thumb-bg);border-radius:6px;overflow:hidden;
display:flex;align-items:center;justify-content:center}
.member .im img{width:100%;height:100%;object-fit:contain;display:block}
.member.rep .im{box-shadow:0 0 0 3px var(--good)}
.member .kept{position:absolute;top:4px;left:4px;background:var(--good);color:#fff;border-radius:4px;padding:0 6px;
font-size:11px;font-weight:700}
.member .vid{display:block}
.morelist{margin-top:8px;font-size:12px}
.morelist summary{cursor:pointer;color:var(--accent)}
.morelist td{padding:1px 10px 1px 0;color:var(--muted);white-space:nowrap}
@media (max-width:1100px){article.seg{grid-template-columns:1fr}
.strip{grid-template-columns:22px repeat(3,minmax(0,1fr))}}
"""

DUPLICATES_JS = r"""(function(){'use strict';
var tb=document.getElementById('dup-thumbs');var TH=tb?JSON.parse(tb.textContent):{};
[].forEach.call(document.querySelectorAll('img[data-k]'),function(i){var b=TH[i.getAttribute('data-k')];
if(b)i.src='data:image/jpeg;base64,'+b;});
var list=document.getElementById('seg-list');
var buttons=[].slice.call(document.querySelectorAll('.sortbar button[data-key]'));
if(list&&buttons.length){var cards=[].slice.call(list.querySelectorAll('article.seg'));
function num(c,k){var v=parseFloat(c.getAttribute('data-'+k));return isFinite(v)?v:-Infinity;}
function apply(key,dir){cards.sort(function(a,b){return dir*(num(a,key)-num(b,key))||num(a,'order')-num(b,'order');});
var frag=document.createDocumentFragment();cards.forEach(function(c){frag.appendChild(c);});list.appendChild(frag);
buttons.forEach(function(b){var on=b.getAttribute('data-key')===key;b.setAttribute('aria-pressed',on?'true':'false');
if(on)b.setAttribute('data-dir',dir>0?'asc':'desc');
b.querySelector('.arrow').textContent=on?(dir>0?'\u2191':'\u2193'):'';});
list.setAttribute('data-sort',key+'-'+(dir>0?'asc':'desc'));}
buttons.forEach(function(b){b.addEventListener('click',function(){var key=b.getAttribute('data-key');
var active=b.getAttribute('aria-pressed')==='true';
var dir=active?(b.getAttribute('data-dir')==='desc'?1:-1):-1;apply(key,dir);});});
apply('score',-1);}
document.body.setAttribute('data-ready','1');})();"""


def _sha256_source(code: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(code.encode("utf-8")).digest()).decode("ascii") + "'"


def document(title: str, hero: str, notes: list[str], sections: list[tuple[str, str, str, str]],
             thumbs: dict[str, str], footer: str) -> str:
    """The whole page. ``hero``, section bodies and howtos (``(id, title, howto, body)``) and ``footer``
    are trusted HTML already escaped with ``esc``; ``title`` and ``notes`` are plain text."""
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src "
           f"{_sha256_source(ERROR_HOOK_JS)} {_sha256_source(DUPLICATES_JS)}; base-uri 'none'; form-action 'none'")
    nav = "".join(f'<a href="#{sid}">{esc(t)}</a>' for sid, t, _, _ in sections)
    note_html = ('<div class="notes">' + "".join(f"<p>{esc(n)}</p>" for n in notes) + "</div>") if notes else ""
    body = "\n".join(f'<section id="{sid}"><h2>{esc(t)}</h2><p class="howto">{howto}</p>{inner}</section>'
                     for sid, t, howto, inner in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<meta name="generator" content="framesim">\n<title>{esc(title)}</title>\n'
            f"<style>{CSS}{DUPLICATES_CSS}</style>\n<script>{ERROR_HOOK_JS}</script>\n</head>\n<body>\n"
            '<div id="fs-errors" class="errors" hidden></div>\n'
            '<noscript><div class="errors">This report needs JavaScript for its thumbnails and sorting.</div>'
            "</noscript>\n"
            f'<header class="hero"><div class="hero-in">{hero}{note_html}</div></header>\n'
            f'<nav class="toc"><div class="in">{nav}</div></nav>\n<main>\n{body}\n</main>\n<footer>{footer}</footer>\n'
            f'<script type="application/json" id="dup-thumbs">{script_json(thumbs)}</script>\n'
            f"<script>{DUPLICATES_JS}</script>\n</body>\n</html>\n")


def timeline_svg(row: Any, dur_a: float, dur_b: float, links: list[tuple[float, float]]) -> str:
    """Two bars (each a whole video, ``dur_*`` seconds) with the segment's span on each, a band joining the
    spans and a line per matched frame pair (time a, time b); ``row`` has start_a, end_a, start_b, end_b."""

    def x(t: float, dur: float) -> float:
        return round(1000.0 * min(max(t / dur, 0.0), 1.0), 1)

    xa0, xa1, xb0, xb1 = x(row.start_a, dur_a), x(row.end_a, dur_a), x(row.start_b, dur_b), x(row.end_b, dur_b)
    lines = "".join(f'<line class="link" x1="{x(a, dur_a)}" y1="24" x2="{x(b, dur_b)}" y2="62"/>' for a, b in links)
    return ('<svg class="tl" viewBox="0 0 1000 86" preserveAspectRatio="none" role="img" '
            f'aria-label="segment spans on both timelines">'
            f'<polygon class="band" points="{xa0},24 {xa1},24 {xb1},62 {xb0},62"/>{lines}'
            '<rect class="bar" x="0" y="8" width="1000" height="16" rx="3"/>'
            '<rect class="bar" x="0" y="62" width="1000" height="16" rx="3"/>'
            f'<rect class="hl-a" x="{xa0}" y="8" width="{max(xa1 - xa0, 3)}" height="16" rx="2"/>'
            f'<rect class="hl-b" x="{xb0}" y="62" width="{max(xb1 - xb0, 3)}" height="16" rx="2"/></svg>')


def side_label(letter: str, color: str, video: str, start: float, end: float, dur: float) -> str:
    """The A/B badge, the video's name (escaped) and the span on its clock."""
    return (f'<div class="side"><span class="ab" style="--c:{color}">{letter}</span>'
            f'<span class="vname">{esc(video)}</span><span class="span">{esc(format_timestamp(start))} – '
            f'{esc(format_timestamp(end))} of {esc(format_timestamp(dur))}</span></div>')


def hero(info: dict[str, Any], out_dir: Path) -> str:
    """The summary header from duplicates.json (``counts``, ``seconds`` and ``params`` are dicts)."""
    counts, secs = info["counts"], info["seconds"]
    total = secs.get("total")
    if not isinstance(total, int | float):
        total = sum(v for v in secs.values() if isinstance(v, int | float) and not isinstance(v, bool)) or None

    def count(key: str) -> str:
        v = counts.get(key)
        return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else "—"

    min_score = info.get("min_score")
    stats = [("frames", count("frames")), ("videos", count("videos")), ("frame pairs", count("frame_pairs")),
             ("groups", count("groups")), ("segments", count("segments")),
             ("threshold", f"{min_score:.3f}" if isinstance(min_score, int | float) else "—"),
             ("time taken", format_duration(total))]
    cards = "".join(f'<div class="stat"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div></div>'
                    for k, v in stats)
    sub = [f"<span>dataset <code>{esc(info.get('dataset', '—'))}</code></span>",
           f"<span>backbone <code>{esc(info.get('backbone', '—'))}</code></span>"]
    if info.get("created"):
        sub.append(f"<span>created {esc(str(info['created']).replace('T', ' '))}</span>")
    sub.append(f"<span>folder <code>{esc(out_dir)}</code></span>")
    params = " · ".join(f"{k} = {v}" for k, v in list(info["params"].items())[:24])
    name = Path(str(info.get("dataset") or out_dir)).name or str(out_dir)
    return (f'<div class="brand">framesim · duplicates report</div><h1>Duplicates in {esc(name)}</h1>'
            f'<p class="sub">{"".join(sub)}</p><div class="stats">{cards}</div>'
            + (f'<p class="sub" style="margin:12px 0 0;font-size:12.5px">{esc(params)}</p>' if params else ""))
