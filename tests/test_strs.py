"""The spot-then-recognize score (MEGC STR task) on hand-made intervals and on the
published MEGC 2025 baseline counts."""

import pytest

from mfvan.model.strs import Labelled, score_str, spotting_f1, strs

CLASSES = ["negative", "positive", "surprise"]


@pytest.mark.parametrize(
    "tp, fp, fn, f1, score",
    [
        (6, 217, 202, 0.0278, 0.0062),  # MEGC 2025 baseline, SAMM (unseen test set)
        (3, 115, 34, 0.0387, 0.0086),  # MEGC 2025 baseline, CAS(ME)^3
    ],
)
def test_the_published_baseline_counts_give_the_published_scores(tp, fp, fn, f1, score):
    assert spotting_f1(tp, fp, fn) == pytest.approx(f1, abs=5e-5)
    assert strs(tp, fp, fn, 0.2222) == pytest.approx(score, abs=5e-5)


def test_hand_made_intervals_are_scored_as_counted_by_hand():
    a = (
        [
            Labelled(11, 21, "positive"),  # IoU 10/12 with (10, 20): right class
            Labelled(52, 58, "surprise"),  # IoU 7/11 with (50, 60): wrong class
            Labelled(200, 210, "positive"),  # nothing there: a false spot
            Labelled(100, 140, "negative"),  # IoU 11/41 with (100, 110): too loose
        ],
        [Labelled(10, 20, "positive"), Labelled(50, 60, "negative"), Labelled(100, 110, None)],
    )
    b = ([Labelled(5, 15, "surprise")], [Labelled(5, 15, "surprise")])
    r = score_str([a, b], CLASSES)
    assert (r["tp"], r["fp"], r["fn"]) == (3, 2, 1)
    assert r["f1"] == pytest.approx(6 / 9)
    # on the 3 true positives: negative F1 0, positive 1, surprise 2/3 (one of two right)
    assert r["recognized"] == 3
    assert r["uf1"] == pytest.approx((0 + 1 + 2 / 3) / 3)
    assert r["uar"] == pytest.approx((0 + 1 + 1) / 3)
    assert r["strs"] == pytest.approx(6 / 9 * (5 / 3) / 3)


def test_no_true_positive_scores_zero():
    r = score_str([([Labelled(0, 5, "positive")], [Labelled(50, 60, "positive")])], CLASSES)
    assert (r["tp"], r["fp"], r["fn"], r["uf1"], r["strs"]) == (0, 1, 1, 0.0, 0.0)
    assert score_str([], CLASSES)["strs"] == 0.0
