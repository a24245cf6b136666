import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import lacal
from lacal.models.checkpoints import find_head, open_checkpoint, read_safetensors_header
from lacal.cli.app import app
from lacal.errors import CheckpointError, MismatchError, VerificationError
from lacal.models.patch import Patch, make_patch, verify_patch, write_checkpoint

from .models import C, D, TimmLike, TorchvisionLike, TwoHeads, VggLike, build, save_hf_folder

runner = CliRunner()
COUNTS = np.array([400, 150, 60, 25, 10, 4])
TAU = 1.3
OFFSETS = -TAU * np.log(COUNTS / COUNTS.sum())


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


@pytest.fixture
def calibration(tmp_path):
    path = tmp_path / "cal.json"
    lacal.Calibration(tau=TAU, priors=COUNTS / COUNTS.sum(), counts=COUNTS).save(path)
    return path


def _inputs(model):
    torch.manual_seed(1)
    return torch.randn(7, 3, 4, 4) if isinstance(model, TorchvisionLike) else torch.randn(7, 8)


def _reload(cls, state, **kwargs):
    model = cls(**kwargs)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _safetensors_bytes(path):
    """{name: (dtype, shape, raw bytes)} in file order, and the metadata."""
    header, start = read_safetensors_header(path)
    data = open(path, "rb").read()
    tensors = {}
    for name, entry in header.items():
        if name != "__metadata__":
            a, b = entry["data_offsets"]
            tensors[name] = (entry["dtype"], entry["shape"], data[start + a:start + b])
    return tensors, header.get("__metadata__", {})


def _assert_predicts_adjusted(cls, original, patched_state, **kwargs):
    patched = _reload(cls, patched_state, **kwargs)
    x = _inputs(original)
    with torch.no_grad():
        expected = original(x).double() + torch.from_numpy(OFFSETS)
        got = patched(x).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- finding the head


@pytest.mark.parametrize("cls, head", [(TorchvisionLike, "fc"), (TimmLike, "head.fc"), (VggLike, "classifier.6")])
def test_head_is_found(tmp_path, cls, head):
    model = build(cls)
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    assert find_head(open_checkpoint(tmp_path / "m.safetensors"), C).name == head


def test_ambiguous_head_lists_candidates(tmp_path, calibration):
    save_file(build(TwoHeads).state_dict(), tmp_path / "m.safetensors")
    result = run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--out", tmp_path / "o.safetensors")
    assert result.exit_code == 9
    assert "2 layers could be the classifier head (6 outputs): " in result.stderr
    assert "proj [6, 5]" in result.stderr and "out [6, 5]" in result.stderr and "--head NAME" in result.stderr
    assert not (tmp_path / "o.safetensors").exists()
    chosen = run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--out",
                 tmp_path / "o.safetensors", "--head", "out")
    assert chosen.exit_code == 0, chosen.output
    patched = load_file(tmp_path / "o.safetensors")
    original = build(TwoHeads).state_dict()
    torch.testing.assert_close(patched["out.bias"].double(), original["out.bias"].double() + torch.from_numpy(OFFSETS))
    assert torch.equal(patched["proj.bias"], original["proj.bias"])


def test_head_with_the_wrong_class_count(tmp_path):
    save_file(build(TorchvisionLike).state_dict(), tmp_path / "m.safetensors")
    with pytest.raises(MismatchError, match="the head .fc. has 6 outputs but the calibration is for 10"):
        find_head(open_checkpoint(tmp_path / "m.safetensors"), 10)


# ------------------------------------------------------------------------------------------------ safetensors file


@pytest.mark.parametrize("cls, head", [(TorchvisionLike, "fc"), (TimmLike, "head.fc"), (VggLike, "classifier.6")])
def test_safetensors_patch_keeps_everything_else(tmp_path, calibration, cls, head):
    model = build(cls)
    save_file(model.state_dict(), tmp_path / "m.safetensors", metadata={"format": "pt", "author": "me"})
    result = run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--out",
                 tmp_path / "p.safetensors")
    assert result.exit_code == 0, result.output
    before, meta_before = _safetensors_bytes(tmp_path / "m.safetensors")
    after, meta_after = _safetensors_bytes(tmp_path / "p.safetensors")
    assert list(after) == list(before)  # same tensors, same order
    for name in before:
        if name != f"{head}.bias":
            assert after[name] == before[name], name  # dtype, shape and bytes
    assert after[f"{head}.bias"][:2] == before[f"{head}.bias"][:2]
    assert meta_after["format"] == "pt" and meta_after["author"] == "me"
    record = json.loads(meta_after["lacal_patch"])
    assert record["tau"] == TAU and record["head"] == head
    assert record["calibration_sha256"] == lacal.data.readers.sha256_file(calibration)
    np.testing.assert_allclose(record["offsets"], OFFSETS)
    _assert_predicts_adjusted(cls, model, load_file(tmp_path / "p.safetensors"))


def test_double_patch_is_refused(tmp_path, calibration):
    save_file(build(TorchvisionLike).state_dict(), tmp_path / "m.safetensors")
    assert run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--out",
               tmp_path / "p.safetensors").exit_code == 0
    again = run("apply", tmp_path / "p.safetensors", "--calibration", calibration, "--out", tmp_path / "q.safetensors")
    assert again.exit_code == 9 and "already carries a lacal patch (tau = 1.3)" in again.stderr
    assert not (tmp_path / "q.safetensors").exists()
    forced = run("apply", tmp_path / "p.safetensors", "--calibration", calibration, "--out",
                 tmp_path / "q.safetensors", "--force")
    assert forced.exit_code == 0


def test_in_place_is_atomic_and_marks_the_file(tmp_path, calibration):
    model = build(TorchvisionLike)
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    inode = os.stat(tmp_path / "m.safetensors").st_ino
    result = run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--in-place")
    assert result.exit_code == 0, result.output
    assert os.stat(tmp_path / "m.safetensors").st_ino != inode  # a new file renamed over the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.json", "m.safetensors"]
    _assert_predicts_adjusted(TorchvisionLike, model, load_file(tmp_path / "m.safetensors"))
    again = run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--in-place")
    assert again.exit_code == 9


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_head_keeps_its_dtype(tmp_path, calibration, dtype):
    model = build(TorchvisionLike, dtype=dtype)
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    result = run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--out",
                 tmp_path / "p.safetensors")
    assert result.exit_code == 0, result.output
    assert f"the bias stays {str(dtype)[6:]}; rounding moved the offsets by at most" in result.stderr
    patched = load_file(tmp_path / "p.safetensors")
    assert patched["fc.bias"].dtype == dtype and patched["fc.weight"].dtype == dtype
    exact = model.fc.bias.double() + torch.from_numpy(OFFSETS)
    rounding = json.loads(_safetensors_bytes(tmp_path / "p.safetensors")[1]["lacal_patch"])["max_rounding_error"]
    assert (patched["fc.bias"].double() - exact).abs().max().item() == pytest.approx(rounding)
    assert 0 < rounding <= torch.finfo(dtype).eps * exact.abs().max().item()


# ---------------------------------------------------------------------------------------------------- PyTorch file


def test_ddp_training_checkpoint(tmp_path, calibration):
    model = build(TorchvisionLike)
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(_inputs(model)).sum().backward()
    optimiser.step()
    checkpoint = {"epoch": 7, "state_dict": wrapped, "optimizer": optimiser.state_dict(), "best_acc": 0.5}
    torch.save(checkpoint, tmp_path / "ckpt.pth")
    result = run("apply", tmp_path / "ckpt.pth", "--calibration", calibration, "--out", tmp_path / "patched.pth")
    assert result.exit_code == 0, result.output
    assert "'module.fc'" in result.stderr
    patched = torch.load(tmp_path / "patched.pth", weights_only=True)
    assert patched["epoch"] == 7 and patched["best_acc"] == 0.5
    assert list(patched["state_dict"]) == list(wrapped)
    for name, tensor in wrapped.items():
        if name != "module.fc.bias":
            assert torch.equal(patched["state_dict"][name], tensor) and patched["state_dict"][name].dtype == tensor.dtype
    for key, value in checkpoint["optimizer"]["state"].items():
        assert torch.equal(patched["optimizer"]["state"][key]["momentum_buffer"], value["momentum_buffer"])
    state = {k[len("module."):]: v for k, v in patched["state_dict"].items()}
    original = _reload(TorchvisionLike, {k[len("module."):]: v for k, v in wrapped.items()})
    _assert_predicts_adjusted(TorchvisionLike, original, state)
    record = json.loads((tmp_path / "patched.pth.lacal.json").read_text())
    assert record["head"] == "module.fc" and record["tau"] == TAU
    again = run("apply", tmp_path / "patched.pth", "--calibration", calibration, "--out", tmp_path / "twice.pth")
    assert again.exit_code == 9 and "already carries a lacal patch" in again.stderr


def test_missing_bias(tmp_path, calibration):
    model = build(TorchvisionLike, bias=False)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    result = run("apply", tmp_path / "m.pt", "--calibration", calibration, "--out", tmp_path / "p.pt")
    assert result.exit_code == 9
    assert "head 'fc' has a weight [6, 5] but no bias" in result.stderr and "--add-bias" in result.stderr
    assert not (tmp_path / "p.pt").exists()
    added = run("apply", tmp_path / "m.pt", "--calibration", calibration, "--out", tmp_path / "p.pt", "--add-bias")
    assert added.exit_code == 0, added.output
    assert "must build this layer with bias=True" in added.stderr
    state = torch.load(tmp_path / "p.pt", weights_only=True)
    assert list(state).index("fc.bias") == list(state).index("fc.weight") + 1
    with_bias = TorchvisionLike(bias=True)
    with_bias.load_state_dict(state, strict=True)
    x = _inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(with_bias.eval()(x).double(), model(x).double() + torch.from_numpy(OFFSETS),
                                   rtol=1e-5, atol=1e-5)


def test_ema_copy_without_bias_gets_one_too(tmp_path, calibration):
    """--add-bias on a training checkpoint adds the bias to the model and to its EMA copy, each beside its weight."""
    model, ema = build(TorchvisionLike, bias=False), build(TorchvisionLike, seed=1, bias=False)
    torch.save({"epoch": 3, "state_dict": model.state_dict(), "state_dict_ema": ema.state_dict()}, tmp_path / "m.pt")
    result = run("apply", tmp_path / "m.pt", "--calibration", calibration, "--out", tmp_path / "p.pt", "--add-bias")
    assert result.exit_code == 0, result.output
    saved = torch.load(tmp_path / "p.pt", weights_only=True)
    assert saved["epoch"] == 3
    for key, original in (("state_dict", model), ("state_dict_ema", ema)):
        assert list(saved[key]).index("fc.bias") == list(saved[key]).index("fc.weight") + 1
        _assert_predicts_adjusted(TorchvisionLike, original, saved[key], bias=True)


def test_malicious_checkpoint_is_refused(tmp_path, calibration):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.bin", "wb") as handle:
        pickle.dump({"fc.weight": torch.zeros(C, D), "x": Exploit()}, handle)
    result = run("apply", tmp_path / "evil.bin", "--calibration", calibration, "--out", tmp_path / "p.bin")
    assert result.exit_code == 3 and "refused: loading this PyTorch file would run code" in result.stderr
    assert not marker.exists() and not (tmp_path / "p.bin").exists()


# ------------------------------------------------------------------------------------------- Hugging Face folders


@pytest.mark.parametrize("shards, layout", [(1, "safetensors"), (3, "safetensors"), (1, "bin")])
def test_hugging_face_folder(tmp_path, calibration, shards, layout):
    model = build(TimmLike)
    save_hf_folder(model, tmp_path / "hf", shards, layout)
    result = run("apply", tmp_path / "hf", "--calibration", calibration, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    files_in = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(files_in + ["lacal_patch.json"])
    checkpoint = open_checkpoint(tmp_path / "out")
    head_file = checkpoint.tensors["head.fc.bias"].file.name
    for name in files_in:
        same = (tmp_path / "hf" / name).read_bytes() == (tmp_path / "out" / name).read_bytes()
        assert same == (name not in (head_file, "config.json")), name  # only the head's file and the config changed
    config_in = json.loads((tmp_path / "hf" / "config.json").read_text())
    config_out = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config_out.pop("lacal_patch")["offsets"] == pytest.approx(OFFSETS.tolist()) and config_out == config_in
    state = {name: checkpoint.tensor(name) for name in checkpoint.tensors}
    _assert_predicts_adjusted(TimmLike, model, state)
    assert json.loads((tmp_path / "out" / "lacal_patch.json").read_text())["tau"] == TAU
    again = run("apply", tmp_path / "out", "--calibration", calibration, "--out", tmp_path / "twice")
    assert again.exit_code == 9 and not (tmp_path / "twice").exists()


def test_hugging_face_folder_hard_links_and_in_place(tmp_path, calibration):
    model = build(TimmLike)
    save_hf_folder(model, tmp_path / "hf", 3)
    result = run("apply", tmp_path / "hf", "--calibration", calibration, "--out", tmp_path / "out", "--link")
    assert result.exit_code == 0, result.output
    head_file = open_checkpoint(tmp_path / "hf").tensors["head.fc.bias"].file.name
    for item in (tmp_path / "hf").iterdir():
        linked = os.stat(item).st_ino == os.stat(tmp_path / "out" / item.name).st_ino
        assert linked == (item.name not in (head_file, "config.json"))
    in_place = run("apply", tmp_path / "hf", "--calibration", calibration, "--in-place")
    assert in_place.exit_code == 0, in_place.output
    assert (tmp_path / "hf" / "lacal_patch.json").exists()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["lacal_patch"]["tau"] == TAU
    assert (tmp_path / "hf" / head_file).read_bytes() == (tmp_path / "out" / head_file).read_bytes()


def test_failure_mid_copy_leaves_no_folder(tmp_path, calibration):
    save_hf_folder(build(TimmLike), tmp_path / "hf", 2)
    (tmp_path / "hf" / "broken").symlink_to(tmp_path / "nowhere")
    result = run("apply", tmp_path / "hf", "--calibration", calibration, "--out", tmp_path / "out")
    assert result.exit_code == 8 and "cannot write" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.json", "hf"]


def test_failure_mid_write_leaves_no_file(tmp_path):
    model = build(TorchvisionLike)
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    checkpoint = open_checkpoint(tmp_path / "m.safetensors")
    head = find_head(checkpoint, C)
    good = make_patch(checkpoint, head, OFFSETS, TAU)
    bad = Patch(head, torch.zeros(C + 1), 0.0, False, good.record,  # bytes that do not fit the bias slot
                replace={"fc.bias": torch.zeros(C + 1)})
    with pytest.raises(CheckpointError, match="do not fit"):
        write_checkpoint(checkpoint, bad, tmp_path / "p.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_class_names_from_config(tmp_path, calibration):
    model = build(TimmLike)
    names = save_hf_folder(model, tmp_path / "hf")
    features = model.features(torch.randn(30, 8)).detach()
    np.save(tmp_path / "features.npy", features.numpy())
    labels = np.array(names * 5)
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    result = run("report", tmp_path / "labels.txt", "--checkpoint", tmp_path / "hf", "--features",
                 tmp_path / "features.npy", "--calibration", calibration, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [row["name"] for row in data["per_class"]] == names
    assert [row["support"] for row in data["per_class"]] == [5] * C


# ------------------------------------------------------------------------------------- features and verification


def test_fit_tau_from_checkpoint_and_features(tmp_path):
    model = build(TorchvisionLike)
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, D)).astype(np.float32)
    labels = rng.integers(0, C, 400)
    np.save(tmp_path / "features.npy", features)
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "counts.npy", COUNTS)
    logits = features.astype(np.float64) @ model.fc.weight.detach().double().numpy().T \
        + model.fc.bias.detach().double().numpy()
    np.save(tmp_path / "logits.npy", logits.astype(np.float32))
    via_head = run("fit-tau", tmp_path / "labels.npy", "--checkpoint", tmp_path / "m.safetensors", "--features",
                   tmp_path / "features.npy", "--priors", tmp_path / "counts.npy", "--json")
    via_logits = run("fit-tau", tmp_path / "logits.npy", tmp_path / "labels.npy", "--priors", tmp_path / "counts.npy",
                     "--json")
    assert via_head.exit_code == 0, via_head.output
    a, b = json.loads(via_head.stdout), json.loads(via_logits.stdout)
    assert a["balanced_error_after"] == b["balanced_error_after"]
    assert a["tau"] == pytest.approx(b["tau"], abs=1e-4)
    wrong = run("fit-tau", tmp_path / "labels.npy", "--checkpoint", tmp_path / "m.safetensors", "--priors",
                tmp_path / "counts.npy")
    assert wrong.exit_code == 6 and "--checkpoint and --features go together" in wrong.stderr


def test_verify_features(tmp_path, calibration):
    model = build(TorchvisionLike)
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    features = model.features(torch.randn(50, 3, 4, 4)).detach()
    np.save(tmp_path / "features.npy", features.numpy())
    result = run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--out",
                 tmp_path / "p.safetensors", "--verify-features", tmp_path / "features.npy")
    assert result.exit_code == 0, result.output
    assert "verified on 50 samples: the patched head gives the adjusted logits (max |difference|" in result.stderr

    checkpoint = open_checkpoint(tmp_path / "m.safetensors")
    head = find_head(checkpoint, C)
    good = make_patch(checkpoint, head, OFFSETS, TAU)
    wrong = Patch(head, good.bias + 0.01, 0.0, False, good.record)
    source = lacal.data.readers.read_logits(tmp_path / "features.npy", what="features")
    with pytest.raises(VerificationError, match="differ from the adjusted logits by up to 0.01"):
        verify_patch(checkpoint, wrong, source, OFFSETS)
    assert verify_patch(checkpoint, good, source, OFFSETS)[0] < 1e-5


def test_tau_and_train_labels_for_a_checkpoint(tmp_path):
    model = build(TorchvisionLike)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    train = np.repeat(np.arange(C), COUNTS)
    np.save(tmp_path / "train.npy", train)
    result = run("apply", tmp_path / "m.pt", "--tau", TAU, "--train-labels", tmp_path / "train.npy", "--out",
                 tmp_path / "p.pt")
    assert result.exit_code == 0, result.output
    _assert_predicts_adjusted(TorchvisionLike, model, torch.load(tmp_path / "p.pt", weights_only=True))


def test_safetensors_metadata_is_readable_by_safetensors(tmp_path, calibration):
    save_file(build(TorchvisionLike).state_dict(), tmp_path / "m.safetensors", metadata={"format": "pt"})
    assert run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--out",
               tmp_path / "p.safetensors").exit_code == 0
    with safe_open(str(tmp_path / "p.safetensors"), framework="pt") as handle:
        assert json.loads(handle.metadata()["lacal_patch"])["head"] == "fc"


# ------------------------------------------------------------------------------------------ review regressions


def test_hub_cache_symlinks_with_link(tmp_path, calibration):
    model = build(TimmLike)
    save_hf_folder(model, tmp_path / "plain", 2)
    snapshot, blobs = tmp_path / "cache" / "snapshots" / "abc", tmp_path / "cache" / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for item in (tmp_path / "plain").iterdir():
        (blobs / item.name).write_bytes(item.read_bytes())
        (snapshot / item.name).symlink_to(os.path.join("..", "..", "blobs", item.name))
    result = run("apply", snapshot, "--calibration", calibration, "--out", tmp_path / "out", "--link")
    assert result.exit_code == 0, result.output
    assert not any(p.is_symlink() for p in (tmp_path / "out").iterdir())
    checkpoint = open_checkpoint(tmp_path / "out")
    _assert_predicts_adjusted(TimmLike, model, {n: checkpoint.tensor(n) for n in checkpoint.tensors})


def test_folder_output_never_lands_on_inputs(tmp_path, calibration):
    save_hf_folder(build(TimmLike), tmp_path / "hf")
    inside = run("apply", tmp_path / "hf", "--calibration", calibration, "--out", tmp_path / "hf" / "patched")
    assert inside.exit_code == 8 and "is the input folder or inside it" in inside.stderr
    assert not (tmp_path / "hf" / "patched").exists()
    assert not [p for p in (tmp_path / "hf").iterdir() if "lacal-tmp" in p.name]
    holder = run("apply", tmp_path / "hf", "--calibration", calibration, "--out", tmp_path, "--force")
    assert holder.exit_code == 8 and "holds an input" in holder.stderr
    assert calibration.exists()


def test_patch_record_travels_inside_pytorch_files(tmp_path, calibration):
    torch.save(build(TorchvisionLike).state_dict(), tmp_path / "m.pt")
    assert run("apply", tmp_path / "m.pt", "--calibration", calibration, "--out", tmp_path / "p.pt").exit_code == 0
    (tmp_path / "p.pt.lacal.json").unlink()
    (tmp_path / "p.pt").rename(tmp_path / "renamed.pt")
    again = run("apply", tmp_path / "renamed.pt", "--calibration", calibration, "--out", tmp_path / "q.pt")
    assert again.exit_code == 9 and "already carries a lacal patch (tau = 1.3)" in again.stderr
    state = torch.load(tmp_path / "renamed.pt", weights_only=True)
    TorchvisionLike().load_state_dict(state, strict=True)  # the record does not disturb loading
    forced = run("apply", tmp_path / "renamed.pt", "--calibration", calibration, "--out", tmp_path / "q.pt",
                 "--force")
    assert forced.exit_code == 0 and "--force patches it again, so the offsets add up" in forced.stderr


def test_hidden_layer_never_stands_in_for_a_head_without_bias(tmp_path, calibration):
    state = {"proj.weight": torch.randn(C, D), "proj.bias": torch.randn(C), "logits.weight": torch.randn(C, C)}
    save_file(state, tmp_path / "m.safetensors")
    result = run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--out", tmp_path / "p.safetensors")
    assert result.exit_code == 9 and "2 layers could be the classifier head" in result.stderr
    assert "logits [6, 6] (no bias)" in result.stderr


def test_head_option_without_the_wrapper_prefix(tmp_path, calibration):
    wrapped = {f"module.{k}": v for k, v in build(TorchvisionLike).state_dict().items()}
    torch.save({"state_dict": wrapped}, tmp_path / "ddp.pth")
    for name in ("fc", "fc.weight", "module.fc"):
        result = run("apply", tmp_path / "ddp.pth", "--calibration", calibration, "--out", tmp_path / "p.pth",
                     "--head", name, "--force")
        assert result.exit_code == 0 and "'module.fc'" in result.stderr, result.output


def test_one_by_one_convolution_head(tmp_path, calibration):
    torch.manual_seed(0)
    model = nn_conv_model()
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    assert find_head(open_checkpoint(tmp_path / "m.safetensors"), C).name == "head.fc"
    result = run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--out",
                 tmp_path / "p.safetensors")
    assert result.exit_code == 0, result.output
    assert "'head.fc' is a 1x1 convolution and lacal cannot see what the model does after it" in result.stderr
    patched = nn_conv_model()
    patched.load_state_dict(load_file(tmp_path / "p.safetensors"))
    x = torch.randn(4, D, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(patched(x).double(), model(x).double() + torch.from_numpy(OFFSETS)[:, None, None],
                                   rtol=1e-5, atol=1e-5)


def nn_conv_model():
    from torch import nn

    model = nn.Module()
    model.head = nn.Module()
    model.head.fc = nn.Conv2d(D, C, 1)
    model.forward = lambda x: model.head.fc(x)
    return model


def test_natural_order_of_sequential_heads(tmp_path):
    state = {f"classifier.{i}.weight": torch.randn(C, C) for i in (0, 9, 10)}
    state.update({f"classifier.{i}.bias": torch.randn(C) for i in (0, 9, 10)})
    save_file(state, tmp_path / "m.safetensors")
    assert find_head(open_checkpoint(tmp_path / "m.safetensors"), C).name == "classifier.10"


def test_metadata_gets_a_format_for_transformers(tmp_path, calibration):
    save_file(build(TorchvisionLike).state_dict(), tmp_path / "m.safetensors")  # no metadata at all
    assert run("apply", tmp_path / "m.safetensors", "--calibration", calibration, "--out",
               tmp_path / "p.safetensors").exit_code == 0
    assert _safetensors_bytes(tmp_path / "p.safetensors")[1]["format"] == "pt"


def test_more_bad_checkpoints(tmp_path, calibration):
    model = build(TorchvisionLike)
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    raw = (tmp_path / "m.safetensors").read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    header["fc.bias"]["data_offsets"] = [0, 10 ** 9]
    encoded = json.dumps(header).encode()
    (tmp_path / "bad.safetensors").write_bytes(len(encoded).to_bytes(8, "little") + encoded + raw[8 + size:])
    save_hf_folder(model, tmp_path / "hf", 2)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: "../" + v for k, v in index["weight_map"].items()}
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps(index))
    np.save(tmp_path / "nan.npy", np.full((3, D), np.nan, dtype=np.float32))
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    other = tmp_path / "cal10.json"
    lacal.Calibration(tau=1.0, priors=np.full(10, 0.1)).save(other)
    cases = [
        (["apply", tmp_path / "bad.safetensors", "--calibration", calibration], 3, "points past the end of the file"),
        (["apply", tmp_path / "hf", "--calibration", calibration], 4, "names a shard outside the folder"),
        (["apply", tmp_path / "m.safetensors", "--calibration", calibration, "--verify-features",
          tmp_path / "nan.npy"], 4, "hold NaN values"),
        (["apply", tmp_path / "list.pt", "--calibration", calibration], 4, "holds no state dict"),
        (["apply", tmp_path / "m.safetensors", "--calibration", other], 7, "has 6 outputs but the calibration is "
                                                                             "for 10 classes"),
    ]
    for args, code, message in cases:
        before = sorted(p.name for p in tmp_path.iterdir())
        result = run(*args, "--out", tmp_path / "out.safetensors")
        assert result.exit_code == code, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_teacher_beside_the_student_is_not_taken_for_an_ema_copy(tmp_path):
    torch.manual_seed(8)
    student = {"body.weight": torch.randn(8, 4), "fc.weight": torch.randn(3, 8), "fc.bias": torch.randn(3)}
    teacher = {"other.weight": torch.randn(8, 4), "deep.weight": torch.randn(8, 8), "fc.weight": torch.randn(3, 8),
               "fc.bias": torch.randn(3)}
    ema = {k: v + 0.01 for k, v in student.items()}
    torch.save({"model": student, "teacher": teacher, "model_ema": ema, "epoch": 1}, tmp_path / "kd.pth")
    np.save(tmp_path / "counts.npy", np.array([50, 20, 5]))
    result = CliRunner().invoke(app, ["apply", str(tmp_path / "kd.pth"), "--tau", "1", "--priors",
                                      str(tmp_path / "counts.npy"), "--out", str(tmp_path / "p.pth")])
    assert result.exit_code == 0, result.output
    patched = torch.load(tmp_path / "p.pth", weights_only=True)
    shift = torch.from_numpy(-np.log(np.array([50, 20, 5]) / 75)).float()
    torch.testing.assert_close(patched["teacher"]["fc.bias"], teacher["fc.bias"], rtol=0, atol=0)
    torch.testing.assert_close(patched["model"]["fc.bias"], student["fc.bias"] + shift)
    torch.testing.assert_close(patched["model_ema"]["fc.bias"], ema["fc.bias"] + shift)


def test_folder_output_keeps_the_mode_of_the_rewritten_shard(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({"body.weight": torch.randn(8, 4), "fc.weight": torch.randn(3, 8), "fc.bias": torch.randn(3)},
              str(folder / "model.safetensors"))
    (folder / "extra.txt").write_text("kept\n")
    for name in ("model.safetensors", "extra.txt"):
        os.chmod(folder / name, 0o600)
    np.save(tmp_path / "counts.npy", np.array([50, 20, 5]))
    result = CliRunner().invoke(app, ["apply", str(folder), "--tau", "1", "--priors", str(tmp_path / "counts.npy"),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for name in ("model.safetensors", "extra.txt"):
        assert os.stat(tmp_path / "out" / name).st_mode & 0o777 == 0o600, name
