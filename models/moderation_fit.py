"""Fitting the text moderation model: the Davidson head, the category probes and their calibrators.

Used by ``train_moderation.py``; nothing here reads or writes files. Every fit is seeded or
deterministic (lbfgs from zeros), so the same inputs give the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score

from models.moderation_text import TEXT_CATEGORIES, Calibrator

#: Davidson's labels as integers, the order of :data:`models.moderation_text.DAVIDSON_CLASSES`.
HATE, OFFENSIVE, NEITHER = 0, 1, 2


@dataclass(frozen=True)
class HeadSettings:
    """The head's hyper-parameters, chosen on a validation part of the training split."""

    vector_weight: float = 0.25  # the MiniLM vector's scale next to the unit-norm TF-IDF parts
    toxic_c: float = 10.0  # inverse L2 strength, toxic (hate or offensive) vs neither
    hate_c: float = 0.3  # hate vs the rest: rarer, so regularised harder
    handwritten_weight: float = 2.0  # a hand-written prompt's weight next to a tweet's
    max_iter: int = 3000


@dataclass(frozen=True)
class ProbeSettings:
    """The probes' hyper-parameters, chosen on out-of-fold scores of the training split."""

    c: float = 1.0
    benign_share: float = 0.5  # of the negatives' weight: benign prompts; the rest, Davidson neither
    neither_fire_rate: float = 0.001  # at most this share of neither tweets may reach 0.50
    max_iter: int = 2000


def fit_logistic(
    x: object, y: np.ndarray, c: float, weights: np.ndarray | None, max_iter: int
) -> tuple[np.ndarray, float]:
    """A binary L2 logistic regression (lbfgs): (coef, intercept)."""
    model = LogisticRegression(C=c, max_iter=max_iter, tol=1e-6)
    model.fit(x, y.astype(np.int64), sample_weight=weights)
    return model.coef_.ravel().astype(np.float64), float(model.intercept_[0])


def balanced_weights(y: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``base`` weights rescaled so each class holds half of the total."""
    weights = base.astype(np.float64).copy()
    for value in (0, 1):
        mask = y == value
        weights[mask] *= 0.5 * base.sum() / max(base[mask].sum(), 1e-12)
    return weights


def fit_head(
    x: object, labels: np.ndarray, base_weights: np.ndarray, settings: HeadSettings
) -> tuple[np.ndarray, np.ndarray]:
    """The head's weights, rows toxic then hate, each class-balanced: (coef (2, d), intercept (2,))."""
    rows, intercepts = [], []
    for target, c in ((labels != NEITHER, settings.toxic_c), (labels == HATE, settings.hate_c)):
        y = target.astype(np.int64)
        coef, intercept = fit_logistic(x, y, c, balanced_weights(y, base_weights), settings.max_iter)
        rows.append(coef)
        intercepts.append(intercept)
    return np.vstack(rows), np.array(intercepts)


def fit_probes(
    vectors: np.ndarray, groups: np.ndarray, settings: ProbeSettings
) -> tuple[np.ndarray, np.ndarray]:
    """One probe per category on MiniLM vectors: (coef (7, 384), intercept (7,)).

    ``groups`` names each row: a category (a positive of that category), ``benign`` or
    ``neither`` (negatives of every category). Rows of other categories are left out of a probe.
    """
    rows, intercepts = [], []
    for category in TEXT_CATEGORIES:
        y, weights = probe_targets(groups, category, settings.benign_share)
        keep = weights > 0
        coef, intercept = fit_logistic(vectors[keep], y[keep], settings.c, weights[keep], settings.max_iter)
        rows.append(coef)
        intercepts.append(intercept)
    return np.vstack(rows), np.array(intercepts)


def probe_targets(groups: np.ndarray, category: str, benign_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Targets and weights of one probe: positives weigh as much as all negatives together.

    >>> y, w = probe_targets(np.array(["sexual", "benign", "neither", "neither", "hate"]), "sexual", 0.5)
    >>> y.tolist(), (w / w.sum()).round(3).tolist()
    ([1, 0, 0, 0, 0], [0.5, 0.25, 0.125, 0.125, 0.0])
    """
    positive = groups == category
    benign, neither = groups == "benign", groups == "neither"
    weights = np.zeros(len(groups))
    weights[positive] = 1.0 / max(positive.sum(), 1)
    weights[benign] = benign_share / max(benign.sum(), 1)
    weights[neither] = (1.0 - benign_share) / max(neither.sum(), 1)
    return positive.astype(np.int64), weights * len(groups)


def platt_slope(logits: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The slope of a logistic fit of ``y`` on ``logits`` (how fast confidence grows)."""
    coef, _ = fit_logistic(logits.reshape(-1, 1), y, 1e4, weights, 1000)
    return max(float(coef[0]), 1e-3)


def threshold_curve(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cuts between distinct logits, with true and false positives of ``logit >= cut`` at each."""
    order = np.argsort(-logits, kind="stable")
    s, t = logits[order], y[order].astype(np.int64)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last row of each distinct value
    tp, fp = np.cumsum(t)[last], np.cumsum(1 - t)[last]
    below = np.r_[s[last][1:], s[-1] - 1.0]
    return (s[last] + below) / 2.0, tp, fp


def best_f1_threshold(logits: np.ndarray, y: np.ndarray, macro: bool = False) -> float:
    """The cut maximising F1 of ``y`` (or the macro F1 of both classes) for ``logit >= cut``."""
    cuts, tp, fp = threshold_curve(logits, y)
    positives, negatives = int(y.sum()), len(y) - int(y.sum())
    f1 = 2 * tp / np.maximum(tp + fp + positives, 1)
    if macro:
        tn, fn = negatives - fp, positives - tp
        f1 = (f1 + 2 * tn / np.maximum(tn + fn + negatives, 1)) / 2
    return float(cuts[int(np.argmax(f1))])


def head_calibrators(
    logits: np.ndarray, labels: np.ndarray, probe_hate: np.ndarray, probe_any: np.ndarray
) -> tuple[Calibrator, Calibrator]:
    """The head's calibrators on Davidson rows, each cut where the whole model does best.

    Hate is cut at the best hate F1 of "hate head or hate probe reaches 0.50"; toxic at the best
    macro F1 (toxic vs neither) of the overall score, where tweets the probes or the hate output
    already flag stay flagged. ``probe_hate`` and ``probe_any`` are those probe flags.
    """
    toxic, hate = (labels != NEITHER).astype(np.int64), (labels == HATE).astype(np.int64)
    hate_calibrator = Calibrator(
        platt_slope(logits[:, 1], hate), best_f1_threshold(_forced(logits[:, 1], probe_hate), hate)
    )
    flagged = probe_any | (logits[:, 1] >= hate_calibrator.threshold)
    toxic_cut = best_f1_threshold(_forced(logits[:, 0], flagged), toxic, macro=True)
    return Calibrator(platt_slope(logits[:, 0], toxic), toxic_cut), hate_calibrator


def _forced(logits: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """``logits`` with the ``flagged`` rows above every other: flagged whatever the cut."""
    return np.where(flagged, logits.max(initial=0.0) + 1.0, logits)


def probe_calibrators(logits: np.ndarray, groups: np.ndarray, settings: ProbeSettings) -> list[Calibrator]:
    """Each probe at its best F1 against benign prompts, raised until at most
    ``neither_fire_rate`` of the Davidson neither tweets reach it."""
    calibrators = []
    for j, category in enumerate(TEXT_CATEGORIES):
        y, weights = probe_targets(groups, category, settings.benign_share)
        keep = weights > 0
        slope = platt_slope(logits[keep, j], y[keep], weights[keep])
        prompts = np.isin(groups, [category, "benign"])
        f1_cut = best_f1_threshold(logits[prompts, j], y[prompts])
        neither = np.sort(logits[groups == "neither", j])
        allowed = int(np.floor(settings.neither_fire_rate * len(neither)))
        neither_cut = float(neither[len(neither) - allowed - 1]) + 1e-6 if len(neither) else -np.inf
        calibrators.append(Calibrator(slope, max(f1_cut, neither_cut)))
    return calibrators


def davidson_metrics(overall: np.ndarray, hate_score: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Toxic (hate or offensive) vs neither at 0.50 on the overall score, and the 3-class view."""
    toxic = labels != NEITHER
    flagged = overall >= 0.5
    per_class = f1_score(toxic, flagged, average=None, labels=[True, False])
    predicted = np.where(hate_score >= 0.5, HATE, np.where(flagged, OFFENSIVE, NEITHER))
    three = f1_score(labels, predicted, average=None, labels=[HATE, OFFENSIVE, NEITHER])
    return {
        "macro_f1": round(float(per_class.mean()), 4),
        "toxic_f1": round(float(per_class[0]), 4),
        "neither_f1": round(float(per_class[1]), 4),
        "auc": round(float(roc_auc_score(toxic, overall)), 4),
        "hate_f1_3class": round(float(three[0]), 4),
        "offensive_f1_3class": round(float(three[1]), 4),
        "neither_f1_3class": round(float(three[2]), 4),
        "macro_f1_3class": round(float(three.mean()), 4),
    }


def davidson_summary(scores: np.ndarray, head_scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Davidson figures of the whole model (``scores``, (n, 7)) and of its head alone
    (``head_scores``: calibrated toxic and hate), and how often each category fires on neither."""
    hate = TEXT_CATEGORIES.index("hate")
    neither = labels == NEITHER
    return {
        "davidson": davidson_metrics(scores.max(axis=1), scores[:, hate], labels),
        "davidson_head_only": davidson_metrics(head_scores.max(axis=1), head_scores[:, 1], labels),
        "davidson_neither_fire_rate": {
            name: round(float((scores[neither, j] >= 0.5).mean()), 4)
            for j, name in enumerate(TEXT_CATEGORIES)
        },
    }


def prompt_metrics(scores: np.ndarray, groups: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per category on hand-written prompts: AUC against benign prompts, recall and benign
    fire rate at 0.50; and the same for the overall score (any category vs benign)."""
    groups_array = np.asarray(groups)
    benign = groups_array == "benign"
    out: dict[str, dict[str, float]] = {}
    columns = [*TEXT_CATEGORIES, "overall"]
    for j, name in enumerate(columns):
        column = scores.max(axis=1) if name == "overall" else scores[:, j]
        positive = np.isin(groups_array, TEXT_CATEGORIES) if name == "overall" else groups_array == name
        if not positive.any() or not benign.any():
            continue
        both = positive | benign
        out[name] = {
            "n": int(positive.sum()),
            "auc_vs_benign": round(float(roc_auc_score(positive[both], column[both])), 4),
            "recall_at_050": round(float((column[positive] >= 0.5).mean()), 4),
            "benign_fire_at_050": round(float((column[benign] >= 0.5).mean()), 4),
        }
    return out
