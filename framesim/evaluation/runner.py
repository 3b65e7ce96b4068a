"""``evaluate()``: build a benchmark from a dataset, run the normal match path on it, score it.

Layout of an evaluation folder (default ``reports/eval-<YYYYmmdd-HHMMSS>``)::

    benchmark/examples/*.jpg     the edited examples and distractors
    benchmark/ground_truth.csv   example, video, timestamp_s, edit (+ frame_id, origin, source_video, params)
    benchmark/benchmark.json     how it was built (seed, held-out videos, duplicates, edits)
    pairs.csv, pairs.parquet     the match run's pairs, with ``correct``
    run.json                     the match run, plus ``evaluation`` (the table) and ground_truth.n_positives
    metrics.csv                  the table: backbone x edit (an ``all`` row first per backbone)
    per_example.csv              per backbone and example: rank-1 result, rank of the first correct frame
    report.html                  the match report with the evaluation section
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from framesim._io import write_json, write_table
from framesim.backbones.base import Backbone
from framesim.dedupe import DEFAULT_DEDUPE_THRESHOLD
from framesim.evaluation.benchmark import Benchmark, build_benchmark
from framesim.evaluation.edits import DEFAULT_EDITS
from framesim.evaluation.metrics import (
    ALL,
    PRECISION_TARGET,
    TOLERANCE_S,
    evaluation_table,
    per_example,
)
from framesim.matching import DEFAULT_BACKBONE, DEFAULT_CANDIDATES, MatchResult, match
from framesim.verification import VerifyParams

DEFINITIONS = (
    "Examples with a source: top-1 video = rank-1 frame from the source video; top-1 within 1 s = rank-1 frame "
    "from the source video within 1 s of the source time. µAP (DISC21): all pairs of all examples in one list by "
    "score; per example only its first correct pair counts (a true positive), its later correct pairs are "
    "dropped; every other pair is a false positive; recall = true positives / examples with a source. "
    "Recall at 90 % precision: the largest recall at a score threshold whose precision is >= 0.9; false "
    "matches: distractors with a pair scoring >= that threshold. µAP video: µAP with a pair correct when from the "
    "source video at any time. Per-edit rows: that edit's examples plus all distractors."
)


@dataclass
class EvaluationResult:
    """What ``evaluate`` made: the table (``metrics.TABLE_COLUMNS``), per-example results, the
    benchmark, the match run, and where the files are."""

    table: pd.DataFrame
    per_example: pd.DataFrame
    benchmark: Benchmark
    match: MatchResult
    out_dir: Path
    report: Path | None
    seconds: float

    @property
    def summary(self) -> pd.DataFrame:
        """The ``all`` rows: one per backbone."""
        return self.table[self.table["edit"] == ALL].reset_index(drop=True)


def default_eval_dir(reports: str | os.PathLike[str] = "reports") -> Path:
    """``reports/eval-<YYYYmmdd-HHMMSS>``, with a suffix if that exists already."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(reports) / f"eval-{stamp}"
    n = 1
    while out.exists():
        n += 1
        out = Path(reports) / f"eval-{stamp}-{n}"
    return out


def _json_safe(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            for r in records]


def evaluate(
    dataset: str | os.PathLike[str],
    backbones: Sequence[str | Backbone] = (DEFAULT_BACKBONE,),
    *,
    out_dir: str | os.PathLike[str] | None = None,
    n_examples: int = 150,
    distractor_share: float = 1 / 3,
    distractors: str | os.PathLike[str] | None = None,
    seed: int = 0,
    top_k: int = 10,
    edits: Sequence[str] | None = None,
    progress: bool = True,
    from_video: bool = True,
    weights: Mapping[str, str | None] | None = None,
    index: str | None = None,
    batch_size: int = 32,
    report: bool = True,
    on_error: Callable[[str], None] | None = None,
    dedupe: float = DEFAULT_DEDUPE_THRESHOLD,
    runtime: str = "auto",
    verify: VerifyParams | None = None,
    candidates: int = DEFAULT_CANDIDATES,
) -> EvaluationResult:
    """Build a copy-detection benchmark from ``dataset`` (see ``benchmark.build_benchmark``), rank
    it with each of ``backbones`` through ``framesim.match`` (names or specs, passed through as
    given), and score the pairs (see ``metrics``). Writes the files listed in the module docstring
    into ``out_dir``; returns the table and the rest. ``from_video=False``: see ``build_benchmark``.
    ``dedupe``, ``runtime``, ``verify`` (the local features, ``verification.VerifyParams``) and
    ``candidates`` go to ``match``."""
    started = time.perf_counter()
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k!r}")
    specs = list(dict.fromkeys(backbones))
    if not specs:
        raise ValueError("give at least one backbone")
    out = Path(out_dir) if out_dir is not None else default_eval_dir()
    bench = build_benchmark(dataset, out / "benchmark", n_examples=n_examples, distractor_share=distractor_share,
                            distractors=distractors, seed=seed, edits=edits, from_video=from_video,
                            progress=progress)
    result = match(bench.examples_dir, dataset, specs, top_k=top_k, index=index, weights=weights, out_dir=out,
                   batch_size=batch_size, progress=progress, on_error=on_error,
                   ground_truth=bench.ground_truth_path, exclude_videos=bench.exclude_videos, dedupe=dedupe,
                   runtime=runtime, verify=verify, candidates=candidates)
    names = [str(b["name"]) for b in result.run["backbones"]]
    edit_order = list(edits) if edits is not None else list(DEFAULT_EDITS)
    table = evaluation_table(result.pairs, bench.truth, names, edit_order=edit_order)
    examples = per_example(result.pairs, bench.truth, names)
    write_table(table, csv=out / "metrics.csv")
    write_table(examples, csv=out / "per_example.csv")

    # The report reads run.json: state the recall denominator (examples with a source, the µAP one)
    # and add the table, so its precision-recall curves and per-edit bars use these definitions.
    run = dict(result.run)
    truth_info = dict(run.get("ground_truth") or {})
    truth_info["n_positives"] = bench.n_sourced
    truth_info["definition"] = "disc21"
    run["ground_truth"] = truth_info
    run["evaluation"] = {
        "table": _json_safe(table.to_dict("records")),
        "benchmark": {k: bench.info[k] for k in (
            "seed", "n_examples", "n_with_source", "n_distractors", "distractor_source", "indexed_videos",
            "held_out_videos", "duplicate_videos", "edits", "examples_per_edit", "origins")},
        "edit_order": [e for e in edit_order if e in set(table["edit"])],
        "tolerance_s": TOLERANCE_S, "precision_target": PRECISION_TARGET, "top_k": top_k,
        "definitions": DEFINITIONS,
    }
    run["run"] = out.name
    write_json(out / "run.json", run)
    report_path = None
    if report:
        from framesim.report import write_report

        report_path = write_report(out)
    result.run = run
    result.out_dir = out
    return EvaluationResult(table=table, per_example=examples, benchmark=bench, match=result, out_dir=out,
                            report=report_path, seconds=time.perf_counter() - started)


# ------------------------------------------------------------------------------ text


def _cell(v: Any, kind: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if kind == "int":
        return f"{int(v)}"
    return f"{float(v):.3f}"


def format_table(table: pd.DataFrame, *, per_edit: bool = True) -> str:
    """The table as aligned text: one summary row per backbone, then (``per_edit``) µAP and top-1
    within 1 s per edit with one column pair per backbone."""
    summary = table[table["edit"] == ALL]
    head = ["backbone", "examples", "distractors", "top-1 video", "top-1 ≤1 s", "µAP", "recall@P90",
            "threshold", "false matches", "µAP video"]
    rows = [[str(r.backbone), _cell(r.n_examples, "int"), _cell(r.n_distractors, "int"), _cell(r.top1_video, "f"),
             _cell(r.top1_within_1s, "f"), _cell(r.micro_ap, "f"), _cell(r.recall_at_p90, "f"),
             _cell(r.threshold_at_p90, "f"), _cell(r.distractor_false_matches, "int"), _cell(r.micro_ap_video, "f")]
            for r in summary.itertuples(index=False)]
    lines = _align([head, *rows])
    if per_edit:
        edits = [e for e in dict.fromkeys(table["edit"]) if e != ALL]
        backbones = list(dict.fromkeys(table["backbone"]))
        if edits:
            lines += ["", "per edit: µAP / top-1 within 1 s (n = examples with that edit; all distractors in each)"]
            head2 = ["edit", "n"] + backbones
            by = {(r.backbone, r.edit): r for r in table.itertuples(index=False)}
            rows2 = []
            for e in edits:
                first = by[(backbones[0], e)]
                rows2.append([e, _cell(first.n_examples, "int")] + [
                    f"{_cell(by[(b, e)].micro_ap, 'f')} / {_cell(by[(b, e)].top1_within_1s, 'f')}"
                    if (b, e) in by else "—" for b in backbones])
            lines += _align([head2, *rows2])
    return "\n".join(lines)


def _align(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            .rstrip() for r in rows]

