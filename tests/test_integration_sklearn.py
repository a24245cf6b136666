"""The scikit-learn meta-estimator, with real scikit-learn: its estimator checks, its numbers against `lacal.fit` on
the same out-of-fold scores, and its balanced accuracy against the plain estimator, `class_weight="balanced"` and
`TunedThresholdClassifierCV`."""

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import make_classification  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402
from sklearn.model_selection import (GridSearchCV, StratifiedKFold, TunedThresholdClassifierCV,  # noqa: E402
                                     cross_val_predict, train_test_split)
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import lacal  # noqa: E402
from lacal.integrations.sklearn import LogitAdjustedClassifier  # noqa: E402


@parametrize_with_checks([LogitAdjustedClassifier(LogisticRegression(max_iter=200), cv=3),
                          LogitAdjustedClassifier(LinearSVC(), cv=3, tau=1.0)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def skewed(seed=0, classes=4, weights=(0.7, 0.2, 0.07, 0.03), samples=4000, informative=8, separation=1.0):
    X, y = make_classification(n_samples=samples, n_features=20, n_informative=informative, n_classes=classes,
                               n_clusters_per_class=1, weights=list(weights), class_sep=separation,
                               random_state=seed)
    return train_test_split(X, y, test_size=0.5, stratify=y, random_state=0)


def test_tau_is_lacal_fit_on_the_out_of_fold_log_probabilities():
    X, _, y, _ = skewed()
    y = np.array(["cat", "dog", "eel", "fox"])[y]  # string labels: classes_ maps them
    model = LogitAdjustedClassifier(LogisticRegression(max_iter=1000), cv=4).fit(X, y)
    codes = np.searchsorted(model.classes_, y)
    scores = cross_val_predict(LogisticRegression(max_iter=1000), X, codes, cv=StratifiedKFold(4),
                               method="predict_proba")
    expected = lacal.fit(np.log(scores), codes, np.bincount(codes), record_inputs=False)
    assert model.tau_ == expected.tau
    assert model.calibration_.tau_interval == expected.calibration.tau_interval
    assert np.array_equal(model.class_counts_, np.bincount(codes))
    # prediction: argmax of the refitted estimator's log-probabilities minus tau * log(pi), by hand
    refit = LogisticRegression(max_iter=1000).fit(X, codes)
    by_hand = np.log(refit.predict_proba(X)) - model.tau_ * np.log(np.bincount(codes) / len(codes))
    assert np.array_equal(model.predict(X), model.classes_[by_hand.argmax(1)])
    np.testing.assert_allclose(model.decision_function(X), by_hand, atol=1e-9)
    np.testing.assert_allclose(model.predict_proba(X).sum(1), 1.0)


def test_fixed_tau_needs_no_cross_validation_and_binary_decision_is_one_column():
    X, _, y, _ = skewed(classes=2, weights=(0.9, 0.1), informative=5)
    model = LogitAdjustedClassifier(LogisticRegression(max_iter=1000), tau=1.0).fit(X, y)
    assert model.fit_result_ is None and model.tau_ == 1.0
    pi = np.bincount(y) / len(y)
    log_odds = model.estimator_.decision_function(X)
    np.testing.assert_allclose(model.decision_function(X), log_odds - np.log(pi[1] / pi[0]), atol=1e-9)
    assert np.array_equal(model.predict(X), (log_odds > np.log(pi[1] / pi[0])).astype(int))


def test_imbalanced_multiclass_beats_the_plain_estimator_and_matches_class_weight_balanced():
    X_train, X_test, y_train, y_test = skewed()
    plain = LogisticRegression(max_iter=1000).fit(X_train, y_train)
    balanced = LogisticRegression(max_iter=1000, class_weight="balanced").fit(X_train, y_train)
    adjusted = LogitAdjustedClassifier(LogisticRegression(max_iter=1000)).fit(X_train, y_train)
    scores = {name: balanced_accuracy_score(y_test, model.predict(X_test))
              for name, model in (("plain", plain), ("balanced", balanced), ("adjusted", adjusted))}
    assert scores["adjusted"] > scores["plain"] + 0.03, scores
    assert scores["adjusted"] >= scores["balanced"] - 0.015, scores  # without retraining with class weights


def test_two_classes_match_tuned_threshold_classifier():
    X_train, X_test, y_train, y_test = skewed(seed=0, classes=2, weights=(0.95, 0.05), informative=5,
                                              separation=0.7)
    tuned = TunedThresholdClassifierCV(LogisticRegression(max_iter=1000), scoring="balanced_accuracy")
    tuned.fit(X_train, y_train)
    adjusted = LogitAdjustedClassifier(LogisticRegression(max_iter=1000)).fit(X_train, y_train)
    ours = balanced_accuracy_score(y_test, adjusted.predict(X_test))
    theirs = balanced_accuracy_score(y_test, tuned.predict(X_test))
    assert ours >= theirs - 0.01, (ours, theirs)
    assert ours > balanced_accuracy_score(y_test, LogisticRegression(max_iter=1000).fit(X_train, y_train)
                                          .predict(X_test)) + 0.05


def test_in_a_pipeline_and_grid_search():
    X_train, X_test, y_train, y_test = skewed(samples=1200)
    pipeline = make_pipeline(StandardScaler(), LogitAdjustedClassifier(LogisticRegression(max_iter=500), cv=3))
    search = GridSearchCV(pipeline, {"logitadjustedclassifier__metric": ["balanced_error", "worst_class_error"],
                                     "logitadjustedclassifier__estimator__C": [0.1, 1.0]},
                          scoring="balanced_accuracy", cv=3).fit(X_train, y_train)
    best = search.best_estimator_[-1]
    assert best.calibration_.metric == best.metric.replace("_", "-")
    assert search.predict(X_test).shape == y_test.shape
    assert 0.0 <= best.tau_ <= 4.0


def test_bad_options_are_value_errors():
    X, _, y, _ = skewed(samples=400)
    with pytest.raises(ValueError, match="metric"):
        LogitAdjustedClassifier(metric="accuracy").fit(X, y)
    with pytest.raises(ValueError, match="tau"):
        LogitAdjustedClassifier(tau="high").fit(X, y)
    with pytest.raises(ValueError, match="response_method"):
        LogitAdjustedClassifier(response_method="predict").fit(X, y)


def test_wraps_a_pipeline_that_takes_raw_text():
    from sklearn.feature_extraction.text import CountVectorizer

    rng = np.random.default_rng(0)
    counts = [120, 40, 12]
    y = np.repeat(np.arange(3), counts)
    words = np.array([f"w{i}" for i in range(30)])
    texts = [" ".join(rng.choice(words, 6)) + f" c{label}" * int(rng.random() < 0.6) for label in y]
    model = LogitAdjustedClassifier(make_pipeline(CountVectorizer(), LogisticRegression(max_iter=500)), cv=3)
    model.fit(texts, y)
    assert model.predict(["w1 w2 c2"]).tolist() == [2]
    assert model.calibration_.counts.tolist() == counts
