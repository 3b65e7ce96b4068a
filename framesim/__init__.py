"""framesim: find duplicate and near-duplicate video frames.

The public API (the ``framesim`` command is a thin layer over it)::

    from framesim import extract, match, write_report
    extract(["videos/"], "dataset", fps=1)
    result = match("examples/", "dataset", ["efficientnet-lite0", "resnet50"], out_dir="reports/run1")
    write_report(result.out_dir)

Heavy modules (TensorFlow, FAISS, Plotly) load only when first used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "extract": "framesim.dataset",
    "FrameDataset": "framesim.dataset",
    "ExtractSummary": "framesim.dataset",
    "MANIFEST_COLUMNS": "framesim.dataset",
    "match": "framesim.matching",
    "MatchResult": "framesim.matching",
    "PAIRS_COLUMNS": "framesim.matching",
    "read_pairs": "framesim.matching",
    "write_report": "framesim.report",
    "Backbone": "framesim.backbones",
    "get_backbone": "framesim.backbones",
    "list_backbones": "framesim.backbones",
    "register_backbone": "framesim.backbones",
    "Index": "framesim.index",
    "FaissIndex": "framesim.index",
    "make_index": "framesim.index",
    "load_image": "framesim.images",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'framesim' has no attribute {name!r}")
