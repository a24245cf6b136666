"""`lacal.patch_module`: a torch.nn.Module in memory returns the adjusted logits after one call. Checked on real
torchvision and timm models against the original logits * scale + offsets in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lacal
from lacal.errors import CheckpointError, MismatchError, VerificationError

COUNTS = np.array([500, 200, 80, 30, 10], dtype=np.float64)


def calibration(tau=1.3, num_classes=5, **extra):
    counts = np.geomspace(500, 5, num_classes).round()
    return lacal.Calibration(tau=tau, priors=counts / counts.sum(), counts=counts, **extra)


def expected(before, cal):
    scale, shift = cal.affine()
    return before.double() * scale + torch.from_numpy(shift)


def check(model, inputs, cal, **options):
    model.eval()
    with torch.no_grad():
        before = model(inputs)
    result = lacal.patch_module(model, cal, **options)
    with torch.no_grad():
        after = model(inputs)
    torch.testing.assert_close(after.double(), expected(before, cal), rtol=0, atol=2e-5 * (1 + before.abs().max()))
    assert model.lacal_patch["tau"] == cal.tau and result.record is model.lacal_patch
    return result


def test_torchvision_resnet_and_mobilenet():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    assert check(torchvision.models.resnet18(num_classes=5), images, calibration()).heads == ("fc",)
    result = check(torchvision.models.mobilenet_v3_small(num_classes=5), images, calibration(tau=0.7))
    assert result.heads == ("classifier.3",)


def test_timm_vit_and_a_temperature():
    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8)
    result = check(model, torch.randn(2, 3, 32, 32), calibration(temperature=2.0, bias=np.linspace(-0.5, 0.5, 5)))
    assert result.heads == ("head",) and result.scale == 0.5


def test_timm_distilled_deit_patches_both_averaged_heads():
    timm = pytest.importorskip("timm")
    torch.manual_seed(6)
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=5, img_size=32,
                              patch_size=8)
    result = check(model, torch.randn(2, 3, 32, 32), calibration(tau=0.9))  # eval: the mean of the two heads
    assert result.heads == ("head", "head_dist") and any("averages" in w for w in result.warnings)


def test_wrapped_module_and_explicit_head():
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 5))
    wrapped = torch.nn.DataParallel(net)  # names become module.0, module.2
    result = check(wrapped, torch.randn(4, 7), calibration(), head="2")
    assert result.heads == ("module.2",)
    with pytest.raises(CheckpointError, match="already carries a lacal patch"):
        lacal.patch_module(wrapped, calibration(), head="2")


def test_two_candidates_without_a_usual_name_are_listed():
    net = torch.nn.Sequential(torch.nn.Linear(5, 5), torch.nn.Linear(5, 5))
    with pytest.raises(CheckpointError, match="2 layers could be the classifier head"):
        lacal.patch_module(net, calibration())


def test_add_bias_in_memory_and_a_width_mismatch():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU())
    model.add_module("fc", torch.nn.Linear(8, 5, bias=False))
    x = torch.randn(3, 6)
    with pytest.raises(CheckpointError, match="no bias"):
        lacal.patch_module(model, calibration())
    assert model.fc.bias is None and not hasattr(model, "lacal_patch")
    result = check(model, x, calibration(), add_bias=True)
    assert result.added_bias and any("added a bias" in w for w in result.warnings)
    with pytest.raises(MismatchError):
        lacal.patch_module(torch.nn.Sequential(torch.nn.Linear(4, 6)), calibration(), head="0")


def test_squeezenet_is_refused_and_verify_inputs_catches_an_unknown_relu():
    torchvision = pytest.importorskip("torchvision")
    with pytest.raises(CheckpointError, match="SqueezeNet"):  # 1x1 conv -> ReLU -> average pool: known, refused
        lacal.patch_module(torchvision.models.squeezenet1_1(num_classes=5), calibration())

    class Clipped(torch.nn.Module):  # a ReLU after the head that lacal cannot see
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(6, 8)
            self.fc = torch.nn.Linear(8, 5)

        def forward(self, x):
            return torch.relu(self.fc(torch.tanh(self.body(x))))

    torch.manual_seed(4)
    model = Clipped().eval()
    x = torch.randn(16, 6)
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(VerificationError, match="something after the head"):
        lacal.patch_module(model, calibration(tau=2.0), verify_inputs=x)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, state[name], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert not hasattr(model, "lacal_patch")
    without_relu = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh())
    without_relu.add_module("fc", torch.nn.Linear(8, 5))
    check(without_relu, x, calibration(tau=2.0), verify_inputs=x)  # verification passes when nothing follows


def test_bfloat16_head_reports_its_rounding():
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5)).to(torch.bfloat16)
    result = lacal.patch_module(model, calibration(), head="0")
    scale, shift = calibration().affine()
    assert result.max_rounding_error > 0
    exact = torch.from_numpy(shift) + 0  # the bias was random: compare the change against the offsets
    assert result.max_rounding_error <= float(torch.finfo(torch.bfloat16).eps) * (1 + float(exact.abs().max())) * 4
    assert any("bfloat16" in w for w in result.warnings)


def test_verification_runs_in_eval_mode_and_leaves_batchnorm_statistics_alone():
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU())
    model.add_module("fc", torch.nn.Linear(8, 5))  # still in train mode
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches" in k}
    lacal.patch_module(model, calibration(), verify_inputs=torch.randn(16, 4))
    assert model.training
    for name, value in buffers.items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)
