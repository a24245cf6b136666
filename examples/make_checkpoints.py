"""Write one small trained model in the three checkpoint layouts `lacal apply` patches, with its features.

Run: python examples/make_checkpoints.py --dir ckpts   (a few seconds on 2 CPU cores)

The model is a two-layer network (`body` then the classifier `fc`) trained with plain cross-entropy on the demo's
long-tailed problem (100 classes, CIFAR-100-LT counts). The folder gets:
  model.safetensors        the state dict, torchvision style (head `fc`)
  checkpoint.pth           a DistributedDataParallel training checkpoint: {"epoch", "state_dict" with `module.`
                           prefixes, "optimizer"}
  hf-model/                a Hugging Face style folder: config.json (id2label) and two safetensors shards with an index
  val_features.npy, test_features.npy   penultimate-layer features (the output of `body`)
  val_labels.npy, test_labels.npy, train_labels.txt
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from lacal.cli.demo import NUM_CLASSES, make_problem


class Net(nn.Module):
    def __init__(self, dimensions: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dimensions, 64), nn.ReLU())
        self.fc = nn.Linear(64, NUM_CLASSES)

    def forward(self, x):
        return self.fc(self.body(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("ckpts"))
    folder = parser.parse_args().dir
    folder.mkdir(parents=True, exist_ok=True)

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = make_problem(seed=0)
    torch.manual_seed(0)
    model = Net(train_x.shape[1])
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    for _ in range(200):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimiser.step()

    state = model.state_dict()
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    torch.save({"epoch": 200, "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": optimiser.state_dict()}, folder / "checkpoint.pth")

    hf = folder / "hf-model"
    hf.mkdir(exist_ok=True)
    names = [f"species-{i:02d}" for i in range(NUM_CLASSES)]
    (hf / "config.json").write_text(json.dumps({"architectures": ["Net"], "num_labels": NUM_CLASSES,
                                                "id2label": {str(i): n for i, n in enumerate(names)},
                                                "label2id": {n: i for i, n in enumerate(names)}}, indent=2))
    shards = {"model-00001-of-00002.safetensors": ["body.0.weight", "body.0.bias"],
              "model-00002-of-00002.safetensors": ["fc.weight", "fc.bias"]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, hf / shard, metadata={"format": "pt"})
    (hf / "model.safetensors.index.json").write_text(json.dumps({
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
        "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}, indent=2))

    with torch.no_grad():
        np.save(folder / "val_features.npy", model.body(torch.from_numpy(val_x)).numpy())
        np.save(folder / "test_features.npy", model.body(torch.from_numpy(test_x)).numpy())
    np.save(folder / "val_labels.npy", val_y)
    np.save(folder / "test_labels.npy", test_y)
    (folder / "train_labels.txt").write_text("\n".join(map(str, train_y.tolist())) + "\n")
    print(f"wrote model.safetensors, checkpoint.pth, hf-model/, features and labels to {folder}/")


if __name__ == "__main__":
    main()
