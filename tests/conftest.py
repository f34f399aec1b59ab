"""Tiny real components shared by the tests (widths 32-64, a few frames, 8-16 px latents)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
)


def make_tiny_unet(seed: int = 0, **overrides):
    """A tiny SD1.5-shaped diffusers UNet with random (non-zero) weights."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**TINY_UNET, **overrides})
    with torch.no_grad():
        for parameter in unet.parameters():  # diffusers zero-inits some outputs; randomise all for sharper tests
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return unet.eval()


def tiny_motion_config(**overrides):
    from zoetrope.models.motion_module import MotionModuleConfig

    base = dict(block_out_channels=(32, 64), layers_per_block=1, num_attention_heads=4, norm_num_groups=8)
    return MotionModuleConfig(**{**base, **overrides})


def make_tiny_motion_modules(seed: int = 1, **overrides):
    """Motion modules with random weights everywhere (proj_out included) so they actually move things."""
    from zoetrope.models.motion_module import MotionModules

    torch.manual_seed(seed)
    modules = MotionModules(tiny_motion_config(zero_init=False, **overrides))
    with torch.no_grad():
        for parameter in modules.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return modules.eval()


@pytest.fixture
def tiny_unet():
    return make_tiny_unet()
