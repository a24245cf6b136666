"""Hostile input and faults: nothing lacal reads runs code, a failure leaves no partial output, no input is written
over, and bad input gets one line and a documented exit code. Real files, real torch, real signals."""

import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import lacal
from lacal.errors import OutputError
from lacal.data.writers import atomic_path

from .conftest import one_clean_line, run
from .models import C, TimmLike, TorchvisionLike, build, save_hf_folder

COUNTS = np.array([400, 150, 60, 25, 10, 4])
REPO = Path(__file__).resolve().parents[1]


def visible(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


# ---------------------------------------------------------------------------------- torch.export archives


class Boom:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.register_buffer("shift", torch.ones(3), persistent=False)  # a tensor constant

    def forward(self, x):
        return self.fc(x) + self.shift


def _export(path):
    torch.manual_seed(0)
    program = torch.export.export(Small().eval(), (torch.randn(2, 4),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))


def _tampered(clean, out, member, entry, payload):
    """A copy of `clean` with `entry` added to its constants config and `payload` stored as `member`."""
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(out, "w") as target:
        root = source.namelist()[0].split("/")[0]
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("_constants_config.json"):
                config = json.loads(data)
                config["config"]["evil"] = entry
                data = json.dumps(config).encode()
            target.writestr(info.filename, data)
        target.writestr(f"{root}/{member}", payload)


@pytest.mark.parametrize("member, path_name", [
    ("data/constants/OPAQUE_OBJ_0", "opaque_obj_0"),  # torch finds members whatever their case
    ("data/constants/tensor_9", "tensor_9"),  # a tensor constant that asks to be unpickled
])
def test_export_archive_that_asks_to_unpickle_never_runs_code(tmp_path, member, path_name):
    _export(tmp_path / "clean.pt2")
    np.save(tmp_path / "inputs.npy", np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
    marker = tmp_path / "MARKER"
    entry = {"path_name": path_name, "is_param": False, "use_pickle": True, "tensor_meta": None}
    _tampered(tmp_path / "clean.pt2", tmp_path / "evil.pt2", member, entry, pickle.dumps(Boom(marker)))
    result = run("score", tmp_path / "evil.pt2", tmp_path / "inputs.npy", "--out", tmp_path / "logits.npy")
    line = one_clean_line(result, 3)
    assert "refused" in line and "code" in line
    assert not marker.exists() and not (tmp_path / "logits.npy").exists()
    clean = run("score", tmp_path / "clean.pt2", tmp_path / "inputs.npy", "--out", tmp_path / "logits.npy")
    assert clean.exit_code == 0, clean.output
    torch.manual_seed(0)
    expected = Small().eval()
    inputs = torch.from_numpy(np.load(tmp_path / "inputs.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected(inputs).detach().numpy(), rtol=1e-6)


def test_export_archive_with_compiled_code_is_refused(tmp_path):
    _export(tmp_path / "clean.pt2")
    np.save(tmp_path / "inputs.npy", np.zeros((2, 4), dtype=np.float32))
    with zipfile.ZipFile(tmp_path / "clean.pt2") as source, zipfile.ZipFile(tmp_path / "aoti.pt2", "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
        target.writestr("clean/data/aotinductor/model/model.so", b"\x7fELF")
    result = run("score", tmp_path / "aoti.pt2", tmp_path / "inputs.npy", "--out", tmp_path / "logits.npy")
    assert "compiled code" in one_clean_line(result, 3)


# ------------------------------------------------------------------------------------- per-shard folders


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for k, rows in enumerate((20, 30, 25)):
        np.save(tmp_path / "in" / f"part-{k + 1}.npy", rng.normal(size=(rows, C)).astype(np.float32))
    np.save(tmp_path / "counts.npy", COUNTS)
    np.save(tmp_path / "labels.npy", rng.integers(0, C, 75))
    return tmp_path


def _apply_folder(d, *extra):
    return run("apply", d / "in", "--tau", 1, "--priors", d / "counts.npy", "--out", d / "out", *extra)


def test_failed_shard_leaves_no_folder_and_force_keeps_the_old_one(shards):
    good = _apply_folder(shards)
    assert good.exit_code == 0, good.output
    before = {p: p.read_bytes() for p in (shards / "out").iterdir()}
    bad = np.load(shards / "in" / "part-3.npy")
    bad[4, 2] = np.nan
    np.save(shards / "in" / "part-3.npy", bad)
    failed = _apply_folder(shards, "--force")
    assert "NaN" in one_clean_line(failed, 4)
    assert {p: p.read_bytes() for p in (shards / "out").iterdir()} == before  # the old calibration, whole
    assert sorted(p.name for p in shards.iterdir()) == ["counts.npy", "in", "labels.npy", "out"]
    fresh = run("apply", shards / "in", "--tau", 1, "--priors", shards / "counts.npy", "--out", shards / "new")
    one_clean_line(fresh, 4)
    assert not (shards / "new").exists()  # not shards 1-2 without an index
    assert sorted(p.name for p in shards.iterdir()) == ["counts.npy", "in", "labels.npy", "out"]


def test_force_never_deletes_files_lacal_did_not_write(shards):
    assert _apply_folder(shards).exit_code == 0
    (shards / "out" / "notes.txt").write_text("mine")
    refused = _apply_folder(shards, "--force")
    assert "notes.txt" in one_clean_line(refused, 8)
    assert (shards / "out" / "notes.txt").read_text() == "mine"
    (shards / "out" / "notes.txt").unlink()
    assert _apply_folder(shards, "--force").exit_code == 0
    (shards / "mine").mkdir()
    (shards / "mine" / "photo.jpg").write_bytes(b"x")
    other = run("apply", shards / "in", "--tau", 1, "--priors", shards / "counts.npy", "--out", shards / "mine",
                "--force")
    one_clean_line(other, 8)
    assert visible(shards / "mine") == ["photo.jpg"]


@pytest.mark.parametrize("damage, code", [  # a shard missing, one unlisted, shards of other sizes, a bad entry
    (lambda out: (out / "part-2.npy").unlink(), 3),
    (lambda out: np.save(out / "part-9.npy", np.zeros((5, C), dtype=np.float32)), 4),
    (lambda out: [np.save(out / "part-2.npy", np.zeros((29, C), dtype=np.float32)),  # same total, other rows
                  np.save(out / "part-3.npy", np.zeros((26, C), dtype=np.float32))], 4),
    (lambda out: (out / "index.json").write_text(json.dumps(
        {"format": "lacal-shards", "version": 1, "shards": [{"file": 5}]})), 3),
])
def test_readers_refuse_a_folder_that_disagrees_with_its_index(shards, damage, code):
    assert _apply_folder(shards).exit_code == 0
    damage(shards / "out")
    result = run("fit-tau", shards / "out", shards / "labels.npy", "--priors", shards / "counts.npy")
    one_clean_line(result, code)


def test_checkpoint_folder_force_keeps_foreign_files(tmp_path):
    save_hf_folder(build(TimmLike), tmp_path / "hf", 2)
    lacal.Calibration(tau=1.0, priors=COUNTS / COUNTS.sum()).save(tmp_path / "cal.json")
    first = run("apply", tmp_path / "hf", "--calibration", tmp_path / "cal.json", "--out", tmp_path / "out")
    assert first.exit_code == 0, first.output
    (tmp_path / "out" / "notes.txt").write_text("mine")
    again = run("apply", tmp_path / "hf", "--calibration", tmp_path / "cal.json", "--out", tmp_path / "out",
                "--force")
    assert "notes.txt" in one_clean_line(again, 8)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "thesis.tex").write_text("years of work")
    over = run("apply", tmp_path / "hf", "--calibration", tmp_path / "cal.json", "--out", tmp_path / "user",
               "--force")
    one_clean_line(over, 8)
    assert (tmp_path / "user" / "thesis.tex").read_text() == "years of work"


# ------------------------------------------------------------------------------------------ unwritable outputs


@pytest.fixture
def priors_input(tmp_path):
    (tmp_path / "train.txt").write_text("\n".join(str(c) for c in np.repeat(np.arange(C), COUNTS)) + "\n")
    return tmp_path / "train.txt"


def _denied_folder():
    """A folder where creating a file fails even for root (sysfs), or None."""
    try:
        handle = open("/sys/lacal-probe", "w")
    except OSError:
        return Path("/sys")
    handle.close()
    os.unlink("/sys/lacal-probe")
    return None


def test_unwritable_output_gives_exit_8_and_one_line(tmp_path, priors_input):
    denied = _denied_folder()
    if denied is None:
        pytest.skip("no folder here refuses new files")
    result = run("priors", priors_input, "--out", denied / "priors.json")
    assert "cannot write" in one_clean_line(result, 8)


def test_long_legal_name_is_written(tmp_path, priors_input):
    out = tmp_path / ("p" * 244 + ".json")  # 249 bytes: legal; a temporary name built from it was not
    result = run("priors", priors_input, "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["counts"] == COUNTS.tolist()
    assert visible(tmp_path) == sorted(["train.txt", out.name])


@pytest.fixture
def small_disk(tmpfs):
    """A 256 KiB tmpfs (skipped where one cannot be mounted)."""
    return tmpfs("256k")


def test_full_and_read_only_disks(tmp_path, small_disk):
    np.save(tmp_path / "logits.npy", np.random.default_rng(0).normal(size=(20000, C)).astype(np.float32))
    np.save(tmp_path / "counts.npy", COUNTS)
    full = run("apply", tmp_path / "logits.npy", "--tau", 1, "--priors", tmp_path / "counts.npy", "--out",
               small_disk / "adjusted.npy")  # 480 kB into 256 kB
    assert "No space left" in one_clean_line(full, 8)
    assert visible(small_disk) == []
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    read_only = run("apply", tmp_path / "logits.npy", "--tau", 1, "--priors", tmp_path / "counts.npy", "--out",
                    small_disk / "a.npy")
    assert "Read-only" in one_clean_line(read_only, 8)


# ----------------------------------------------------------------------------------------------------- CSV


def test_csv_logits_with_a_byte_order_mark_keep_every_row(tmp_path):
    logits = np.random.default_rng(0).normal(size=(50, C))
    text = "\n".join(",".join(f"{v:.6f}" for v in row) for row in logits) + "\n"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    source = lacal.data.read_logits(tmp_path / "bom.csv")
    assert source.shape == (50, C)
    np.testing.assert_allclose(source.rows(0, 50).numpy(), np.round(logits, 6), atol=1e-12)


def test_csv_numeric_header_is_a_header_and_said(tmp_path):
    logits = np.random.default_rng(0).normal(size=(50, C))
    text = ",".join(str(i) for i in range(C)) + "\n"
    text += "\n".join(",".join(f"{v:.6f}" for v in row) for row in logits) + "\n"
    (tmp_path / "header.csv").write_text(text)
    np.save(tmp_path / "counts.npy", COUNTS)
    result = run("apply", tmp_path / "header.csv", "--tau", 0, "--priors", tmp_path / "counts.npy", "--out",
                 tmp_path / "out.npy")
    assert result.exit_code == 0, result.output
    assert "read as a header" in result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), np.round(logits, 6), atol=1e-12)


def test_csv_predictions_neutralise_formulas(tmp_path):
    names = ["=HYPERLINK(\"http://x\")", "+cmd", "-2+3", "@SUM(A1)", "\tTab", "plain"]
    (tmp_path / "classes.json").write_text(json.dumps(names))
    logits = np.eye(C, dtype=np.float32) * 10  # row k predicts class k
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "counts.npy", COUNTS)
    result = run("apply", tmp_path / "logits.npy", "--tau", 0, "--priors", tmp_path / "counts.npy", "--classes",
                 tmp_path / "classes.json", "--out", tmp_path / "pred.csv")
    assert result.exit_code == 0, result.output
    import csv

    rows = list(csv.reader(open(tmp_path / "pred.csv", newline="", encoding="utf-8")))[1:]
    written = [row[2] for row in rows]
    assert written == ["'" + n for n in names[:5]] + ["plain"]
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row[2:3])


# ------------------------------------------------------------------------------------------- model folders


def _folder_with_head_shard_elsewhere(tmp_path, how):
    """A sharded HF folder whose head shard lives outside it, reached through a symlinked subfolder or file."""
    save_hf_folder(build(TimmLike), tmp_path / "hf", 2)
    index_path = tmp_path / "hf" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    head_file = index["weight_map"]["head.fc.bias"]
    (tmp_path / "elsewhere").mkdir()
    os.replace(tmp_path / "hf" / head_file, tmp_path / "elsewhere" / head_file)
    if how == "folder":
        (tmp_path / "hf" / "sub").symlink_to(tmp_path / "elsewhere")
        index["weight_map"] = {k: ("sub/" + v if v == head_file else v) for k, v in index["weight_map"].items()}
        index_path.write_text(json.dumps(index))
    else:
        (tmp_path / "hf" / head_file).symlink_to(tmp_path / "elsewhere" / head_file)
    return tmp_path / "elsewhere" / head_file


@pytest.mark.parametrize("how", ["folder", "file"])
def test_symlinks_leaving_a_model_folder_are_refused(tmp_path, how):
    outside = _folder_with_head_shard_elsewhere(tmp_path, how)
    before = outside.read_bytes()
    lacal.Calibration(tau=1.0, priors=COUNTS / COUNTS.sum()).save(tmp_path / "cal.json")
    in_place = run("apply", tmp_path / "hf", "--calibration", tmp_path / "cal.json", "--in-place")
    assert "outside" in one_clean_line(in_place, 3) or "symlink" in in_place.stderr
    assert outside.read_bytes() == before
    copied = run("apply", tmp_path / "hf", "--calibration", tmp_path / "cal.json", "--out", tmp_path / "out")
    one_clean_line(copied, 3)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ non-finite values


def test_offsets_beyond_float32_are_refused(tmp_path):
    np.save(tmp_path / "logits.npy", np.random.default_rng(0).normal(size=(10, C)).astype(np.float32))
    np.save(tmp_path / "counts.npy", COUNTS)
    result = run("apply", tmp_path / "logits.npy", "--tau", 1e39, "--priors", tmp_path / "counts.npy", "--out",
                 tmp_path / "out.npy")
    assert "infinite" in one_clean_line(result, 4) or "beyond" in result.stderr
    assert not (tmp_path / "out.npy").exists()
    np.save(tmp_path / "labels.npy", np.arange(10) % C)
    report = run("report", tmp_path / "logits.npy", tmp_path / "labels.npy", "--tau", 1e39, "--priors",
                 tmp_path / "counts.npy")  # every offset infinite in float32: each row would go to class 0
    assert "infinite" in one_clean_line(report, 4)
    priors = COUNTS / COUNTS.sum()
    for name, calibration in (("t.json", lacal.Calibration(tau=1.0, priors=priors, temperature=1e-300)),
                              ("b.json", lacal.Calibration(tau=1.0, priors=priors, bias=np.full(C, 1e308)))):
        calibration.save(tmp_path / name)
        for out in ("out.npy", "out.csv"):
            result = run("apply", tmp_path / "logits.npy", "--calibration", tmp_path / name, "--out", tmp_path / out)
            one_clean_line(result, 4)
            assert not (tmp_path / out).exists()


def test_patched_bias_beyond_its_dtype_is_refused(tmp_path):
    model = build(TorchvisionLike)
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    priors = COUNTS / COUNTS.sum()
    lacal.Calibration(tau=1.0, priors=priors, bias=np.full(C, 1e308)).save(tmp_path / "cal.json")
    result = run("apply", tmp_path / "m.safetensors", "--calibration", tmp_path / "cal.json", "--out",
                 tmp_path / "p.safetensors")
    one_clean_line(result, 9)
    assert not (tmp_path / "p.safetensors").exists()


# ---------------------------------------------------------------------------------------------------- score


class Fickle(torch.nn.Module):
    """Returns 3 classes for a full batch of 4 and 5 for a smaller one."""

    def forward(self, x):
        if x.shape[0] == 4:
            return x[:, :3]
        return x[:, :5]


@pytest.mark.parametrize("suffix", [".npy", ".safetensors", ".npz"])
def test_score_refuses_a_model_whose_width_changes(tmp_path, suffix):
    torch.jit.script(Fickle()).save(str(tmp_path / "fickle.ts"))
    np.save(tmp_path / "inputs.npy", np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32))
    result = run("score", tmp_path / "fickle.ts", tmp_path / "inputs.npy", "--out", tmp_path / f"logits{suffix}",
                 "--batch-size", 4)
    assert "first batch" in one_clean_line(result, 4)
    assert not (tmp_path / f"logits{suffix}").exists()


# ------------------------------------------------------------------------------------------------ checkpoints


def test_patch_record_never_replaces_an_input(tmp_path):
    model = build(TorchvisionLike)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    calibration = tmp_path / "p.pt.lacal.json"  # where the record of --out p.pt would go
    lacal.Calibration(tau=1.0, priors=COUNTS / COUNTS.sum()).save(calibration)
    before = calibration.read_bytes()
    result = run("apply", tmp_path / "m.pt", "--calibration", calibration, "--out", tmp_path / "p.pt")
    one_clean_line(result, 8)
    assert calibration.read_bytes() == before and not (tmp_path / "p.pt").exists()


def test_patched_pytorch_file_carries_its_record_even_without_the_file_beside(tmp_path):
    """The record goes into the checkpoint itself (a plain dict is saved as an OrderedDict with _metadata) and
    beside it after it: a run stopped before the record beside is written still leaves a checkpoint that says it
    is patched, so a retry does not add the offsets twice."""
    state = dict(build(TorchvisionLike).state_dict())  # a plain dict, as torch.save({...}) users write
    torch.save(state, tmp_path / "m.pt")
    lacal.Calibration(tau=1.0, priors=COUNTS / COUNTS.sum()).save(tmp_path / "cal.json")
    first = run("apply", tmp_path / "m.pt", "--calibration", tmp_path / "cal.json", "--out", tmp_path / "p.pt")
    assert first.exit_code == 0, first.output
    os.unlink(tmp_path / "p.pt.lacal.json")  # as if stopped right after the checkpoint
    again = run("apply", tmp_path / "p.pt", "--calibration", tmp_path / "cal.json", "--out", tmp_path / "q.pt")
    assert "already carries a lacal patch" in one_clean_line(again, 9)
    patched = torch.load(tmp_path / "p.pt", weights_only=True)
    np.testing.assert_allclose(patched["fc.bias"].double().numpy(),
                               state["fc.bias"].double().numpy() - np.log(COUNTS / COUNTS.sum()), atol=1e-5)
    assert list(patched) == list(state)


def test_replacing_keeps_permissions(tmp_path, priors_input):
    old = os.umask(0o022)
    try:
        out = tmp_path / "priors.json"
        assert run("priors", priors_input, "--out", out).exit_code == 0
        os.chmod(out, 0o600)
        assert run("priors", priors_input, "--out", out, "--force").exit_code == 0
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
        save_file(build(TorchvisionLike).state_dict(), tmp_path / "m.safetensors")
        os.chmod(tmp_path / "m.safetensors", 0o640)
        lacal.Calibration(tau=1.0, priors=COUNTS / COUNTS.sum()).save(tmp_path / "cal.json")
        result = run("apply", tmp_path / "m.safetensors", "--calibration", tmp_path / "cal.json", "--in-place")
        assert result.exit_code == 0, result.output
        assert stat.S_IMODE(os.stat(tmp_path / "m.safetensors").st_mode) == 0o640
        new = tmp_path / "new.json"
        assert run("priors", priors_input, "--out", new).exit_code == 0
        assert stat.S_IMODE(os.stat(new).st_mode) == 0o644  # a new file: what a plain open gives
    finally:
        os.umask(old)


def test_a_patched_copy_of_a_private_model_stays_private(tmp_path):
    """A new patched file takes its input's permissions (the umask would make a copy of a 0600 model readable by
    everyone), for torch, safetensors and TorchScript models alike."""
    old = os.umask(0o022)
    try:
        lacal.Calibration(tau=1.0, priors=COUNTS / COUNTS.sum()).save(tmp_path / "cal.json")
        model = build(TorchvisionLike).eval()
        torch.save(model.state_dict(), tmp_path / "m.pt")
        save_file(model.state_dict(), tmp_path / "m.safetensors")
        torch.jit.script(model).save(str(tmp_path / "m.jit.pt"))
        for name, out in (("m.pt", "p.pt"), ("m.safetensors", "p.safetensors"), ("m.jit.pt", "p.jit.pt")):
            os.chmod(tmp_path / name, 0o600)
            result = run("apply", tmp_path / name, "--calibration", tmp_path / "cal.json", "--out", tmp_path / out)
            assert result.exit_code == 0, result.output
            assert stat.S_IMODE(os.stat(tmp_path / out).st_mode) == 0o600, name
    finally:
        os.umask(old)


def test_integer_bias_is_refused(tmp_path):
    state = build(TorchvisionLike).state_dict()
    state["fc.bias"] = torch.arange(C, dtype=torch.int64)
    save_file(state, tmp_path / "m.safetensors")
    lacal.Calibration(tau=1.0, priors=COUNTS / COUNTS.sum()).save(tmp_path / "cal.json")
    result = run("apply", tmp_path / "m.safetensors", "--calibration", tmp_path / "cal.json", "--out",
                 tmp_path / "p.safetensors")
    assert "int64" in one_clean_line(result, 9)
    assert not (tmp_path / "p.safetensors").exists()


def test_duplicated_tensor_patches_the_copy_the_index_names(tmp_path):
    save_hf_folder(build(TimmLike), tmp_path / "hf", 2)
    index_path = tmp_path / "hf" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    one, two = load_file(tmp_path / "hf" / first), load_file(tmp_path / "hf" / second)
    real = two["head.fc.bias"]
    stale = real + 100
    one["head.fc.bias"], two["head.fc.bias"] = real, stale  # the index names the first shard's copy
    index["weight_map"]["head.fc.bias"] = first
    save_file(one, tmp_path / "hf" / first, metadata={"format": "pt"})
    save_file(two, tmp_path / "hf" / second, metadata={"format": "pt"})
    index_path.write_text(json.dumps(index))
    priors = COUNTS / COUNTS.sum()
    lacal.Calibration(tau=1.0, priors=priors).save(tmp_path / "cal.json")
    result = run("apply", tmp_path / "hf", "--calibration", tmp_path / "cal.json", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    patched = load_file(tmp_path / "out" / first)["head.fc.bias"].double().numpy()
    np.testing.assert_allclose(patched, real.double().numpy() - np.log(priors), atol=1e-5)
    np.testing.assert_array_equal(load_file(tmp_path / "out" / second)["head.fc.bias"].numpy(), stale.numpy())


# ------------------------------------------------------------------------------------------- concurrent runs


def test_of_two_runs_to_one_new_output_exactly_one_wins(tmp_path):
    out = tmp_path / "out.json"
    with pytest.raises(OutputError, match="meanwhile"):
        with atomic_path(out) as first:
            first.write_text("first")
            with atomic_path(out) as second:  # started later, finished first
                second.write_text("second")
    assert out.read_text() == "second"
    assert visible(tmp_path) == ["out.json"]


# -------------------------------------------------------------------------------------------------- signals


def _slow_score_files(folder):
    """A TorchScript model slow enough on a CPU to be stopped mid-write, and its inputs."""

    class Slow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(256, 256) / 16)

        def forward(self, x):
            for _ in range(300):
                x = torch.tanh(x @ self.weight)
            return x

    torch.jit.script(Slow()).save(str(folder / "slow.ts"))
    np.save(folder / "inputs.npy", np.random.default_rng(0).normal(size=(4000, 256)).astype(np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_leave_no_temporary_file(tmp_path, number):
    _slow_score_files(tmp_path)
    out = tmp_path / "logits.npy"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "lacal", "score", str(tmp_path / "slow.ts"),
                                str(tmp_path / "inputs.npy"), "--out", str(out), "--batch-size", "16", "--quiet",
                                "--device", "cpu"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".logits.npy.*.lacal-tmp")):  # the temporary appears after the first batch
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.02)
    process.send_signal(number)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + number, stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs.npy", "slow.ts"]


def test_a_later_run_removes_stale_temporaries_of_its_target(tmp_path, priors_input):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".priors.json.{dead.pid}.abcd1234.lacal-tmp"
    stale.write_bytes(b"\0" * 1000)
    alive = tmp_path / f".priors.json.{os.getpid()}.efgh5678.lacal-tmp"  # a run still going: kept
    alive.write_bytes(b"\0")
    other = tmp_path / f".other.json.{dead.pid}.abcd1234.lacal-tmp"  # another target's: kept
    other.write_bytes(b"\0")
    assert run("priors", priors_input, "--out", tmp_path / "priors.json").exit_code == 0
    assert not stale.exists() and alive.exists() and other.exists()


# ---------------------------------------------------------------------------------------- low: odd inputs


def _huge_npy(path, shape, descr="<i8"):
    """A tiny .npy file whose header promises a huge array."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": descr, "fortran_order": False, "shape": shape})
        handle.write(b"\0" * 64)


@pytest.fixture
def small(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "val.npy", rng.normal(size=(50, C)).astype(np.float32))
    np.save(tmp_path / "labels.npy", rng.integers(0, C, 50))
    np.save(tmp_path / "counts.npy", COUNTS)
    return tmp_path


def _fit(d, logits="val.npy", labels="labels.npy", *extra):
    return run("fit-tau", d / logits, d / labels, *extra)


def test_tiny_files_that_promise_huge_arrays(small):
    _huge_npy(small / "huge_labels.npy", (10 ** 12,))
    assert "cut short" in one_clean_line(_fit(small, "val.npy", "huge_labels.npy", "--priors", small / "counts.npy"),
                                         3)
    _huge_npy(small / "huge_priors.npy", (10 ** 12,))
    assert "cut short" in one_clean_line(_fit(small, "val.npy", "labels.npy", "--priors", small / "huge_priors.npy"),
                                         3)
    _huge_npy(small / "member.npy", (10 ** 6, 10 ** 6), "<f4")
    with zipfile.ZipFile(small / "huge.npz", "w") as archive:
        archive.write(small / "member.npy", "logits.npy")
    assert "cut short" in one_clean_line(_fit(small, "huge.npz", "labels.npy", "--priors", small / "counts.npy"), 3)


@pytest.mark.parametrize("first, message", [
    ("1" * 31, "too large"),  # 31 digits
    ("1_0", "not an integer"),  # int() would read 10
    ("+5", "not an integer"),
])
def test_odd_label_tokens(small, first, message):
    (small / "labels.txt").write_text("\n".join([first] + ["1"] * 49) + "\n")
    assert message in one_clean_line(_fit(small, "val.npy", "labels.txt", "--priors", small / "counts.npy"), 4)


def test_huge_labels_and_class_counts(small):
    (small / "train.txt").write_text("\n".join(["1000000000000000"] + ["1"] * 49) + "\n")
    assert "more than lacal counts" in one_clean_line(run("priors", small / "train.txt"), 4)
    (small / "ok.txt").write_text("0\n1\n")
    assert "more than lacal counts" in one_clean_line(run("priors", small / "ok.txt", "--num-classes", 10 ** 13), 4)
    np.save(small / "u64.npy", np.array([2 ** 63 + 5] + [1] * 49, dtype=np.uint64))
    line = one_clean_line(_fit(small, "val.npy", "u64.npy", "--priors", small / "counts.npy"), 4)
    assert "9223372036854775813" in line and "negative" not in line


def test_priors_too_large_for_a_float(small):
    (small / "p.json").write_text("[1" + "0" * 400 + ", 1, 1, 1, 1, 1]")
    one_clean_line(_fit(small, "val.npy", "labels.npy", "--priors", small / "p.json"), 5)


def test_deeply_nested_json_everywhere(small):
    deep = "[" * 100000 + "]" * 100000
    for name in ("cal.json", "priors.json", "classes.json"):
        (small / name).write_text(deep)
    one_clean_line(run("apply", small / "val.npy", "--calibration", small / "cal.json", "--out", small / "o.npy"), 3)
    one_clean_line(_fit(small, "val.npy", "labels.npy", "--priors", small / "priors.json"), 3)
    one_clean_line(_fit(small, "val.npy", "labels.npy", "--priors", small / "counts.npy", "--classes",
                        small / "classes.json"), 3)
    (small / "in").mkdir()
    np.save(small / "in" / "a.npy", np.load(small / "val.npy"))
    (small / "in" / "index.json").write_text(deep)
    one_clean_line(_fit(small, "in", "labels.npy", "--priors", small / "counts.npy"), 3)
    save_hf_folder(build(TimmLike), small / "hf", 2)
    (small / "hf" / "config.json").write_text("{\"id2label\": " + deep + "}")
    lacal.Calibration(tau=1.0, priors=COUNTS / COUNTS.sum()).save(small / "good.json")
    one_clean_line(run("apply", small / "hf", "--calibration", small / "good.json", "--out", small / "out"), 3)
    (small / "hf" / "config.json").write_text("{}")
    (small / "hf" / "model.safetensors.index.json").write_text(deep)
    one_clean_line(run("apply", small / "hf", "--calibration", small / "good.json", "--out", small / "out"), 4)


def test_a_bad_shard_index_entry_with_an_output(small):
    (small / "in").mkdir()
    np.save(small / "in" / "a.npy", np.load(small / "val.npy"))
    (small / "in" / "index.json").write_text(json.dumps({"format": "lacal-shards", "version": 1,
                                                          "shards": [{"file": 5}]}))
    result = run("apply", small / "in", "--tau", 1, "--priors", small / "counts.npy", "--out", small / "o.npy")
    one_clean_line(result, 3)
    assert not (small / "o.npy").exists()


def test_tau_range_narrower_than_rounding(small):
    result = _fit(small, "val.npy", "labels.npy", "--priors", small / "counts.npy", "--tau-range",
                  "1,1.0000000000000002")
    assert "narrower" in one_clean_line(result, 6)


def test_demo_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("x")
    one_clean_line(run("demo", "--dir", tmp_path / "file"), 8)
    one_clean_line(run("demo", "--dir", tmp_path / "file" / "below"), 8)


def test_glob_output_that_lands_among_its_shards(small):
    (small / "sh").mkdir()
    np.save(small / "sh" / "a.npy", np.load(small / "val.npy")[:20])
    np.save(small / "sh" / "b.npy", np.load(small / "val.npy")[20:])
    result = run("apply", str(small / "sh" / "*.npy"), "--tau", 1, "--priors", small / "counts.npy", "--out",
                 small / "sh" / "out.npy")
    one_clean_line(result, 8)
    assert sorted(p.name for p in (small / "sh").iterdir()) == ["a.npy", "b.npy"]


def test_byte_order_mark_is_not_part_of_the_first_class_name(tmp_path):
    (tmp_path / "classes.txt").write_bytes(b"\xef\xbb\xbfcat\ndog\n")
    assert lacal.data.read_classes(tmp_path / "classes.txt") == ["cat", "dog"]
    (tmp_path / "labels.csv").write_bytes(b"\xef\xbb\xbflabel\ncat\ndog\n")
    np.testing.assert_array_equal(lacal.data.read_labels(tmp_path / "labels.csv", ["cat", "dog"]), [0, 1])


def test_grid_and_bins_too_large_are_usage_errors(small):
    grid = _fit(small, "val.npy", "labels.npy", "--priors", small / "counts.npy", "--search", "grid",
                "--grid-size", 10 ** 8)
    assert grid.exit_code == 2 and "--grid-size" in grid.stderr and "Traceback" not in grid.output
    bins = run("report", small / "val.npy", small / "labels.npy", "--bins", 10 ** 8)
    assert bins.exit_code == 2 and "--bins" in bins.stderr and "Traceback" not in bins.output


def test_a_folder_moved_aside_by_a_killed_run_comes_back(shards):
    """SIGKILL between the two renames of a folder swap leaves the old folder under a hidden name: the next run
    puts it back before it decides anything."""
    assert _apply_folder(shards).exit_code == 0
    before = {p.name: p.read_bytes() for p in (shards / "out").iterdir()}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.rename(shards / "out", shards / f".out.{dead.pid}.k9x2m4q1.lacal-old")
    (shards / f".out.{dead.pid}.z8y7x6w5.lacal-tmp").mkdir()  # the new folder it was swapping in
    refused = _apply_folder(shards)  # without --force: the old folder is back, so the output exists
    assert "already exists" in one_clean_line(refused, 8)
    assert {p.name: p.read_bytes() for p in (shards / "out").iterdir()} == before
    assert sorted(p.name for p in shards.iterdir()) == ["counts.npy", "in", "labels.npy", "out"]


def test_in_place_folder_patch_that_fails_midway_changes_nothing(tmp_path, small_disk):
    """A temperature changes the head's weight (first shard) and bias (second shard). The second shard does not fit
    on the disk: no shard may be left patched."""
    torch.manual_seed(0)
    folder = small_disk / "hf"
    folder.mkdir()
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    save_file({"fc.weight": torch.randn(C, 8)}, folder / first, metadata={"format": "pt"})
    save_file({"fc.bias": torch.randn(C), "padding": torch.zeros(30000)}, folder / second, metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"fc.weight": first, "fc.bias": second, "padding": second}}))
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * (free - 60000))  # room for the first shard, not the second
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    lacal.Calibration(tau=1.0, priors=COUNTS / COUNTS.sum(), temperature=2.0).save(tmp_path / "cal.json")
    result = run("apply", folder, "--calibration", tmp_path / "cal.json", "--in-place")
    assert result.exit_code == 8 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("lacal: error: ")]
    assert len(errors) == 1 and "No space left" in errors[0]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "hf"]


def test_replaced_folders_keep_their_permissions(shards):
    assert _apply_folder(shards).exit_code == 0
    os.chmod(shards / "out", 0o700)
    assert _apply_folder(shards, "--force").exit_code == 0
    assert stat.S_IMODE(os.stat(shards / "out").st_mode) == 0o700
    save_hf_folder(build(TimmLike), shards / "hf", 2)
    lacal.Calibration(tau=1.0, priors=COUNTS / COUNTS.sum()).save(shards / "cal.json")
    patch = ["apply", shards / "hf", "--calibration", shards / "cal.json", "--out", shards / "patched"]
    assert run(*patch).exit_code == 0
    os.chmod(shards / "patched", 0o750)
    assert run(*patch, "--force").exit_code == 0
    assert stat.S_IMODE(os.stat(shards / "patched").st_mode) == 0o750


def test_deeply_nested_json_in_multilabel_and_deployed_inputs(small, tmp_path):
    deep = "[" * 100000 + "]" * 100000
    (small / "deep.json").write_text(deep)
    labels = np.zeros((np.load(small / "val.npy").shape[0], np.load(small / "val.npy").shape[1]), dtype=np.int8)
    labels[::3, 0] = 1
    np.save(small / "multi.npy", labels)
    one_clean_line(_fit(small, "val.npy", "multi.npy", "--multi-label", "--priors", small / "deep.json"), 3)
    one_clean_line(run("apply", small / "val.npy", "--multi-label", "--calibration", small / "deep.json", "--out",
                       small / "o.npy"), 3)
    assert not (small / "o.npy").exists()


def test_onnx_graph_that_loops_or_has_an_inputless_node_is_refused(tmp_path):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    np.save(tmp_path / "counts.npy", np.array([50, 20, 5]))
    graphs = {
        "self.onnx": [helper.make_node("Identity", ["y"], ["y"])],
        "cycle.onnx": [helper.make_node("Identity", ["a"], ["y"]), helper.make_node("Identity", ["y"], ["a"])],
        "empty.onnx": [helper.make_node("Identity", [], ["y"])],
    }
    for name, nodes in graphs.items():
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
        (tmp_path / name).write_bytes(helper.make_model(graph).SerializeToString())
        result = subprocess.run([sys.executable, "-m", "lacal", "apply", str(tmp_path / name), "--tau", "1",
                                 "--priors", str(tmp_path / "counts.npy"), "--out", str(tmp_path / f"p-{name}")],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 9 and "Traceback" not in result.stderr, (name, result.stderr)
        assert not (tmp_path / f"p-{name}").exists()


@pytest.mark.parametrize("which", ["logits", "labels", "priors"])
def test_npy_of_python_objects_is_refused_as_such(tmp_path, which):
    """An object array (saved with allow_pickle) is refused for what it is, never unpickled and never taken for a
    short file, whichever input it is."""
    files = {"logits": tmp_path / "logits.npy", "labels": tmp_path / "labels.npy", "priors": tmp_path / "counts.npy"}
    np.save(files["logits"], np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32))
    np.save(files["labels"], np.arange(12) % 3)
    np.save(files["priors"], np.array([50, 20, 5]))
    np.save(files[which], np.array([[1, "a", None]] * 12, dtype=object), allow_pickle=True)
    line = one_clean_line(run("fit-tau", files["logits"], files["labels"], "--priors", files["priors"],
                              "--device", "cpu"), 3)
    assert files[which].name in line and "Python objects" in line
