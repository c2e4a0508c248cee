"""Qwen's patch embedding as the matrix product it is, instead of PyTorch's generic Conv3d.

The Qwen-VL towers (2, 2.5, 3) embed each patch with an `nn.Conv3d` whose kernel equals its stride
and equals the input's size: every output has one voxel, so the convolution is a matrix product of
the flattened patches with the flattened kernel. PyTorch's CPU Conv3d does not take that shortcut;
on the tiny Qwen2.5-VL scene VLM its forward and backward were a fifth of a training step (measured
with torch.profiler on a batch of 32). `Conv3dAsMatmul` keeps the module, its parameters, their
shapes and names (checkpoints are unchanged) and only computes the product with `F.linear`. Written
by hand: neither `transformers` nor PyTorch offers the switch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Conv3dAsMatmul(nn.Conv3d):
    """An `nn.Conv3d` with kernel == stride, no padding, dilation or groups, whose inputs are each
    exactly one kernel's volume: [N, C, T, P, P] -> [N, D, 1, 1, 1] by one matrix product."""

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if tuple(patches.shape[2:]) != tuple(self.kernel_size):
            # Larger inputs slide the kernel: that is a convolution, computed as one.
            return super().forward(patches)
        flat = patches.reshape(patches.shape[0], -1)  # [N, C*T*P*P], the weight's own order
        kernel = self.weight.reshape(self.out_channels, -1)  # [D, C*T*P*P], a view: grads reach it
        embedded = F.linear(flat, kernel, self.bias)  # [N, D]
        return embedded.view(-1, self.out_channels, 1, 1, 1)


def patch_convolutions_as_matmul(model: nn.Module) -> int:
    """Switch every patch-embedding Conv3d of `model` that qualifies to `Conv3dAsMatmul`, in place;
    how many were switched. Parameters, buffers, hooks and the state dict stay as they were."""
    switched = 0
    for module in model.modules():
        if type(module) is not nn.Conv3d:
            continue
        if (
            tuple(module.stride) == tuple(module.kernel_size)
            and all(p == 0 for p in module.padding)
            and all(d == 1 for d in module.dilation)
            and module.groups == 1
            and module.padding_mode == "zeros"
        ):
            module.__class__ = Conv3dAsMatmul
            switched += 1
    return switched
