import json
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import lacal
from lacal.cli import render
from lacal.cli.app import app
from lacal.errors import InputFileError
from lacal.data.readers import read_logits
from lacal.models.run import load_model
from lacal.engine.passes import block_rows, head_logits, iter_adjusted, score_pass

from .conftest import long_tail_problem

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


@pytest.mark.parametrize("rows", [1, 7, None])
def test_every_pass_is_independent_of_the_block_size(rows):
    logits, labels, counts = long_tail_problem(num_samples=97, num_classes=9, seed=3)
    offsets = [np.zeros(9), lacal.core.offsets(counts, 1.5)]
    whole = score_pass(logits, labels, offsets)
    blocked = score_pass(logits, labels, offsets, rows=rows)
    np.testing.assert_array_equal([e.correct for e in blocked], [e.correct for e in whole])
    source = lacal.data.readers.source_from_array(logits)
    adjusted = torch.cat([b for _, b in iter_adjusted(source, offsets[1], rows=rows)])
    np.testing.assert_array_equal(adjusted.numpy(), lacal.core.adjust_logits(logits, counts, 1.5))
    features = torch.randn(97, 5)
    weight, bias = torch.randn(9, 5), torch.randn(9)
    through_head = head_logits(lacal.data.readers.source_from_array(features), weight, bias)
    torch.testing.assert_close(torch.cat([b for _, b in lacal.engine.passes.iter_blocks(through_head, "cpu", rows)]),
                               features @ weight.T + bias)


def test_memory_budget_bounds_the_block():
    source = lacal.data.readers.source_from_array(np.zeros((100_000, 1000), dtype=np.float32))
    assert block_rows(source, memory_budget=64 << 20) * 1000 * 24 <= 64 << 20
    assert block_rows(source, memory_budget=1 << 20) * 1000 * 24 <= 1 << 20 < (block_rows(source, memory_budget=1 << 20) + 1) * 1000 * 24
    wide = lacal.data.readers.source_from_array(np.zeros((10, 100_000), dtype=np.float32))
    assert block_rows(wide, memory_budget=1 << 20) == 1  # a row over the budget is still read, one at a time
    assert block_rows(source, rows=7) == 7


@pytest.fixture
def shards(tmp_path, problem):
    logits, labels, counts = problem
    (tmp_path / "shards").mkdir()
    (tmp_path / "label_shards").mkdir()
    cuts = [0, 150, 151, 400, len(labels)]
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        np.save(tmp_path / "shards" / f"part-{k + 1}.npy", logits[a:b])  # part-10 would sort after part-2
        np.save(tmp_path / "label_shards" / f"part-{k + 1}.npy", labels[a:b])
    np.save(tmp_path / "all.npy", logits)
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "counts.npy", counts)
    return tmp_path


def test_shards_read_as_one_array(shards, problem):
    logits = problem[0]
    for spec in (shards / "shards", str(shards / "shards" / "part-*.npy")):
        source = read_logits(spec)
        assert source.shape == logits.shape
        np.testing.assert_array_equal(source.rows(140, 410).numpy(), logits[140:410])
    labels = lacal.data.read_labels(shards / "label_shards")
    np.testing.assert_array_equal(labels, problem[1])


def test_fit_tau_on_shards_equals_one_file(shards):
    one = json.loads(run("fit-tau", shards / "all.npy", shards / "labels.npy", "--priors", shards / "counts.npy",
                         "--json").stdout)
    files = sorted((shards / "shards").iterdir(), key=lambda p: int(p.stem.split("-")[1]))
    for logits_args in ([shards / "shards"], [str(shards / "shards" / "part-*.npy")], files):
        for labels_arg in (shards / "labels.npy", shards / "label_shards"):
            result = run("fit-tau", *logits_args, labels_arg, "--priors", shards / "counts.npy", "--json")
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout) == one


def test_apply_and_report_on_shards(shards, problem):
    logits, labels, counts = problem
    result = run("apply", shards / "shards", "--tau", 1.0, "--priors", shards / "counts.npy", "--out",
                 shards / "adjusted.npy")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(shards / "adjusted.npy"), lacal.core.adjust_logits(logits, counts, 1.0))
    report = json.loads(run("report", shards / "shards", shards / "labels.npy", "--json").stdout)
    assert report["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))


def test_memory_budget_option(files):
    ok = run("fit-tau", files / "val_logits.npy", files / "val_labels.npy", "--train-labels",
             files / "train_labels.txt", "--memory-budget", "64MB", "--json")
    assert ok.exit_code == 0
    for bad in ("lots", "12XB", "10KB"):
        result = run("report", files / "val_logits.npy", files / "val_labels.npy", "--memory-budget", bad)
        assert result.exit_code == 6 and "--memory-budget: expected a size" in result.stderr


def test_progress_goes_to_stderr_and_json_stays_clean(files, monkeypatch):
    monkeypatch.setattr(render.Progress, "DELAY", 0.0)
    seen = []
    with render.Progress(10, "test", quiet=False) as progress:
        progress(5)
        progress(10)
        seen.append(progress.bar is not None)
    with render.Progress(10, "test", quiet=True) as progress:
        progress(10)
        seen.append(progress.bar is None)
    assert seen == [True, True]
    # a pass slow enough to show the bar: every block waits, so the bar is drawn; it must not reach stdout
    import time

    blocks = lacal.engine.passes.iter_blocks

    def slow_blocks(*args, **kwargs):
        for item in blocks(*args, **kwargs):
            time.sleep(0.002)
            yield item

    monkeypatch.setattr(lacal.engine.passes, "iter_blocks", slow_blocks)
    monkeypatch.setattr(render.Progress, "DELAY", 0.0)
    drawn = []
    monkeypatch.setattr(render.Progress, "__exit__", lambda self, *exc: (drawn.append(self.bar is not None),
                                                                       self.bar and self.bar.stop()))
    result = run("report", files / "val_logits.npy", files / "val_labels.npy", "--train-labels",
                 files / "train_labels.txt", "--tau", "1", "--json", "--memory-budget", "1MB")
    assert result.exit_code == 0 and drawn == [False]  # --json: no bar at all
    result = run("apply", files / "val_logits.npy", "--train-labels", files / "train_labels.txt", "--tau", "1",
                 "--out", files / "adjusted.npy", "--memory-budget", "1MB")
    assert result.exit_code == 0 and drawn == [False, True]
    assert result.stdout == "" and "adjusted" in result.stderr  # the bar and the note went to stderr only


# ---------------------------------------------------------------------------------------------------------- score


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture
def models(tmp_path):
    torch.manual_seed(0)
    net = Net().eval()
    torch.jit.script(net).save(str(tmp_path / "net.ts"))
    program = torch.export.export(net, (torch.randn(2, 3, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "net.pt2"))
    inputs = torch.randn(37, 3, 8, 8)
    np.save(tmp_path / "inputs.npy", inputs.numpy())
    save_file({"pixels": inputs}, tmp_path / "inputs.safetensors")
    with torch.no_grad():
        expected = net(inputs).numpy()
    return tmp_path, expected


@pytest.mark.parametrize("model", ["net.ts", "net.pt2"])
@pytest.mark.parametrize("inputs", ["inputs.npy", "inputs.safetensors"])
def test_score_equals_calling_the_model(models, model, inputs):
    folder, expected = models
    result = run("score", folder / model, folder / inputs, "--out", folder / "logits.npy", "--batch-size", 8)
    assert result.exit_code == 0, result.output
    got = np.load(folder / "logits.npy")
    assert got.shape == (37, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_score_with_bfloat16_autocast(models):
    folder, expected = models
    result = run("score", folder / "net.ts", folder / "inputs.npy", "--out", folder / "logits.npy", "--amp", "bf16")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(folder / "logits.npy"), expected, atol=0.1)


def test_score_refuses_pickled_objects_in_an_export_archive(models):
    folder, _ = models
    marker = folder / "pwned"
    with zipfile.ZipFile(folder / "net.pt2") as source, zipfile.ZipFile(folder / "evil.pt2", "w") as target:
        for item in source.infolist():
            target.writestr(item, source.read(item.filename))
        prefix = source.namelist()[0].split("/")[0]
        target.writestr(f"{prefix}/data/constants/opaque_obj_0", b"cos\nsystem\n(S'touch " + str(marker).encode()
                        + b"'\ntR.")
    with pytest.raises(InputFileError, match="refused: the archive holds pickled Python objects"):
        load_model(folder / "evil.pt2")
    result = run("score", folder / "evil.pt2", folder / "inputs.npy", "--out", folder / "logits.npy")
    assert result.exit_code == 3 and not marker.exists() and not (folder / "logits.npy").exists()


def test_score_bad_inputs(models, tmp_path):
    folder, _ = models
    torch.save({"fc.weight": torch.zeros(2, 2)}, folder / "weights.pt")
    (folder / "model.onnx").write_bytes(b"x")
    np.save(folder / "wrong.npy", np.zeros((4, 7), dtype=np.float32))
    cases = [
        (["score", folder / "weights.pt", folder / "inputs.npy"], 3, "cannot load as a TorchScript model"),
        (["score", folder / "model.onnx", folder / "inputs.npy"], 3, "onnxruntime cannot load the model"),
        (["score", folder / "net.ts", folder / "wrong.npy"], 4, "the model failed on rows 1 to 4 (inputs of shape (7,)"),
    ]
    for args, code, message in cases:
        result = run(*args, "--out", folder / "logits.npy")
        assert result.exit_code == code and message in result.stderr, result.output
        assert not (folder / "logits.npy").exists()


def test_score_refusals(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x)

    program = torch.export.export(Net(), (torch.randn(10, 4),))  # a fixed batch of 10
    torch.export.save(program, str(tmp_path / "fixed.pt2"))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(23, 4)).astype(np.float32))
    np.save(tmp_path / "long.npy", np.zeros((5, 4), dtype=np.longdouble))
    cases = [
        (["score", tmp_path / "fixed.pt2", tmp_path / "x.npy", "--out", tmp_path / "o.npy", "--batch-size", 10],
         4, "export with a dynamic batch dimension"),
        (["score", tmp_path / "fixed.pt2", tmp_path / "long.npy", "--out", tmp_path / "o.npy"], 4,
         "inputs have dtype float128"),
        (["score", tmp_path / "fixed.pt2", tmp_path / "x.npy", "--out", tmp_path / "o.csv"], 6,
         "logits are written as"),
    ]
    for args, code, message in cases:
        result = run(*args)
        assert result.exit_code == code and message in result.stderr, result.output
        assert not (tmp_path / "o.npy").exists() and not (tmp_path / "o.csv").exists()
