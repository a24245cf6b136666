"""The display rule: names from files and arguments (file names, class names, id2label values, tensor names, CSV
cells) reach the terminal with control characters escaped, rich markup shown literally and long values cut; `--json`
stays the exact JSON of the raw values. Every command and output kind is driven with hostile names and its bytes
checked."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from typer.testing import CliRunner

from lacal.cli.app import app
from lacal.errors import shown, shown_line

from .conftest import long_tail_problem

runner = CliRunner()

# one name carrying every kind of trouble: an OSC window title, a CSI colour, an OSC 8 hyperlink, a C1 CSI, a
# right-to-left override, a newline, rich markup that closes an unopened tag, a live link, an emoji code, brackets
HOSTILE = ("v\x1b]0;owned\x07\x1b[31mred\x1b]8;;https:evil.example\x1b\\click\x1b]8;;\x1b\\\x9b2J\u202egnp.\u202c"
           "\nnext[bold][link=https:evil.example]k:smile:[test]")  # no slash: it is a file name
CLASS_NAMES = ["plain", "\x1b]0;owned\x07", "\x1b[2J\x1b[H", "abc\u202edcba", "two\nlines", "[/b]",
               "[link=http://evil.example]x[/link]", ":smile:"]
C = len(CLASS_NAMES)


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def terminal_safe(text: str) -> None:
    """Every character is printable (a newline ends a line): no ESC, BEL, C1 control, bidi override or other format
    character reaches the terminal."""
    bad = sorted({ch for ch in text if not ch.isprintable() and ch != "\n"})
    assert not bad, f"unescaped {bad!r} in {text!r}"


def squeezed(text: str) -> str:
    """`text` without white space, so that a long title that rich wraps can be looked for."""
    return "".join(text.split())


def checked(result, code=0):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    terminal_safe(result.stdout)
    terminal_safe(result.stderr)
    return result


@pytest.fixture
def hostile(tmp_path):
    """A problem written under hostile file names, with hostile class names."""
    logits, labels, counts = long_tail_problem(num_samples=240, num_classes=C)
    folder = tmp_path / "d"
    folder.mkdir()
    paths = {"logits": folder / f"{HOSTILE}.npy", "labels": folder / "labels.txt",
             "train": folder / f"train{HOSTILE}.txt", "classes": folder / "classes.json",
             "bracket": folder / "val[test].npy"}
    np.save(paths["logits"], logits)
    np.save(paths["bracket"], logits)
    paths["labels"].write_text("\n".join(map(str, labels)) + "\n")
    paths["train"].write_text("\n".join(map(str, np.repeat(np.arange(C), counts))) + "\n")
    paths["classes"].write_text(json.dumps(CLASS_NAMES))
    return paths


def test_shown_escapes_and_cuts():
    assert shown("cat") == "cat"
    assert shown("a\x1b]0;t\x07b") == "a\\x1b]0;t\\x07b"
    assert shown("x\u202ey\n\x9b") == "x\\u202ey\\n\\x9b"
    assert shown("\udcff") == "\\udcff"  # an undecodable byte of a file name
    assert shown("[/b]") == "[/b]"  # markup is left as it is: the console does not read it
    assert shown("y" * 1000, limit=10) == "y" * 10 + "... (1,000 characters)"
    line = shown_line("f.csv: " + "z" * 100_000 + " is bad", limit=300)
    assert len(line) < 400 and line.startswith("f.csv: ") and line.endswith(" is bad") and "of 100,014 characters cut" in line


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(), st.integers(1, 300))
def test_shown_is_printable_and_exact_when_it_can_be(text, limit):
    result = shown(text, limit)
    terminal_safe(result)
    assert "\n" not in result
    if len(text) <= limit and text.isprintable():
        assert result == text
    if len(text) > limit:
        assert f"({len(text):,} characters)" in result


def test_priors_table_and_json(hostile):
    table = checked(run("priors", hostile["train"], "--classes", hostile["classes"]))
    for name in CLASS_NAMES:
        assert f" {shown(name)} " in table.stdout  # one cell each, escaped, markup literal
    assert squeezed(f"Priors from {shown(str(hostile['train']))}") in squeezed(table.stdout)
    exact = checked(run("priors", hostile["train"], "--classes", hostile["classes"], "--json"))
    assert json.loads(exact.stdout)["classes"] == CLASS_NAMES  # the raw values, exactly


def test_fit_report_apply(hostile, tmp_path):
    out = tmp_path / f"cal{HOSTILE}.json"
    fit = checked(run("fit-tau", hostile["logits"], hostile["labels"], "--train-labels", hostile["train"],
                      "--classes", hostile["classes"], "--out", out))
    assert squeezed(shown(str(hostile["logits"]))) in squeezed(fit.stdout)
    assert f"lacal: wrote {shown(str(out))}" in fit.stderr
    assert len(fit.stderr.splitlines()) == 1  # the newline in the name did not split the line

    report = checked(run("report", hostile["logits"], hostile["labels"], "--calibration", out, "--classes",
                         hostile["classes"]))
    for name in CLASS_NAMES:
        assert f" {shown(name)} " in report.stdout
    exact = checked(run("report", hostile["logits"], hostile["labels"], "--calibration", out, "--json"))
    data = json.loads(exact.stdout)
    assert [row["name"] for row in data["per_class"]] == CLASS_NAMES

    predictions = tmp_path / f"p{HOSTILE}.csv"
    applied = checked(run("apply", hostile["logits"], "--calibration", out, "--out", predictions))
    assert applied.stderr.startswith(f"lacal: wrote {shown(str(predictions))} (")
    assert predictions.is_file()


def test_brackets_in_a_file_name_stay(hostile):
    result = checked(run("fit-tau", hostile["bracket"], hostile["labels"], "--train-labels", hostile["train"]))
    assert squeezed(f"{hostile['bracket']}: 240 samples") in squeezed(result.stdout)


def test_errors_and_warnings_are_one_escaped_line(hostile, tmp_path):
    missing = tmp_path / f"gone{HOSTILE}.npy"
    error = checked(run("report", missing, hostile["labels"]), 3)
    assert error.stderr == f"lacal: error: {shown(str(missing))}: matches no files\n"  # brackets: a glob

    probabilities = tmp_path / f"probs{HOSTILE}.npy"
    logits, labels, _ = long_tail_problem(num_samples=240, num_classes=C)
    np.save(probabilities, np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    warned = checked(run("report", probabilities, hostile["labels"]))
    warning = [line for line in warned.stderr.splitlines() if "look like probabilities" in line]
    assert warning == [f"lacal: warning: {shown(str(probabilities))}: every row is non-negative and sums to 1, so "
                       "these look like probabilities, not logits; pass the logits (the scores before softmax), or "
                       "log-probabilities (for example numpy.log(p))"]

    tokens = tmp_path / "names.txt"
    tokens.write_text("plain\n\x1b]0;owned\x07\nnot\u202ea class\n")
    unknown = checked(run("priors", tokens, "--classes", hostile["classes"]), 4)
    assert len(unknown.stderr.splitlines()) == 1 and "unknown class name" in unknown.stderr


def test_a_huge_csv_row_gives_a_short_error(tmp_path):
    wide = tmp_path / "wide.csv"
    row = ",".join(["1.5"] * 200_000)
    wide.write_text(row + "\n" + row[:-3] + "oops\n")
    result = checked(run("report", wide, tmp_path / "labels.txt"), 4)
    assert result.stderr == "lacal: error: wide.csv: row 2, column 200000 holds 'oops', which is not a number\n" \
        .replace("wide.csv", str(wide))


def test_a_huge_message_is_cut_in_the_middle(tmp_path):
    long_name = tmp_path / ("n" * 200 + ".npy")
    long_name.write_bytes(b"")
    deep = tmp_path / "/".join(["d"] * 1500)  # a path far over the message limit, and over PATH_MAX
    result = checked(run("report", deep / "x.npy", long_name), 3)
    (line,) = result.stderr.splitlines()
    assert line.startswith("lacal: error: ") and "characters cut]" in line and len(line) < 2200


def test_multi_label_tables(tmp_path):
    rng = np.random.default_rng(0)
    matrix = (rng.random((120, C)) < 0.4).astype(np.int64)
    logits = rng.normal(size=(120, C)).astype(np.float32) + 2 * matrix
    np.save(tmp_path / f"{HOSTILE}.npy", logits)
    np.save(tmp_path / "matrix.npy", matrix)
    (tmp_path / "classes.json").write_text(json.dumps(CLASS_NAMES))
    report = checked(run("report", tmp_path / f"{HOSTILE}.npy", tmp_path / "matrix.npy", "--multi-label",
                         "--classes", tmp_path / "classes.json"))
    for name in CLASS_NAMES:
        assert f" {shown(name)} " in report.stdout
    priors = checked(run("priors", tmp_path / "matrix.npy", "--multi-label", "--classes", tmp_path / "classes.json"))
    for name in CLASS_NAMES:
        assert f" {shown(name)} " in priors.stdout


def test_id2label_of_a_transformers_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, id2label=dict(enumerate(CLASS_NAMES)),
                                     label2id={n: i for i, n in enumerate(CLASS_NAMES)})
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "hf")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "features.npy", rng.normal(size=(80, 8)).astype(np.float32))
    np.save(tmp_path / "labels.npy", np.arange(80) % C)
    report = checked(run("report", tmp_path / "labels.npy", "--checkpoint", tmp_path / "hf", "--features",
                         tmp_path / "features.npy"))
    for name in CLASS_NAMES:
        assert f" {shown(name)} " in report.stdout
    exact = checked(run("report", tmp_path / "labels.npy", "--checkpoint", tmp_path / "hf", "--features",
                        tmp_path / "features.npy", "--json"))
    assert [row["name"] for row in json.loads(exact.stdout)["per_class"]] == CLASS_NAMES


def test_progress_description_is_shown_safely(capsys, monkeypatch):
    from lacal.cli import render

    monkeypatch.setattr(render.Progress, "DELAY", 0.0)
    monkeypatch.setenv("FORCE_COLOR", "1")  # draw the bar as on a terminal, with rich's own control codes
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    description = "[/b]\x1b]0;t\x07\u202e"
    with render.Progress(10, description, quiet=False) as bar:
        bar(5)
        bar(10)
    err = capsys.readouterr().err
    assert shown(description) in err
    assert "\x1b]0;t\x07" not in err and "\u202e" not in err  # rich's own codes are CSI, never OSC or bidi


def test_usage_errors_show_arguments_safely():
    """click's own errors (exit 2) about an unknown option or a bad choice carry the argument as typed."""
    for args in (["report", "--x\x1b]0;owned\x07[/b]"], ["report", "a", "b", "--sort", "\x1b[31m[/b]"]):
        result = checked(run(*args), 2)
        assert "[/b]" in result.stderr


def test_tensor_names_of_a_patched_checkpoint(tmp_path):
    """The head's name comes from the file's tensor names; the message that names it is escaped too."""
    import torch
    from safetensors.torch import save_file

    head = "head\x1b]0;owned\x07[/b]\u202e"
    save_file({"body.weight": torch.ones(16, 4), f"{head}.weight": torch.ones(C, 16), f"{head}.bias": torch.zeros(C)},
              tmp_path / f"m{HOSTILE}.safetensors")
    (tmp_path / "counts.json").write_text(json.dumps(list(range(10, 10 + C))))
    result = checked(run("apply", tmp_path / f"m{HOSTILE}.safetensors", "--tau", 1, "--priors",
                         tmp_path / "counts.json", "--out", tmp_path / "out.safetensors"))
    assert f"patched {shown(repr(head))}" in result.stderr
