"""Copy-detection metrics: pure functions of a pairs table and the ground truth.

Inputs
------
``pairs``: the pairs table of ``framesim match`` (``backbone, example, frame_id, video, timestamp_s,
score, rank``) with ``correct`` (as ``label_pairs`` writes it: the frame is from the example's source
video, by path suffix, and within ``TOLERANCE_S`` of the source time; False for every pair of an
example from no video; NA for examples the truth does not know, which are ignored). Without a
``correct`` column it is computed here by the same rule.

``truth``: one row per example: ``example, video, timestamp_s`` and optionally ``edit``. An empty
``video`` marks a **distractor** (an example from no indexed video); the others are **examples with a
source**. Examples of the truth that got no pair at all still count (as misses).

Definitions (per backbone; the per-edit rows restrict the examples with a source to one edit and
keep all distractors)
-------------------------------------------------------------------------------------------
* **top1_video**: share of examples with a source whose rank-1 frame is from the source video.
* **top1_within_1s**: share of examples with a source whose rank-1 frame is correct (right video and
  within 1 s).
* **micro_ap** (µAP as in the DISC21 copy-detection challenge): all pairs of all examples (distractors
  included) in one list, sorted by score, highest first (ties: wrong pairs before correct ones, so a
  tie never flatters). For each example only its first correct pair counts, as a true positive; its
  later correct pairs are dropped from the list (neither true nor false positive), so recall is per
  example. Every wrong pair is a false positive. With n_positives = the number of examples with a
  source: precision_i = TP_i / i and recall_i = TP_i / n_positives after the i-th pair of the list,
  and µAP = Σ over the true positives of precision at that point / n_positives (the area under the
  step precision-recall curve). Examples whose source was not in their top-K pairs lower it.
* **recall_at_p90**: the largest recall over score thresholds (cuts between distinct scores; a cut
  keeps every pair scoring >= the threshold) whose precision is at least 0.9; 0 when none is.
* **threshold_at_p90**: the score threshold achieving it (NaN when none does).
* **distractor_false_matches**: distractors with any pair scoring >= that threshold (NaN when there
  is no such threshold).
* **micro_ap_video** (extra): µAP as above with a pair correct when it is from the source video at any
  time. The gap to micro_ap is what confusing instants of the right video costs (static shots).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from framesim.matching import same_video

TOLERANCE_S = 1.0
PRECISION_TARGET = 0.9
#: the edit name of the rows that cover every example
ALL = "all"
TABLE_COLUMNS = ["backbone", "edit", "n_examples", "n_distractors", "top1_video", "top1_within_1s", "micro_ap",
                 "recall_at_p90", "threshold_at_p90", "distractor_false_matches", "micro_ap_video"]


def normalise_truth(truth: pd.DataFrame) -> pd.DataFrame:
    """``example, video, timestamp_s, edit, has_source`` with empty strings for missing videos/edits."""
    out = pd.DataFrame({
        "example": truth["example"].astype(str),
        "video": truth["video"].fillna("").astype(str) if "video" in truth else "",
        "timestamp_s": pd.to_numeric(truth["timestamp_s"], errors="coerce"),
        "edit": truth["edit"].fillna("").astype(str) if "edit" in truth else "",
    })
    out["has_source"] = out["video"] != ""
    return out.drop_duplicates("example").reset_index(drop=True)


def label_correct(pairs: pd.DataFrame, truth: pd.DataFrame, tolerance_s: float = TOLERANCE_S) -> pd.Series:
    """``correct`` for each pair by the rule above (NA for examples not in the truth)."""
    t = normalise_truth(truth).set_index("example")
    out = []
    for ex, video, ts in zip(pairs["example"].astype(str), pairs["video"].astype(str),
                             pd.to_numeric(pairs["timestamp_s"], errors="coerce"), strict=True):
        if ex not in t.index:
            out.append(pd.NA)
            continue
        tv, tt = t.at[ex, "video"], t.at[ex, "timestamp_s"]
        out.append(bool(tv) and same_video(video, tv) and abs(ts - tt) <= tolerance_s)
    return pd.Series(pd.array(out, dtype="boolean"), index=pairs.index)


def label_same_video(pairs: pd.DataFrame, truth: pd.DataFrame) -> pd.Series:
    """For each pair: from the example's source video, at any time (NA for examples not in the truth)."""
    t = normalise_truth(truth).set_index("example")["video"]
    out = [pd.NA if ex not in t.index else same_video(video, t[ex])
           for ex, video in zip(pairs["example"].astype(str), pairs["video"].astype(str), strict=True)]
    return pd.Series(pd.array(out, dtype="boolean"), index=pairs.index)


def _with_correct(pairs: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    if "correct" in pairs.columns:
        return pairs
    return pairs.assign(correct=label_correct(pairs, truth))


# ------------------------------------------------------------------------------ the ranked list


@dataclass(frozen=True)
class RankedPairs:
    """One backbone's DISC21 list: pairs by score, highest first, later correct pairs of an example
    dropped. ``tp`` marks each example's first correct pair; precision/recall are after each item."""

    scores: np.ndarray
    tp: np.ndarray
    examples: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    n_positives: int

    def __len__(self) -> int:
        return int(self.scores.size)


def ranked_pairs(pairs: pd.DataFrame, n_positives: int) -> RankedPairs:
    """The ranked list of ``pairs`` (one backbone; columns ``example, score, correct``; rows whose
    ``correct`` is NA are left out). ``n_positives`` is the recall denominator: the number of examples
    with a source (see the module docstring)."""
    sub = pairs[pairs["correct"].notna()] if len(pairs) else pairs
    scores = pd.to_numeric(sub["score"], errors="coerce").to_numpy(np.float64) if len(sub) else np.zeros(0)
    correct = sub["correct"].astype(bool).to_numpy() if len(sub) else np.zeros(0, bool)
    examples = sub["example"].astype(str).to_numpy(dtype=object) if len(sub) else np.zeros(0, object)
    finite = np.isfinite(scores)
    scores, correct, examples = scores[finite], correct[finite], examples[finite]
    # score descending; among equal scores wrong pairs first (pessimistic, independent of row order)
    order = np.lexsort((correct, -scores))
    scores, correct, examples = scores[order], correct[order], examples[order]
    later = np.zeros(scores.size, bool)
    idx = np.flatnonzero(correct)
    later[idx] = pd.Series(examples[idx]).duplicated().to_numpy()
    keep = ~later
    scores, tp, examples = scores[keep], correct[keep], examples[keep]
    n_tp = np.cumsum(tp)
    precision = n_tp / np.arange(1, scores.size + 1) if scores.size else np.zeros(0)
    recall = n_tp / n_positives if n_positives > 0 else np.zeros(scores.size)
    return RankedPairs(scores, tp, examples, precision.astype(np.float64), recall.astype(np.float64),
                       int(n_positives))


def micro_ap(ranked: RankedPairs) -> float:
    """Σ over true positives of the precision at that point, / n_positives (NaN without positives)."""
    if ranked.n_positives <= 0:
        return float("nan")
    return float(ranked.precision[ranked.tp].sum() / ranked.n_positives)


def recall_at_precision(ranked: RankedPairs, target: float = PRECISION_TARGET) -> tuple[float, float | None]:
    """(largest recall at a threshold with precision >= target, that threshold); (0.0, None) when no
    threshold reaches the target; (NaN, None) without positives."""
    if ranked.n_positives <= 0:
        return float("nan"), None
    s = ranked.scores
    if s.size == 0:
        return 0.0, None
    # a threshold keeps all pairs scoring >= it, so only the last item of a run of equal scores is a cut
    cuts = np.r_[s[1:] != s[:-1], True]
    ok = cuts & (ranked.precision >= target - 1e-12)
    if not ok.any():
        return 0.0, None
    best = int(np.flatnonzero(ok)[np.argmax(ranked.recall[ok])])
    if ranked.recall[best] <= 0:
        return 0.0, None
    return float(ranked.recall[best]), float(s[best])


def distractor_false_matches(pairs: pd.DataFrame, distractors: Sequence[str], threshold: float | None) -> float:
    """Distractor examples with any pair scoring >= ``threshold`` (NaN when threshold is None)."""
    if threshold is None:
        return float("nan")
    hit = pairs[pairs["example"].astype(str).isin(set(distractors))
                & (pd.to_numeric(pairs["score"], errors="coerce") >= threshold)]
    return float(hit["example"].nunique())


# ------------------------------------------------------------------------------ per example and tables


def per_example(pairs: pd.DataFrame, truth: pd.DataFrame, backbones: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (backbone, example of the truth): ``edit, has_source, n_pairs, top1_score,
    top1_video, top1_correct, first_correct_rank`` (NaN when no correct pair), ``reciprocal_rank``
    (1 / that rank, 0 when none), ``max_score`` (NaN without pairs) and ``ap_share``: the precision
    in the backbone's µAP list (over all examples of ``truth``) at this example's true positive, 0 when
    it has none, so that µAP = the mean of ``ap_share`` over examples with a source (it depends on the
    other examples' pairs too, so it is a breakdown, not an independent per-example measure)."""
    t = normalise_truth(truth)
    pairs = _with_correct(pairs, truth)
    names = list(backbones) if backbones is not None else list(dict.fromkeys(pairs["backbone"].astype(str)))
    rows = []
    for b in names:
        sub = pairs[(pairs["backbone"].astype(str) == b) & pairs["example"].astype(str).isin(set(t["example"]))]
        sub = sub.sort_values(["example", "rank"], kind="stable")
        groups = {str(k): g for k, g in sub.groupby("example", sort=False)}
        ranked = ranked_pairs(sub, int(t["has_source"].sum()))
        ap_share = dict(zip(ranked.examples[ranked.tp], ranked.precision[ranked.tp], strict=True))
        for ex, video, edit, has_source in zip(t["example"], t["video"], t["edit"], t["has_source"], strict=True):
            g = groups.get(ex)
            row = {"backbone": b, "example": ex, "edit": edit, "has_source": bool(has_source),
                   "n_pairs": 0, "top1_score": np.nan, "top1_video": False, "top1_correct": False,
                   "first_correct_rank": np.nan, "reciprocal_rank": 0.0, "max_score": np.nan,
                   "ap_share": float(ap_share.get(ex, 0.0))}
            if g is not None and len(g):
                first = g.iloc[0]
                corr = g["correct"].fillna(False).astype(bool).to_numpy()
                row.update(n_pairs=len(g), top1_score=float(first["score"]), max_score=float(g["score"].max()),
                           top1_video=bool(has_source) and same_video(str(first["video"]), video),
                           top1_correct=bool(corr[0]))
                if corr.any():
                    r = int(g["rank"].to_numpy()[int(np.argmax(corr))])
                    row.update(first_correct_rank=float(r), reciprocal_rank=1.0 / r)
            rows.append(row)
    return pd.DataFrame(rows, columns=["backbone", "example", "edit", "has_source", "n_pairs", "top1_score",
                                       "top1_video", "top1_correct", "first_correct_rank", "reciprocal_rank",
                                       "max_score", "ap_share"])


@dataclass(frozen=True)
class Scores:
    """The numbers of one table row."""

    n_examples: int
    n_distractors: int
    top1_video: float
    top1_within_1s: float
    micro_ap: float
    recall_at_p90: float
    threshold_at_p90: float
    distractor_false_matches: float
    micro_ap_video: float


def score_examples(pairs: pd.DataFrame, truth: pd.DataFrame, target: float = PRECISION_TARGET) -> Scores:
    """The row for one backbone's ``pairs`` over the examples of ``truth`` (pairs of other examples
    are ignored)."""
    t = normalise_truth(truth)
    pairs = _with_correct(pairs, truth)
    pairs = pairs[pairs["example"].astype(str).isin(set(t["example"]))]
    sourced = t.loc[t["has_source"], "example"]
    distractors = list(t.loc[~t["has_source"], "example"])
    ex = per_example(pairs.assign(backbone="_"), t, ["_"])
    ex = ex[ex["has_source"]]
    ranked = ranked_pairs(pairs, len(sourced))
    recall, threshold = recall_at_precision(ranked, target)
    n = len(sourced)
    return Scores(
        n_examples=n, n_distractors=len(distractors),
        top1_video=float(ex["top1_video"].mean()) if n else float("nan"),
        top1_within_1s=float(ex["top1_correct"].mean()) if n else float("nan"),
        micro_ap=micro_ap(ranked), recall_at_p90=recall,
        threshold_at_p90=float("nan") if threshold is None else threshold,
        distractor_false_matches=distractor_false_matches(pairs, distractors, threshold),
        micro_ap_video=micro_ap(ranked_pairs(pairs.assign(correct=label_same_video(pairs, t)), n)),
    )


def evaluation_table(pairs: pd.DataFrame, truth: pd.DataFrame, backbones: Sequence[str] | None = None, *,
                     edit_order: Sequence[str] | None = None, target: float = PRECISION_TARGET) -> pd.DataFrame:
    """``TABLE_COLUMNS``: per backbone an ``all`` row, then one row per edit (that edit's examples with
    a source plus every distractor; the edit of a distractor plays no part)."""
    t = normalise_truth(truth)
    pairs = _with_correct(pairs, truth)
    names = list(backbones) if backbones is not None else list(dict.fromkeys(pairs["backbone"].astype(str)))
    present = [e for e in dict.fromkeys(t.loc[t["has_source"], "edit"]) if e]  # no edit column: "all" only
    order = {e: i for i, e in enumerate(edit_order or [])}
    edits = sorted(present, key=lambda e: (order.get(e, len(order)), present.index(e)))
    distractors = t[~t["has_source"]]
    rows = []
    for b in names:
        sub = pairs[pairs["backbone"].astype(str) == b]
        groups = [(ALL, t)] + [(e, pd.concat([t[t["has_source"] & (t["edit"] == e)], distractors])) for e in edits]
        for edit, part in groups:
            s = score_examples(sub, part, target)
            rows.append({"backbone": b, "edit": edit, **s.__dict__})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return table.astype({"n_examples": "int64", "n_distractors": "int64"})


def sign_test(a: Sequence[float], b: Sequence[float]) -> tuple[int, int, float]:
    """Paired one-sided sign test that ``a`` beats ``b``: (wins of a, losses of a, p-value), ties
    dropped; p = P(X >= wins) for X ~ Binomial(wins + losses, 1/2)."""
    from math import comb

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    n = wins + losses
    p = sum(comb(n, k) for k in range(wins, n + 1)) / 2 ** n if n else 1.0
    return wins, losses, float(p)


def _micro_ap_arrays(scores: np.ndarray, correct: np.ndarray, example_ids: np.ndarray, n_positives: int) -> float:
    """µAP from flat arrays (the same list as ``ranked_pairs``, without pandas: for resampling)."""
    order = np.lexsort((correct, -scores))
    c, e = correct[order], example_ids[order]
    idx = np.flatnonzero(c)
    keep = ~c
    keep[idx[np.unique(e[idx], return_index=True)[1]]] = True  # each example's first correct pair
    c = c[keep]
    precision = np.cumsum(c) / np.arange(1, c.size + 1)
    return float(precision[c].sum() / n_positives) if n_positives else float("nan")


@dataclass(frozen=True)
class PairedBootstrap:
    """µAP of backbone a minus that of b, its 95 % interval over resamples, and the one-sided p-value
    (share of resamples where a does not beat b)."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n_resamples: int


def paired_bootstrap(pairs: pd.DataFrame, truth: pd.DataFrame, a: str, b: str, *, n_resamples: int = 2000,
                     seed: int = 0) -> PairedBootstrap:
    """Paired bootstrap over examples of the µAP difference between backbones ``a`` and ``b``.

    µAP couples examples (one ranked list), so a per-example sign test cannot test it; instead the
    examples are resampled with replacement (those with a source and the distractors separately, so
    the mix stays fixed), each drawn copy counting as its own example, both backbones on the same
    draw; µAP is recomputed for each. p = (1 + resamples with Δ <= 0) / (1 + n_resamples).
    """
    t = normalise_truth(truth)
    pairs = _with_correct(pairs, truth)
    pairs = pairs[pairs["correct"].notna() & pairs["example"].astype(str).isin(set(t["example"]))]
    per: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for name in (a, b):
        sub = pairs[pairs["backbone"].astype(str) == name]
        per[name] = {str(ex): (g["score"].to_numpy(np.float64), g["correct"].astype(bool).to_numpy())
                     for ex, g in sub.groupby("example", sort=False)}
    empty = (np.zeros(0), np.zeros(0, bool))
    sourced = t.loc[t["has_source"], "example"].tolist()
    others = t.loc[~t["has_source"], "example"].tolist()

    def ap(name: str, examples: Sequence[str]) -> float:
        parts = [per[name].get(ex, empty) for ex in examples]
        ids = np.concatenate([np.full(len(p[0]), i) for i, p in enumerate(parts)]) if parts else np.zeros(0, int)
        scores = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
        correct = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, bool)
        return _micro_ap_arrays(scores, correct, ids, len(sourced))

    everything = sourced + others
    delta = ap(a, everything) - ap(b, everything)
    rng = np.random.default_rng(seed)
    deltas = np.empty(n_resamples)
    for i in range(n_resamples):
        draw = [sourced[j] for j in rng.integers(0, len(sourced), len(sourced))] if sourced else []
        draw += [others[j] for j in rng.integers(0, len(others), len(others))] if others else []
        deltas[i] = ap(a, draw) - ap(b, draw)
    lo, hi = np.quantile(deltas, [0.025, 0.975]) if n_resamples else (np.nan, np.nan)
    p = (1 + int((deltas <= 0).sum())) / (1 + n_resamples)
    return PairedBootstrap(float(delta), float(lo), float(hi), float(p), int(n_resamples))
