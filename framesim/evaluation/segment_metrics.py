"""Segment-level copy-detection metrics: predicted copied segments against known true ones.

Inputs
------
``predictions``: the ``segments`` table of ``framesim duplicates`` (``video_a, start_a, end_a, video_b,
start_b, end_b, score``; times in seconds on each video's own clock). Pairs of videos are unordered, so
each prediction is first *oriented*: the side whose video is in ``queries`` becomes the query axis, the
other the reference axis. Only predictions with exactly one query side are scored; those between two
queries or between two non-query videos are ignored (counted in the summary as ``n_ignored_two_queries``
and ``n_ignored_no_query``), since the truth says nothing about them.

``truth``: ``query, start_q, end_q, video, start_v, end_v`` and optionally ``edit``: one row per true
copied segment (the query's ``[start_q, end_q]`` shows the reference ``video``'s ``[start_v, end_v]``).
``copy_free``: query videos that copy nothing; their predictions are all false positives.

Segment AP (``segment_ap``)
---------------------------
The scored predictions in one list by score, highest first (equal scores in a fixed order: query, video,
times, row). Each is matched greedily to the not-yet-found true segment of the same video pair with the
highest min(IoU on the query axis, IoU on the reference axis), if that is >= ``iou`` (0.5; the usual
detection rule, as in temporal action localisation). A match makes it a true positive and the segment
found; everything else is a false positive (a second prediction of a found segment included). Then, as
for the frame-level µAP (``metrics.ranked_pairs``; equal scores wrong-first, so ties never flatter):
AP = Σ over true positives of the precision there / the number of true segments (non-interpolated;
unfound segments add 0); recall at 90 % precision = the largest recall at a score threshold whose
precision is >= 0.9, that threshold being the *operating point*; best F1 over thresholds. Copy-free
counts: predictions (and distinct queries) of copy-free queries scoring >= the operating point. Per edit:
AP against that edit's true segments (predictions matched to other edits' segments left out, every false
positive kept), recall at the operating point and at the best-F1 threshold.

VSC 2022 matching-track µAP (``vsc_matching``)
----------------------------------------------
Written from the definition in Pizzi et al., "The 2023 Video Similarity Dataset and Challenge" (arXiv
2306.09489, the matching-track metric) and its reference evaluation (github.com/facebookresearch/vsc2022,
``vsc/metrics.py``), which adapts the overlap-based precision and recall of VCSL (He et al., CVPR 2022)
from a per-pair average to a micro-average. Segments are boxes on the query x reference time plane. After
each prediction, per video pair and per axis: P_len = length of the union of the pair's predicted intervals
so far, I_len = length of their intersection with the union of the pair's true intervals whose box shares
a positive area with some prediction so far (so a prediction in the right time ranges but with the wrong
alignment earns nothing), G_len = length of the union of all the pair's true intervals. Summed over pairs,
per axis: precision = ΣI / ΣP, recall = ΣI / ΣG; the combined precision and recall are the geometric means
of the two axes'. Predictions are taken by score, highest first, all predictions of one score as one step,
and µAP = Σ_steps precision * (recall - previous recall). Choices where the definition is silent: the
prediction set is the oriented scored one above (ignored predictions play no part); precision with no
predicted length yet (only zero-length predictions) is 0 (recall cannot grow there, so µAP is unaffected);
no true segments gives NaN. Checked, when written, against the reference evaluation on 300 random cases
(equal scores, wrong pairs, swapped sides): equal to 1e-15.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from framesim.evaluation.metrics import PRECISION_TARGET, RankedPairs, micro_ap, ranked_pairs, recall_at_precision

IOU_THRESHOLD = 0.5
PREDICTION_COLUMNS = ["video_a", "start_a", "end_a", "video_b", "start_b", "end_b", "score"]
TRUTH_COLUMNS = ["query", "start_q", "end_q", "video", "start_v", "end_v"]
ORIENTED_COLUMNS = ["prediction", "query", "start_q", "end_q", "video", "start_v", "end_v", "score"]
LABEL_COLUMNS = ORIENTED_COLUMNS + ["rank", "status", "correct", "truth", "edit", "iou"]
PER_EDIT_COLUMNS = ["edit", "n_truth", "ap", "recall_at_p90", "recall_at_best_f1", "found"]
#: ``status`` of a label: why a prediction is (not) a true positive
CORRECT, DUPLICATE, POOR_OVERLAP, WRONG_PAIR, COPY_FREE = (
    "correct", "duplicate", "poor overlap", "wrong pair", "copy-free query")
IGNORED_TWO_QUERIES, IGNORED_NO_QUERY = "ignored: two queries", "ignored: no query"
_EPS = 1e-9  # so an IoU of exactly the threshold (e.g. 5 s of 10 s) counts despite float rounding


# ------------------------------------------------------------------------------ inputs


def _times(df: pd.DataFrame, name: str, pairs: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
    out = {}
    for start, end in pairs:
        s = pd.to_numeric(df[start], errors="coerce").to_numpy(np.float64)
        e = pd.to_numeric(df[end], errors="coerce").to_numpy(np.float64)
        if not (np.isfinite(s).all() and np.isfinite(e).all()):
            raise ValueError(f"{name}: {start}/{end} must be finite numbers")
        if (e < s).any():
            raise ValueError(f"{name}: {end} is before {start} in {int((e < s).sum())} row(s)")
        out[start], out[end] = s, e
    return out


def _require(df: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)}")


def truth_segments(truth: pd.DataFrame, queries: Iterable[str], copy_free: Iterable[str] = ()) -> pd.DataFrame:
    """The true segments, checked: ``truth`` (position 0..), the ``TRUTH_COLUMNS``, ``edit`` ("" when none)."""
    _require(truth, TRUTH_COLUMNS, "truth")
    queries, copy_free = set(map(str, queries)), set(map(str, copy_free))
    out = pd.DataFrame({"truth": np.arange(len(truth)), "query": truth["query"].astype(str).to_numpy(),
                        "video": truth["video"].astype(str).to_numpy(),
                        "edit": truth["edit"].fillna("").astype(str).to_numpy() if "edit" in truth else ""})
    for k, v in _times(truth, "truth", [("start_q", "end_q"), ("start_v", "end_v")]).items():
        out[k] = v
    if not copy_free <= queries:
        raise ValueError(f"copy_free: {sorted(copy_free - queries)[:3]} are not query videos")
    for what, bad in (("a query not in queries", ~out["query"].isin(queries)),
                      ("a reference video that is a query", out["video"].isin(queries)),
                      ("a copy-free query", out["query"].isin(copy_free))):
        if bad.any():
            raise ValueError(f"truth: {int(bad.sum())} row(s) with {what}, e.g. {out.loc[bad].iloc[0]['query']!r}")
    return out[["truth", *TRUTH_COLUMNS, "edit"]]


def orient_predictions(predictions: pd.DataFrame, queries: Iterable[str]) -> pd.DataFrame:
    """Predictions as query x reference segments: ``ORIENTED_COLUMNS`` (``prediction`` = row position in
    ``predictions``) plus ``side``: "" for scored rows, else the ``IGNORED_*`` status."""
    _require(predictions, PREDICTION_COLUMNS, "predictions")
    queries = set(map(str, queries))
    t = _times(predictions, "predictions", [("start_a", "end_a"), ("start_b", "end_b")])
    score = pd.to_numeric(predictions["score"], errors="coerce").to_numpy(np.float64)
    if not np.isfinite(score).all():
        raise ValueError("predictions: score must be finite numbers")
    va, vb = predictions["video_a"].astype(str).to_numpy(), predictions["video_b"].astype(str).to_numpy()
    qa, qb = np.isin(va, list(queries)), np.isin(vb, list(queries))
    swap = qb & ~qa  # b is the query side
    out = pd.DataFrame({
        "prediction": np.arange(len(predictions)), "query": np.where(swap, vb, va),
        "start_q": np.where(swap, t["start_b"], t["start_a"]), "end_q": np.where(swap, t["end_b"], t["end_a"]),
        "video": np.where(swap, va, vb),
        "start_v": np.where(swap, t["start_a"], t["start_b"]), "end_v": np.where(swap, t["end_a"], t["end_b"]),
        "score": score,
        "side": np.where(qa & qb, IGNORED_TWO_QUERIES, np.where(qa | qb, "", IGNORED_NO_QUERY))})
    return out


def _iou(s: float, e: float, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """IoU of [s, e] with each [starts, ends]; two equal points have IoU 1 (no length to compare)."""
    inter = np.clip(np.minimum(e, ends) - np.maximum(s, starts), 0, None)
    union = (e - s) + (ends - starts) - inter
    same = (starts == s) & (ends == e)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), same.astype(np.float64))


# ------------------------------------------------------------------------------ labels and AP


def label_segments(oriented: pd.DataFrame, truth: pd.DataFrame, copy_free: Iterable[str] = (), *,
                   iou: float = IOU_THRESHOLD) -> pd.DataFrame:
    """Greedy matching (module docstring) of the scored rows of ``orient_predictions`` to ``truth_segments``:
    ``LABEL_COLUMNS`` in rank order (``rank`` 1..), ``truth`` = the matched segment or -1, ``iou`` = the
    best min(IoU_q, IoU_v) with any true segment of the pair (the matched one when correct; NaN: none)."""
    copy_free = set(map(str, copy_free))
    scored = oriented[oriented["side"] == ""] if "side" in oriented else oriented
    scored = scored.sort_values(["score", "query", "video", "start_q", "start_v", "end_q", "end_v", "prediction"],
                                ascending=[False] + [True] * 7, kind="mergesort").reset_index(drop=True)
    by_pair = {k: (g["truth"].to_numpy(), g[["start_q", "end_q", "start_v", "end_v"]].to_numpy(np.float64),
                   g["edit"].to_numpy())
               for k, g in truth.groupby(["query", "video"], sort=False)}
    found = np.zeros(len(truth), bool)
    status, matched, overlap, edits = [], np.full(len(scored), -1), np.full(len(scored), np.nan), []
    rows = zip(scored["query"], scored["video"], scored["start_q"], scored["end_q"], scored["start_v"],
               scored["end_v"], strict=True)
    for n, (query, video, sq, eq, sv, ev) in enumerate(rows):
        pair = by_pair.get((query, video))
        if pair is None:
            status.append(COPY_FREE if query in copy_free else WRONG_PAIR)
            edits.append("")
            continue
        ids, b, pair_edits = pair
        m = np.minimum(_iou(sq, eq, b[:, 0], b[:, 1]), _iou(sv, ev, b[:, 2], b[:, 3]))
        ok = m >= iou - _EPS
        free = ok & ~found[ids]
        overlap[n] = m.max()
        if free.any():
            best = int(np.flatnonzero(free)[np.argmax(m[free])])  # first of equal IoUs: lowest truth id
            found[ids[best]] = True
            matched[n], overlap[n] = ids[best], m[best]
            status.append(CORRECT)
            edits.append(str(pair_edits[best]))
        else:
            status.append(DUPLICATE if ok.any() else POOR_OVERLAP)
            edits.append("")
    out = scored[ORIENTED_COLUMNS].assign(rank=np.arange(1, len(scored) + 1), status=status)
    out["correct"] = out["status"] == CORRECT
    return out.assign(truth=matched, edit=edits, iou=overlap)[LABEL_COLUMNS]


def ranked_segments(labels: pd.DataFrame, n_truth: int) -> RankedPairs:
    """The labels as ``metrics.RankedPairs`` (each true segment is matched once, so nothing is dropped)."""
    example = np.where(labels["correct"], "t" + labels["truth"].astype(str), "p" + labels["prediction"].astype(str))
    return ranked_pairs(pd.DataFrame({"example": example, "score": labels["score"].to_numpy(np.float64),
                                      "correct": labels["correct"].to_numpy(bool)}), n_truth)


def best_f1(ranked: RankedPairs) -> tuple[float, float | None]:
    """(the best F1 over score thresholds, that threshold); (0.0, None) with no true positive; (NaN, None)
    without positives. Among equal F1s the highest threshold wins."""
    if ranked.n_positives <= 0:
        return float("nan"), None
    s, p, r = ranked.scores, ranked.precision, ranked.recall
    if s.size == 0:
        return 0.0, None
    f1 = np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0.0)
    f1[~np.r_[s[1:] != s[:-1], True]] = -1.0  # only the last item of a run of equal scores is a cut
    best = int(np.argmax(f1))
    return (0.0, None) if f1[best] <= 0 else (float(f1[best]), float(s[best]))


def _precision_at(ranked: RankedPairs, threshold: float | None) -> float:
    kept = int((ranked.scores >= threshold).sum()) if threshold is not None else 0
    return float(ranked.precision[kept - 1]) if kept else float("nan")


@dataclass(frozen=True)
class SegmentScores:
    """``summary``: the overall numbers (see ``segment_ap``); ``per_edit``: ``PER_EDIT_COLUMNS``;
    ``labels``: one row per prediction (``LABEL_COLUMNS``; ignored ones last, rank 0, with their status);
    ``truth``: the true segments with ``found_by`` (prediction row or -1) and ``found_score``; ``vsc``: the
    VSC 2022 µAP and curve. Thresholds in ``summary`` are None where no threshold qualifies (the copy-free
    counts at it are then NaN)."""

    summary: dict[str, float | int | None]
    per_edit: pd.DataFrame
    labels: pd.DataFrame
    truth: pd.DataFrame = field(repr=False)
    vsc: VscMatching = field(repr=False)


def segment_ap(predictions: pd.DataFrame, truth: pd.DataFrame, queries: Iterable[str], *,
               copy_free: Iterable[str] = (), iou: float = IOU_THRESHOLD, target: float = PRECISION_TARGET,
               edit_order: Sequence[str] | None = None) -> SegmentScores:
    """Segment AP, recall at ``target`` precision, best F1, copy-free counts and per-edit numbers (module
    docstring), plus the VSC 2022 µAP (``vsc_micro_ap``) of the same predictions."""
    if not 0 < iou <= 1:
        raise ValueError(f"iou must be in (0, 1], got {iou!r}")
    queries, copy_free = set(map(str, queries)), set(map(str, copy_free))
    t = truth_segments(truth, queries, copy_free)
    oriented = orient_predictions(predictions, queries)
    labels = label_segments(oriented, t, copy_free, iou=iou)
    ranked = ranked_segments(labels, len(t))
    recall, thr = recall_at_precision(ranked, target)
    f1, thr_f1 = best_f1(ranked)

    def kept(threshold: float | None) -> pd.DataFrame:
        return labels.iloc[0:0] if threshold is None else labels[labels["score"] >= threshold]

    def copy_free_hits(threshold: float | None) -> tuple[float, float]:
        if threshold is None:
            return float("nan"), float("nan")
        hit = kept(threshold)
        hit = hit[hit["query"].isin(copy_free)]
        return float(len(hit)), float(hit["query"].nunique())

    cf_p90, cfq_p90 = copy_free_hits(thr)
    cf_f1, cfq_f1 = copy_free_hits(thr_f1)
    correct = labels[labels["correct"]]
    found_by = dict(zip(correct["truth"], correct["prediction"], strict=True))
    found_score = dict(zip(correct["truth"], correct["score"], strict=True))
    t = t.assign(found_by=[int(found_by.get(i, -1)) for i in t["truth"]],
                 found_score=[float(found_score.get(i, np.nan)) for i in t["truth"]])

    present = list(dict.fromkeys(t["edit"]))
    order = {e: i for i, e in enumerate(edit_order or [])}
    rows = []
    for e in sorted(present, key=lambda e: (order.get(e, len(order)), present.index(e))):
        ids = set(t.loc[t["edit"] == e, "truth"])
        mine = labels[~labels["correct"] | labels["truth"].isin(ids)]
        rows.append({"edit": e, "n_truth": len(ids), "ap": micro_ap(ranked_segments(mine, len(ids))),
                     "recall_at_p90": kept(thr)["truth"].isin(ids).sum() / len(ids),
                     "recall_at_best_f1": kept(thr_f1)["truth"].isin(ids).sum() / len(ids),
                     "found": correct["truth"].isin(ids).sum() / len(ids)})
    per_edit = pd.DataFrame(rows, columns=PER_EDIT_COLUMNS).astype({"n_truth": "int64"})

    ignored = oriented[oriented["side"] != ""]
    ignored = ignored[ORIENTED_COLUMNS].assign(rank=0, status=ignored["side"].to_numpy(), correct=False,
                                               truth=-1, edit="", iou=np.nan)
    vsc = _vsc_curve(labels, t)
    summary = {
        "n_truth": len(t), "n_queries": len(queries), "n_copy_free": len(copy_free),
        "n_predictions": len(predictions), "n_scored": len(labels),
        "n_ignored_two_queries": int((oriented["side"] == IGNORED_TWO_QUERIES).sum()),
        "n_ignored_no_query": int((oriented["side"] == IGNORED_NO_QUERY).sum()),
        "n_correct": len(correct), "iou": float(iou), "precision_target": float(target),
        "segment_ap": micro_ap(ranked), "recall_at_p90": recall, "threshold_at_p90": thr,
        "precision_at_p90": _precision_at(ranked, thr),
        "copy_free_predictions_at_p90": cf_p90, "copy_free_queries_at_p90": cfq_p90,
        "best_f1": f1, "threshold_at_best_f1": thr_f1, "precision_at_best_f1": _precision_at(ranked, thr_f1),
        "recall_at_best_f1": float(ranked.recall[int((ranked.scores >= thr_f1).sum()) - 1]) if thr_f1 is not None
        else (0.0 if len(t) else float("nan")),
        "copy_free_predictions_at_best_f1": cf_f1, "copy_free_queries_at_best_f1": cfq_f1,
        "vsc_micro_ap": vsc.micro_ap,
    }
    all_labels = pd.concat([labels, ignored], ignore_index=True) if len(ignored) else labels
    return SegmentScores(summary, per_edit, all_labels, t, vsc)


# ------------------------------------------------------------------------------ VSC 2022 matching track


@dataclass(frozen=True)
class VscMatching:
    """VSC 2022 matching-track µAP and its precision-recall curve: one point per score step that raised
    recall (``thresholds`` = that step's score)."""

    micro_ap: float
    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for s, e in sorted(intervals):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _length(merged: list[tuple[float, float]]) -> float:
    return float(sum(e - s for s, e in merged))


def _common_length(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Length of the intersection of two unions (each sorted and disjoint): a walk over both."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _vsc_curve(labels: pd.DataFrame, truth: pd.DataFrame) -> VscMatching:
    """The VSC definition (module docstring) over the scored predictions of ``label_segments``."""
    boxes = {k: g[["start_q", "end_q", "start_v", "end_v"]].to_numpy(np.float64)
             for k, g in truth.groupby(["query", "video"], sort=False)}
    gt_total = [sum(_length(_union(list(map(tuple, b[:, 2 * a:2 * a + 2])))) for b in boxes.values())
                for a in range(2)]
    if not len(truth):
        return VscMatching(float("nan"), np.zeros(0), np.zeros(0), np.zeros(0))
    preds: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    touched = {k: np.zeros(len(b), bool) for k, b in boxes.items()}
    state: dict[tuple[str, str], np.ndarray] = {}  # per pair: [I_q, I_v, P_q, P_v]
    sums = np.zeros(4)
    uap, recall = 0.0, 0.0
    points: list[tuple[float, float, float]] = []
    labels = labels.sort_values("score", ascending=False, kind="mergesort")
    rows = list(zip(labels["query"], labels["video"], labels["start_q"], labels["end_q"], labels["start_v"],
                    labels["end_v"], labels["score"], strict=True))
    for n, (query, video, *box, score) in enumerate(rows):
        key = (query, video)
        preds.setdefault(key, []).append(tuple(box))
        new = np.zeros(4)
        if key in boxes:
            b = boxes[key]
            area = (np.clip(np.minimum(box[1], b[:, 1]) - np.maximum(box[0], b[:, 0]), 0, None)
                    * np.clip(np.minimum(box[3], b[:, 3]) - np.maximum(box[2], b[:, 2]), 0, None))
            touched[key] |= area > 0
        for a in range(2):
            mine = _union([(p[2 * a], p[2 * a + 1]) for p in preds[key]])
            new[2 + a] = _length(mine)
            if key in boxes:
                hit = boxes[key][touched[key]]
                new[a] = _common_length(mine, _union(list(map(tuple, hit[:, 2 * a:2 * a + 2]))))
        sums += new - state.get(key, np.zeros(4))
        state[key] = new
        if n + 1 < len(rows) and rows[n + 1][-1] == score:
            continue  # all predictions of one score form one step
        rec = [sums[a] / gt_total[a] if gt_total[a] > 0 else 0.0 for a in range(2)]
        prec = [sums[a] / sums[2 + a] if sums[2 + a] > 0 else 0.0 for a in range(2)]
        new_recall, precision = math.sqrt(rec[0] * rec[1]), math.sqrt(prec[0] * prec[1])
        if new_recall > recall:
            uap += precision * (new_recall - recall)
            points.append((precision, new_recall, float(score)))
            recall = new_recall
    arr = np.array(points, np.float64).reshape(-1, 3)
    return VscMatching(float(uap), arr[:, 0], arr[:, 1], arr[:, 2])


def vsc_matching(predictions: pd.DataFrame, truth: pd.DataFrame, queries: Iterable[str]) -> VscMatching:
    """VSC 2022 matching-track µAP and curve of ``predictions`` (module docstring)."""
    queries = set(map(str, queries))
    t = truth_segments(truth, queries)
    return _vsc_curve(label_segments(orient_predictions(predictions, queries), t), t)


def vsc_matching_uap(predictions: pd.DataFrame, truth: pd.DataFrame, queries: Iterable[str]) -> float:
    """VSC 2022 matching-track µAP (module docstring); NaN without true segments."""
    return vsc_matching(predictions, truth, queries).micro_ap


# ------------------------------------------------------------------------------ text


def format_segment_table(scores: SegmentScores) -> str:
    """The scores as aligned text: the overall line, then one line per edit."""
    from framesim.evaluation.runner import _align, _cell  # lazily: runner may import this module

    s = scores.summary
    head = ["segments", "scored", "ignored", "segment AP", "recall@P90", "threshold", "copy-free@P90",
            "best F1", "F1 threshold", "copy-free@F1", "VSC µAP"]
    row = [_cell(s["n_truth"], "int"), _cell(s["n_scored"], "int"),
           _cell(s["n_ignored_two_queries"] + s["n_ignored_no_query"], "int"), _cell(s["segment_ap"], "f"),
           _cell(s["recall_at_p90"], "f"), _cell(s["threshold_at_p90"], "f"),
           _cell(s["copy_free_predictions_at_p90"], "int"), _cell(s["best_f1"], "f"),
           _cell(s["threshold_at_best_f1"], "f"), _cell(s["copy_free_predictions_at_best_f1"], "int"),
           _cell(s["vsc_micro_ap"], "f")]
    lines = _align([head, row])
    if len(scores.per_edit):
        lines += ["", f"per edit (IoU >= {s['iou']:g} on both axes; every false positive in each row)"]
        rows = [["edit", "segments", "AP", "recall@P90", "recall@F1", "found"]]
        rows += [[r.edit or "—", _cell(r.n_truth, "int"), _cell(r.ap, "f"), _cell(r.recall_at_p90, "f"),
                  _cell(r.recall_at_best_f1, "f"), _cell(r.found, "f")] for r in scores.per_edit.itertuples()]
        lines += _align(rows)
    return "\n".join(lines)
