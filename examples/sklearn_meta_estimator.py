"""Logit adjustment around a scikit-learn classifier, with `LogitAdjustedClassifier`.

Run: python examples/sklearn_meta_estimator.py   (a few seconds)

An imbalanced 4-class problem (70 / 20 / 7 / 3 % of the samples): the plain LogisticRegression favours the head
classes; `class_weight="balanced"` fixes that by retraining with weights; `LogitAdjustedClassifier` fits tau on
out-of-fold log-probabilities and shifts the plain model's scores by -tau * log(pi), no weights needed. Then the same
for two classes beside scikit-learn's `TunedThresholdClassifierCV`.
"""

from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import TunedThresholdClassifierCV, train_test_split

from lacal.integrations.sklearn import LogitAdjustedClassifier


def split(classes, weights, informative, separation):
    X, y = make_classification(n_samples=4000, n_features=20, n_informative=informative, n_classes=classes,
                               n_clusters_per_class=1, weights=weights, class_sep=separation, random_state=0)
    return train_test_split(X, y, test_size=0.5, stratify=y, random_state=0)


def main() -> None:
    X_train, X_test, y_train, y_test = split(4, [0.7, 0.2, 0.07, 0.03], 8, 1.0)
    models = {
        "LogisticRegression": LogisticRegression(max_iter=1000),
        "class_weight='balanced'": LogisticRegression(max_iter=1000, class_weight="balanced"),
        "LogitAdjustedClassifier": LogitAdjustedClassifier(LogisticRegression(max_iter=1000)),
    }
    print("4 classes, test balanced accuracy")
    for name, model in models.items():
        model.fit(X_train, y_train)
        print(f"  {name:<28} {balanced_accuracy_score(y_test, model.predict(X_test)):.2%}")
    print(f"  fitted tau = {models['LogitAdjustedClassifier'].tau_:.3f}")

    X_train, X_test, y_train, y_test = split(2, [0.95, 0.05], 5, 0.7)
    tuned = TunedThresholdClassifierCV(LogisticRegression(max_iter=1000), scoring="balanced_accuracy")
    adjusted = LogitAdjustedClassifier(LogisticRegression(max_iter=1000))
    print("2 classes, test balanced accuracy")
    for name, model in (("TunedThresholdClassifierCV", tuned), ("LogitAdjustedClassifier", adjusted)):
        model.fit(X_train, y_train)
        print(f"  {name:<28} {balanced_accuracy_score(y_test, model.predict(X_test)):.2%}")


if __name__ == "__main__":
    main()
