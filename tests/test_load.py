import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch
from typer.testing import CliRunner

import lacal
from lacal.errors import InputDataError, InputFileError
from lacal.cli.app import app
from lacal.data.readers import read_classes, read_labels, read_logits, shard_paths


def _all_rows(source):
    return source.rows(0, source.num_samples)


@pytest.fixture
def logits():
    return np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)


def test_npy_rows_are_read_on_demand(tmp_path, logits):
    np.save(tmp_path / "a.npy", logits)
    source = read_logits(tmp_path / "a.npy")
    assert source.shape == (20, 4) and source.dtype_name == "float32"
    np.testing.assert_array_equal(_all_rows(source).numpy(), logits)
    np.testing.assert_array_equal(source.rows(5, 9).numpy(), logits[5:9])


def test_streaming_a_large_npy_never_holds_it_whole(tmp_path):
    import tracemalloc

    big = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(10_000, 1_000))
    big[:] = 1.0
    big[::7, 3] = 5.0
    big.flush()
    del big
    tracemalloc.start()
    source = read_logits(tmp_path / "big.npy")
    total = 0.0
    for start in range(0, source.num_samples, 500):
        total += float(source.rows(start, start + 500).double().sum())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total == 10_000 * 1_000 + 4.0 * len(range(0, 10_000, 7))
    assert peak < 40_000_000 / 4  # the file is 40 MB; a block is 2 MB


def test_npy_other_layouts(tmp_path):
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "big_endian.npy", data.astype(">f4"))
    np.save(tmp_path / "fortran.npy", np.asfortranarray(data))
    for name in ("big_endian.npy", "fortran.npy"):
        np.testing.assert_array_equal(read_logits(tmp_path / name).rows(1, 3).numpy(), data[1:3])
    assert b"'fortran_order': True" in (tmp_path / "fortran.npy").read_bytes()[:128]
    assert b"'descr': '>f4'" in (tmp_path / "big_endian.npy").read_bytes()[:128]
    np.save(tmp_path / "cut.npy", data)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:-8])
    with pytest.raises(InputFileError, match="is cut short"):
        read_logits(tmp_path / "cut.npy")


def test_npz_single_and_key(tmp_path, logits):
    np.savez(tmp_path / "one.npz", scores=logits)
    np.testing.assert_array_equal(_all_rows(read_logits(tmp_path / "one.npz")).numpy(), logits)
    np.savez(tmp_path / "two.npz", a=logits, b=logits * 2)
    with pytest.raises(InputDataError, match="--key"):
        read_logits(tmp_path / "two.npz")
    np.testing.assert_array_equal(_all_rows(read_logits(tmp_path / "two.npz", key="b")).numpy(), logits * 2)
    with pytest.raises(InputDataError, match="no array named 'c'"):
        read_logits(tmp_path / "two.npz", key="c")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_safetensors_dtypes(tmp_path, logits, dtype):
    tensor = torch.from_numpy(logits).to(dtype)
    save_torch({"logits": tensor, "other": torch.zeros(3)}, tmp_path / "a.safetensors")
    source = read_logits(tmp_path / "a.safetensors", key="logits")
    assert source.dtype_name == str(dtype).replace("torch.", "")
    assert torch.equal(source.rows(3, 9), tensor[3:9])


def test_safetensors_single_tensor(tmp_path, logits):
    save_numpy({"x": logits}, str(tmp_path / "a.safetensors"))
    np.testing.assert_array_equal(_all_rows(read_logits(tmp_path / "a.safetensors")).numpy(), logits)


def test_pt_tensor_and_dict(tmp_path, logits):
    torch.save(torch.from_numpy(logits), tmp_path / "a.pt")
    np.testing.assert_array_equal(_all_rows(read_logits(tmp_path / "a.pt")).numpy(), logits)
    torch.save({"logits": torch.from_numpy(logits), "epoch": 3}, tmp_path / "b.pth")
    np.testing.assert_array_equal(_all_rows(read_logits(tmp_path / "b.pth")).numpy(), logits)


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump(_Exploit(marker), handle)
    torch.save({"logits": torch.zeros(2, 2), "payload": _Exploit(marker)}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(InputFileError, match="refused: loading this PyTorch file would run code"):
            read_logits(tmp_path / name)
    assert not marker.exists()


def test_csv_with_and_without_header(tmp_path, logits):
    body = "\n".join(",".join(f"{v:.9g}" for v in row) for row in logits)
    (tmp_path / "a.csv").write_text(body + "\n")
    (tmp_path / "b.csv").write_text("c0,c1,c2,c3\n" + body + "\n")
    for name in ("a.csv", "b.csv"):
        source = read_logits(tmp_path / name)
        assert source.dtype_name == "float64"
        np.testing.assert_allclose(_all_rows(source).numpy(), logits, rtol=1e-7)


def test_csv_ragged_rows_name_the_row(tmp_path):
    (tmp_path / "a.csv").write_text("1,2,3\n4,5\n")
    with pytest.raises(InputDataError, match="row 2 has 2 values"):
        read_logits(tmp_path / "a.csv")


@pytest.mark.parametrize("array, problem", [
    (np.zeros(5, dtype=np.float32), "2-D array"),
    (np.zeros((3, 4), dtype=np.int64), "dtype int64"),
    (np.zeros((3, 1), dtype=np.float32), "at least 2 classes"),
    (np.zeros((0, 3), dtype=np.float32), "no rows"),
])
def test_bad_logit_arrays(tmp_path, array, problem):
    np.save(tmp_path / "a.npy", array)
    with pytest.raises(InputDataError, match=problem):
        read_logits(tmp_path / "a.npy")


def test_missing_folder_and_unknown_format(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        read_logits(tmp_path / "nope.npy")
    with pytest.raises(InputFileError, match="folder"):
        read_logits(tmp_path)
    (tmp_path / "a.h5").write_bytes(b"x")
    with pytest.raises(InputFileError, match="unknown logits format '.h5'"):
        read_logits(tmp_path / "a.h5")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(InputFileError, match="cannot read as .npy"):
        read_logits(tmp_path / "bad.npy")


def test_probabilities_are_noticed(tmp_path):
    probabilities = torch.softmax(torch.randn(30, 5), 1).numpy()
    np.save(tmp_path / "p.npy", probabilities)
    assert any("look like probabilities" in note for note in read_logits(tmp_path / "p.npy").notes)
    np.save(tmp_path / "l.npy", np.log(probabilities))
    assert read_logits(tmp_path / "l.npy").notes == []


def test_labels_formats(tmp_path):
    ids = np.array([0, 2, 1, 1])
    np.save(tmp_path / "a.npy", ids)
    np.save(tmp_path / "col.npy", ids[:, None].astype(np.float32))
    (tmp_path / "a.txt").write_text("0\n2\n1\n1\n\n")
    (tmp_path / "a.csv").write_text("path,label\nx.png,0\ny.png,2\nz.png,1\nw.png,1\n")
    (tmp_path / "b.csv").write_text("x.png,0\ny.png,2\nz.png,1\nw.png,1\n")
    for name, column in (("a.npy", None), ("col.npy", None), ("a.txt", None), ("a.csv", None), ("a.csv", "label"),
                         ("a.csv", "1"), ("b.csv", "1")):
        np.testing.assert_array_equal(read_labels(tmp_path / name, column=column), ids)
    with pytest.raises(InputDataError, match="--label-column"):
        read_labels(tmp_path / "b.csv")


def test_label_names_through_classes(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    (tmp_path / "classes.json").write_text(json.dumps(["cat", "dog", "bird"]))
    (tmp_path / "labels.txt").write_text("dog\nbird\ncat\n")
    for classes_file in ("classes.txt", "classes.json"):
        classes = read_classes(tmp_path / classes_file)
        np.testing.assert_array_equal(read_labels(tmp_path / "labels.txt", classes), [1, 2, 0])
    (tmp_path / "bad.txt").write_text("dog\nfish\n")
    with pytest.raises(InputDataError, match="unknown class name 'fish'"):
        read_labels(tmp_path / "bad.txt", ["cat", "dog"])
    with pytest.raises(InputDataError, match="not an integer class id; pass --classes"):
        read_labels(tmp_path / "labels.txt")


def test_classes_from_id2label_and_duplicates(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"1": "dog", "0": "cat"}}))
    assert read_classes(tmp_path / "config.json") == ["cat", "dog"]
    (tmp_path / "dup.txt").write_text("cat\ncat\n")
    with pytest.raises(InputDataError, match="appears twice"):
        read_classes(tmp_path / "dup.txt")


def test_bad_labels(tmp_path):
    np.save(tmp_path / "f.npy", np.array([0.5, 1.0]))
    with pytest.raises(InputDataError, match="not whole numbers"):
        read_labels(tmp_path / "f.npy")
    (tmp_path / "neg.txt").write_text("0\n-1\n")
    with pytest.raises(InputDataError, match="negative"):
        read_labels(tmp_path / "neg.txt")
    (tmp_path / "gap.txt").write_text("0\n\n1\n")
    with pytest.raises(InputDataError, match="line 2 is empty"):
        read_labels(tmp_path / "gap.txt")


def test_public_api_reexports_readers():
    assert lacal.data.read_logits is read_logits and lacal.data.read_labels is read_labels


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


def test_globs_across_folders_keep_natural_path_order(tmp_path):
    for run_id in (1, 2, 3, 10, 20):
        (tmp_path / f"run{run_id}").mkdir()
        np.save(tmp_path / f"run{run_id}" / "logits.npy", np.full((2, 3), run_id, dtype=np.float32))
    order = [p.parent.name for p in shard_paths(str(tmp_path / "*" / "logits.npy"))]
    assert order == ["run1", "run2", "run3", "run10", "run20"]
    rows = lacal.data.read_logits(str(tmp_path / "*" / "logits.npy")).rows(0, 10)[:, 0].tolist()
    assert rows == [1, 1, 2, 2, 3, 3, 10, 10, 20, 20]


def test_outputs_never_land_in_a_shard_folder_and_labels_are_not_shards(tmp_path, problem):
    logits, labels, counts = problem
    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards" / "p1.npy", logits[:300])
    np.save(tmp_path / "shards" / "p2.npy", logits[300:])
    np.save(tmp_path / "counts.npy", counts)
    before = (tmp_path / "shards" / "p1.npy").read_bytes()
    result = run("apply", tmp_path / "shards", "--tau", 1, "--priors", tmp_path / "counts.npy", "--out",
                 tmp_path / "shards" / "p1.npy", "--force")
    assert result.exit_code == 8 and "inside the input folder" in result.stderr
    assert (tmp_path / "shards" / "p1.npy").read_bytes() == before
    np.save(tmp_path / "shards" / "labels.npy", labels)
    mixed = run("report", tmp_path / "shards", tmp_path / "shards" / "labels.npy")
    assert mixed.exit_code == 3 and "also holds labels.npy" in mixed.stderr


# Multi-label heads (one sigmoid per label): the same behaviour, the other task.


def test_label_readers_agree_and_name_the_problem(tmp_path):
    from lacal.errors import InputDataError
    from lacal.core.label_matrix import label_matrix_kind, read_label_matrix

    matrix = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=bool)
    np.save(tmp_path / "m.npy", matrix.astype(np.float32))
    (tmp_path / "m.csv").write_text("1,0,1\n0,0,0\n0,1,0\n")
    (tmp_path / "m.txt").write_text("0,2\n\nb\n")
    for name in ("m.npy", "m.csv"):
        np.testing.assert_array_equal(read_label_matrix(tmp_path / name, 3), matrix)
    np.testing.assert_array_equal(read_label_matrix(tmp_path / "m.txt", 3, ["a", "b", "c"]), matrix)
    assert label_matrix_kind(tmp_path / "m.npy") == "a 3 x 3 matrix of 0/1"
    assert label_matrix_kind(tmp_path / "m.txt") == "a text file of comma-separated label lists"
    np.save(tmp_path / "single.npy", np.array([0, 2, 1]))
    (tmp_path / "single.csv").write_text("label,weight\n1,0\n0,1\n")
    assert label_matrix_kind(tmp_path / "single.npy") is None and label_matrix_kind(tmp_path / "single.csv") is None
    (tmp_path / "far.txt").write_text("0\n1,7\n")
    with pytest.raises(InputDataError, match="line 2: label 7 is out of range for 3 labels"):
        read_label_matrix(tmp_path / "far.txt", 3)
    with pytest.raises(InputDataError, match="has 3 label columns but the logits have 4"):
        read_label_matrix(tmp_path / "m.npy", 4)
    np.save(tmp_path / "bad.npy", np.array([[0, 2], [1, 0]]))
    with pytest.raises(InputDataError, match="only 0 and 1"):
        read_label_matrix(tmp_path / "bad.npy")
