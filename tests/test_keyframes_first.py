"""Keyframes-first long videos: keyframe choice, the two passes, the keyframe-pass MotionLoRA, and refusals."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_pipeline, tiny_motion_config
from zoetrope.adapters.lora import inject_lora
from zoetrope.errors import ConfigError, InputError
from zoetrope.models.sparse_control import SparseControlConfig, SparseControlEncoder
from zoetrope.pipelines.keyframes_first import (
    KeyframesFirst,
    generate_keyframes_first,
    keyframe_indices,
    rekeyed_prompts,
    retimed_positions,
)
from zoetrope.pipelines.text_to_video import generate, initial_noise
from zoetrope.sampling.context import ContextConfig

SMALL = dict(num_frames=6, width=32, height=32, steps=2, seed=5, progress=False)
CONTEXT = ContextConfig(length=4, overlap=2)
KEYS = [0, 2, 4]


def _encoder(pipeline, condition: str = "rgb") -> SparseControlEncoder:
    motion = tiny_motion_config(attentions_per_block=1, mid_block=False)
    config = SparseControlConfig(condition=condition, motion=motion, embedding_channels=(8, 16, 16, 32))
    return SparseControlEncoder.from_unet(pipeline.video_unet.image_unet, config).eval()


@pytest.fixture(scope="module")
def pipeline():
    return make_tiny_pipeline()


@pytest.fixture(scope="module")
def encoder(pipeline):
    return _encoder(pipeline)


@pytest.fixture(scope="module")
def pasted(pipeline, encoder):
    """A clip whose keyframes are pasted in at every step (replace=1) every 2nd frame (no retiming), latents returned."""
    return generate_keyframes_first(
        pipeline, "a red circle", KeyframesFirst(encoder, replace=1.0, retime=False, levels=1), context=CONTEXT, return_latents=True,
        decode=False, **SMALL,
    )


def test_keyframe_indices() -> None:
    assert keyframe_indices(64, 16) == list(range(0, 64, 4))
    assert keyframe_indices(65, 16) == list(range(0, 65, 5))  # 17 frames at spacing 4 would not fit one window
    assert keyframe_indices(64, 16, 6) == [0, 6, 12, 18, 24, 30, 36, 42, 48, 54, 60]
    with pytest.raises(ConfigError, match="at least 4"):
        keyframe_indices(64, 16, 3)
    with pytest.raises(InputError, match="fit one 16-frame window"):
        keyframe_indices(16, 16)


def test_keyframe_pass_sets_the_keyframes(pipeline, pasted) -> None:
    """With the keyframes pasted in at every step the result's keyframes are (nearly) the keyframe pass's frames,
    drawn from the long clip's own noise at those frames; the frames between them are not copies."""
    assert pasted.settings.extras["keyframes_first"]["keyframes"] == KEYS
    assert pasted.latents.shape[2] == 6
    noise = initial_noise([5], (4, 6, 4, 4), pipeline.device, pipeline.dtype)
    keys = generate(
        pipeline, "a red circle", num_frames=3, width=32, height=32, steps=2, seed=5, progress=False,
        latents=noise[:, :, KEYS], return_latents=True, decode=False,
    ).latents
    at_keys = (pasted.latents[:, :, KEYS] - keys).abs().mean().item()
    between = (pasted.latents[:, :, [1, 3, 5]] - keys).abs().mean().item()
    assert at_keys < 0.25 * between


def test_keyframe_lora_is_merged_for_the_keyframe_pass_only(pipeline, encoder, pasted) -> None:
    modules = pipeline.video_unet.motion_modules
    before = {name: value.clone() for name, value in modules.state_dict().items()}
    lora = inject_lora(modules, r"to_(q|k|v)$", rank=2, freeze_base=False)
    lora.detach()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in lora.named_layers():
            layer.up.copy_(torch.randn(layer.up.shape, generator=generator) * 0.5)
    with_lora = generate_keyframes_first(
        pipeline, "a red circle", KeyframesFirst(encoder, replace=1.0, motion_lora=lora, retime=False, levels=1), context=CONTEXT,
        decode=False, return_latents=True, **SMALL,
    )
    assert (with_lora.latents - pasted.latents).abs().max().item() > 1e-3
    after = modules.state_dict()
    assert all(torch.allclose(after[name], value, atol=1e-6) for name, value in before.items())
    assert with_lora.settings.extras["keyframes_first"]["motion_lora"] is True


def test_refusals(pipeline, encoder) -> None:
    with pytest.raises(ConfigError, match="RGB SparseCtrl encoder"):
        generate_keyframes_first(pipeline, "a", KeyframesFirst(_encoder(pipeline, "sketch")), context=CONTEXT, **SMALL)
    with pytest.raises(InputError, match="whole UNet"):
        generate_keyframes_first(pipeline, "a", KeyframesFirst(encoder), context=CONTEXT, context_mode="motion", **SMALL)
    with pytest.raises(InputError, match="freeinit"):
        generate_keyframes_first(pipeline, "a", KeyframesFirst(encoder), context=CONTEXT, freeinit=object(), **SMALL)


def test_per_frame_motion_scale_is_taken_at_the_keyframes(pipeline, encoder) -> None:
    """A per-frame motion-scale list covers the long clip; the keyframe pass gets the keyframes' entries (a list of
    the wrong length is refused by name)."""
    result = generate_keyframes_first(
        pipeline, "a red circle", KeyframesFirst(encoder), context=CONTEXT, motion_scale=[1.0, 1.1, 1.2, 1.3, 1.4, 1.5],
        decode=False, return_latents=True, **SMALL,
    )
    assert result.latents.shape[2] == 6
    with pytest.raises(ConfigError, match="3 values given for 6 frames"):
        generate_keyframes_first(
            pipeline, "a red circle", KeyframesFirst(encoder), context=CONTEXT, motion_scale=[1.0, 1.1, 1.2], **SMALL
        )


def test_retimed_positions_give_big_changes_more_frames() -> None:
    assert retimed_positions([1.0] * 15, 60) == list(range(0, 61, 4))  # equal changes: equal spacing
    assert retimed_positions([0.0] * 15, 60) == list(range(0, 61, 4))  # no signal: equal spacing
    uneven = retimed_positions([1.0, 3.0, 1.0, 3.0], 16)
    assert uneven == [0, 2, 8, 10, 16]
    spiky = retimed_positions([100.0] + [0.0] * 14, 60)  # one huge step: the rest still get a frame each
    assert spiky[0] == 0 and spiky[-1] == 60 and all(b > a for a, b in zip(spiky, spiky[1:]))
    with pytest.raises(InputError, match="not enough frames"):
        retimed_positions([1.0] * 15, 10)


def test_retime_places_the_keyframes_it_records(pipeline, encoder) -> None:
    result = generate_keyframes_first(
        pipeline, "a red circle", KeyframesFirst(encoder, retime=True), context=CONTEXT, decode=False, **SMALL
    )
    placed = result.settings.extras["keyframes_first"]["keyframes"]
    assert placed[0] == 0 and placed[-1] == KEYS[-1] and len(placed) == len(KEYS)
    assert all(b > a for a, b in zip(placed, placed[1:])) and result.settings.extras["keyframes_first"]["retime"]


def test_rekeyed_prompts_follow_the_keyframes() -> None:
    anchors, indices = list(range(0, 64, 4)), list(range(16))
    assert rekeyed_prompts({0: "a", 32: "b", -1: "c"}, 64, anchors, indices, "x") == {0: "a", 8: "b", 15: "c"}
    assert rekeyed_prompts({"10": "a"}, 64, anchors, indices, "x") == {2: "a"}  # 2.5 rounds to even
    retimed = [0, 2, 9] + list(range(13, 64, 4))  # keyframe 2 moved from frame 8 to 9, the last one to 61
    assert rekeyed_prompts({8: "a", 12: "b", 60: "c"}, 64, anchors, retimed, "x") == {9: "a", 13: "b", 61: "c"}
    with pytest.raises(InputError, match="frames 30 and 32 fall on one frame of the keyframe pass; key prompts at least 4"):
        rekeyed_prompts({30: "a", 32: "b"}, 64, anchors, indices, "the keyframe pass")
    with pytest.raises(InputError, match="outside a 64-frame video"):
        rekeyed_prompts({64: "a"}, 64, anchors, indices, "x")


def test_prompt_travel_reaches_both_passes(pipeline, encoder, monkeypatch) -> None:
    """Keyed prompts (and keyed negatives) are re-keyed onto the keyframe pass's frames and, after retiming, onto
    the keyframes' new frames for the fill; the result records the prompts as given."""
    import zoetrope.pipelines.keyframes_first as module

    calls = []

    def spy(pipeline, prompt, **kwargs):
        calls.append((prompt, kwargs["negative_prompt"], kwargs["num_frames"]))
        return generate(pipeline, prompt, **kwargs)

    monkeypatch.setattr(module, "generate", spy)
    settings = dict(SMALL, num_frames=8)
    result = generate_keyframes_first(
        pipeline, {0: "a red circle", 4: "a blue circle"}, KeyframesFirst(encoder, retime=False), context=CONTEXT,
        negative_prompt={0: "blurry", -1: "dark"}, decode=False, **settings,
    )
    assert calls[0] == ({0: "a red circle", 2: "a blue circle"}, {0: "blurry", 3: "dark"}, 4)  # keyframes 0, 2, 4, 6
    assert calls[1] == ({0: "a red circle", 2: "a blue circle"}, {0: "blurry", 3: "dark"}, 4)  # half rate: 0, 2, 4, 6
    assert calls[2] == ({0: "a red circle", 4: "a blue circle"}, {0: "blurry", -1: "dark"}, 8)  # not retimed: as given
    assert result.settings.prompt == [{0: "a red circle", 4: "a blue circle"}]
    assert result.settings.negative_prompt == [{0: "blurry", -1: "dark"}]
    calls.clear()
    retimed = generate_keyframes_first(
        pipeline, {0: "a red circle", 4: "a blue circle"}, KeyframesFirst(encoder), context=CONTEXT, decode=False,
        **settings,
    )
    placed = retimed.settings.extras["keyframes_first"]["keyframes"]
    assert placed[-1] == 6 and calls[2][0] == {0: "a red circle", placed[2]: "a blue circle"}
    with pytest.raises(InputError, match="fall on one frame of the keyframe pass"):
        generate_keyframes_first(pipeline, {0: "a", 1: "b"}, KeyframesFirst(encoder), context=CONTEXT, **settings)


def test_two_levels_draw_every_second_frame_before_the_fill(pipeline, encoder, monkeypatch) -> None:
    """levels=2: keyframe pass, then a half-rate pass (frames 0, 2, 4, ...) with the keyframes at their nearest even
    frame, then the fill with every 2nd frame as a keyframe (pasted at every step with replace=1, so the fill's even
    frames are the half-rate pass's latents)."""
    import zoetrope.pipelines.keyframes_first as module

    calls = []

    def spy(pipeline, prompt, **kwargs):
        result = generate(pipeline, prompt, **kwargs)
        control = kwargs.get("control")
        mask = None if control is None else control.mask[0, 0, :, 0, 0].nonzero().flatten().tolist()
        calls.append((kwargs["num_frames"], mask, result.latents))
        return result

    monkeypatch.setattr(module, "generate", spy)
    settings = dict(SMALL, num_frames=8)
    result = generate_keyframes_first(
        pipeline, "a red circle", KeyframesFirst(encoder, replace=1.0, retime=False, levels=2), context=CONTEXT,
        decode=False, return_latents=True, **settings,
    )
    assert [(frames, mask) for frames, mask, _ in calls] == [(4, None), (4, [0, 1, 2, 3]), (8, [0, 2, 4, 6])]
    half = calls[1][2]
    assert torch.allclose(result.latents[:, :, ::2], half, atol=0.05 * half.abs().max().item())
    assert result.settings.extras["keyframes_first"]["levels"] == 2
    with pytest.raises(ConfigError, match="levels=3"):
        KeyframesFirst(encoder, levels=3)
