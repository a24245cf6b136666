"""Model-side safety rules (issue 20), each tested as a class with real files and real frameworks:

- a Hugging Face folder's every copy of the head (safetensors, .bin, sharded indexes of either) is patched
  consistently, or the run is refused;
- heads a model averages (timm's CrossViT) are patched together, also when one is named;
- a model folder's special files (devices, FIFOs, sockets) are refused by name, never read;
- ONNX external data is read only from regular files inside the model's folder;
- a .pt2 archive with a member outside its folder, a TorchScript model whose forward raises, and a full disk give
  one line and a documented exit code.
"""

import json
import os
import socket
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import lacal

from .conftest import one_clean_line, run
from .models import C, TorchvisionLike, build, save_hf_folder

COUNTS = np.array([400, 150, 60, 25, 10, 4])
PRIORS = COUNTS / COUNTS.sum()
TAU = 1.3
OFFSETS = -TAU * np.log(PRIORS)


@pytest.fixture
def calibration(tmp_path):
    path = tmp_path / "cal.json"
    lacal.Calibration(tau=TAU, priors=PRIORS, counts=COUNTS).save(path)
    return path


def _logits(model, x):
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out).double()


def _adjusted(model, x):
    return _logits(model, x) + torch.from_numpy(OFFSETS)


# --------------------------------------------------------------------------- every copy in a Hugging Face folder


def _tiny_vit():
    pytest.importorskip("transformers")
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                       image_size=8, patch_size=4, num_labels=C)
    return ViTForImageClassification(config).eval()


def _load_transformers(folder, safetensors):
    from transformers import ViTForImageClassification

    return ViTForImageClassification.from_pretrained(folder, use_safetensors=safetensors).eval()


def _bin_shards(state, folder, shards=2):
    """pytorch_model-0000k-of-0000n.bin and pytorch_model.bin.index.json, as transformers before 5.0 wrote them."""
    names = list(state)
    per_shard = -(-len(names) // shards)
    weight_map = {}
    for k in range(shards):
        shard = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n].contiguous() for n in names[k * per_shard:(k + 1) * per_shard]}
        torch.save(part, folder / shard)
        weight_map.update({n: shard for n in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))


@pytest.mark.slow
@pytest.mark.parametrize("sharded", [False, True])
def test_transformers_folder_with_safetensors_and_bin_patches_both(tmp_path, calibration, sharded):
    """transformers writes model.safetensors; older versions wrote pytorch_model.bin (or its shards) beside it.
    Each copy, reloaded by transformers itself, gives the adjusted logits."""
    model = _tiny_vit()
    folder = tmp_path / "hf"
    model.save_pretrained(folder, max_shard_size="3KB" if sharded else "5GB")
    state = model.state_dict()
    if sharded:
        assert (folder / "model.safetensors.index.json").exists()
        _bin_shards(state, folder)
    else:
        torch.save({k: v.contiguous() for k, v in state.items()}, folder / "pytorch_model.bin")
    result = lacal.patch_checkpoint(folder, calibration, out=tmp_path / "out")
    assert any("pytorch_model.bin" in message for message in result.messages)
    x = torch.randn(3, 3, 8, 8)
    expected = _adjusted(model, x)
    for safetensors in (True, False):
        torch.testing.assert_close(_logits(_load_transformers(tmp_path / "out", safetensors), x), expected,
                                   rtol=1e-5, atol=1e-5)
    record = json.loads((tmp_path / "out" / "lacal_patch.json").read_text())
    assert record["copies"] == ["pytorch_model.bin.index.json" if sharded else "pytorch_model.bin"]


def test_folder_whose_bin_holds_a_training_checkpoint_is_patched_where_its_state_dict_is(tmp_path, calibration):
    """A Hugging Face folder's pytorch_model.bin saved as {"state_dict": ..., "epoch": ...}: the head inside that
    state dict gets the offsets, in the model's own set and as the copy beside model.safetensors."""
    model = build(TorchvisionLike)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for with_safetensors in (False, True):
        folder = tmp_path / f"hf{int(with_safetensors)}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"architectures": ["ResNetForImageClassification"]}))
        torch.save({"state_dict": state, "epoch": 1}, folder / "pytorch_model.bin")
        if with_safetensors:
            save_file(state, folder / "model.safetensors")
        out = tmp_path / f"out{int(with_safetensors)}"
        lacal.patch_checkpoint(folder, calibration, out=out)
        saved = torch.load(out / "pytorch_model.bin", weights_only=True)
        assert saved["epoch"] == 1 and set(saved["state_dict"]) == set(state)
        np.testing.assert_allclose(saved["state_dict"]["fc.bias"].double().numpy(),
                                   state["fc.bias"].double().numpy() + OFFSETS, rtol=1e-6, atol=1e-6)
        if with_safetensors:
            np.testing.assert_allclose(load_file(out / "model.safetensors")["fc.bias"].double().numpy(),
                                       state["fc.bias"].double().numpy() + OFFSETS, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_timm_save_for_hf_both_formats_patches_both(tmp_path, calibration):
    """timm's save_for_hf(safe_serialization="both") writes model.safetensors and pytorch_model.bin."""
    timm = pytest.importorskip("timm")
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=C, img_size=32, depth=1).eval()
    save_for_hf(model, str(tmp_path / "hf"), safe_serialization="both")
    assert {"model.safetensors", "pytorch_model.bin"} <= set(os.listdir(tmp_path / "hf"))
    run_result = run("apply", tmp_path / "hf", "--calibration", calibration, "--out", tmp_path / "out")
    assert run_result.exit_code == 0, run_result.output
    x = torch.randn(2, 3, 32, 32)
    expected = _adjusted(model, x)
    for state in (load_file(tmp_path / "out" / "model.safetensors"),
                  torch.load(tmp_path / "out" / "pytorch_model.bin", weights_only=True)):
        copy = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=C, img_size=32, depth=1)
        copy.load_state_dict(state)
        torch.testing.assert_close(_logits(copy.eval(), x), expected, rtol=1e-5, atol=1e-5)


def test_folder_copy_without_the_head_is_refused(tmp_path, calibration):
    model = build(TorchvisionLike)
    save_hf_folder(model, tmp_path / "hf")
    torch.save({"conv1.weight": model.conv1.weight.detach()}, tmp_path / "hf" / "pytorch_model.bin")
    result = run("apply", tmp_path / "hf", "--calibration", calibration, "--out", tmp_path / "out")
    line = one_clean_line(result, 9)
    assert "pytorch_model.bin" in line and "'fc.weight'" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["tf_model.h5", "flax_model.msgpack", "model.fp16.safetensors",
                                  "pytorch_model.fp16.bin"])
def test_folder_with_weights_lacal_cannot_patch_is_refused(tmp_path, calibration, name):
    save_hf_folder(build(TorchvisionLike), tmp_path / "hf")
    (tmp_path / "hf" / name).write_bytes(b"weights")
    result = run("apply", tmp_path / "hf", "--calibration", calibration, "--out", tmp_path / "out")
    assert name in one_clean_line(result, 9)
    assert not (tmp_path / "out").exists()


def test_in_place_patch_of_a_folder_rewrites_every_copy(tmp_path, calibration):
    model = build(TorchvisionLike)
    save_hf_folder(model, tmp_path / "hf")
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "hf" / "pytorch_model.bin")
    result = run("apply", tmp_path / "hf", "--calibration", calibration, "--in-place")
    assert result.exit_code == 0, result.output
    expected = model.fc.bias.detach().double() + torch.from_numpy(OFFSETS)
    for state in (load_file(tmp_path / "hf" / "model.safetensors"),
                  torch.load(tmp_path / "hf" / "pytorch_model.bin", weights_only=True)):
        torch.testing.assert_close(state["fc.bias"].double(), expected, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------- heads a model averages


def _crossvit():
    timm = pytest.importorskip("timm")

    torch.manual_seed(0)
    return timm.create_model("crossvit_tiny_240", pretrained=False, num_classes=C, img_size=120).eval()


@pytest.fixture(scope="module")
def crossvit_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crossvit")
    model = _crossvit()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "m.safetensors")
    return folder / "m.safetensors"


@pytest.mark.slow
@pytest.mark.parametrize("head", [None, "head.0", "head.1"])
def test_crossvit_gets_the_full_offsets_in_both_averaged_heads(tmp_path, calibration, crossvit_file, head):
    """CrossViT averages head.0 and head.1; each gets the full offsets, so the average does too, whichever head
    is named (naming one alone would give the model half the offsets)."""
    extra = () if head is None else ("--head", head)
    result = run("apply", crossvit_file, "--calibration", calibration, "--out", tmp_path / "p.safetensors", *extra)
    assert result.exit_code == 0, result.output
    original, patched = _crossvit(), _crossvit()
    patched.load_state_dict(load_file(tmp_path / "p.safetensors"))
    x = torch.randn(2, 3, 120, 120)
    torch.testing.assert_close(_logits(patched, x), _adjusted(original, x), rtol=1e-5, atol=1e-5)
    record = json.loads(_metadata(tmp_path / "p.safetensors")["lacal_patch"])
    assert sorted(record["heads"]) == ["head.0", "head.1"]


def _metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


@pytest.mark.slow
def test_crossvit_module_in_memory_gets_both_heads(calibration):
    model, original = _crossvit(), _crossvit()
    result = lacal.patch_module(model, calibration)
    assert sorted(result.heads) == ["head.0", "head.1"]
    x = torch.randn(2, 3, 120, 120)
    torch.testing.assert_close(_logits(model, x), _adjusted(original, x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------- special files


def _special(folder: Path, kind: str) -> Path:
    path = folder / f"special-{kind}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        try:
            server.bind(str(path))
        except OSError as exc:  # a path too long for a UNIX socket
            pytest.skip(f"cannot make a socket here: {exc}")
        finally:
            server.close()
    else:
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero: a read never ends
        except (PermissionError, OSError) as exc:
            pytest.skip(f"cannot make a device node here: {exc}")
    return path


@pytest.mark.parametrize("kind, word", [("fifo", "named pipe"), ("socket", "socket"), ("device", "device")])
def test_special_file_in_a_model_folder_is_refused_by_name(tmp_path, calibration, kind, word):
    save_hf_folder(build(TorchvisionLike), tmp_path / "hf")
    special = _special(tmp_path / "hf", kind)
    result = run("apply", tmp_path / "hf", "--calibration", calibration, "--out", tmp_path / "out")
    line = one_clean_line(result, 3)
    assert str(special) in line and word in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["m.bin", "m.safetensors", "m.onnx"])
def test_special_file_as_a_checkpoint_is_refused(tmp_path, calibration, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with pytest.raises(lacal.LacalError, match="named pipe") as raised:
        lacal.patch_checkpoint(fifo, calibration, out=tmp_path / f"p{fifo.suffix}")
    assert raised.value.exit_code == 3 and raised.value.source == str(fifo)
    if name == "m.bin":  # the CLI routes a .bin to the checkpoint patcher (a .safetensors may hold logits)
        result = run("apply", fifo, "--calibration", calibration, "--out", tmp_path / "p.bin")
        assert "named pipe" in one_clean_line(result, 3)


def test_symlink_in_a_model_folder_to_a_device_is_refused(tmp_path, calibration):
    save_hf_folder(build(TorchvisionLike), tmp_path / "hf")
    fifo = _special(tmp_path / "hf", "fifo")
    (tmp_path / "hf" / "link").symlink_to(fifo)
    result = run("apply", tmp_path / "hf", "--calibration", calibration, "--out", tmp_path / "out")
    assert "named pipe" in one_clean_line(result, 3)


# ------------------------------------------------------------------------------------------- ONNX external data


def _onnx_with_external(tmp_path, location):
    """A real exported model whose weights live in external data at `location` (then moved to where it points)."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, C)).eval()
    (tmp_path / "m").mkdir()
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(model, (torch.randn(1, 8),), str(plain), dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
    proto = onnx.load(str(plain))
    onnx.save_model(proto, str(tmp_path / "m" / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    proto = onnx.load(str(tmp_path / "m" / "m.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(proto, str(tmp_path / "m" / "m.onnx"))
    target = tmp_path / "m" / location if not os.path.isabs(location) else Path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp_path / "m" / "weights.bin", target)
    return tmp_path / "m" / "m.onnx", model


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink"])
def test_onnx_external_data_outside_the_folder_is_refused(tmp_path, calibration, where):
    if where == "dotdot":
        path, _ = _onnx_with_external(tmp_path, "../outside.bin")
    elif where == "absolute":
        path, _ = _onnx_with_external(tmp_path, str(tmp_path / "elsewhere" / "w.bin"))
    else:
        path, _ = _onnx_with_external(tmp_path, "weights.bin")
        os.replace(tmp_path / "m" / "weights.bin", tmp_path / "outside.bin")
        (tmp_path / "m" / "weights.bin").symlink_to(tmp_path / "outside.bin")
    np.save(tmp_path / "inputs.npy", np.zeros((2, 8), dtype=np.float32))
    (tmp_path / "out").mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    patched = run("apply", path, "--calibration", calibration, "--out", tmp_path / "out" / "p.onnx")
    line = one_clean_line(patched, 3)
    assert str(path) in line and "outside" in line
    scored = run("score", path, tmp_path / "inputs.npy", "--out", tmp_path / "logits.npy")
    assert str(path) in one_clean_line(scored, 3)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing copied out, nothing written


def test_onnx_external_data_that_is_a_fifo_is_refused(tmp_path, calibration):
    path, _ = _onnx_with_external(tmp_path, "weights.bin")
    os.unlink(tmp_path / "m" / "weights.bin")
    os.mkfifo(tmp_path / "m" / "weights.bin")
    result = run("apply", path, "--calibration", calibration, "--out", tmp_path / "p.onnx")
    assert "not a regular file" in one_clean_line(result, 3)


def test_onnx_external_data_inside_the_folder_is_patched_and_placed(tmp_path, calibration):
    pytest.importorskip("onnxruntime")
    path, model = _onnx_with_external(tmp_path, "data/weights.bin")
    (tmp_path / "out").mkdir()
    result = run("apply", path, "--calibration", calibration, "--out", tmp_path / "out" / "p.onnx")
    assert result.exit_code == 0, result.output
    from lacal.models.onnx_patch import OnnxRunner

    x = torch.randn(4, 8)
    got = OnnxRunner(tmp_path / "out" / "p.onnx")(x).double()
    torch.testing.assert_close(got, _adjusted(model, x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ one line, not a trace


def _exported(path):
    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x)

    program = torch.export.export(Small().eval(), (torch.randn(2, 4),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))


@pytest.mark.parametrize("member", ["../evil.txt", "other/evil.txt", "/abs/evil.txt"])
def test_export_archive_with_a_member_outside_its_folder_is_one_line(tmp_path, member):
    _exported(tmp_path / "clean.pt2")
    with zipfile.ZipFile(tmp_path / "clean.pt2") as source, zipfile.ZipFile(tmp_path / "bad.pt2", "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
        target.writestr(member, b"x")
    np.save(tmp_path / "inputs.npy", np.zeros((3, 4), dtype=np.float32))
    result = run("score", tmp_path / "bad.pt2", tmp_path / "inputs.npy", "--out", tmp_path / "logits.npy")
    line = one_clean_line(result, 3)
    assert "outside its folder" in line and str(tmp_path / "bad.pt2") in line
    assert not (tmp_path / "logits.npy").exists()


class Raises(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        if x.shape[0] > 1:
            raise ValueError("batches of one only")
        return self.fc(x)


def test_torchscript_forward_that_raises_is_one_line(tmp_path):
    torch.jit.script(Raises()).save(str(tmp_path / "raises.pt"))
    np.save(tmp_path / "inputs.npy", np.zeros((3, 4), dtype=np.float32))
    result = run("score", tmp_path / "raises.pt", tmp_path / "inputs.npy", "--out", tmp_path / "logits.npy")
    line = one_clean_line(result, 4)
    assert "batches of one only" in line and "rows 1 to 3" in line
    assert not (tmp_path / "logits.npy").exists()


@pytest.fixture
def small_disk(tmpfs):
    """A 128 KiB tmpfs (skipped where one cannot be mounted)."""
    return tmpfs("128k")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_full_disk_writing_logits_is_exit_8(tmp_path, small_disk, suffix):
    np.save(tmp_path / "logits.npy", np.random.default_rng(0).normal(size=(20000, C)).astype(np.float32))
    np.save(tmp_path / "counts.npy", COUNTS)
    result = run("apply", tmp_path / "logits.npy", "--tau", 1, "--priors", tmp_path / "counts.npy", "--out",
                 small_disk / f"adjusted{suffix}")
    assert "No space left" in one_clean_line(result, 8)
    assert os.listdir(small_disk) == []


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_full_disk_writing_a_patched_checkpoint_is_exit_8(tmp_path, small_disk, calibration, suffix):
    state = {"body.weight": torch.randn(20000, 8), "fc.weight": torch.randn(C, 8), "fc.bias": torch.randn(C)}
    if suffix == ".pt":
        torch.save(state, tmp_path / "m.pt")
    else:
        save_file(state, tmp_path / "m.safetensors")
    result = run("apply", tmp_path / f"m{suffix}", "--calibration", calibration, "--out", small_disk / f"p{suffix}")
    assert "No space left" in one_clean_line(result, 8)
    assert os.listdir(small_disk) == []


def test_full_disk_writing_scores_is_exit_8(tmp_path, small_disk):
    _exported(tmp_path / "m.pt2")
    np.save(tmp_path / "inputs.npy", np.zeros((20000, 4), dtype=np.float32))
    result = run("score", tmp_path / "m.pt2", tmp_path / "inputs.npy", "--out", small_disk / "logits.pt")
    assert "No space left" in one_clean_line(result, 8)
    assert os.listdir(small_disk) == []


class Wide(torch.nn.Module):
    """A model of about 260 kB, more than the small disk holds."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(8, 8000)
        self.fc = torch.nn.Linear(8000, C)

    def forward(self, x):
        return self.fc(self.body(x))


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_full_disk_writing_a_patched_served_model_is_exit_8(tmp_path, small_disk, calibration, kind):
    model = Wide().eval()
    if kind == "torchscript":
        path = tmp_path / "m.pt"
        torch.jit.script(model).save(str(path))
    else:
        path = tmp_path / "m.pt2"
        torch.export.save(torch.export.export(model, (torch.randn(2, 8),)), str(path))
    result = run("apply", path, "--calibration", calibration, "--out", small_disk / path.name)
    assert "No space left" in one_clean_line(result, 8)
    assert os.listdir(small_disk) == []


# ------------------------------------------------------------------------------------- a new checkpoint layout


def _nested_layout(obj):
    """A layout as a new framework might keep it: the model under `weights`, an EMA copy deep in `callbacks`."""
    from lacal.models.checkpoints import TorchLayout

    if isinstance(obj, dict) and "framework_version" in obj:
        return TorchLayout(("weights",), (("callbacks", "Ema", "ema_weights"),))
    return None


def test_a_new_layout_is_one_function(tmp_path, calibration, monkeypatch):
    """Registering a layout in TORCH_LAYOUTS is all it takes: the model and its nested copy are patched, each from its
    own bias, and every other key is kept."""
    from lacal.models import checkpoints

    monkeypatch.setattr(checkpoints, "TORCH_LAYOUTS", [_nested_layout, *checkpoints.TORCH_LAYOUTS])
    model, ema = build(TorchvisionLike, seed=0), build(TorchvisionLike, seed=1)
    torch.save({"framework_version": "9.9", "epoch": 7, "weights": model.state_dict(),
                "callbacks": {"Ema": {"decay": 0.999, "ema_weights": ema.state_dict()}}}, tmp_path / "m.pt")
    result = lacal.patch_checkpoint(tmp_path / "m.pt", calibration, out=tmp_path / "p.pt")
    assert any("callbacks/Ema/ema_weights" in message for message in result.messages)
    saved = torch.load(tmp_path / "p.pt", weights_only=True)
    assert saved["epoch"] == 7 and saved["framework_version"] == "9.9" and saved["callbacks"]["Ema"]["decay"] == 0.999
    x = torch.randn(4, 3, 4, 4)
    for original, state in ((model, saved["weights"]), (ema, saved["callbacks"]["Ema"]["ema_weights"])):
        patched = TorchvisionLike()
        patched.load_state_dict(state)
        torch.testing.assert_close(_logits(patched.eval(), x), _adjusted(original, x), rtol=1e-5, atol=1e-5)
