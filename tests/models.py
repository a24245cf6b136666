"""Small real torch models laid out like the checkpoints users bring: torchvision, timm, VGG-style, Hugging Face."""

import json

import torch
from safetensors.torch import save_file
from torch import nn

C, D = 6, 5


class TorchvisionLike(nn.Module):
    """A ResNet-shaped model: conv stem, batch norm, pooled features, `fc`."""

    def __init__(self, bias=True, dtype=torch.float32):
        super().__init__()
        self.conv1 = nn.Conv2d(3, D, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(D)
        self.fc = nn.Linear(D, C, bias=bias)
        self.to(dtype)

    def features(self, x):
        return torch.relu(self.bn1(self.conv1(x))).mean((2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


class TimmLike(nn.Module):
    """A ViT-shaped model: token mixing then `head.norm` and `head.fc`."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(8, D), nn.GELU())
        self.head = nn.Module()
        self.head.norm = nn.LayerNorm(D)
        self.head.fc = nn.Linear(D, C)

    def features(self, x):
        return self.head.norm(self.blocks(x))

    def forward(self, x):
        return self.head.fc(self.features(x))


class VggLike(nn.Module):
    """An nn.Sequential classifier whose last layer is `classifier.6`, with hidden layers of C outputs too."""

    def __init__(self):
        super().__init__()
        self.features_ = nn.Linear(8, D)
        self.classifier = nn.Sequential(nn.Linear(D, C), nn.ReLU(), nn.Dropout(), nn.Linear(C, C), nn.ReLU(),
                                        nn.Dropout(), nn.Linear(C, C))

    def features(self, x):
        return self.classifier[:6](self.features_(x))

    def forward(self, x):
        return self.classifier(self.features_(x))


class TwoHeads(nn.Module):
    """Two [C, D] layers and no usual head name: ambiguous on purpose."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(D, C)
        self.out = nn.Linear(D, C)


def build(cls, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = cls(**kwargs)
    model.eval()
    for module in model.modules():  # give batch norm statistics that are not the defaults
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model


def save_hf_folder(model, folder, shards=1, layout="safetensors"):
    """A Hugging Face style folder: config.json with id2label, then model.safetensors, sharded safetensors with
    model.safetensors.index.json, or pytorch_model.bin. Returns the class names."""
    folder.mkdir(parents=True)
    names = [f"label-{i}" for i in range(C)]
    (folder / "config.json").write_text(json.dumps({"architectures": ["Tiny"], "id2label": dict(
        (str(i), n) for i, n in enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}))
    (folder / "preprocessor_config.json").write_text('{"size": 32}')
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if layout == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    elif shards == 1:
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        names_in_order = list(state)
        per_shard = -(-len(names_in_order) // shards)
        weight_map = {}
        for k in range(shards):
            shard = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: state[n] for n in names_in_order[k * per_shard:(k + 1) * per_shard]}
            save_file(part, folder / shard, metadata={"format": "pt"})
            weight_map.update({n: shard for n in part})
        total = sum(t.numel() * t.element_size() for t in state.values())
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}))
    return names
