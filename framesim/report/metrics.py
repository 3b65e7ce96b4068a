"""Numbers the report shows: agreement between backbones, per-example summaries, precision-recall.

Pure functions of the pairs DataFrame (contract columns plus ``frame_key``; ``correct`` optional).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


def topk_sets(pairs: pd.DataFrame) -> dict[tuple[str, str], list[str]]:
    """(backbone, example) -> frame keys in rank order."""
    out: dict[tuple[str, str], list[str]] = {}
    for (bb, ex), grp in pairs.groupby(["backbone", "example"], sort=False):
        out[(str(bb), str(ex))] = list(grp.sort_values("rank", kind="stable")["frame_key"])
    return out


def agreement_matrices(pairs: pd.DataFrame, backbones: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Between every two backbones, over the examples both returned frames for:

    - ``jaccard``: mean Jaccard overlap of their top-K frame sets (1 = same frames found);
    - ``top1``: share of examples whose rank-1 frame is the same frame.

    The diagonal is 1 for backbones with any pairs; cells with no common example are NaN.
    """
    sets = topk_sets(pairs)
    by_bb: dict[str, dict[str, list[str]]] = {b: {} for b in backbones}
    for (bb, ex), frames in sets.items():
        if bb in by_bb:
            by_bb[bb][ex] = frames
    n = len(backbones)
    jac = np.full((n, n), np.nan)
    top1 = np.full((n, n), np.nan)
    for i, a in enumerate(backbones):
        for j, b in enumerate(backbones):
            common = sorted(set(by_bb[a]) & set(by_bb[b]))
            if not common:
                continue
            js, t1 = [], []
            for ex in common:
                fa, fb = by_bb[a][ex], by_bb[b][ex]
                sa, sb = set(fa), set(fb)
                js.append(len(sa & sb) / len(sa | sb))
                t1.append(fa[0] == fb[0])
            jac[i, j] = float(np.mean(js))
            top1[i, j] = float(np.mean(t1))
    return (pd.DataFrame(jac, index=list(backbones), columns=list(backbones)),
            pd.DataFrame(top1, index=list(backbones), columns=list(backbones)))


@dataclass(frozen=True)
class ExampleSummary:
    example: str
    best_score: float | None
    #: number of backbones (with results) whose rank-1 frame is the most common rank-1 frame
    top1_agree: int
    #: number of backbones with any result for this example
    n_with_results: int


def example_summaries(pairs: pd.DataFrame, examples: Sequence[str],
                      backbones: Sequence[str]) -> dict[str, ExampleSummary]:
    """Per example: best score over backbones and how many backbones agree on the top-1 frame."""
    top = pairs[pairs["rank"] == pairs.groupby(["backbone", "example"])["rank"].transform("min")]
    out: dict[str, ExampleSummary] = {}
    grouped = {str(k): g for k, g in top.groupby("example", sort=False)}
    for ex in examples:
        g = grouped.get(ex)
        if g is None or g.empty:
            out[ex] = ExampleSummary(ex, None, 0, 0)
            continue
        g = g.drop_duplicates("backbone")
        counts = g["frame_key"].value_counts()
        out[ex] = ExampleSummary(ex, float(g["score"].max()), int(counts.iloc[0]), int(len(g)))
    return out


def separation_auc(high: np.ndarray, low: np.ndarray) -> float | None:
    """Probability that a random score from ``high`` exceeds one from ``low`` (ties count half):
    the area under the ROC curve of 'top-1 vs the rest', 0.5 = no separation, 1 = perfect."""
    high = np.asarray(high, dtype=np.float64)
    low = np.sort(np.asarray(low, dtype=np.float64))
    if high.size == 0 or low.size == 0:
        return None
    below = np.searchsorted(low, high, side="left")
    ties = np.searchsorted(low, high, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (high.size * low.size))


def score_stats(pairs: pd.DataFrame, backbone: str) -> dict[str, float | None]:
    """Medians of rank-1 and rank>=2 scores, the median margin between rank 1 and rank 2 of the
    same example, and the top-1 vs rest separation (AUC)."""
    sub = pairs[pairs["backbone"] == backbone]
    first = sub["rank"] == 1
    r1 = sub.loc[first, "score"]
    rest = sub.loc[sub["rank"] >= 2, "score"]
    r2 = sub.loc[sub["rank"] == 2, ["example", "score"]].set_index("example")["score"]
    margin = (r1.set_axis(sub.loc[first, "example"]) - r2).dropna()
    return {
        "top1_median": float(r1.median()) if len(r1) else None,
        "rest_median": float(rest.median()) if len(rest) else None,
        "margin_median": float(margin.median()) if len(margin) else None,
        "auc": separation_auc(r1.to_numpy(), rest.to_numpy()),
    }


@dataclass(frozen=True)
class PRCurve:
    """Precision/recall as the score threshold is lowered through one backbone's ranked pairs.

    The list and the numbers follow ``framesim.evaluation.metrics`` (DISC21 µAP): per example only
    its first correct pair is a true positive and its later correct pairs are left out of ``scores``,
    so recall counts examples, out of ``n_positives`` examples with a source.
    """

    backbone: str
    scores: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    average_precision: float
    best_f1: float
    best_f1_threshold: float | None
    n_positives: int
    #: largest recall at a threshold with precision >= 0.9 (0 when none), and that threshold
    recall_at_p90: float = 0.0
    threshold_at_p90: float | None = None


def positives_pool(pairs: pd.DataFrame) -> int:
    """Examples with a correct pair found by any backbone: the recall denominator when the run does
    not state the number of examples with a source (pooling, as in TREC)."""
    ok = pairs[pairs["correct"].fillna(False).astype(bool)]
    return int(ok["example"].nunique())


def pr_curve(pairs: pd.DataFrame, backbone: str, n_positives: int) -> PRCurve:
    """Precision-recall of one backbone's pairs against the ``correct`` column (unknown rows dropped),
    with the definitions of ``framesim.evaluation.metrics``."""
    from framesim.evaluation.metrics import micro_ap, ranked_pairs, recall_at_precision

    sub = pairs[(pairs["backbone"] == backbone) & pairs["correct"].notna()]
    if sub.empty or n_positives <= 0:
        empty = np.zeros(0)
        return PRCurve(backbone, empty, empty, empty, 0.0, 0.0, None, n_positives)
    ranked = ranked_pairs(sub, n_positives)
    precision, recall, scores = ranked.precision, ranked.recall, ranked.scores
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    best = int(np.argmax(f1))
    r90, t90 = recall_at_precision(ranked)
    return PRCurve(backbone, scores, precision, recall, micro_ap(ranked), float(f1[best]),
                   float(scores[best]) if f1[best] > 0 else None, n_positives, r90, t90)


def operating_point(curve: PRCurve, threshold: float | None) -> tuple[float, float] | None:
    """(recall, precision) when keeping the pairs with score >= threshold."""
    if threshold is None or curve.scores.size == 0:
        return None
    k = int(np.sum(curve.scores >= threshold))
    if k == 0:
        return (0.0, 1.0)
    return (float(curve.recall[k - 1]), float(curve.precision[k - 1]))
