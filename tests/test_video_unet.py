"""VideoUNet: parity with diffusers' UNetMotionModel, GroupNorm modes, zero-init and detach invariants."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from conftest import make_tiny_motion_modules, make_tiny_unet, tiny_motion_config
from zoetrope.errors import CheckpointError, FrameCountError
from zoetrope.formats.diffusers_motion import from_diffusers
from zoetrope.models.motion_module import MotionModules
from zoetrope.models.video_unet import VideoUNet

FRAMES = 6


def _diffusers_pair(mid_block: bool, norm_mode: str):
    """The same random weights in diffusers' UNetMotionModel and in our VideoUNet."""
    from diffusers import MotionAdapter, UNetMotionModel

    unet = make_tiny_unet(seed=0)
    torch.manual_seed(3)
    adapter = MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=1,
        motion_num_attention_heads=4,
        motion_norm_num_groups=8,
        motion_max_seq_length=32,
        use_motion_mid_block=mid_block,
    )
    with torch.no_grad():
        for name, parameter in adapter.named_parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    reference = UNetMotionModel.from_unet2d(unet, adapter).eval()
    config = tiny_motion_config(mid_block=mid_block, norm_mode=norm_mode, zero_init=False)
    modules = MotionModules(config)
    modules.load_state_dict(from_diffusers(adapter.state_dict(), config), strict=True)
    return reference, VideoUNet(unet, modules.eval())


def _inputs(batch: int = 2, frames: int = FRAMES):
    generator = torch.Generator().manual_seed(7)
    sample = torch.randn(batch, 4, frames, 8, 8, generator=generator)
    text = torch.randn(batch, 5, 32, generator=generator)
    return sample, torch.tensor([500, 20]), text


def _reference_forward(reference, sample, timestep, text):
    frames = sample.shape[2]
    return reference(sample, timestep, text.repeat_interleave(frames, dim=0)).sample


@pytest.mark.parametrize("mid_block", [True, False], ids=["v2-layout", "v3-layout"])
def test_parity_with_diffusers_in_joint_norm_mode(mid_block: bool) -> None:
    reference, ours = _diffusers_pair(mid_block, norm_mode="joint")
    sample, timestep, text = _inputs()
    with torch.no_grad():
        expected = _reference_forward(reference, sample, timestep, text)
        got = ours(sample, timestep, text)
    assert got.shape == sample.shape
    assert (got - expected).abs().max().item() <= 1e-4


def test_default_norm_differs_from_diffusers_exactly_in_the_motion_groupnorm() -> None:
    reference, ours = _diffusers_pair(mid_block=True, norm_mode="per_frame")
    sample, timestep, text = _inputs()
    with torch.no_grad():
        diffusers_joint = _reference_forward(reference, sample, timestep, text)
        ours_per_frame = ours(sample, timestep, text)
    assert (ours_per_frame - diffusers_joint).abs().max().item() > 1e-3

    # Make diffusers' motion GroupNorm per frame (its input there is (b, c, f, h, w)) and nothing else:
    def per_frame(module, args):
        return (rearrange(args[0], "b c f h w -> (b f) c h w"),)

    def unfold(module, args, output):
        return rearrange(output, "(b f) c h w -> b c f h w", f=FRAMES)

    for name, module in reference.named_modules():
        if name.endswith("motion_modules.0.norm") or (".motion_modules." in name and name.endswith(".norm")):
            module.register_forward_pre_hook(per_frame)
            module.register_forward_hook(unfold)
    with torch.no_grad():
        diffusers_per_frame = _reference_forward(reference, sample, timestep, text)
    assert (ours_per_frame - diffusers_per_frame).abs().max().item() <= 1e-4


def _frame_leak(unet_norm_mode: str) -> float:
    """How much frame 0's output moves when only frame 1's input changes (zero-init modules: no attention mixing)."""
    from zoetrope.models.motion_module import MotionModules

    unet = make_tiny_unet()
    video = VideoUNet(unet, MotionModules(tiny_motion_config(unet_norm_mode=unet_norm_mode)))
    sample, timestep, text = _inputs(batch=1, frames=3)
    changed = sample.clone()
    changed[:, :, 1] += 3.0
    with torch.no_grad():
        first = video(sample, timestep[:1], text[:1])[:, :, 0]
        second = video(changed, timestep[:1], text[:1])[:, :, 0]
    return (first - second).abs().max().item()


def test_v1_groupnorm_pools_statistics_over_frames() -> None:
    assert _frame_leak("joint") > 1e-3


def test_v2_v3_groupnorm_is_per_frame() -> None:
    assert _frame_leak("per_frame") == 0.0


@pytest.mark.parametrize("unet_options", [{}, {"addition_embed_type": "text", "addition_embed_type_num_heads": 4}],
                         ids=["sd15", "pooled-caption"])
def test_zero_initialised_modules_equal_the_image_unet_per_frame(unet_options: dict) -> None:
    """Also for a UNet that pools the caption into its timestep embedding: each frame gets its own copy."""
    unet = make_tiny_unet(**unet_options)
    video = VideoUNet(unet, MotionModules(tiny_motion_config()))  # zero_init=True by default
    sample, timestep, text = _inputs()
    with torch.no_grad():
        got = video(sample, timestep, text)
        frames = rearrange(sample, "b c f h w -> (b f) c h w")
        expected = unet(frames, timestep.repeat_interleave(FRAMES), text.repeat_interleave(FRAMES, 0)).sample
    assert torch.allclose(got, rearrange(expected, "(b f) c h w -> b c f h w", f=FRAMES), atol=1e-6)


def test_detach_returns_the_image_model_bit_for_bit() -> None:
    unet = make_tiny_unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    sample, timestep, text = _inputs(batch=1)
    frames = rearrange(sample, "b c f h w -> (b f) c h w")
    args = (frames, timestep[:1].repeat(FRAMES), text[:1].repeat(FRAMES, 1, 1))
    with torch.no_grad():
        expected = unet(*args).sample
        video = VideoUNet(unet, make_tiny_motion_modules())
        inflated = video(sample, timestep[:1], text[:1])
        image_unet = video.detach()
        after = image_unet(*args).sample
    assert not torch.allclose(rearrange(inflated, "b c f h w -> (b f) c h w"), expected, atol=1e-3)
    assert torch.equal(after, expected)
    assert image_unet.state_dict().keys() == before.keys()
    assert all(torch.equal(image_unet.state_dict()[k], v) for k, v in before.items())


def test_motion_modules_really_mix_frames() -> None:
    video = VideoUNet(make_tiny_unet(), make_tiny_motion_modules())
    sample, timestep, text = _inputs(batch=1, frames=3)
    changed = sample.clone()
    changed[:, :, 2] += 1.0
    with torch.no_grad():
        delta = (video(sample, timestep[:1], text[:1]) - video(changed, timestep[:1], text[:1]))[:, :, 0]
    assert delta.abs().max().item() > 1e-3


def test_per_frame_text_equals_shared_text_when_identical() -> None:
    video = VideoUNet(make_tiny_unet(), make_tiny_motion_modules())
    sample, timestep, text = _inputs()
    per_frame = text[:, None].expand(-1, FRAMES, -1, -1)
    with torch.no_grad():
        assert torch.allclose(video(sample, timestep, text), video(sample, timestep, per_frame), atol=1e-6)


def test_motion_strength_zero_is_the_image_model() -> None:
    unet = make_tiny_unet()
    video = VideoUNet(unet, make_tiny_motion_modules())
    zero_init = VideoUNet(make_tiny_unet(), MotionModules(tiny_motion_config()))
    sample, timestep, text = _inputs()
    with torch.no_grad():
        assert torch.allclose(video(sample, timestep, text, motion_strength=0.0), zero_init(sample, timestep, text), atol=1e-6)
        half = video(sample, timestep, text, motion_strength=torch.full((FRAMES,), 0.5))
        assert torch.allclose(half, video(sample, timestep, text, motion_strength=0.5), atol=1e-6)


def test_too_many_frames_names_the_limit_and_the_way_out() -> None:
    video = VideoUNet(make_tiny_unet(), MotionModules(tiny_motion_config(max_frames=24)))
    sample = torch.randn(1, 4, 25, 8, 8)
    with pytest.raises(FrameCountError, match=r"24.*context-length"):
        video(sample, 1, torch.randn(1, 5, 32))


def test_layout_mismatch_is_a_clear_error() -> None:
    sdxl_like = MotionModules(tiny_motion_config(block_out_channels=(32, 64, 64), version="sdxl"))
    with pytest.raises(CheckpointError, match="SDXL-layout.*SD1.5|image model"):
        VideoUNet(make_tiny_unet(), sdxl_like)
    wider = MotionModules(tiny_motion_config(block_out_channels=(64, 128)))  # same two levels, other widths
    with pytest.raises(CheckpointError, match=r"widths \(64, 128\).*\(32, 64\) \(same layout, other widths\)"):
        VideoUNet(make_tiny_unet(), wider)


def test_sdxl_layout_unet_inflates_with_joint_motion_norm() -> None:
    """An SDXL-layout UNet (3 blocks, DownBlock2D first, text_time added conditioning) takes the SDXL preset layout."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64, 64), layers_per_block=1, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4, norm_num_groups=8, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8, transformer_layers_per_block=1,
    ).eval()
    modules = make_tiny_motion_modules(block_out_channels=(32, 64, 64), norm_mode="joint", version="sdxl")
    video = VideoUNet(unet, modules)
    sample = torch.randn(1, 4, 3, 8, 8)
    added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.randn(1, 6)}
    with torch.no_grad():
        out = video(sample, 10, torch.randn(1, 5, 32), added_cond_kwargs=added)
    assert out.shape == sample.shape and torch.isfinite(out).all()
    assert len(video._handles) == modules.num_modules()


def test_diffusers_gradient_checkpointing_sees_the_frames() -> None:
    """diffusers recomputes checkpointed blocks during backward, after our call returned: same gradients."""
    sample, timestep, text = _inputs(batch=1, frames=3)
    grads = []
    for checkpointing in (False, True):
        unet = make_tiny_unet()
        video = VideoUNet(unet, make_tiny_motion_modules(unet_norm_mode="joint"))
        if checkpointing:
            unet.enable_gradient_checkpointing()
        video.train()
        video(sample, timestep[:1], text[:1]).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in video.motion_modules.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
