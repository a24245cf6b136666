"""The Hugging Face Trainer with logit adjustment: metrics at every evaluation, an adjusted model folder at the end.

Run: python examples/huggingface_trainer.py [--dir DIR]   (about 20 seconds on a CPU; nothing is downloaded)

A tiny BERT built from a config, with a word-level tokenizer made on the spot, learns to classify token sequences
into 5 long-tailed classes (240 down to 6 training samples). `LogitAdjustmentMetrics` reports the fitted tau and the
balanced error before and after at every evaluation; `LogitAdjustmentCallback` writes `DIR/run/adjusted`, which
`pipeline("text-classification", model=...)` loads with adjusted logits.
"""

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import (BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast, Trainer,
                          TrainingArguments, pipeline)

from lacal.integrations.huggingface import LogitAdjustmentCallback, LogitAdjustmentMetrics

COUNTS = [240, 90, 36, 15, 6]
VOCAB = 40


def sentences(counts, rng):
    rows = []
    for label in np.repeat(np.arange(len(counts)), counts):
        tokens = rng.integers(len(counts) + 2, VOCAB, size=8)
        tokens[rng.integers(0, 8, size=3)] = label + 2 if rng.random() < 0.8 else rng.integers(2, len(counts) + 2)
        rows.append((" ".join(f"t{t}" for t in tokens), int(label)))
    return rows


class Encoded(torch.utils.data.Dataset):
    def __init__(self, rows, tokenizer):
        encoded = tokenizer([text for text, _ in rows], padding="max_length", max_length=8, truncation=True)
        self.items = [{"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": label}
                      for ids, mask, (_, label) in zip(encoded["input_ids"], encoded["attention_mask"], rows)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def main(folder: Path) -> None:
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)
    core = Tokenizer(WordLevel({"[PAD]": 0, "[UNK]": 1, **{f"t{i}": i for i in range(2, VOCAB)}}, unk_token="[UNK]"))
    core.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]")
    train = Encoded(sentences(COUNTS, rng), tokenizer)
    val_rows = sentences([40] * len(COUNTS), rng)
    val = Encoded(val_rows, tokenizer)

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=len(COUNTS)))
    args = TrainingArguments(output_dir=str(folder / "run"), num_train_epochs=4, learning_rate=2e-2,
                             per_device_train_batch_size=32, eval_strategy="epoch", save_strategy="no",
                             logging_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    callback = LogitAdjustmentCallback(COUNTS)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, processing_class=tokenizer,
                      compute_metrics=LogitAdjustmentMetrics(COUNTS), callbacks=[callback])
    trainer.train()
    metrics = trainer.evaluate()
    print(f"evaluation: tau = {metrics['eval_tau']:.3f}, balanced error {metrics['eval_balanced_error']:.2%} -> "
          f"{metrics['eval_balanced_error_adjusted']:.2%} adjusted")
    print(f"adjusted model folder: {callback.output_path}")

    classify = pipeline("text-classification", model=str(callback.output_path), device="cpu")
    predicted = [int(result["label"].split("_")[1]) for result in classify([text for text, _ in val_rows])]
    labels = np.array([label for _, label in val_rows])
    errors = [np.mean(np.array(predicted)[labels == c] != c) for c in range(len(COUNTS))]
    print(f"pipeline(...) on the adjusted folder: balanced error {np.mean(errors):.2%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to write the run (a temporary folder if not given)")
    arguments = parser.parse_args()
    if arguments.dir is not None:
        main(arguments.dir)
    else:
        with tempfile.TemporaryDirectory() as name:
            main(Path(name))
