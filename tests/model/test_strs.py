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


def test_the_bootstrap_interval_holds_the_pooled_score_and_is_zero_wide_when_videos_agree():
    from mfvan.model.strs import bootstrap

    same = ([Labelled(10, 20, "positive")], [Labelled(10, 20, "positive")])
    ci = bootstrap([same] * 5, CLASSES, reps=200)
    assert ci["f1"] == (1.0, 1.0) and ci["strs"][0] == ci["strs"][1]
    miss = ([Labelled(300, 310, "positive")], [Labelled(10, 20, "positive")])
    videos = [same, same, miss, same, miss, same]
    pooled = score_str(videos, CLASSES)
    ci = bootstrap(videos, CLASSES, reps=500)
    assert ci["f1"][0] < pooled["f1"] < ci["f1"][1]
    assert 0.0 <= ci["strs"][0] <= pooled["strs"] <= ci["strs"][1] <= 1.0


# ----------------------------------------------------------------------------- calibration


def test_expected_calibration_error_by_hand():
    import numpy as np

    from mfvan.model.calibration import ece

    # four predictions at confidence 0.9 (three right) and two at 0.6 (one right):
    # |0.75 - 0.9| * 4/6 + |0.5 - 0.6| * 2/6 = 0.1 + 0.0333
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    labels = np.array([0, 0, 0, 1, 0, 1])
    assert ece(probs, labels) == pytest.approx(0.1 + 0.1 / 3)


def test_temperature_scaling_recovers_the_temperature_that_spoiled_calibrated_predictions():
    import numpy as np

    from mfvan.model.calibration import calibration_report, ece, scale

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (4000, 3))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=row) for row in p])  # calibrated by construction
    overconfident = scale(p, 0.5)  # as a network trained to fit its data is
    report = calibration_report(overconfident, labels)
    assert report["temperature"] == pytest.approx(2.0, rel=0.1)
    assert report["ece_before"] > 0.08 and report["ece_after"] < 0.03
    assert report["ece_after"] == pytest.approx(ece(scale(overconfident, 2.0), labels), abs=0.02)
    assert (scale(overconfident, 2.0).argmax(1) == p.argmax(1)).all(), "never changes the class"


def test_the_reliability_bins_hold_every_prediction_and_give_the_ece():
    import numpy as np

    from mfvan.model.calibration import ece, reliability

    # confidences 0.95 (right 3 of 4) and 0.55 (right 1 of 2)
    probs = np.array([[0.95, 0.05]] * 4 + [[0.55, 0.45]] * 2)
    labels = np.array([0, 0, 0, 1, 0, 1])
    bins = reliability(probs, labels)
    assert [(b["low"], b["count"]) for b in bins] == [(0.5, 2), (0.9, 4)]
    assert bins[1]["accuracy"] == 0.75 and bins[0]["accuracy"] == 0.5
    gap = 4 / 6 * abs(0.75 - 0.95) + 2 / 6 * abs(0.5 - 0.55)
    assert ece(probs, labels) == pytest.approx(gap)
