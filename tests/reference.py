"""Independent, deliberately naive float64 reference computations the tests compare lacal against."""

import math

import numpy as np


def adjusted(logits, priors, tau):
    logits = np.asarray(logits, dtype=np.float64)
    priors = np.asarray(priors, dtype=np.float64)
    priors = priors / priors.sum()
    out = np.empty_like(logits)
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            out[i, j] = logits[i, j] - tau * math.log(priors[j])
    return out


def predictions(scores):
    """argmax with the first maximum winning, row by row."""
    result = []
    for row in np.asarray(scores, dtype=np.float64):
        best = 0
        for j in range(1, len(row)):
            if row[j] > row[best]:
                best = j
        result.append(best)
    return np.array(result)


def per_class_errors(preds, labels, num_classes):
    errors = []
    for c in range(num_classes):
        members = [i for i in range(len(labels)) if labels[i] == c]
        if not members:
            errors.append(None)
            continue
        wrong = sum(1 for i in members if preds[i] != c)
        errors.append(wrong / len(members))
    return errors


def balanced_error(preds, labels, num_classes):
    errors = [e for e in per_class_errors(preds, labels, num_classes) if e is not None]
    return sum(errors) / len(errors)


def worst_class_error(preds, labels, num_classes):
    return max(e for e in per_class_errors(preds, labels, num_classes) if e is not None)


def metric_at(logits, labels, priors, tau, metric="balanced-error"):
    preds = predictions(adjusted(logits, priors, tau))
    num_classes = np.asarray(logits).shape[1]
    if metric == "balanced-error":
        return balanced_error(preds, labels, num_classes)
    return worst_class_error(preds, labels, num_classes)


def all_breakpoints(logits, labels, priors):
    """Every tau at which some sample's score for its label ties with another class's score."""
    logits = np.asarray(logits, dtype=np.float64)
    log_priors = np.log(np.asarray(priors, dtype=np.float64) / np.sum(priors))
    points = set()
    for i, y in enumerate(labels):
        for j in range(logits.shape[1]):
            slope = log_priors[y] - log_priors[j]
            if j != y and slope != 0:
                points.add((logits[i, y] - logits[i, j]) / slope)
    return sorted(points)


def brute_force_minimum(logits, labels, priors, lo, hi, metric="balanced-error"):
    """The metric minimised over the midpoints of all segments between breakpoints inside (lo, hi), and over the
    single points lo, hi, 0 and 1 (where exact ties in the logits can make a point better than its neighbours)."""
    points = [lo] + [p for p in all_breakpoints(logits, labels, priors) if lo < p < hi] + [hi]
    candidates = [(a + b) / 2 for a, b in zip(points[:-1], points[1:]) if b > a]
    candidates += [t for t in {lo, hi, 0.0, 1.0} if lo <= t <= hi]
    return min(metric_at(logits, labels, priors, t, metric) for t in candidates)
