"""The motion module itself: can it learn what a motion needs, frame *order*? (issue 3's order-blindness probe)

The shapes-world modules came out nearly time-reversal-equivariant (docs/world-training.md, fifth to eighth
sessions). These tests separate "the architecture cannot use frame order" from "the training was too short": a
single module, trained for a few hundred steps on a task only order can solve, must solve it, and the same module
with its positional codes zeroed (then permutation-equivariant) must not.
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from conftest import tiny_motion_config
from zoetrope.models.motion_module import MotionModule

FRAMES, CHANNELS = 8, 16


def shift_task_loss(zero_positions: bool, steps: int = 300, seed: int = 0) -> tuple[float, float]:
    """Train one module to output each frame's *previous* frame (frame 0 keeps itself); (identity loss, trained loss).

    A permutation-equivariant map cannot tell the previous frame from the next one, so without positional codes the
    best it can do is a blend of all frames.
    """
    torch.manual_seed(seed)
    config = tiny_motion_config(block_out_channels=(CHANNELS,), num_attention_heads=2, norm_num_groups=4)
    module = MotionModule(CHANNELS, config)
    if zero_positions:
        for block in module.transformer_blocks:
            for attention in block.attentions:
                attention.pos_encoding.zero_()
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        clips = torch.randn(size, FRAMES, CHANNELS)
        target = torch.cat([clips[:, :1], clips[:, :-1]], dim=1)
        as_frames = lambda x: rearrange(x, "b f c -> (b f) c 1 1")  # noqa: E731
        return as_frames(clips), as_frames(target)

    probe, probe_target = batch(256)
    identity = float(torch.nn.functional.mse_loss(probe, probe_target))
    for _ in range(steps):
        inputs, target = batch(32)
        loss = torch.nn.functional.mse_loss(module(inputs, FRAMES), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        trained = float(torch.nn.functional.mse_loss(module(probe, FRAMES), probe_target))
    return identity, trained


def test_a_motion_module_learns_frame_order_quickly() -> None:
    identity, with_positions = shift_task_loss(zero_positions=False)
    _, without_positions = shift_task_loss(zero_positions=True)
    assert without_positions > 0.6 * identity, "an order-blind module cannot learn a shift"
    # Measured: identity 1.76, without positions 1.21, with positions 0.66 (the GroupNorm / LayerNorm in front of
    # the attention keep even a perfect shift from reaching zero; 600 steps and a learned or 3x larger positional
    # code end at the same floor). Order is learned within these 300 steps.
    assert with_positions < 0.7 * without_positions, (with_positions, without_positions, identity)


# ---------------------------------------------------------------------------------------------------------------
# Temporal_Cross: the official code's text cross-attention inside the motion module


def _cross_modules(seed: int = 0, types=("Temporal_Self", "Temporal_Cross")):
    from zoetrope.models.motion_module import MotionModules

    torch.manual_seed(seed)
    config = tiny_motion_config(attention_block_types=types, attentions_per_block=len(types), cross_attention_dim=32)
    modules = MotionModules(config.with_(zero_init=False))
    with torch.no_grad():
        for parameter in modules.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return modules


def _video_unet(modules):
    from conftest import make_tiny_unet
    from zoetrope.models.video_unet import VideoUNet

    return VideoUNet(make_tiny_unet(), modules).eval()


def _inputs(frames: int = 4, seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, frames, 8, 8, generator=generator)
    text = torch.randn(2, 77, 32, generator=generator)
    return sample, text


def test_cross_attention_reads_the_prompt_and_per_frame_text_agrees_with_shared_text() -> None:
    unet = _video_unet(_cross_modules())
    sample, text = _inputs()
    with torch.no_grad():
        shared = unet(sample, 500, text)
        per_frame = unet(sample, 500, text[:, None].expand(-1, 4, -1, -1))
        other = unet(sample, 500, -text)  # (token order alone would not do: attention over words has no positions)
        module = unet.motion_modules.down_blocks[0].motion_modules[0]
        hidden = torch.randn(8, 32, 8, 8)
        alone = module(hidden, 4, text=text)
        # video 0's frames must read video 0's prompt only: changing video 1's prompt leaves them alone
        changed = module(hidden, 4, text=torch.stack([text[0], -text[1]]))
    assert torch.allclose(shared, per_frame, atol=1e-5)
    assert not torch.allclose(shared, other, atol=1e-3)
    assert torch.equal(alone[:4], changed[:4]) and not torch.allclose(alone[4:], changed[4:])


def test_cross_attention_without_text_or_with_the_wrong_width_is_a_clear_error() -> None:
    from zoetrope.errors import InputError

    module = _cross_modules().down_blocks[0].motion_modules[0]
    hidden = torch.randn(4, 32, 8, 8)
    with pytest.raises(InputError, match="without the text embedding"):
        module(hidden, 4)
    with pytest.raises(InputError, match="width 32, got 16"):
        module(hidden, 4, text=torch.randn(1, 77, 16))


def test_cross_modules_round_trip_through_the_official_layout_and_refuse_diffusers(tmp_path) -> None:
    from zoetrope.errors import CheckpointError
    from zoetrope.formats.animatediff import OFFICIAL, infer_config
    from zoetrope.formats.motion import load_motion_module, save_motion_module

    modules = _cross_modules()
    path = save_motion_module(modules, tmp_path / "cross.safetensors")
    loaded = load_motion_module(path)
    from zoetrope.formats.detect import inspect_file

    assert "Temporal_Cross on width-32 prompts" in inspect_file(path).describe()
    assert loaded.config.attention_types == ("Temporal_Self", "Temporal_Cross")
    assert loaded.config.cross_attention_dim == 32
    # without zoetrope's metadata the layout is read from the key shapes alone, as for a file of the official code
    inferred = infer_config(OFFICIAL.map_to_ours(OFFICIAL.map_to_theirs(modules.state_dict())))
    assert inferred.attention_types == ("Temporal_Self", "Temporal_Cross") and inferred.cross_attention_dim == 32
    sample, text = _inputs()
    with torch.no_grad():
        assert torch.equal(_video_unet(loaded)(sample, 500, text), _video_unet(modules)(sample, 500, text))
    with pytest.raises(CheckpointError, match="official layout"):
        save_motion_module(modules, tmp_path / "adapter", layout="diffusers")
    assert not (tmp_path / "adapter").exists()


def test_extending_a_trained_module_with_cross_attention_starts_as_the_same_module() -> None:
    from zoetrope.errors import ConfigError
    from zoetrope.formats.motion import extend_motion_modules

    plain = _cross_modules(types=("Temporal_Self", "Temporal_Self"))
    extended = extend_motion_modules(plain, ("Temporal_Self", "Temporal_Self", "Temporal_Cross"), 32)
    assert extended.config.attentions_per_block == 3 and extended.config.reads_text
    sample, text = _inputs()
    with torch.no_grad():
        before = _video_unet(plain)(sample, 500, text)
        after = _video_unet(extended)(sample, 500, text)
    assert torch.allclose(before, after, atol=1e-6)
    assert any(".attentions.2.to_k." in name for name, _ in extended.named_parameters())
    with pytest.raises(ConfigError, match="cannot extend"):
        extend_motion_modules(plain, ("Temporal_Cross", "Temporal_Self", "Temporal_Self"), 32)


def test_context_windows_give_each_window_its_frames_prompts() -> None:
    """With a travelling prompt, a window covering every frame equals no windows; per-frame text is sliced."""
    from zoetrope.models.motion_module import MotionWindows

    module = _cross_modules().down_blocks[0].motion_modules[0]
    hidden = torch.randn(6, 32, 4, 4)
    text = torch.randn(1, 6, 77, 32)
    whole = MotionWindows(windows=[list(range(6))], weights=[torch.ones(6)])
    halves = MotionWindows(windows=[[0, 1, 2], [3, 4, 5]], weights=[torch.ones(3), torch.ones(3)])
    with torch.no_grad():
        plain = module(hidden, 6, text=text)
        assert torch.allclose(module(hidden, 6, windows=whole, text=text), plain, atol=1e-5)
        second = module(hidden[3:], 3, text=text[:, 3:])
        assert torch.allclose(module(hidden, 6, windows=halves, text=text)[3:], second, atol=1e-5)
