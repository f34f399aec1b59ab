"""Deepening a trained UNet keeps its function and trains (zoetrope.models.deepen)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_unet
from zoetrope.models.deepen import deepen_unet


def _inputs(seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 5, 32, generator=generator)
    return latents, torch.tensor([10, 800]), context


@pytest.mark.parametrize("layers, extra", [(1, 1), (2, 1), (1, 2)])
def test_deepened_unet_computes_the_same_function(layers, extra):
    unet = make_tiny_unet(layers_per_block=layers)
    grown = deepen_unet(unet, extra).eval()
    assert grown.config.layers_per_block == layers + extra
    assert len(grown.down_blocks[0].resnets) == layers + extra
    assert len(grown.up_blocks[1].attentions) == layers + extra + 1
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in unet.parameters())
    latents, timesteps, context = _inputs()
    with torch.no_grad():
        before = unet(latents, timesteps, context).sample
        after = grown(latents, timesteps, context).sample
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_new_layers_are_trainable_and_change_the_output():
    unet = make_tiny_unet()
    grown = deepen_unet(unet)
    latents, timesteps, context = _inputs()
    new_conv = grown.down_blocks[0].resnets[1].conv2
    assert new_conv.weight.abs().sum() == 0
    grown.train()
    grown(latents, timesteps, context).sample.square().mean().backward()
    assert new_conv.weight.grad is not None and new_conv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        new_conv.weight.add_(0.1)
        changed = grown.eval()(latents, timesteps, context).sample
        original = unet(latents, timesteps, context).sample
    assert (changed - original).abs().max() > 1e-3


def test_bad_requests_raise():
    unet = make_tiny_unet()
    with pytest.raises(ValueError, match="at least one"):
        deepen_unet(unet, 0)
    from conftest import make_tiny_motion_modules
    from zoetrope.models.deepen import deepen_motion_modules

    with pytest.raises(ValueError, match="zero_init=False"):
        deepen_motion_modules(make_tiny_motion_modules())


def test_deepened_video_unet_computes_the_same_video():
    from conftest import tiny_motion_config
    from zoetrope.models.deepen import deepen_motion_modules
    from zoetrope.models.motion_module import MotionModules
    from zoetrope.models.video_unet import VideoUNet

    torch.manual_seed(4)
    modules = MotionModules(tiny_motion_config())
    with torch.no_grad():
        for parameter in modules.parameters():  # trained modules move things: no zero outputs
            parameter.add_(torch.randn_like(parameter) * 0.05)
    unet = make_tiny_unet()
    grown_unet = deepen_unet(unet)
    grown_modules = deepen_motion_modules(modules.eval())
    assert grown_modules.num_modules() == modules.num_modules() + len(modules.down_blocks) + len(modules.up_blocks)
    generator = torch.Generator().manual_seed(5)
    sample = torch.randn(1, 4, 4, 8, 8, generator=generator)
    text = torch.randn(1, 5, 32, generator=generator)
    with torch.no_grad():
        before = VideoUNet(unet, modules.eval())(sample, torch.tensor([500]), text)
        after = VideoUNet(grown_unet.eval(), grown_modules.eval())(sample, torch.tensor([500]), text)
        still = VideoUNet(make_tiny_unet(), modules.eval())(sample, torch.tensor([500]), text, motion_strength=0.0)
    assert (before - still).abs().max() > 1e-3  # the modules act on the video
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


@pytest.mark.parametrize("extra", [1, 2])
def test_deepened_path_finds_each_trained_layer_in_the_grown_unet(extra):
    from zoetrope.models.deepen import deepened_path

    unet = make_tiny_unet()
    grown = deepen_unet(unet, extra)
    checked = 0
    for name, module in unet.named_modules():
        parts = name.split(".")
        if len(parts) == 4 and parts[0] in ("down_blocks", "up_blocks") and parts[2] in ("resnets", "attentions"):
            moved = grown.get_submodule(deepened_path(name, extra))
            for (key, value), (_, other) in zip(module.state_dict().items(), moved.state_dict().items(), strict=True):
                assert torch.equal(value, other), (name, key)
            checked += 1
    assert checked == 9  # down: 2 resnets + 1 attention; up: 4 resnets + 2 attentions
    moved = deepened_path("up_blocks.1.attentions.1.proj_in.lora.up.weight", extra)
    assert moved == f"up_blocks.1.attentions.{1 + extra}.proj_in.lora.up.weight"
    kept = "down_blocks.0.attentions.0.proj_in.weight"
    assert deepened_path(kept, extra) == kept
