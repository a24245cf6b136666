"""A scikit-learn meta-estimator that adds post-hoc logit adjustment to any classifier (`pip install lacal[sklearn]`).

`LogitAdjustedClassifier(estimator)` fits tau on out-of-fold log-scores of the estimator (`predict_proba`, or
`decision_function`) with the training class counts as priors, then refits the estimator on all the data; it
predicts argmax_y log p(y | x) - tau * log(pi_y). Like `TunedThresholdClassifierCV`, which tunes a binary
threshold, but for any number of classes.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import check_cv, cross_val_predict
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils import indexable
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ..core.calibration import Calibration
from ..errors import OptionError
from .common import check_tau, fit_logits

METRICS = {"balanced_error": "balanced-error", "worst_class_error": "worst-class-error"}
RESPONSE_METHODS = ("auto", "predict_proba", "decision_function")


class LogitAdjustedClassifier(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Post-hoc logit adjustment around a classifier: predict argmax_y s_y(x) - tau * log(pi_y), where s are the
    estimator's log-scores, pi the training class frequencies and tau fitted on out-of-fold scores.

    Args:
        estimator: the classifier to wrap (LogisticRegression() when None); cloned, never changed.
        tau: "auto" (fitted exactly on out-of-fold scores, the tau in `tau_range` that minimises `metric`) or a
            number (no cross-validation: 1 is the Bayes rule for a balanced target when the scores are
            calibrated log-posteriors).
        cv: as for `cross_val_predict` (an int, a splitter or an iterable of splits); stratified for an int.
        metric: "balanced_error" or "worst_class_error", minimised by tau.
        tau_range: (low, high) searched for tau.
        response_method: "auto" (predict_proba when the estimator has it, else decision_function),
            "predict_proba" (log-probabilities) or "decision_function" (a binary score d becomes the log-scores
            [0, d]).
        n_jobs: parallel fits of the cross-validation.

    Attributes:
        estimator_: the estimator refitted on all the data.
        classes_: the class labels.
        class_counts_: the training count of each class (the priors).
        tau_: the fitted (or given) tau.
        calibration_: the `lacal.Calibration` (save it with `.save(path)`; `lacal apply` reads it).
        fit_result_: the `lacal.FitResult` of the out-of-fold fit (None with a fixed tau).

    Example:
        >>> from sklearn.linear_model import LogisticRegression
        >>> model = LogitAdjustedClassifier(LogisticRegression(max_iter=1000)).fit(X, y)
        >>> model.tau_, model.predict(X_test)
    """

    def __init__(self, estimator=None, *, tau="auto", cv=5, metric="balanced_error", tau_range=(0.0, 4.0),
                 response_method="auto", n_jobs=None):
        self.estimator = estimator
        self.tau = tau
        self.cv = cv
        self.metric = metric
        self.tau_range = tau_range
        self.response_method = response_method
        self.n_jobs = n_jobs

    def _base(self):
        return LogisticRegression() if self.estimator is None else self.estimator

    def _method(self, estimator) -> str:
        if self.response_method not in RESPONSE_METHODS:
            raise ValueError(f"response_method must be one of {', '.join(RESPONSE_METHODS)}, got "
                             f"{self.response_method!r}")
        if self.response_method != "auto":
            return self.response_method
        return "predict_proba" if hasattr(estimator, "predict_proba") else "decision_function"

    def fit(self, X, y, **fit_params):
        """Fit tau on out-of-fold log-scores (unless `tau` is a number), then the estimator on all of (X, y).

        Args:
            X: the training inputs (anything the estimator takes).
            y: the class labels.
            **fit_params: passed to the estimator's `fit` (also in the cross-validation).

        Returns:
            self.
        """
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        tau = _tau(self.tau)
        X, y = indexable(X, y)  # X as the estimator takes it (text for a vectorizing pipeline, a DataFrame, ...)
        y = column_or_1d(y, warn=True)
        if y.shape[0] == 0:
            raise ValueError("found 0 samples while a minimum of 1 is required")
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        codes = encoder.transform(y)
        counts = np.bincount(codes, minlength=len(self.classes_)).astype(np.int64)
        if len(self.classes_) < 2:
            raise ValueError(f"needs samples of at least 2 classes; got 1 class ({self.classes_[0]!r})")
        base = self._base()
        method = self._method(base)
        self.class_counts_ = counts
        self.fit_result_ = None
        names = [str(c) for c in self.classes_]
        if tau == "auto":
            splitter = check_cv(self.cv, codes, classifier=True)
            scores = cross_val_predict(clone(base), X, codes, cv=splitter, method=method, n_jobs=self.n_jobs,
                                       params=fit_params)
            self.fit_result_ = fit_logits(_log_scores(scores, method, len(self.classes_)), codes, counts,
                                          tau_range=tuple(self.tau_range), metric=METRICS[self.metric],
                                          class_names=names)
            self.calibration_ = self.fit_result_.calibration
        else:
            self.calibration_ = Calibration(tau=tau, priors=counts / counts.sum(), counts=counts,
                                            class_names=names)
        self.tau_ = float(self.calibration_.tau)
        self.estimator_ = clone(base).fit(X, codes, **fit_params)
        return self

    def _adjusted(self, X) -> np.ndarray:
        check_is_fitted(self)
        method = self._method(self.estimator_)
        scores = _log_scores(getattr(self.estimator_, method)(X), method, len(self.classes_))
        return np.asarray(self.calibration_.adjust(scores.astype(np.float64)))

    def decision_function(self, X):
        """The adjusted log-scores s(x) - tau * log(pi): n_samples x n_classes, or for two classes (as scikit-learn
        has it) the difference of the second class's and the first's, positive for `classes_[1]`."""
        scores = self._adjusted(X)
        return scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores

    def predict_proba(self, X):
        """softmax of the adjusted log-scores: the posterior under balanced classes when the estimator's
        probabilities are calibrated."""
        scores = self._adjusted(X)
        scores = scores - scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X):
        return np.log(self.predict_proba(X))

    def predict(self, X):
        """The class with the largest adjusted log-score."""
        scores = self._adjusted(X)
        return self.classes_[np.argmax(scores, axis=1)]

    @property
    def n_features_in_(self):
        """The number of features the refitted estimator saw (when it records it)."""
        return self.estimator_.n_features_in_

    @property
    def feature_names_in_(self):
        return self.estimator_.feature_names_in_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        base = self._base()
        try:
            inner = base.__sklearn_tags__()
            tags.input_tags.sparse = inner.input_tags.sparse
            tags.input_tags.allow_nan = inner.input_tags.allow_nan
        except AttributeError:
            pass
        return tags


def _tau(tau):
    try:
        return check_tau(tau)
    except OptionError as exc:
        raise ValueError(exc.problem) from None


def _log_scores(scores, method: str, num_classes: int) -> np.ndarray:
    """n x C log-scores: log-probabilities (floored at the smallest positive float), or the decision function (a
    binary one, d = log-odds for LogisticRegression, as [0, d])."""
    scores = np.asarray(scores, dtype=np.float64)
    if method == "predict_proba":
        return np.log(np.clip(scores, np.finfo(np.float64).tiny, None))
    if scores.ndim == 1:
        scores = np.column_stack([np.zeros_like(scores), scores])
    if scores.shape[1] != num_classes:
        raise ValueError(f"the estimator's decision_function gave {scores.shape[1]} columns for {num_classes} "
                         "classes")
    return scores
