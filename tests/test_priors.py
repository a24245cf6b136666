import json

import numpy as np
import pytest

import lacal
from lacal.errors import InputDataError, PriorsError
from lacal.core.priors import priors_from_vector, read_priors
from lacal.methods.multilabel import multilabel_offsets, multilabel_priors, multilabel_priors_from_labels


def test_counts_and_priors_from_labels():
    priors = lacal.core.priors_from_labels([0, 0, 0, 1, 2, 2], num_classes=3)
    assert priors.counts.tolist() == [3, 1, 2]
    np.testing.assert_allclose(priors.priors, [0.5, 1 / 6, 1 / 3])


def test_zero_count_names_the_classes():
    with pytest.raises(PriorsError, match=r"2 class\(es\) have no training samples: 1 \(dog\), 3 \(fish\).*"
                                          r"--smoothing"):
        lacal.core.priors_from_counts([5, 0, 3, 0], classes=["cat", "dog", "bird", "fish"])


def test_smoothing_adds_to_every_count():
    priors = lacal.core.priors_from_counts([5, 0, 3], smoothing=0.5)
    np.testing.assert_allclose(priors.priors, np.array([5.5, 0.5, 3.5]) / 9.5)
    assert priors.counts.tolist() == [5, 0, 3] and priors.smoothing == 0.5


def test_label_out_of_range():
    with pytest.raises(InputDataError, match=r"label 3 \(entry 2\) is out of range for 3 classes"):
        lacal.core.class_counts([0, 3, 1], 3)


def test_vector_counts_or_probabilities():
    assert priors_from_vector([10, 30]).counts.tolist() == [10, 30]
    probabilities = priors_from_vector([0.25, 0.75])
    assert probabilities.counts is None and probabilities.priors.tolist() == [0.25, 0.75]
    with pytest.raises(PriorsError, match="neither whole-number counts nor probabilities"):
        priors_from_vector([0.2, 0.3])
    with pytest.raises(PriorsError, match="prior 0"):
        priors_from_vector([0.0, 1.0, 0.0])


def test_priors_file_formats(tmp_path):
    written = lacal.core.priors_from_counts([7, 2, 1], classes=["a", "b", "c"])
    (tmp_path / "p.json").write_text(json.dumps(written.to_dict()))
    (tmp_path / "list.json").write_text("[7, 2, 1]")
    np.save(tmp_path / "p.npy", np.array([0.7, 0.2, 0.1]))
    (tmp_path / "p.txt").write_text("7\n2\n1\n")
    for name in ("p.json", "list.json", "p.npy", "p.txt"):
        np.testing.assert_allclose(read_priors(tmp_path / name).priors, [0.7, 0.2, 0.1])
    again = read_priors(tmp_path / "p.json")
    assert again.classes == ["a", "b", "c"] and again.counts.tolist() == [7, 2, 1]
    (tmp_path / "other.json").write_text('{"weights": [1, 2]}')
    with pytest.raises(PriorsError, match="not a lacal priors file"):
        read_priors(tmp_path / "other.json")


# Multi-label heads (one sigmoid per label): the same behaviour, the other task.


def test_priors_refuse_labels_never_or_always_positive_unless_smoothed():
    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1]], dtype=bool)
    with pytest.raises(PriorsError, match="1 label\\(s\\) have no positive training samples: 1"):
        multilabel_priors_from_labels(labels)
    smoothed = multilabel_priors_from_labels(labels, smoothing=1.0)
    np.testing.assert_allclose(smoothed.priors, [3 / 5, 1 / 5, 4 / 5])
    np.testing.assert_allclose(smoothed.log_odds, np.log([3 / 2, 1 / 4, 4 / 1]))
    with pytest.raises(PriorsError, match="only positive"):
        multilabel_priors_from_labels(labels[:, [0, 2]])


def test_multilabel_offsets_are_minus_tau_times_the_log_odds():
    priors = multilabel_priors([1, 5, 9], 10)
    np.testing.assert_allclose(multilabel_offsets(priors, 2.0), -2 * np.log([1 / 9, 1.0, 9.0]))
    assert multilabel_offsets(priors, 2.0)[1] == 0.0
