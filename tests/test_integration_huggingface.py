"""The Hugging Face Trainer, for real (tiny BERT and ViT built from configs, no downloads): `LogitAdjustmentMetrics`
reports `lacal.fit` on the evaluation logits, and `LogitAdjustmentCallback` leaves a folder that `from_pretrained`
and `pipeline` load with adjusted logits."""

import json
import warnings

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import (AutoModelForImageClassification, AutoModelForSequenceClassification,  # noqa: E402
                          BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast, Trainer,
                          TrainingArguments, ViTConfig, ViTForImageClassification, pipeline)

import lacal  # noqa: E402
from lacal.integrations.huggingface import LogitAdjustmentCallback, LogitAdjustmentMetrics  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
COUNTS = (240, 90, 36, 15, 6)
VOCAB = 40


class Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def texts(counts, seed):
    """Sequences of 8 tokens; class c puts token c (and, noisily, others) in them."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in np.repeat(np.arange(len(counts)), counts):
        tokens = rng.integers(len(COUNTS) + 2, VOCAB, size=8)
        tokens[rng.integers(0, 8, size=2)] = label + 2 if rng.random() < 0.7 else rng.integers(2, len(COUNTS) + 2)
        rows.append((" ".join(f"t{t}" for t in tokens), int(label)))
    return rows


def tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"t{i}": i for i in range(2, VOCAB)}}
    core = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]")


def encode(rows, tok):
    encoded = tok([text for text, _ in rows], padding="max_length", max_length=8, truncation=True)
    return Items([{"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": label}
                  for ids, mask, (_, label) in zip(encoded["input_ids"], encoded["attention_mask"], rows)])


def arguments(tmp_path, epochs=2):
    return TrainingArguments(output_dir=str(tmp_path / "run"), num_train_epochs=epochs, learning_rate=5e-3,
                             per_device_train_batch_size=32, per_device_eval_batch_size=64, eval_strategy="epoch",
                             save_strategy="no", logging_strategy="no", report_to=[], use_cpu=True, seed=0,
                             disable_tqdm=True)


def bert():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=len(COUNTS))
    return BertForSequenceClassification(config)


def test_bert_trainer_metrics_and_adjusted_folder_for_from_pretrained_and_pipeline(tmp_path):
    tok = tokenizer()
    train_rows, val_rows = texts(COUNTS, 0), texts([40] * len(COUNTS), 1)
    train, val = encode(train_rows, tok), encode(val_rows, tok)
    metrics = LogitAdjustmentMetrics(train)  # the training set: its labels are counted
    callback = LogitAdjustmentCallback()
    trainer = Trainer(model=bert(), args=arguments(tmp_path), train_dataset=train, eval_dataset=val,
                      processing_class=tok, compute_metrics=metrics, callbacks=[callback])
    trainer.train()
    # the reported numbers are lacal.fit on the evaluation logits
    reported = trainer.evaluate()
    predicted = trainer.predict(val)
    expected = lacal.fit(predicted.predictions, predicted.label_ids, np.array(COUNTS)).tau_fit
    assert reported["eval_tau"] == expected.tau
    assert reported["eval_balanced_error"] == expected.before.balanced_error
    assert reported["eval_balanced_error_adjusted"] == expected.after.balanced_error
    assert reported["eval_worst_class_error_adjusted"] == expected.after.worst_class_error
    assert reported["eval_balanced_error_adjusted"] <= reported["eval_balanced_error"]
    # the callback fitted the same tau at train end, and its folder reloads adjusted
    assert callback.calibration.tau == expected.tau
    assert callback.calibration.counts.tolist() == list(COUNTS)
    assert callback.output_path == tmp_path / "run" / "adjusted"
    assert json.loads((callback.output_path / "config.json").read_text())["lacal_patch"]["tau"] == expected.tau
    reloaded = AutoModelForSequenceClassification.from_pretrained(callback.output_path).eval()
    batch = {k: torch.stack([item[k] for item in val.items]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        adjusted = reloaded(**batch).logits.double()
    original = torch.from_numpy(predicted.predictions).double()
    offsets = torch.from_numpy(callback.calibration.offsets)
    torch.testing.assert_close(adjusted, original + offsets, rtol=0, atol=1e-4)
    # pipeline(...) from the folder alone (its tokenizer was saved with it): softmax of the adjusted logits
    classify = pipeline("text-classification", model=str(callback.output_path), device="cpu", top_k=None)
    scores = classify([text for text, _ in val_rows[:4]])
    expected_scores = torch.softmax(original[:4] + offsets, 1)
    for row, got in zip(expected_scores, scores):
        by_label = {entry["label"]: entry["score"] for entry in got}
        assert [by_label[f"LABEL_{c}"] for c in range(len(COUNTS))] == pytest.approx(row.tolist(), abs=1e-5)


def test_vit_image_classification_adjusted_folder(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    patterns = torch.from_numpy(rng.normal(size=(len(COUNTS), 3, 8, 8))).float()

    def images(counts):
        labels = np.repeat(np.arange(len(counts)), counts)
        pixels = patterns[labels] + torch.from_numpy(rng.normal(scale=1.5, size=(len(labels), 3, 8, 8))).float()
        return Items([{"pixel_values": p, "labels": int(y)} for p, y in zip(pixels, labels)])

    train, val = images(COUNTS), images([30] * len(COUNTS))
    config = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, num_labels=len(COUNTS))
    callback = LogitAdjustmentCallback(priors=list(COUNTS), output_dir=tmp_path / "vit-adjusted",
                                       patch_model=True)
    model = ViTForImageClassification(config)
    trainer = Trainer(model=model, args=arguments(tmp_path, epochs=1), train_dataset=train, eval_dataset=val,
                      callbacks=[callback])
    trainer.train()
    pixels = torch.stack([item["pixel_values"] for item in val.items])
    model.eval()
    with torch.no_grad():
        in_memory = model(pixel_values=pixels).logits.double()  # patched in memory by the callback
    original = in_memory - torch.from_numpy(callback.calibration.offsets)
    labels = np.array([item["labels"] for item in val.items])
    # the logits before the patch, up to float32 rounding: tau within that rounding of lacal.fit's
    assert lacal.fit(original.numpy(), labels, np.array(COUNTS)).tau == pytest.approx(callback.calibration.tau,
                                                                                       abs=1e-5)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "vit-adjusted").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).logits.double(), in_memory, rtol=0, atol=1e-5)
    assert lacal.Calibration.load(tmp_path / "calibration.json").tau == callback.calibration.tau


def test_save_adjusted_takes_a_fit_result_and_saves_its_calibration(tmp_path):
    """`save_adjusted(model, lacal.fit(...), out, calibration_path=...)`: the fit result is saved as a calibration
    file and the folder reloads with its offsets added to the logits."""
    from lacal.integrations.huggingface import save_adjusted

    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, num_labels=len(COUNTS))
    model = ViTForImageClassification(config).eval()
    pixels = torch.randn(40, 3, 8, 8)
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits.double()
    labels = np.arange(40) % len(COUNTS)
    fit = lacal.fit(logits.numpy(), labels, np.array(COUNTS), device="cpu")
    save_adjusted(model, fit, tmp_path / "adjusted", calibration_path=tmp_path / "calibration.json")
    assert lacal.Calibration.load(tmp_path / "calibration.json").tau == fit.tau
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "adjusted").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).logits.double(),
                                   logits + torch.from_numpy(fit.calibration.offsets), rtol=0, atol=1e-5)
