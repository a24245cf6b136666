"""Checkpoints saved by timm, torchvision and transformers themselves, patched with `lacal apply` and loaded back by
the same library: the patched model must give the original logits - tau * log(pi), or lacal must refuse (exit 9).

Small randomly initialised models only (no downloaded weights); each check runs the model on a fixed random input
and compares in float64.
"""

import argparse
import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lacal.cli.app import app

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")

runner = CliRunner()
COUNTS = np.array([300.0, 100.0, 30.0, 10.0, 3.0])
TAU = 1.2


def offsets(counts=COUNTS, tau=TAU):
    return torch.from_numpy(-tau * np.log(counts / counts.sum()))


def priors_file(tmp_path, counts=COUNTS):
    path = tmp_path / "priors.txt"
    path.write_text("\n".join(str(c) for c in counts) + "\n")
    return path


def apply(tmp_path, source, out, *extra, counts=COUNTS):
    return runner.invoke(app, ["apply", str(source), "--tau", str(TAU), "--priors", str(priors_file(tmp_path, counts)),
                               "--out", str(out), *map(str, extra)])


def patched_ok(tmp_path, source, out, *extra, counts=COUNTS):
    result = apply(tmp_path, source, out, *extra, counts=counts)
    assert result.exit_code == 0, result.output
    return result


def assert_adjusted(got, original, counts=COUNTS):
    """got == original + offsets within float32 rounding of the logits' size."""
    expected = original.double() + offsets(counts)
    tolerance = 8 * torch.finfo(torch.float32).eps * (1 + float(expected.abs().max()))
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=tolerance)


def logits(model, x):
    model.eval()
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out


def images(size=32, seed=0):
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed))


def jiggle(model, seed=1):
    """Move every parameter a little (random init gives zero biases; a copy should differ from its original)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def load_torch(path):
    """How timm and torchvision's reference scripts load a training checkpoint: weights_only with args allowed."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------------------------------------------- timm

TIMM_MODELS = [
    ("resnet10t", {}, "fc"),
    ("vit_tiny_patch16_224", {"img_size": 32, "depth": 1}, "head"),
    ("convnext_atto", {}, "head.fc"),
    ("deit_tiny_distilled_patch16_224", {"img_size": 32, "depth": 1}, "head' and 'head_dist"),
    ("levit_128s", {"img_size": 64}, "head.linear' and 'head_dist.linear"),  # batch norm, then the averaged heads
]


def timm_model(name, kwargs, seed=0):
    torch.manual_seed(seed)
    return jiggle(timm.create_model(name, pretrained=False, num_classes=5, **kwargs), seed).eval()


@pytest.mark.parametrize("name, kwargs, head", TIMM_MODELS, ids=[m[0] for m in TIMM_MODELS])
def test_timm_state_dict(tmp_path, name, kwargs, head):
    model = timm_model(name, kwargs)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    result = patched_ok(tmp_path, tmp_path / "model.pth", tmp_path / "patched.pth")
    assert f"patched '{head}'" in result.stderr
    assert "lacal cannot tell it was patched" in result.stderr  # what a plain re-saved state dict loses
    again = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)
    timm.models.load_checkpoint(again, str(tmp_path / "patched.pth"))
    x = images(64 if name.startswith("levit") else 32)
    assert_adjusted(logits(again, x), logits(model, x))


def test_timm_distilled_deit_gets_the_offsets_on_both_heads(tmp_path):
    """The model averages head and head_dist: patching head alone would apply tau / 2."""
    name, kwargs, _ = TIMM_MODELS[3]
    model = timm_model(name, kwargs)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    result = patched_ok(tmp_path, tmp_path / "model.pth", tmp_path / "patched.pth")
    assert "averages 'head' and 'head_dist'" in result.stderr
    state = torch.load(tmp_path / "patched.pth", weights_only=True)
    for head in ("head", "head_dist"):
        assert_adjusted(state[f"{head}.bias"], model.state_dict()[f"{head}.bias"])
    # logits from features through one head are not this model's logits: fit-tau says so
    np.save(tmp_path / "features.npy", np.zeros((10, 192), np.float32))
    np.save(tmp_path / "labels.npy", np.arange(10) % 5)
    fit = runner.invoke(app, ["fit-tau", str(tmp_path / "labels.npy"), "--checkpoint", str(tmp_path / "model.pth"),
                              "--features", str(tmp_path / "features.npy"), "--priors", str(priors_file(tmp_path))])
    assert fit.exit_code == 9 and "averages 'head' and 'head_dist'" in fit.stderr, fit.output


def timm_training_checkpoint(tmp_path, ddp=False):
    """What timm's train.py leaves: CheckpointSaver with an EMA (ModelEmaV3), args, optimizer and metric."""
    name, kwargs = "vit_tiny_patch16_224", {"img_size": 32, "depth": 1}
    model = timm_model(name, kwargs)
    ema = timm.utils.ModelEmaV3(model, decay=0.5)
    jiggle(model, seed=2)
    ema.update(model)  # the EMA now sits between the old and new weights: a copy with its own bias
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(images()).sum().backward()
    optimizer.step()
    args = argparse.Namespace(model=name, lr=0.1, epochs=3, model_ema=True, output=str(tmp_path))
    wrapped = torch.nn.Module()  # DistributedDataParallel's `module.` prefix, without a process group
    wrapped.module = model
    saver = timm.utils.CheckpointSaver(wrapped if ddp else model, optimizer, args=args, model_ema=ema,
                                       checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path),
                                       unwrap_fn=(lambda m: m) if ddp else timm.utils.unwrap_model)
    saver.save_checkpoint(epoch=2, metric=71.5)
    return name, kwargs, model, ema.module.eval(), tmp_path / "model_best.pth.tar"


@pytest.mark.parametrize("ddp", [False, True], ids=["plain", "ddp-prefix"])
def test_timm_checkpoint_saver_with_ema_and_args(tmp_path, ddp):
    name, kwargs, model, ema, path = timm_training_checkpoint(tmp_path, ddp)
    before = load_torch(path)
    assert isinstance(before["args"], argparse.Namespace) and "state_dict_ema" in before
    assert any(k.startswith("module.") for k in before["state_dict"]) == ddp
    result = patched_ok(tmp_path, path, tmp_path / "patched.pth.tar")
    assert "'state_dict_ema'" in result.stderr
    x = images()
    for use_ema, original in ((True, ema), (False, model)):  # timm loads the EMA weights by default
        again = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)
        timm.models.load_checkpoint(again, str(tmp_path / "patched.pth.tar"), use_ema=use_ema)
        assert_adjusted(logits(again, x), logits(original, x))
    resumed = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)  # timm train.py --resume
    optimizer = torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9)
    assert timm.models.resume_checkpoint(resumed, str(tmp_path / "patched.pth.tar"), optimizer=optimizer) == 3
    assert_adjusted(logits(resumed, x), logits(model, x))
    after = load_torch(tmp_path / "patched.pth.tar")
    assert vars(after["args"]) == vars(before["args"])
    for key in ("epoch", "metric", "arch", "version", "saver"):
        assert after[key] == before[key], key
    assert set(after) == set(before) | {"lacal_patch"}
    torch.testing.assert_close(after["optimizer"]["state"], before["optimizer"]["state"])
    assert after["optimizer"]["param_groups"] == before["optimizer"]["param_groups"]
    assert after["lacal_patch"]["copies"] == ["state_dict_ema"]
    again = apply(tmp_path, tmp_path / "patched.pth.tar", tmp_path / "twice.pth.tar")
    assert again.exit_code == 9 and "already carries a lacal patch" in again.stderr


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_training_checkpoint_that_would_run_code_is_still_refused(tmp_path):
    """Allowing argparse.Namespace opens nothing else: any other global in the file is refused, never run."""
    args = argparse.Namespace(model="resnet10t", hook=Exploit(tmp_path / "pwned"))
    torch.save({"state_dict": timm_model("resnet10t", {}).state_dict(), "args": args}, tmp_path / "bad.pth.tar")
    result = apply(tmp_path, tmp_path / "bad.pth.tar", tmp_path / "out.pth.tar")
    assert result.exit_code == 3 and "would run code" in result.stderr
    assert not (tmp_path / "out.pth.tar").exists() and not (tmp_path / "pwned").exists()


# -------------------------------------------------------------------------------------------------------- torchvision


def small_torchvision_vit():
    return torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=8,
                                                mlp_dim=16, num_classes=5)


TORCHVISION_MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=5), "fc"),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=5), "classifier.3"),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=5), "classifier.1"),
    "vit": (small_torchvision_vit, "heads.head"),
    # aux1.fc2 and aux2.fc2 also have 5 outputs, but feed only the training loss: eval mode returns fc's logits
    "googlenet": (lambda: torchvision.models.googlenet(num_classes=5, aux_logits=True, init_weights=False), "fc"),
}


def torchvision_model(name, seed=0):
    torch.manual_seed(seed)
    return jiggle(TORCHVISION_MODELS[name][0](), seed).eval()


@pytest.mark.parametrize("name", list(TORCHVISION_MODELS))
def test_torchvision_state_dict(tmp_path, name):
    model = torchvision_model(name)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    result = patched_ok(tmp_path, tmp_path / "model.pth", tmp_path / "patched.pth")
    assert f"patched '{TORCHVISION_MODELS[name][1]}'" in result.stderr
    again = TORCHVISION_MODELS[name][0]()
    again.load_state_dict(torch.load(tmp_path / "patched.pth", weights_only=True))
    x = images()
    assert_adjusted(logits(again, x), logits(model, x))


def test_torchvision_squeezenet_is_refused(tmp_path):
    """classifier.1 -> ReLU -> average pool: the ReLU would clip the shifted scores."""
    torch.save(torchvision.models.squeezenet1_1(num_classes=5).state_dict(), tmp_path / "model.pth")
    result = apply(tmp_path, tmp_path / "model.pth", tmp_path / "patched.pth")
    assert result.exit_code == 9, result.output
    assert "SqueezeNet" in result.stderr and "ReLU" in result.stderr
    assert not (tmp_path / "patched.pth").exists()


def test_torchvision_reference_training_checkpoint(tmp_path):
    """references/classification/train.py: {model, optimizer, lr_scheduler, epoch, args, model_ema}; the EMA is an
    AveragedModel whose state dict has `module.` names and n_averaged."""
    model = torchvision_model("resnet18")
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.5),
                                              use_buffers=True)
    jiggle(model, seed=3)
    ema.update_parameters(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer, [torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=2),
                    torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5)], milestones=[2])
    args = argparse.Namespace(model="resnet18", lr=0.1, epochs=7, model_ema=True, lr_scheduler="cosineannealinglr")
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "lr_scheduler": scheduler.state_dict(), "epoch": 6, "args": args, "model_ema": ema.state_dict()}
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    result = patched_ok(tmp_path, tmp_path / "checkpoint.pth", tmp_path / "patched.pth")
    assert "'model_ema'" in result.stderr
    loaded = load_torch(tmp_path / "patched.pth")  # train.py --resume, with args allowed
    again = torchvision.models.resnet18(num_classes=5)
    again.load_state_dict(loaded["model"])
    again_ema = torch.optim.swa_utils.AveragedModel(torchvision.models.resnet18(num_classes=5), use_buffers=True)
    again_ema.load_state_dict(loaded["model_ema"])
    x = images()
    assert_adjusted(logits(again, x), logits(model, x))
    assert_adjusted(logits(again_ema, x), logits(ema, x))
    assert loaded["epoch"] == 6 and vars(loaded["args"]) == vars(args)
    assert loaded["lr_scheduler"] == scheduler.state_dict()
    assert loaded["optimizer"]["param_groups"] == optimizer.state_dict()["param_groups"]
    assert int(loaded["model_ema"]["n_averaged"]) == int(ema.n_averaged)


# ------------------------------------------------------------------------------------------------------- transformers

SMALL_TEXT = dict(vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                  max_position_embeddings=32)
TOKENS = torch.randint(3, 60, (3, 7), generator=torch.Generator().manual_seed(0))


def text_model(cls, config_cls, seed=0, **config):
    torch.manual_seed(seed)
    return jiggle(cls(config_cls(**config)), seed).eval()


def bert(num_labels=2, **config):
    return text_model(transformers.BertForSequenceClassification, transformers.BertConfig, num_labels=num_labels,
                      **SMALL_TEXT, **config)


def hf_logits(folder, x, **options):
    return logits(transformers.AutoModelForSequenceClassification.from_pretrained(folder, **options), x)


BINARY = np.array([90.0, 10.0])


@pytest.mark.parametrize("layout", ["single", "sharded", "bin"])
def test_transformers_binary_bert(tmp_path, layout):
    """2 labels and config.json without id2label: the priors' length finds the head."""
    model = bert()
    if layout == "bin":  # save_pretrained(safe_serialization=False) of transformers 4; version 5 writes safetensors
        model.config.save_pretrained(tmp_path / "bert")
        torch.save(model.state_dict(), tmp_path / "bert" / "pytorch_model.bin")
    else:
        model.save_pretrained(tmp_path / "bert", **({"max_shard_size": "4KB"} if layout == "sharded" else {}))
    if layout == "sharded":
        assert len(list((tmp_path / "bert").glob("model-0000*-of-0000*.safetensors"))) > 1
    assert "id2label" not in json.loads((tmp_path / "bert" / "config.json").read_text())
    result = patched_ok(tmp_path, tmp_path / "bert", tmp_path / "patched", counts=BINARY)
    assert "patched 'classifier'" in result.stderr
    assert_adjusted(hf_logits(tmp_path / "patched", TOKENS), logits(model, TOKENS), BINARY)


def test_transformers_binary_head_with_an_unusual_name(tmp_path):
    """BART's head is classification_head.out_proj: the priors' two classes pick it out; without a class count the
    error lists the candidates."""
    model = text_model(transformers.BartForSequenceClassification, transformers.BartConfig, num_labels=2,
                       vocab_size=64, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=32,
                       pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model.save_pretrained(tmp_path / "bart")
    assert "id2label" not in json.loads((tmp_path / "bart" / "config.json").read_text())
    result = patched_ok(tmp_path, tmp_path / "bart", tmp_path / "patched", counts=BINARY)
    assert "patched 'classification_head.out_proj'" in result.stderr
    x = TOKENS.clone()
    x[:, -1] = 2  # BART classifies from the last end-of-sequence token
    # BartConfig defaults to 3 labels and save_pretrained leaves 2 default labels out, so users load it with num_labels
    assert_adjusted(hf_logits(tmp_path / "patched", x, num_labels=2), logits(model, x), BINARY)
    np.save(tmp_path / "train.npy", np.repeat([0, 1], [90, 10]))
    unknown = runner.invoke(app, ["apply", str(tmp_path / "bart"), "--tau", "1", "--train-labels",
                                  str(tmp_path / "train.npy"), "--out", str(tmp_path / "other")])
    assert unknown.exit_code == 9 and "classification_head.out_proj [2, 8]" in unknown.stderr, unknown.output


def test_transformers_patch_record_survives_save_pretrained(tmp_path):
    bert().save_pretrained(tmp_path / "bert")
    patched_ok(tmp_path, tmp_path / "bert", tmp_path / "patched", counts=BINARY)
    transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "patched").save_pretrained(
        tmp_path / "resaved")
    assert not (tmp_path / "resaved" / "lacal_patch.json").exists()  # save_pretrained writes only its own files
    again = apply(tmp_path, tmp_path / "resaved", tmp_path / "twice", counts=BINARY)
    assert again.exit_code == 9 and "already carries a lacal patch (tau = 1.2)" in again.stderr
    assert not (tmp_path / "twice").exists()


def test_transformers_vit_and_roberta(tmp_path):
    torch.manual_seed(0)
    names = {i: f"species-{i}" for i in range(5)}
    vit = jiggle(transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=32, patch_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        num_labels=5, id2label=names, label2id={v: k for k, v in names.items()}))).eval()
    vit.save_pretrained(tmp_path / "vit")
    patched_ok(tmp_path, tmp_path / "vit", tmp_path / "vit-patched")
    x = images()
    again = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "vit-patched")
    assert_adjusted(logits(again, x), logits(vit, x))

    roberta = text_model(transformers.RobertaForSequenceClassification, transformers.RobertaConfig, num_labels=5,
                         pad_token_id=1, **{**SMALL_TEXT, "max_position_embeddings": 40})
    roberta.save_pretrained(tmp_path / "roberta")
    result = patched_ok(tmp_path, tmp_path / "roberta", tmp_path / "roberta-patched")
    assert "patched 'classifier.out_proj'" in result.stderr
    assert_adjusted(hf_logits(tmp_path / "roberta-patched", TOKENS), logits(roberta, TOKENS))


def gpt2():
    return text_model(transformers.GPT2ForSequenceClassification, transformers.GPT2Config, num_labels=5, n_embd=8,
                      n_layer=1, n_head=2, n_positions=32, vocab_size=64, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)


def llama():
    return text_model(transformers.LlamaForSequenceClassification, transformers.LlamaConfig, num_labels=5,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, num_key_value_heads=2, **SMALL_TEXT)


@pytest.mark.parametrize("add_bias", [False, True], ids=["plain", "add-bias"])
@pytest.mark.parametrize("build, architecture", [(gpt2, "GPT2ForSequenceClassification"),
                                                 (llama, "LlamaForSequenceClassification")], ids=["gpt2", "llama"])
def test_transformers_head_without_bias_is_refused(tmp_path, add_bias, build, architecture):
    """GPT-2 and Llama build `score` with bias=False: from_pretrained would drop an added bias as unexpected."""
    build().save_pretrained(tmp_path / "model")
    result = apply(tmp_path, tmp_path / "model", tmp_path / "patched", *(["--add-bias"] if add_bias else []))
    assert result.exit_code == 9, result.output
    assert f"head 'score' [5, 8] has no bias because {architecture} builds it with bias=False" in result.stderr
    assert "lacal apply LOGITS" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "patched").exists()


def test_transformers_deit_with_teacher_averages_two_heads(tmp_path):
    torch.manual_seed(0)
    model = jiggle(transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(
        image_size=32, patch_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        num_labels=5))).eval()
    model.save_pretrained(tmp_path / "deit")
    result = patched_ok(tmp_path, tmp_path / "deit", tmp_path / "patched")
    assert "averages 'cls_classifier' and 'distillation_classifier'" in result.stderr
    again = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path / "patched")
    x = images()
    assert_adjusted(logits(again, x), logits(model, x))


def test_two_unknown_heads_are_refused_and_listed(tmp_path):
    """A second head-like layer with the class count and no known rule for combining them: refuse, list both."""
    model = timm_model("resnet10t", {})
    state = dict(model.state_dict())
    state["fc_extra.weight"], state["fc_extra.bias"] = state["fc.weight"].clone(), state["fc.bias"].clone()
    torch.save(state, tmp_path / "model.pth")
    result = apply(tmp_path, tmp_path / "model.pth", tmp_path / "patched.pth")
    assert result.exit_code == 9
    assert "fc [5, 512]" in result.stderr and "fc_extra [5, 512]" in result.stderr and "--head" in result.stderr
    named = patched_ok(tmp_path, tmp_path / "model.pth", tmp_path / "patched.pth", "--head", "fc")
    assert "patched 'fc'" in named.stderr


def test_naming_one_of_two_averaged_heads_patches_both(tmp_path):
    name, kwargs, _ = TIMM_MODELS[3]
    torch.save(timm_model(name, kwargs).state_dict(), tmp_path / "model.pth")
    result = patched_ok(tmp_path, tmp_path / "model.pth", tmp_path / "patched.pth", "--head", "head_dist")
    assert "patched 'head_dist' and 'head'" in result.stderr
