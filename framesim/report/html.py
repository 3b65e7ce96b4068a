"""Page assembly and escaping.

Three escaping rules, one per context:
- HTML text and attributes written here: ``esc`` (``html.escape`` with quotes).
- JSON embedded in ``<script type="application/json">``: ``script_json`` / ``safe_script_text``
  replace ``<``, ``>`` and ``&`` by ``\\u003c``, ``\\u003e``, ``\\u0026`` (so ``</script>`` and
  ``<!--`` can never appear), plus U+2028/U+2029. The browser's JSON.parse gives back the
  original strings, which the page's script puts into the DOM only as text.
- Plotly labels: see ``figures.plot_text``.

A Content-Security-Policy allows only the page's own inline scripts (by hash), so even a missed
escape could not run an injected ``onerror=`` handler or ``<script>``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from framesim.report._assets import APP_JS, CSS, ERROR_HOOK_JS

_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_SCRIPT_TABLE = str.maketrans(_SCRIPT_ESCAPES)


def esc(value: object) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def safe_script_text(json_text: str) -> str:
    """Make JSON text safe inside a <script> element (valid JSON in, equivalent JSON out)."""
    return json_text.translate(_SCRIPT_TABLE)


def script_json(obj: Any) -> str:
    """Serialise ``obj`` as compact JSON that is safe inside a <script> element."""
    return safe_script_text(json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False))


def _sha256_source(code: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(code.encode("utf-8")).digest()).decode("ascii") + "'"


@dataclass
class Section:
    """One titled block of the page; ``body`` is trusted HTML built with ``esc``."""

    id: str
    title: str
    howto: str
    body: str
    nav: str = ""


@dataclass
class Page:
    title: str
    hero: str
    sections: list[Section]
    #: id -> JSON text already made script-safe (``script_json`` / ``safe_script_text``)
    data_blocks: dict[str, str]
    notes: Sequence[str] = field(default_factory=list)
    footer: str = ""


def render_page(page: Page, plotly_js: str | None, plotly_src: str | None = None) -> str:
    """The complete HTML document. Either ``plotly_js`` (inlined) or ``plotly_src`` (a relative
    URL of a sidecar file) provides Plotly."""
    scripts_inline = [ERROR_HOOK_JS, APP_JS] + ([plotly_js] if plotly_js is not None else [])
    script_src = " ".join(_sha256_source(s) for s in scripts_inline)
    if plotly_src is not None:  # the sidecar plotly.min.js: same origin over http, a local file offline
        script_src += " 'self' file:"
    csp = (f"default-src 'none'; img-src data: blob:; style-src 'unsafe-inline'; script-src {script_src}; "
           "base-uri 'none'; form-action 'none'")
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.nav or s.title)}</a>' for s in page.sections)
    notes = ""
    if page.notes:
        notes = '<div class="notes">' + "".join(f"<p>{esc(n)}</p>" for n in page.notes) + "</div>"
    sections = "\n".join(
        f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>'
        + (f'<p class="howto">{s.howto}</p>' if s.howto else "") + s.body + "</section>"
        for s in page.sections)
    data = "\n".join(f'<script type="application/json" id="{esc(k)}">{v}</script>'
                     for k, v in page.data_blocks.items())
    if plotly_js is not None:
        plotly_tag = f"<script>{plotly_js}</script>"
    else:
        plotly_tag = f'<script src="{esc(plotly_src)}"></script>'
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="framesim">\n'
        f"<title>{esc(page.title)}</title>\n<style>{CSS}</style>\n<script>{ERROR_HOOK_JS}</script>\n</head>\n"
        '<body>\n<div id="fs-errors" class="errors" hidden></div>\n'
        '<noscript><div class="errors">This report needs JavaScript for its charts and thumbnails.</div></noscript>\n'
        f'<header class="hero"><div class="hero-in">{page.hero}{notes}</div></header>\n'
        f'<nav class="toc"><div class="in">{nav}</div></nav>\n<main>\n{sections}\n</main>\n'
        f"<footer>{page.footer}</footer>\n{data}\n{plotly_tag}\n<script>{APP_JS}</script>\n</body>\n</html>\n"
    )
