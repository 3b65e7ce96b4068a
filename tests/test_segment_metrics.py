"""framesim.evaluation.segment_metrics: segment AP and the VSC 2022 matching µAP on hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from framesim.evaluation.segment_metrics import (
    COPY_FREE,
    CORRECT,
    DUPLICATE,
    IGNORED_NO_QUERY,
    IGNORED_TWO_QUERIES,
    LABEL_COLUMNS,
    PER_EDIT_COLUMNS,
    POOR_OVERLAP,
    WRONG_PAIR,
    format_segment_table,
    segment_ap,
    vsc_matching,
    vsc_matching_uap,
)

QUERIES = {"q1", "q2", "q3"}
COPY_FREE_QUERIES = {"q3"}


def truth(*rows: tuple) -> pd.DataFrame:
    """Rows ``(query, start_q, end_q, video, start_v, end_v, edit)``."""
    return pd.DataFrame(list(rows), columns=["query", "start_q", "end_q", "video", "start_v", "end_v", "edit"])


def preds(*rows: tuple) -> pd.DataFrame:
    """Rows ``(video_a, start_a, end_a, video_b, start_b, end_b, score)``."""
    return pd.DataFrame(list(rows), columns=["video_a", "start_a", "end_a", "video_b", "start_b", "end_b", "score"])


A = ("q1", 0.0, 10.0, "r1", 5.0, 15.0, "crop")
B = ("q2", 2.0, 6.0, "r2", 0.0, 4.0, "blur")
C = ("q1", 20.0, 30.0, "r1", 40.0, 50.0, "blur")


def hit(t: tuple, score: float) -> tuple:
    """A prediction exactly on true segment ``t``, query on side a."""
    return (t[0], t[1], t[2], t[3], t[4], t[5], score)


def scores(p: pd.DataFrame, t: pd.DataFrame, **kw):
    return segment_ap(p, t, QUERIES, copy_free=COPY_FREE_QUERIES, **kw)


# ------------------------------------------------------------------------------ segment AP


def test_perfect_predictions_score_one():
    s = scores(preds(hit(A, 0.9), hit(B, 0.8)), truth(A, B))
    assert s.summary["segment_ap"] == pytest.approx(1.0)
    assert s.summary["recall_at_p90"] == pytest.approx(1.0)
    assert s.summary["threshold_at_p90"] == pytest.approx(0.8)
    assert s.summary["best_f1"] == pytest.approx(1.0)
    assert s.summary["vsc_micro_ap"] == pytest.approx(1.0)
    assert s.summary["copy_free_predictions_at_p90"] == 0
    assert list(s.labels.columns) == LABEL_COLUMNS
    assert list(s.labels["status"]) == [CORRECT, CORRECT]
    assert list(s.labels["truth"]) == [0, 1]
    assert list(s.truth["found_by"]) == [0, 1]


def test_false_positive_ranked_first():
    fp = ("q1", 0.0, 5.0, "r2", 0.0, 5.0, 0.95)  # a pair with no copy
    s = scores(preds(hit(A, 0.9), hit(B, 0.8), fp), truth(A, B))
    assert s.summary["segment_ap"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert s.summary["recall_at_p90"] == 0.0 and s.summary["threshold_at_p90"] is None
    assert math.isnan(s.summary["copy_free_predictions_at_p90"])  # no operating point
    assert s.summary["best_f1"] == pytest.approx(0.8)  # P 2/3, R 1
    assert s.summary["threshold_at_best_f1"] == pytest.approx(0.8)
    assert list(s.labels["status"]) == [WRONG_PAIR, CORRECT, CORRECT]


def test_second_prediction_of_a_found_segment_is_a_false_positive():
    shifted = ("q1", 1.0, 10.0, "r1", 6.0, 15.0, 0.8)  # IoU 0.9 on both axes, but A is found already
    s = scores(preds(hit(A, 0.9), shifted, hit(B, 0.7)), truth(A, B))
    assert list(s.labels["status"]) == [CORRECT, DUPLICATE, CORRECT]
    assert list(s.labels["truth"]) == [0, -1, 1]
    assert s.summary["segment_ap"] == pytest.approx((1 + 2 / 3) / 2)
    assert s.summary["recall_at_p90"] == pytest.approx(0.5)
    assert s.summary["threshold_at_p90"] == pytest.approx(0.9)
    assert s.summary["n_correct"] == 2


@pytest.mark.parametrize(("end_v", "status"), [(4.9, POOR_OVERLAP), (5.0, CORRECT), (5.1, CORRECT)])
def test_iou_threshold_on_one_axis(end_v, status):
    t = truth(("q1", 0.0, 10.0, "r1", 0.0, 10.0, ""))
    s = scores(preds(("q1", 0.0, 10.0, "r1", 0.0, end_v, 0.5)), t)  # query axis perfect, ref IoU = end_v / 10
    assert s.labels["status"].iloc[0] == status
    assert s.labels["iou"].iloc[0] == pytest.approx(end_v / 10)
    assert s.summary["segment_ap"] == pytest.approx(1.0 if status == CORRECT else 0.0)


def test_stricter_iou_rejects_what_the_default_accepts():
    t = truth(("q1", 0.0, 10.0, "r1", 0.0, 10.0, ""))
    p = preds(("q1", 0.0, 10.0, "r1", 0.0, 6.0, 0.5))
    assert scores(p, t).summary["segment_ap"] == 1.0
    assert scores(p, t, iou=0.7).summary["segment_ap"] == 0.0


def test_swapped_video_order_maps_the_axes():
    t = truth(("q1", 0.0, 10.0, "r1", 20.0, 30.0, ""))
    swapped = preds(("r1", 20.0, 30.0, "q1", 0.0, 10.0, 0.5))  # reference on side a, its times with it
    s = scores(swapped, t)
    assert s.labels["status"].iloc[0] == CORRECT and s.summary["segment_ap"] == 1.0
    assert s.labels[["query", "start_q", "video", "start_v"]].iloc[0].tolist() == ["q1", 0.0, "r1", 20.0]
    axes_confused = preds(("r1", 0.0, 10.0, "q1", 20.0, 30.0, 0.5))
    assert scores(axes_confused, t).labels["status"].iloc[0] == POOR_OVERLAP


def test_predictions_without_exactly_one_query_are_ignored():
    p = preds(hit(A, 0.9), ("r1", 0.0, 5.0, "r2", 0.0, 5.0, 0.99), ("q1", 0.0, 5.0, "q2", 0.0, 5.0, 0.98),
              ("r1", 0.0, 5.0, "r1", 30.0, 35.0, 0.97))  # same-video segment of a reference
    s = scores(p, truth(A))
    assert s.summary["n_ignored_no_query"] == 2 and s.summary["n_ignored_two_queries"] == 1
    assert s.summary["n_scored"] == 1 and s.summary["n_predictions"] == 4
    assert s.summary["segment_ap"] == 1.0 and s.summary["vsc_micro_ap"] == pytest.approx(1.0)
    ignored = s.labels[s.labels["rank"] == 0]
    assert sorted(ignored["status"]) == sorted([IGNORED_NO_QUERY, IGNORED_TWO_QUERIES, IGNORED_NO_QUERY])
    assert not ignored["correct"].any()


def test_copy_free_counts_at_the_operating_points():
    cf_high = ("q3", 0.0, 5.0, "r1", 0.0, 5.0, 0.85)
    cf_low = ("r2", 0.0, 5.0, "q3", 0.0, 5.0, 0.3)
    s = scores(preds(hit(A, 0.9), cf_high, hit(B, 0.8), cf_low), truth(A, B))
    # ranked TP .9, FP .85, TP .8, FP .3: P90 keeps only the first (recall 0.5); best F1 = 0.8 at 0.8
    assert s.summary["threshold_at_p90"] == pytest.approx(0.9)
    assert s.summary["copy_free_predictions_at_p90"] == 0
    assert s.summary["threshold_at_best_f1"] == pytest.approx(0.8)
    assert s.summary["best_f1"] == pytest.approx(0.8)
    assert s.summary["copy_free_predictions_at_best_f1"] == 1
    assert s.summary["copy_free_queries_at_best_f1"] == 1
    assert (s.labels["status"] == COPY_FREE).sum() == 2


def test_per_edit():
    wrong = ("q2", 0.0, 4.0, "r1", 0.0, 4.0, 0.85)
    s = scores(preds(hit(B, 0.9), wrong, hit(A, 0.8), hit(C, 0.7)), truth(A, B, C))
    assert s.summary["segment_ap"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert s.summary["threshold_at_p90"] == pytest.approx(0.9)
    assert s.summary["threshold_at_best_f1"] == pytest.approx(0.7)  # P 3/4, R 1: F1 6/7
    e = s.per_edit.set_index("edit")
    assert list(s.per_edit.columns) == PER_EDIT_COLUMNS
    assert list(e.index) == ["crop", "blur"]  # order of appearance in the truth
    assert e.loc["crop", "n_truth"] == 1 and e.loc["blur", "n_truth"] == 2
    assert e.loc["crop", "ap"] == pytest.approx(1 / 2)  # FP .85 then A
    assert e.loc["blur", "ap"] == pytest.approx((1 + 2 / 3) / 2)  # B, FP, C
    assert e.loc["crop", "recall_at_p90"] == 0.0 and e.loc["blur", "recall_at_p90"] == pytest.approx(0.5)
    assert e.loc["crop", "recall_at_best_f1"] == 1.0 and e.loc["blur", "recall_at_best_f1"] == 1.0
    ordered = scores(preds(hit(B, 0.9)), truth(A, B, C), edit_order=["blur", "crop"])
    assert list(ordered.per_edit["edit"]) == ["blur", "crop"]
    assert ordered.per_edit.set_index("edit").loc["crop", "found"] == 0.0


def test_greedy_matching_takes_the_best_overlap_among_unfound_segments():
    t1 = ("q1", 0.0, 10.0, "r1", 0.0, 10.0, "")
    t2 = ("q1", 2.0, 12.0, "r1", 2.0, 12.0, "")
    s = scores(preds(("q1", 2.0, 11.0, "r1", 2.0, 11.0, 0.9), ("q1", 1.0, 10.0, "r1", 1.0, 10.0, 0.8)), truth(t1, t2))
    assert list(s.labels["truth"]) == [1, 0]  # the first goes to t2 (IoU 0.9 > 0.75), the second to t1
    assert s.summary["segment_ap"] == 1.0


def test_row_order_and_side_order_do_not_change_the_scores():
    rng = np.random.default_rng(3)
    t = truth(A, B, C)
    rows = [hit(A, 0.9), hit(B, 0.4), ("q1", 21.0, 30.0, "r1", 41.0, 50.0, 0.7), ("q2", 0.0, 4.0, "r1", 0.0, 4.0, 0.8),
            ("q3", 0.0, 5.0, "r2", 0.0, 5.0, 0.6), ("q1", 0.0, 9.0, "r1", 5.0, 14.0, 0.5)]
    base = scores(preds(*rows), t).summary
    for _ in range(5):
        shuffled = [rows[i] for i in rng.permutation(len(rows))]
        flipped = [(r[3], r[4], r[5], r[0], r[1], r[2], r[6]) if rng.random() < 0.5 else r for r in shuffled]
        again = scores(preds(*flipped), t).summary
        assert again["segment_ap"] == pytest.approx(base["segment_ap"])
        assert again["vsc_micro_ap"] == pytest.approx(base["vsc_micro_ap"])
        assert again["best_f1"] == pytest.approx(base["best_f1"])


def test_no_predictions():
    s = scores(preds(), truth(A))
    assert s.summary["segment_ap"] == 0.0 and s.summary["recall_at_p90"] == 0.0
    assert s.summary["vsc_micro_ap"] == 0.0 and s.per_edit["found"].iloc[0] == 0.0


@pytest.mark.parametrize(("p", "t", "message"), [
    (preds(hit(A, 0.5)).drop(columns="score"), truth(A), "predictions: missing column"),
    (preds(("q1", 5.0, 1.0, "r1", 0.0, 1.0, 0.5)), truth(A), "predictions: end_a is before start_a"),
    (preds(("q1", 0.0, 1.0, "r1", 0.0, 1.0, float("nan"))), truth(A), "predictions: score"),
    (preds(), truth(("x9", 0.0, 1.0, "r1", 0.0, 1.0, "")), "truth: 1 row(s) with a query not in queries"),
    (preds(), truth(("q1", 0.0, 1.0, "q2", 0.0, 1.0, "")), "reference video that is a query"),
    (preds(), truth(("q3", 0.0, 1.0, "r1", 0.0, 1.0, "")), "copy-free query"),
])
def test_bad_input_raises(p, t, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        scores(p, t)


def test_format_segment_table():
    wrong = ("q2", 0.0, 4.0, "r1", 0.0, 4.0, 0.85)
    text = format_segment_table(scores(preds(hit(B, 0.9), wrong, hit(A, 0.8), hit(C, 0.7)), truth(A, B, C)))
    lines = text.splitlines()
    assert "segment AP" in lines[0] and "VSC µAP" in lines[0]
    assert "0.806" in lines[1]  # (1 + 2/3 + 3/4) / 3
    assert any(line.startswith("crop") and "0.500" in line for line in lines)
    assert any(line.startswith("blur") for line in lines)


# ------------------------------------------------------------------------------ VSC 2022 matching µAP


def vsc(p: pd.DataFrame, t: pd.DataFrame) -> float:
    return vsc_matching_uap(p, t, QUERIES)


def test_vsc_perfect_and_half_a_segment():
    t = truth(("q1", 0.0, 10.0, "r1", 0.0, 10.0, ""))
    assert vsc(preds(("q1", 0.0, 10.0, "r1", 0.0, 10.0, 1.0)), t) == pytest.approx(1.0)
    assert vsc(preds(("q1", 0.0, 5.0, "r1", 0.0, 5.0, 1.0)), t) == pytest.approx(0.5)  # P 1, R 0.5
    assert vsc(preds(("q1", 0.0, 20.0, "r1", 0.0, 20.0, 1.0)), t) == pytest.approx(0.5)  # P 0.5, R 1


def test_vsc_split_segment_is_perfect():
    t = truth(("q1", 4.0, 14.0, "r1", 10.0, 18.0, ""))
    assert vsc(preds(("q1", 4.0, 8.0, "r1", 10.0, 14.0, 1.0), ("q1", 8.0, 14.0, "r1", 14.0, 18.0, 2.0)), t) == \
        pytest.approx(1.0)


def test_vsc_worked_case_over_two_pairs():
    t = truth(("q1", 0.0, 10.0, "r1", 0.0, 10.0, ""), ("q2", 0.0, 4.0, "r2", 10.0, 14.0, ""))  # 14 s per axis
    p = preds(("q1", 0.0, 10.0, "r1", 0.0, 10.0, 0.9),  # exact: R 10/14, P 1
              ("q2", 0.0, 4.0, "r1", 0.0, 4.0, 0.8),  # wrong pair: predicted length 14 per axis, recall unchanged
              ("r2", 10.0, 13.0, "q2", 0.0, 2.0, 0.7))  # part of the second: I = (12, 13), P = (16, 17)
    expected = 10 / 14 + math.sqrt(12 / 16 * 13 / 17) * (math.sqrt(12 * 13) / 14 - 10 / 14)
    m = vsc_matching(p, t, QUERIES)
    assert m.micro_ap == pytest.approx(expected)
    assert m.recall.tolist() == pytest.approx([10 / 14, math.sqrt(12 * 13) / 14])
    assert m.thresholds.tolist() == pytest.approx([0.9, 0.7])


def test_vsc_needs_the_boxes_to_overlap_not_just_the_axes():
    t = truth(("q1", 0.0, 10.0, "r1", 0.0, 10.0, ""), ("q1", 20.0, 30.0, "r1", 20.0, 30.0, ""))
    crossed = preds(("q1", 0.0, 10.0, "r1", 20.0, 30.0, 1.0), ("q1", 20.0, 30.0, "r1", 0.0, 10.0, 1.0))
    assert vsc(crossed, t) == 0.0  # each axis is covered exactly, but with the wrong alignment


def test_vsc_equal_scores_form_one_step():
    t = truth(("q1", 0.0, 10.0, "r1", 0.0, 10.0, ""))
    right, wrong = ("q1", 0.0, 10.0, "r1", 0.0, 10.0, 0.5), ("q1", 0.0, 10.0, "r2", 0.0, 10.0, 0.5)
    assert vsc(preds(right, wrong), t) == pytest.approx(0.5)
    assert vsc(preds(wrong, right), t) == pytest.approx(0.5)
    assert vsc(preds(right, wrong[:-1] + (0.4,)), t) == pytest.approx(1.0)  # the wrong one after: no recall gain


def test_vsc_without_truth_is_nan():
    assert math.isnan(vsc(preds(("q1", 0.0, 1.0, "r1", 0.0, 1.0, 0.5)), truth()))


def test_equal_scores_never_flatter():
    wrong = ("q1", 0.0, 10.0, "r2", 5.0, 15.0, 0.5)
    s = scores(preds(hit(A, 0.5), wrong), truth(A))
    assert s.summary["segment_ap"] == pytest.approx(0.5)  # the tie counts the false positive first
    assert s.summary["recall_at_p90"] == 0.0
    assert math.isnan(s.labels.set_index("status").loc[WRONG_PAIR, "iou"])


def test_no_truth_gives_nan_not_an_error():
    s = scores(preds(("q3", 0.0, 1.0, "r1", 0.0, 1.0, 0.5)), truth())
    assert math.isnan(s.summary["segment_ap"]) and math.isnan(s.summary["vsc_micro_ap"])
    assert s.summary["n_truth"] == 0 and len(s.per_edit) == 0
    assert "segment AP" in format_segment_table(s)


def test_segment_scores_carry_the_vsc_curve():
    p, t = preds(hit(A, 0.9), ("q1", 0.0, 5.0, "r2", 0.0, 5.0, 0.95), hit(B, 0.8)), truth(A, B)
    s = scores(p, t)
    assert s.vsc.micro_ap == pytest.approx(vsc_matching_uap(p, t, QUERIES)) == s.summary["vsc_micro_ap"]
    # FP box 5 x 5 first (recall 0); then A: I 10, P 15 per axis of 14 true; then B: I 14, P 19
    assert s.vsc.micro_ap == pytest.approx(10 / 15 * 10 / 14 + 14 / 19 * 4 / 14)
    assert s.vsc.recall[-1] == pytest.approx(1.0) and s.vsc.thresholds.tolist() == pytest.approx([0.9, 0.8])
