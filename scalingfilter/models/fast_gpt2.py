"""Load-time kernel choices for inference-only scoring models.

GPT-2's `Conv1D` computes addmm(bias, x, W) with W stored [in, out]; on Hopper GPUs cuBLAS picks
older kernels for that layout than for `nn.Linear`'s [out, in] (../shared/gpu profile: sm75-era
CUTLASS for every GPT-2 matmul). `conv1d_to_linear` swaps each `Conv1D` for an `nn.Linear` holding
the transposed weight, once, at load: the same function (x @ W + b), so scores agree to float
rounding. The converted model is for inference: its state dict no longer has GPT-2's layout, so it
must not be saved back as a GPT-2 checkpoint (scoring never saves models).
"""

from __future__ import annotations

import torch
from torch import nn


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace every transformers `Conv1D` in `model` by an equivalent `nn.Linear`, in place; the
    number replaced. Parameters keep their device and dtype and do not require grad."""
    from transformers.pytorch_utils import Conv1D

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, Conv1D):
                continue
            nx, nf = child.weight.shape
            linear = nn.Linear(nx, nf, bias=True, device="meta")  # no throw-away initialisation
            linear.weight = nn.Parameter(child.weight.detach().t().contiguous(), requires_grad=False)
            linear.bias = nn.Parameter(child.bias.detach().clone(), requires_grad=False)
            setattr(parent, name, linear)
            replaced += 1
    return replaced


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """The load-time conversions that keep a model's function and speed up its forward."""
    if getattr(model.config, "model_type", None) == "gpt2":
        with torch.no_grad():
            conv1d_to_linear(model)
    return model
