"""The read, write and validation rules: inputs are regular files inside what was named, outputs are regular files
(never a device, even with --force), stdout failures exit with a documented code, and structured files are
validated rather than guessed (duplicate JSON keys, a shard listed twice, class lists that disagree, the single- or
multi-label reading of a CSV). Real files, real devices, real pipes."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lacal.cli.app import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
C = 8


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


def one_line(result, code):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lacal: error: "), result.stderr
    return lines[0]


def fit_args(d):
    return ["fit-tau", d / "val_logits.npy", d / "val_labels.npy", "--train-labels", d / "train_labels.txt"]


# --------------------------------------------------------------------------------------------------- read rule


ROLES = {  # where a special file can be named, and the command that reads it there
    "logits": lambda d, bad: ["report", bad.with_suffix(".npy"), d / "val_labels.npy"],
    "labels": lambda d, bad: ["report", d / "val_logits.npy", bad.with_suffix(".txt")],
    "train labels": lambda d, bad: fit_args(d)[:4] + [bad.with_suffix(".txt")],
    "classes": lambda d, bad: fit_args(d) + ["--classes", bad.with_suffix(".json")],
    "priors": lambda d, bad: fit_args(d)[:3] + ["--priors", bad.with_suffix(".json")],
    "calibration": lambda d, bad: ["apply", d / "val_logits.npy", "--calibration", bad.with_suffix(".json"),
                                   "--out", d / "out.npy"],
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_special_files_are_refused_by_name(files, role, special):
    """A link to /dev/zero (read until memory runs out) or a FIFO (read forever) is refused before it is opened."""
    bad = files / "bad"
    for suffix in (".npy", ".txt", ".json"):
        target = bad.with_suffix(suffix)
        if special == "fifo":
            os.mkfifo(target)
        else:
            target.symlink_to(special)
    line = one_line(run(*ROLES[role](files, bad)), 3)
    kind = "FIFO" if special == "fifo" else "character device"
    assert line.endswith(f": is a {kind}, not a regular file; lacal reads only regular files")


@pytest.fixture
def shards(files):
    logits = np.load(files / "val_logits.npy")
    folder = files / "shards"
    folder.mkdir()
    for k, part in enumerate(np.array_split(logits, 3)):
        np.save(folder / f"part-{k}.npy", part)
    return folder


def _index(folder, names, rows):
    (folder / "index.json").write_text(json.dumps({"format": "lacal-shards", "version": 1, "rows": sum(rows),
                                                   "shards": [{"file": n, "rows": r} for n, r in zip(names, rows)]}))


def test_an_index_listing_a_shard_twice_is_refused(files, shards):
    _index(shards, ["part-0.npy", "part-1.npy", "part-2.npy"], [200, 200, 200])
    assert run("report", shards, files / "val_labels.npy").exit_code == 0
    _index(shards, ["part-0.npy", "part-1.npy", "part-2.npy", "part-0.npy"], [200, 200, 200, 200])
    labels = np.concatenate([np.load(files / "val_labels.npy"), np.load(files / "val_labels.npy")[:200]])
    np.save(files / "more_labels.npy", labels)  # as many labels as the doubled rows: no count mismatch to hide it
    line = one_line(run("report", shards, files / "more_labels.npy"), 4)
    assert line == f"lacal: error: {shards / 'index.json'}: lists part-0.npy twice: its rows would be read twice; " \
                   "the folder is not as lacal wrote it"


def test_links_out_of_a_shard_folder_are_refused(files, shards, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.npy"
    np.save(outside, np.zeros((5, C), dtype=np.float32))
    (shards / "part-3.npy").symlink_to(outside)
    line = one_line(run("report", shards, files / "val_labels.npy"), 3)
    assert "part-3.npy, a link to a file outside the folder" in line
    _index(shards, ["part-0.npy", "part-1.npy", "part-2.npy", "part-3.npy"], [200, 200, 200, 5])
    line = one_line(run("report", shards, files / "val_labels.npy"), 4)
    assert "lists part-3.npy, a link to a file outside its folder" in line
    (shards / "part-3.npy").unlink()  # a link inside the folder is fine
    (shards / "part-3.npy").symlink_to(shards / "part-2.npy")
    assert run("report", shards / "part-3.npy", files / "val_labels.npy").exit_code in (0, 4)


@pytest.mark.parametrize("shape", [(-1, C), (600, -C)])
@pytest.mark.parametrize("container", ["npy", "npz"])
def test_a_negative_dimension_in_a_header_is_one_line(files, shape, container):
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    data = header.getvalue() + bytes(64)
    path = files / f"neg.{container}"
    if container == "npy":
        path.write_bytes(data)
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("logits.npy", data)
    line = one_line(run("report", path, files / "val_labels.npy"), 3)
    assert "negative dimension" in line


@pytest.mark.parametrize("where", ["input", "output"])
@pytest.mark.parametrize("too_long", ["name", "path"])
def test_names_and_paths_too_long_are_one_line(files, where, too_long):
    name = "n" * 300 + ".npy" if too_long == "name" else "/".join(["d"] * 2100) + "/x.npy"
    if where == "input":
        line = one_line(run("report", files / name, files / "val_labels.npy"), 3)
    else:
        line = one_line(run(*fit_args(files), "--out", files / name), 8)
    assert line.endswith("File name too long")


# -------------------------------------------------------------------------------------------------- write rule


@pytest.mark.parametrize("command", ["fit-tau", "apply", "apply-csv", "priors"])
@pytest.mark.parametrize("special", ["/dev/null", "fifo"])
def test_a_device_or_fifo_output_is_refused_even_with_force(files, command, special):
    """A link to /dev/null stands for the device itself (as root, --force would have replaced it: lacal renames
    its temporary file over the output's name); the link, the device and the FIFO stay as they were."""
    suffix = {"fit-tau": ".json", "apply": ".npy", "apply-csv": ".csv", "priors": ".json"}[command]
    out = files / f"out{suffix}"
    if special == "fifo":
        os.mkfifo(out)
    else:
        out.symlink_to(special)
    args = {"fit-tau": fit_args(files),
            "apply": ["apply", files / "val_logits.npy", "--tau", 1, "--train-labels", files / "train_labels.txt"],
            "apply-csv": ["apply", files / "val_logits.npy", "--tau", 1, "--train-labels",
                          files / "train_labels.txt"],
            "priors": ["priors", files / "train_labels.txt"]}[command]
    line = one_line(run(*args, "--out", out, "--force"), 8)
    kind = "FIFO" if special == "fifo" else "character device"
    assert f"is a {kind}; lacal writes only regular files and never replaces a device, FIFO or socket, even with " \
           "--force: choose another --out" in line
    if special == "fifo":
        assert stat.S_ISFIFO(os.lstat(out).st_mode)
    else:
        assert os.readlink(out) == special and stat.S_ISCHR(os.stat(special).st_mode)
    # the refusal says: choose another --out; that works
    assert run(*args, "--out", files / f"other{suffix}").exit_code == 0
    assert (files / f"other{suffix}").is_file()


def test_stale_temporaries_of_a_dead_run_neither_block_nor_replace_an_output(files):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = files / "adjusted.npy"
    stale = files / f".adjusted.npy.{dead.pid}.abcd1234.lacal-tmp"
    stale.write_bytes(b"half-written garbage from a killed run")
    result = run("apply", files / "val_logits.npy", "--tau", 1, "--train-labels", files / "train_labels.txt",
                 "--out", out)
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert np.load(out).shape == (600, C)


def _cli(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "lacal", *map(str, args)], env=env, **kwargs)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("json_out", [True, False])
def test_stdout_on_a_full_device_is_one_line_and_code_8(files, json_out):
    with open("/dev/full", "w") as full:
        done = _cli("report", files / "val_logits.npy", files / "val_labels.npy", *(["--json"] if json_out else []),
                    stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 8
    assert done.stderr == "lacal: error: standard output: cannot write: No space left on device\n"


def test_stdout_closed_early_exits_141_quietly(files):
    process = subprocess.Popen([sys.executable, "-m", "lacal", "report", str(files / "val_logits.npy"),
                                str(files / "val_labels.npy")], env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # as `| head -0` does
    assert process.wait(timeout=120) == 141
    assert process.stderr.read() == b""


# ---------------------------------------------------------------------------------- structured files validated


def test_duplicate_json_keys_are_refused_everywhere(files, shards):
    fit = run(*fit_args(files), "--out", files / "cal.json")
    assert fit.exit_code == 0, fit.output
    text = (files / "cal.json").read_text()
    tau = json.loads(text)["tau"]
    (files / "twice.json").write_text(text.replace('"tau":', f'"tau": {tau + 3},\n  "tau":', 1))
    line = one_line(run("apply", files / "val_logits.npy", "--calibration", files / "twice.json", "--out",
                        files / "a.npy"), 3)
    assert "the key 'tau' appears twice in one object" in line

    (files / "classes.json").write_text('{"0": "a", "1": "b", "0": "c"}')
    assert "the key '0' appears twice" in one_line(run(*fit_args(files), "--classes", files / "classes.json"), 3)

    counts = np.bincount([int(x) for x in (files / "train_labels.txt").read_text().split()])
    (files / "priors.json").write_text(f'{{"format": "lacal-priors", "counts": {counts.tolist()}, '
                                       f'"counts": {counts[::-1].tolist()}}}')
    assert "the key 'counts' appears twice" in one_line(run(*fit_args(files)[:3], "--priors",
                                                            files / "priors.json"), 3)

    (shards / "index.json").write_text('{"format": "lacal-shards", "format": "lacal-shards", "version": 1, '
                                       '"shards": []}')
    assert "the key 'format' appears twice" in one_line(run("report", shards, files / "val_labels.npy"), 3)


def test_class_names_are_matched_by_name_never_by_position(files):
    names = [f"c{k}" for k in range(C)]
    (files / "classes.txt").write_text("\n".join(names) + "\n")
    (files / "reordered.txt").write_text("\n".join(names[1:] + names[:1]) + "\n")
    (files / "renamed.txt").write_text("\n".join(["x"] + names[1:]) + "\n")
    labels = np.load(files / "val_labels.npy")
    (files / "named_labels.txt").write_text("\n".join(names[k] for k in labels) + "\n")
    assert run(*fit_args(files), "--classes", files / "classes.txt", "--out", files / "cal.json").exit_code == 0
    assert json.loads((files / "cal.json").read_text())["class_names"] == names

    same = run("report", files / "val_logits.npy", files / "named_labels.txt", "--calibration", files / "cal.json",
               "--classes", files / "classes.txt", "--json")
    assert same.exit_code == 0, same.output
    for bad, message in (("reordered.txt", "stores the same class names in another order (id 0 is 'c0' there but "
                                           "--classes says 'c1')"),
                         ("renamed.txt", "stores other class names (id 0 is 'c0' there but --classes says 'x')")):
        for command in (["report", files / "val_logits.npy", files / "named_labels.txt"],
                        ["apply", files / "val_logits.npy", "--out", files / "p.csv"]):
            line = one_line(run(*command, "--calibration", files / "cal.json", "--classes", files / bad), 7)
            assert message in line
    # the refusal says: leave out --classes; the calibration's names then map the named labels, as they should
    followed = run("report", files / "val_logits.npy", files / "named_labels.txt", "--calibration",
                   files / "cal.json", "--json")
    assert followed.exit_code == 0, followed.output
    assert json.loads(followed.stdout) == json.loads(same.stdout)

    prior = run("priors", files / "train_labels.txt", "--classes", files / "classes.txt", "--out",
                files / "priors.json")
    assert prior.exit_code == 0, prior.output
    line = one_line(run(*fit_args(files)[:3], "--priors", files / "priors.json", "--classes",
                        files / "reordered.txt"), 7)
    assert "the priors file stores the same class names in another order" in line


def test_a_single_label_csv_is_not_taken_for_a_matrix(files):
    """`sample,cls` above `0,0`: one 0/1 data row made it a multi-label matrix; the header and every row decide."""
    labels = np.load(files / "val_labels.npy")
    labels[0] = 0
    np.save(files / "val_labels.npy", labels)
    rows = "\n".join(f"{k},{y}" for k, y in enumerate(labels))
    (files / "labels.csv").write_text("sample,cls\n" + rows + "\n")
    refused = run("report", files / "val_logits.npy", files / "labels.csv")
    line = one_line(refused, 4)
    assert "choose one with --label-column NAME_OR_INDEX" in line and "multi" not in refused.stderr
    followed = run("report", files / "val_logits.npy", files / "labels.csv", "--label-column", "cls", "--json")
    assert followed.exit_code == 0, followed.output
    supports = [row["support"] for row in json.loads(followed.stdout)["per_class"]]
    assert supports == np.bincount(labels, minlength=C).tolist()
    # a header of 0/1 label columns, or none, still reads as a matrix (and says so)
    matrix = np.eye(C, dtype=np.int64)[labels]
    (files / "matrix.csv").write_text(",".join(f"l{k}" for k in range(C)) + "\n"
                                      + "\n".join(",".join(map(str, row)) for row in matrix) + "\n")
    multi = run("report", files / "val_logits.npy", files / "matrix.csv")
    assert multi.exit_code == 0, multi.output
    assert "lacal: note: " in multi.stderr and "read as multi-label" in multi.stderr


@pytest.mark.parametrize("text, kind", [
    ("id,cls\n0,1\n1,0\n", None),  # a sample column beside the labels, though every cell is 0 or 1
    ("sample,cls\n0,0\n1,3\n", None),
    ("0,0\n1,1\n2,0\n", None),  # no header, a first column that numbers the rows: not all 0/1
    ("a,b\n0,1\n1,0\n", "a CSV of 2 0/1 columns under a header"),
    ("0,1,1\n1,0,0\n", "a CSV of 3 0/1 columns"),
    ("0,1\n1,0\n0,2\n", None),  # one row that is not 0/1 is enough
])
def test_the_csv_reading_is_decided_by_header_and_every_row(tmp_path, text, kind):
    from lacal.core.label_matrix import label_matrix_kind

    (tmp_path / "labels.csv").write_text(text)
    assert label_matrix_kind(tmp_path / "labels.csv") == kind


@pytest.mark.parametrize("order, code", [("same", 0), ("reversed", 7), ("placeholders", 0)])
def test_a_model_s_id2label_must_agree_with_the_calibration_by_name(tmp_path, order, code):
    """Patching a Hugging Face model: its head's rows follow its id2label; a calibration fitted with other names, or
    the same in another order, would shift the wrong rows. transformers' placeholders (LABEL_0, ...) name nothing."""
    transformers = pytest.importorskip("transformers")
    from lacal.core.calibration import Calibration

    names = ["cat", "dog", "eel", "fox"]
    model_names = {"same": names, "reversed": names[::-1], "placeholders": [f"LABEL_{k}" for k in range(4)]}[order]
    config = transformers.BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, id2label=dict(enumerate(model_names)),
                                     label2id={n: k for k, n in enumerate(model_names)})
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "hf")
    Calibration(tau=1.0, priors=np.array([0.4, 0.3, 0.2, 0.1]), class_names=names).save(tmp_path / "cal.json")
    result = run("apply", tmp_path / "hf", "--calibration", tmp_path / "cal.json", "--out", tmp_path / "out")
    if code:
        line = one_line(result, code)
        assert "stores the same class names in another order (id 0 is 'cat' there but the model's id2label says " \
               "'fox')" in line
    else:
        assert result.exit_code == 0, result.output
        assert (tmp_path / "out" / "config.json").is_file()


@pytest.mark.parametrize("command", [
    lambda d, long: ["apply", long.with_suffix(".safetensors"), "--tau", 1, "--train-labels", d / "train_labels.txt",
                     "--out", d / "o.safetensors"],
    lambda d, long: ["apply", long, "--tau", 1, "--train-labels", d / "train_labels.txt", "--out", d / "o"],
    lambda d, long: ["score", long.with_suffix(".onnx"), d / "val_logits.npy", "--out", d / "o.npy"],
    lambda d, long: ["fit-tau", "--checkpoint", long.with_suffix(".pt"), "--features", d / "val_logits.npy",
                     d / "val_labels.npy", "--train-labels", d / "train_labels.txt"],
])
def test_too_long_model_names_are_one_line(files, command):
    """Model files are opened by lacal.models; a name the system refuses is still one line with code 3."""
    line = one_line(run(*command(files, files / ("m" * 300))), 3)
    assert line.endswith("File name too long")


def test_a_too_long_output_folder_is_code_8(files):
    line = one_line(run("apply", files / "val_logits.npy", "--tau", 1, "--train-labels", files / "train_labels.txt",
                        "--out", files / ("m" * 300) / "shards"), 8)
    assert line.endswith("File name too long")
