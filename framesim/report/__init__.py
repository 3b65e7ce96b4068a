"""The HTML comparison report of a ``framesim match`` run.

``write_report(run_dir)`` reads ``run.json`` and ``pairs.parquet`` (or ``pairs.csv``) from a run
directory, plus frame and example images, and writes one self-contained ``report.html`` that opens
offline: Plotly charts (plotly.js inlined), downscaled JPEG thumbnails as data URIs, a header with
the run, per-example side-by-side results per backbone, and a derived score threshold per backbone.

Modules: ``data`` (reading the run), ``threshold`` (Otsu split of scores), ``metrics`` (agreement,
precision-recall), ``thumbnails``, ``figures`` (Plotly builders), ``html`` (escaping, page), ``build``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from framesim._io import write_bytes
from framesim.report.build import ReportOptions, build_page
from framesim.report.data import RunData, RunError, format_timestamp, load_run
from framesim.report.duplicates import write_duplicates_report as write_duplicates_report
from framesim.report.html import render_page
from framesim.report.threshold import Threshold, otsu_threshold

__all__ = [
    "PLOTLY_SIDECAR",
    "ReportOptions",
    "RunData",
    "RunError",
    "Threshold",
    "format_timestamp",
    "load_run",
    "otsu_threshold",
    "render_report",
    "write_report",
]

#: file name of plotly.js when it is written next to the report instead of inline
PLOTLY_SIDECAR = "plotly.min.js"


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def render_report(run_dir: str | os.PathLike[str], options: ReportOptions | None = None,
                  plotlyjs: Literal["inline", "sidecar"] = "inline") -> str:
    """The report's HTML for ``run_dir`` as a string (nothing written)."""
    run = load_run(run_dir)
    page, _ = build_page(run, options)
    if plotlyjs == "sidecar":
        return render_page(page, None, plotly_src=PLOTLY_SIDECAR)
    return render_page(page, _plotly_js())


def write_report(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
                 options: ReportOptions | None = None,
                 plotlyjs: Literal["inline", "sidecar"] = "inline") -> Path:
    """Write the HTML report of the run in ``run_dir``; returns the path written.

    ``out`` defaults to ``run_dir / "report.html"``. The file is written atomically. With
    ``plotlyjs="inline"`` (default) it is fully self-contained; with ``"sidecar"`` plotly.js is
    written once as ``plotly.min.js`` next to it (saves ~4.6 MB per report when many share a folder).
    Raises ``RunError`` if the run has no usable pairs table; missing images only give placeholders.
    """
    if plotlyjs not in ("inline", "sidecar"):
        raise ValueError(f"plotlyjs must be 'inline' or 'sidecar', not {plotlyjs!r}")
    run_dir = Path(run_dir)
    out_path = Path(out) if out is not None else run_dir / "report.html"
    html_text = render_report(run_dir, options, plotlyjs)
    if plotlyjs == "sidecar":
        sidecar = out_path.parent / PLOTLY_SIDECAR
        js = _plotly_js().encode("utf-8")
        if not sidecar.is_file() or sidecar.read_bytes() != js:
            write_bytes(sidecar, js)
    write_bytes(out_path, html_text.encode("utf-8"))
    return out_path
