"""Classification metrics of speech emotion recognition: WAR, UAR, confusion matrices."""
from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, *, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts; rows are true classes, columns predictions."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def war(cm: np.ndarray) -> float:
    """Weighted average recall: plain accuracy."""
    return float(np.trace(cm) / max(cm.sum(), 1))


def uar(cm: np.ndarray) -> float:
    """Unweighted average recall: the mean per-class recall over the classes present in the truth."""
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1, support and times predicted from a confusion matrix (a
    precision or recall without predictions or support is 0 here: callers show it as undefined)."""
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support, "predicted": predicted}
