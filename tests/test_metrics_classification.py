import math

import pytest

from medcnn.metrics import binary_classification_report, confusion_counts


def test_report_matches_hand_computed_confusion():
    # 6 positives (4 found), 4 negatives (3 rejected): tp=4 fn=2 tn=3 fp=1
    y = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05, 0.95]
    r = binary_classification_report(y, s)
    assert r["confusion_matrix"] == [[3, 1], [2, 4]]
    assert r["sensitivity"] == pytest.approx(4 / 6)
    assert r["specificity"] == pytest.approx(3 / 4)
    assert r["ppv"] == pytest.approx(4 / 5)
    assert r["npv"] == pytest.approx(3 / 5)
    assert r["accuracy"] == pytest.approx(7 / 10)
    assert r["f1_positive"] == pytest.approx(8 / 11)
    # AUC: of 24 (pos, neg) pairs, those ranked wrongly are the negative 0.95 above all 6 positives
    # and the positives 0.3/0.4 above no other negative: 24 - 6 = 18 correct.
    assert r["auc"] == pytest.approx(18 / 24)


def test_undefined_ratios_are_nan_not_zero():
    r = binary_classification_report([0, 0, 0], [0.1, 0.2, 0.3])
    assert math.isnan(r["sensitivity"]) and math.isnan(r["auc"])
    assert r["specificity"] == 1.0


@pytest.mark.parametrize(
    "y,s,msg",
    [
        ([0, 1], [0.5], "labels but y_score"),
        ([0, 2], [0.1, 0.2], "must be 0 or 1"),
        ([0, 1], [0.1, float("nan")], "NaN"),
    ],
)
def test_bad_input_is_named(y, s, msg):
    with pytest.raises(ValueError, match=msg):
        binary_classification_report(y, s)


def test_confusion_counts():
    assert confusion_counts([1, 0, 1], [1, 1, 0]) == {"tp": 1, "fp": 1, "tn": 0, "fn": 1}
