"""Qwen's patch embedding computed as a matrix product: the same outputs and gradients as the
Conv3d it replaces, the same checkpoint, and only where the convolution is one product."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers import QWEN_FAMILIES
from visionloom.backbones.patch_embed import Conv3dAsMatmul, patch_convolutions_as_matmul
from visionloom.backbones.registry import build_preset, load


def qwen_patch_conv(bias: bool) -> nn.Conv3d:
    torch.manual_seed(0)
    # Qwen2.5-VL's own shape: 3 channels, temporal patch 2, patch 14 (its config.json's values).
    return nn.Conv3d(3, 32, kernel_size=(2, 14, 14), stride=(2, 14, 14), bias=bias)


@pytest.mark.parametrize("bias", [False, True], ids=["qwen2.5-vl (no bias)", "qwen3-vl (bias)"])
def test_the_product_equals_the_convolution_and_is_as_accurate_in_its_gradients(bias):
    reference = qwen_patch_conv(bias)
    switched = qwen_patch_conv(bias)
    exact = qwen_patch_conv(bias).double()  # the truth both float32 sums are rounded from
    assert patch_convolutions_as_matmul(switched) == 1 and type(switched) is Conv3dAsMatmul
    patches = torch.randn(50, 3, 2, 14, 14)

    expected, got = reference(patches), switched(patches)
    assert got.shape == expected.shape == (50, 32, 1, 1, 1)
    torch.testing.assert_close(got, expected)
    for module, inputs in ((reference, patches), (switched, patches), (exact, patches.double())):
        module(inputs).square().sum().backward()
    assert switched.weight.grad.shape == (32, 3, 2, 14, 14)
    # Over 50 patches the two float32 sums round differently (up to ~3e-5 here); the product must
    # be no further from the float64 gradient than the convolution is.
    parameters = ["weight", "bias"] if bias else ["weight"]
    for name in parameters:
        truth = getattr(exact, name).grad
        error_conv = (getattr(reference, name).grad.double() - truth).abs().max()
        error_product = (getattr(switched, name).grad.double() - truth).abs().max()
        assert error_product <= 2 * error_conv + 1e-7, (name, error_product, error_conv)


def test_a_convolution_that_slides_is_left_a_convolution():
    sliding = nn.Conv3d(3, 8, kernel_size=2, stride=1)
    overlapping_only_in_name = nn.Conv3d(3, 8, kernel_size=2, stride=2, padding=1)
    model = nn.Sequential(sliding, overlapping_only_in_name)
    assert patch_convolutions_as_matmul(model) == 0
    assert type(sliding) is nn.Conv3d and type(overlapping_only_in_name) is nn.Conv3d
    # A switched one given a volume larger than its kernel still convolves.
    reference = qwen_patch_conv(False)
    switched = qwen_patch_conv(False)
    patch_convolutions_as_matmul(switched)
    volume = torch.randn(2, 3, 4, 28, 28)
    torch.testing.assert_close(switched(volume), reference(volume))


@pytest.mark.parametrize("preset", QWEN_FAMILIES)
def test_qwen_towers_embed_patches_by_product_and_save_the_same_checkpoint(preset, tmp_path):
    adapter = build_preset(preset)
    patch_conv = adapter.vision_tower.patch_embed.proj
    assert type(patch_conv) is Conv3dAsMatmul
    adapter.save_pretrained(tmp_path)
    # The checkpoint is the family's own: the transformers class reads it as a Conv3d, same weights.
    native = type(adapter.model).from_pretrained(tmp_path)
    assert native.state_dict().keys() == adapter.model.state_dict().keys()
    native_conv = native.model.visual.patch_embed.proj
    assert type(native_conv) is nn.Conv3d
    assert torch.equal(native_conv.weight, patch_conv.weight)
    # And loading it through the layer switches it again.
    assert type(load(tmp_path).vision_tower.patch_embed.proj) is Conv3dAsMatmul
