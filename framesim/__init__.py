"""framesim: find duplicate and near-duplicate video frames.

The public API (the ``framesim`` command is a thin layer over it)::

    from framesim import extract, find_duplicates, index, match, search, write_report
    extract(["videos/"], "dataset", fps=1)
    result = match("examples/", "dataset", ["efficientnet-lite0", "resnet50"], out_dir="reports/run1")
    write_report(result.out_dir)
    index("dataset")                                  # a persistent collection (Qdrant Edge)
    hits = search("screenshot.png", "dataset").pairs  # answered from it
    dups = find_duplicates("dataset", out_dir="reports/dups")  # frame pairs, groups, copied segments
    extract(["/nfs/videos/"], "/nfs/dataset", engine="ray")   # the same, as tasks on a Ray cluster

Heavy modules (TensorFlow, FAISS, Plotly) load only when first used.
"""

from __future__ import annotations

import os
from typing import Any

# FFmpeg prints its own complaints ("moov atom not found") to stderr, where framesim reports one line
# per failed video instead. OpenCV reads this once, when it first loads FFmpeg: set here, before any
# framesim module can import cv2 (a value the user has set wins).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

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
    "index": "framesim.collection",
    "search": "framesim.collection",
    "VectorStore": "framesim.stores",
    "open_store": "framesim.stores",
    "register_store": "framesim.stores",
    "StoreError": "framesim.stores",
    "find_duplicates": "framesim.duplicates",
    "DuplicatesResult": "framesim.duplicates",
    "SEGMENT_COLUMNS": "framesim.duplicates",
    "Engine": "framesim.engines",
    "get_engine": "framesim.engines",
    "register_engine": "framesim.engines",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'framesim' has no attribute {name!r}")
