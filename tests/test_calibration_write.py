import json
import os
import stat

import numpy as np
import pytest
import torch

import lacal
from lacal.errors import InputDataError, MismatchError, OutputError
from lacal.data.writers import atomic_path, write_logits, write_text
from lacal.methods.multilabel import multilabel_priors

from .conftest import long_tail_problem


def test_calibration_round_trip(tmp_path):
    logits, labels, counts = long_tail_problem(dtype=np.float64)
    priors = lacal.core.priors_from_counts(counts)
    fit = lacal.methods.fit_tau(logits, labels, priors)
    calibration = lacal.Calibration.from_fit(fit, priors, [f"c{i}" for i in range(len(counts))],
                                             {"val": {"path": "v.npy", "sha256": "0" * 64}})
    calibration.save(tmp_path / "cal.json")
    again = lacal.Calibration.load(tmp_path / "cal.json")
    assert again == calibration
    assert again.validation["balanced_error_after"] == fit.after.balanced_error
    data = json.loads((tmp_path / "cal.json").read_text())
    assert data["schema_version"] == 2 and data["format"] == "lacal-calibration"
    np.testing.assert_allclose(data["offsets"], -fit.tau * np.log(counts / counts.sum()))
    np.testing.assert_allclose(again.adjust(logits), lacal.core.adjust_logits(logits, counts, fit.tau))


def test_calibration_checks(tmp_path):
    calibration = lacal.Calibration(tau=1.0, priors=np.array([0.5, 0.5]))
    with pytest.raises(MismatchError, match="for 2 classes but the logits have 3"):
        calibration.adjust(np.zeros((4, 3)))
    (tmp_path / "x.json").write_text('{"format": "lacal-calibration", "schema_version": 99}')
    with pytest.raises(InputDataError, match="schema version 99"):
        lacal.Calibration.load(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"tau": 1}')
    with pytest.raises(InputDataError, match="not a lacal calibration"):
        lacal.Calibration.load(tmp_path / "y.json")


def test_failure_mid_write_leaves_no_file(tmp_path):
    def blocks():
        yield 0, torch.zeros(2, 3)
        raise RuntimeError("disk on fire")

    for name in ("out.npy", "out.safetensors", "out.pt"):
        with pytest.raises(RuntimeError, match="disk on fire"):
            write_logits(tmp_path / name, blocks(), (4, 3), "float32")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_survives_a_failed_forced_write(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("precious")
    with pytest.raises(ZeroDivisionError):
        with atomic_path(target, force=True) as temporary:
            temporary.write_text("half")
            1 / 0
    assert target.read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_output_refusals(tmp_path):
    (tmp_path / "in.npy").write_bytes(b"x")
    with pytest.raises(OutputError, match="already exists; pass --force"):
        write_text(tmp_path / "in.npy", "y")
    with pytest.raises(OutputError, match="is also an input"):
        write_text(tmp_path / "in.npy", "y", force=True, inputs=[tmp_path / "in.npy"])
    with pytest.raises(OutputError, match="does not exist"):
        write_text(tmp_path / "no" / "out.json", "y")
    assert (tmp_path / "in.npy").read_bytes() == b"x"


def test_written_files_get_normal_permissions(tmp_path):
    write_text(tmp_path / "out.json", "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o666 & ~mask


# Multi-label heads (one sigmoid per label): the same behaviour, the other task.


def test_multilabel_calibration_round_trip_and_validation(tmp_path):
    import json

    from lacal.core.calibration import Calibration
    from lacal.errors import InputDataError

    priors = multilabel_priors([3, 50, 97], 100)
    calibration = Calibration(tau=1.5, priors=priors.priors, counts=priors.positives, multi_label=True,
                              train_samples=100)
    calibration.save(tmp_path / "c.json")
    loaded = Calibration.load(tmp_path / "c.json")
    assert loaded == calibration and loaded.multi_label and loaded.train_samples == 100
    np.testing.assert_allclose(loaded.offsets, -1.5 * np.log([3 / 97, 1.0, 97 / 3]))
    assert loaded.offsets[1] == 0.0 and loaded.affine()[0] == 1.0
    data = json.loads((tmp_path / "c.json").read_text())
    data["priors"][0] = 1.0
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(InputDataError, match="strictly between 0 and 1"):
        Calibration.load(tmp_path / "bad.json")


@pytest.mark.parametrize("version, multi", [(1, False), (2, False), (3, True)])
def test_calibration_files_of_every_schema_load_and_give_their_tasks_offsets(tmp_path, version, multi):
    """Schema 1 and 2 (softmax heads, 2 adds target priors and temperature) and 3 (multi-label heads) all load; the
    offsets are -tau log(pi), or -tau log(pi / (1 - pi)) from the positives for a multi-label head."""
    from lacal.core.tasks import task_of

    if multi:
        data = {"format": "lacal-calibration", "schema_version": 3, "multi_label": True, "tau": 0.8,
                "priors": [0.25, 0.5, 0.05], "counts": [5, 10, 1], "train_samples": 20, "smoothing": 0.0}
        expected = -0.8 * np.log(np.array([5, 10, 1]) / np.array([15, 10, 19]))
    else:
        data = {"format": "lacal-calibration", "schema_version": version, "tau": 1.25,
                "priors": [0.5, 0.3, 0.2], "counts": [50, 30, 20]}
        expected = -1.25 * np.log([0.5, 0.3, 0.2])
    (tmp_path / "c.json").write_text(json.dumps(data))
    loaded = lacal.Calibration.load(tmp_path / "c.json")
    assert loaded.multi_label is multi and task_of(calibration=loaded).multi_label is multi
    np.testing.assert_allclose(loaded.offsets, expected, rtol=1e-12)
    np.testing.assert_allclose(loaded.affine()[1], expected, rtol=1e-12)
    np.testing.assert_allclose(lacal.apply(np.zeros((2, 3)), loaded), np.tile(expected, (2, 1)), rtol=1e-12)
