"""``framesim evaluate --segments``: build a copied-segment benchmark from a dataset's videos, run
``find_duplicates`` on it, score the segments it finds.

1. ``segment_benchmark.build_segment_benchmark`` compiles query videos (filler + edited 2-8 s spans of
   the dataset's videos, and queries that copy nothing) with the true spans;
2. the indexed videos and the queries are extracted afresh at ``fps`` into ``OUT/dataset`` (the user's
   dataset may be sampled otherwise, and queries are not part of it);
3. ``find_duplicates`` runs on that dataset into ``OUT/duplicates`` (its report included);
4. ``segment_metrics`` scores the predicted segments that pair a query with an indexed video:
   segment AP, recall at 90 % precision, best F1, per edit, and VSC 2022's matching-track µAP.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from framesim._io import write_json, write_table

DEFAULT_FPS = 2.0


@dataclass
class SegmentEvaluation:
    """The benchmark, what ``find_duplicates`` found on it, and the scores."""

    out_dir: Path
    benchmark: Any  # segment_benchmark.SegmentBenchmark
    duplicates: Any  # duplicates.DuplicatesResult
    scores: Any  # segment_metrics.SegmentScores
    vsc_uap: float
    predictions: pd.DataFrame
    seconds: float


def evaluate_segments(dataset: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                      backbone: str = "efficientnet-lite0", fps: float = DEFAULT_FPS,
                      filler: Sequence[str | os.PathLike[str]] = (), seed: int = 0,
                      benchmark_options: Mapping[str, Any] | None = None,
                      duplicates_options: Mapping[str, Any] | None = None,
                      weights: Mapping[str, str | None] | None = None, runtime: str = "auto",
                      progress: bool = True, on_error: Callable[[str], None] | None = None) -> SegmentEvaluation:
    """Build, run and score the segment benchmark (module docstring) in ``out_dir``."""
    from framesim.duplicates import find_duplicates
    from framesim.evaluation.runner import _json_safe
    from framesim.evaluation.segment_benchmark import build_segment_benchmark
    from framesim.evaluation.segment_metrics import segment_ap
    from framesim.extraction import extract

    started = time.perf_counter()
    out = Path(out_dir)
    bench = build_segment_benchmark(dataset, out / "benchmark", filler=list(filler), seed=seed, progress=progress,
                                    **dict(benchmark_options or {}))
    indexed = [str(Path(v).resolve()) for v in bench.indexed_videos]
    queries = [str(Path(q).resolve()) for q in bench.queries]
    run_dataset = out / "dataset"
    extract(indexed + queries, run_dataset, fps=fps, progress=progress, on_error=on_error)
    dup = find_duplicates(run_dataset, backbone, out_dir=out / "duplicates", weights=weights, runtime=runtime,
                          progress=progress, on_error=on_error, **dict(duplicates_options or {}))
    truth = bench.truth.copy()
    truth["query"] = truth["query"].map(lambda p: str(Path(p).resolve()))
    truth["video"] = truth["video"].map(lambda p: str(Path(p).resolve()))
    predictions = dup.segments.copy()
    for side in ("video_a", "video_b"):
        predictions[side] = predictions[side].map(lambda p: str(Path(p).resolve()))
    scores = segment_ap(predictions, truth, set(queries), copy_free={str(Path(q).resolve()) for q in bench.copy_free})
    uap = float(scores.summary["vsc_micro_ap"])
    seconds = time.perf_counter() - started
    summary = _json_safe([{**scores.summary, "seconds": round(seconds, 1)}])[0]
    write_table(pd.DataFrame([summary]), csv=out / "segment_metrics.csv")
    write_table(scores.per_edit, csv=out / "segment_metrics_per_edit.csv")
    write_json(out / "segment_evaluation.json", {"summary": summary, "benchmark": bench.info,
                                                 "duplicates": dup.info, "fps": fps, "backbone": backbone})
    return SegmentEvaluation(out, bench, dup, scores, uap, predictions, seconds)
