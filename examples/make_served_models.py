"""Write the model of make_checkpoints.py in the formats models are served from, with its raw inputs.

Run after it: python examples/make_served_models.py --dir ckpts   (needs onnx for the ONNX files)

The folder gets:
  model.onnx                 ONNX (opset 17), output `logits`, any batch size
  model-probabilities.onnx   the same with a Softmax on the output (`probabilities`)
  model.ts                   TorchScript (torch.jit.script)
  model.pt2                  a torch.export program, any batch size
  val_inputs.npy, test_inputs.npy   the inputs the features of make_checkpoints.py were computed from
"""

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_checkpoints import Net  # noqa: E402

from lacal.cli.demo import make_problem  # noqa: E402


class WithSoftmax(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(self.model(x), dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("ckpts"))
    folder = parser.parse_args().dir
    _, (val_x, _), (test_x, _) = make_problem(seed=0)
    model = Net(val_x.shape[1])
    model.load_state_dict(load_file(folder / "model.safetensors"))
    model.eval()
    example = (torch.from_numpy(val_x[:2]),)
    warnings.simplefilter("ignore")
    batch = {"x": {0: "batch"}}
    torch.onnx.export(model, example, str(folder / "model.onnx"), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["logits"], dynamic_axes={**batch, "logits": {0: "batch"}})
    torch.onnx.export(WithSoftmax(model), example, str(folder / "model-probabilities.onnx"), dynamo=False,
                      opset_version=17, input_names=["x"], output_names=["probabilities"],
                      dynamic_axes={**batch, "probabilities": {0: "batch"}})
    torch.jit.script(model).save(str(folder / "model.ts"))
    program = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(folder / "model.pt2"))
    np.save(folder / "val_inputs.npy", val_x)
    np.save(folder / "test_inputs.npy", test_x)
    print(f"wrote model.onnx, model-probabilities.onnx, model.ts, model.pt2 and the inputs to {folder}/")


if __name__ == "__main__":
    main()
