"""WAR, UAR and per-class figures, checked by hand on small confusion matrices."""
import numpy as np
import pytest

from timnet.metrics import confusion_matrix, per_class, uar, war


def test_confusion_rows_are_the_truth():
    cm = confusion_matrix(np.array([0, 0, 0, 0, 1]), np.array([0, 0, 0, 1, 1]), n_classes=3)
    assert cm.tolist() == [[3, 1, 0], [0, 1, 0], [0, 0, 0]]


def test_war_and_uar_by_hand():
    cm = np.array([[3, 1], [0, 1]])
    assert war(cm) == pytest.approx(4 / 5)
    assert uar(cm) == pytest.approx((3 / 4 + 1 / 1) / 2)  # 0.875: the rare class counts as much


def test_uar_leaves_out_classes_absent_from_the_truth():
    """A class no test utterance has (a small speaker fold) has no recall; predicting it still costs WAR."""
    cm = np.array([[2, 0, 1], [0, 2, 0], [0, 0, 0]])
    assert uar(cm) == pytest.approx((2 / 3 + 1) / 2)
    assert war(cm) == pytest.approx(4 / 5)


def test_per_class_by_hand():
    cm = np.array([[3, 1, 0], [2, 2, 0], [0, 0, 0]])
    r = per_class(cm)
    np.testing.assert_allclose(r["precision"], [3 / 5, 2 / 3, 0])
    np.testing.assert_allclose(r["recall"], [3 / 4, 2 / 4, 0])
    p, q = 3 / 5, 3 / 4
    np.testing.assert_allclose(r["f1"][0], 2 * p * q / (p + q))
    assert r["support"].tolist() == [4, 4, 0]


def test_a_class_no_test_split_holds_has_no_recall_in_the_tables():
    """The text report and the HTML class table give such a class no recall or F1 (a dash), where a
    0 would read as a class the model never recognises."""
    from timnet.evaluate import format_report, summarize
    from timnet.report import _class_table

    # class c: no test utterance, never predicted; class d: never predicted, so no precision
    cm = np.array([[3, 1, 0, 0], [0, 4, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    folds = [{"fold": 1, "war": 7 / 9, "uar": 0.5833, "n_test": 9, "confusion": cm.tolist()}]
    labels = ("a", "b", "c", "d")
    text = format_report(summarize(folds, corpus="X", labels=labels, split="random", seed=0))
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()[:2] in ("a ", "b ", "c ", "d ")}
    assert rows["c"] == ["-", "-", "-", "0"] and rows["d"] == ["-", "0.0000", "0.0000", "1"]
    assert rows["a"] == ["0.7500", "0.7500", "0.7500", "4"]
    html = _class_table(folds, labels)
    assert '<td>c</td><td class="num">–</td><td class="num">–</td><td class="num">–</td>' in html
    assert '<td>d</td><td class="num">–</td><td class="num">0.00</td><td class="num">0.00</td>' in html
