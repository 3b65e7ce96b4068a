"""Copy-detection evaluation: build a benchmark with known answers from a frame dataset (``edits``,
``benchmark``), run the normal match path on it and score it (``metrics``, ``runner``).

    from framesim.evaluation import evaluate
    result = evaluate("dataset", ["efficientnet-lite0", "phash"], n_examples=150)
    print(result.summary)

Importing the package registers the ``phash`` backbone. ``evaluate`` and the benchmark builder are
imported on first use, so the report can use ``framesim.evaluation.metrics`` without the matching
stack (FAISS, backbones).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from framesim.evaluation.benchmark import Benchmark, build_benchmark
    from framesim.evaluation.runner import EvaluationResult, default_eval_dir, evaluate, format_table

__all__ = ["Benchmark", "EvaluationResult", "build_benchmark", "default_eval_dir", "evaluate", "format_table"]

_LAZY = {
    "Benchmark": "framesim.evaluation.benchmark", "build_benchmark": "framesim.evaluation.benchmark",
    "EvaluationResult": "framesim.evaluation.runner", "default_eval_dir": "framesim.evaluation.runner",
    "evaluate": "framesim.evaluation.runner", "format_table": "framesim.evaluation.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'framesim.evaluation' has no attribute {name!r}")
