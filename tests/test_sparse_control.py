"""SparseCtrl encoder (zoetrope.models.sparse_control) and keyframe helpers (zoetrope.sampling.keyframes)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_motion_modules, make_tiny_unet, tiny_motion_config

from zoetrope.errors import ConfigError, FrameCountError, InputError
from zoetrope.models.sparse_control import SparseControlConfig, SparseControlEncoder
from zoetrope.models.video_unet import VideoUNet
from zoetrope.sampling.keyframes import build_condition, normalize_sketch, random_keyframes, resolve_indices

FRAMES, SIZE = 4, 8


@pytest.fixture(scope="module")
def unet():
    return make_tiny_unet()


def tiny_config(condition: str = "rgb", **overrides) -> SparseControlConfig:
    widths = dict(embedding_channels=(4, 8)) if condition == "sketch" else {}
    defaults = dict(motion=tiny_motion_config(attentions_per_block=1), **widths)
    return SparseControlConfig(condition=condition, **{**defaults, **overrides})


def randomised(encoder: SparseControlEncoder, seed: int = 0) -> SparseControlEncoder:
    """Random weights everywhere, zero convs and motion-module outputs included, so every path carries signal."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return encoder.eval()


def inputs(encoder: SparseControlEncoder, batch: int = 1, keyframes: tuple[int, ...] = (0,), seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    side = SIZE * encoder.config.downsample_factor
    channels = encoder.config.conditioning_channels
    images = torch.rand(len(keyframes), channels, side, side, generator=generator)
    condition, mask = build_condition(images, list(keyframes), FRAMES)
    sample = torch.randn(batch, 4, FRAMES, SIZE, SIZE, generator=generator)
    text = torch.randn(batch, 7, 32, generator=generator)
    return sample, text, condition, mask


def test_residual_shapes_match_the_unet_skip_features(unet):
    skips: list[tuple[int, ...]] = []
    handles = [unet.conv_in.register_forward_hook(lambda _m, _a, out: skips.append(tuple(out.shape)))]
    for block in unet.down_blocks:
        handles.append(block.register_forward_hook(lambda _m, _a, out: skips.extend(tuple(s.shape) for s in out[1])))
    mid: list[tuple[int, ...]] = []
    handles.append(unet.mid_block.register_forward_hook(lambda _m, _a, out: mid.append(tuple(out.shape))))
    sample, text, condition, mask = inputs(SparseControlEncoder.from_unet(unet, tiny_config()))
    with torch.no_grad():
        VideoUNet(unet)(sample, 10, text)
    for handle in handles:
        handle.remove()
    for condition_type in ("rgb", "sketch"):
        encoder = SparseControlEncoder.from_unet(unet, tiny_config(condition_type))
        sample, text, condition, mask = inputs(encoder)
        with torch.no_grad():
            down, mid_residual = encoder(sample, 10, text, condition, mask)
        assert [tuple(d.shape) for d in down] == skips
        assert [tuple(mid_residual.shape)] == mid
        assert encoder.skip_channels == [shape[1] for shape in skips]


def test_from_unet_copies_the_image_weights(unet):
    encoder = SparseControlEncoder.from_unet(unet, tiny_config())
    for name in ("conv_in", "time_embedding", "mid_block"):
        for key, value in getattr(unet, name).state_dict().items():
            assert torch.equal(getattr(encoder, name).state_dict()[key], value)
    image_down = {k: v for k, v in encoder.down_blocks.state_dict().items() if ".motion_modules." not in k}
    assert image_down.keys() == unet.down_blocks.state_dict().keys()
    assert all(torch.equal(v, unet.down_blocks.state_dict()[k]) for k, v in image_down.items())
    fresh = SparseControlEncoder.from_unet(unet, tiny_config(), copy_weights=False)
    assert not torch.equal(fresh.conv_in.weight, unet.conv_in.weight)


def test_zero_initialised_encoder_leaves_the_video_unet_unchanged(unet):
    video = VideoUNet(unet, make_tiny_motion_modules()).eval()
    for condition_type in ("rgb", "sketch"):
        encoder = SparseControlEncoder.from_unet(unet, tiny_config(condition_type)).eval()
        sample, text, condition, mask = inputs(encoder)
        with torch.no_grad():
            down, mid = encoder(sample, 10, text, condition, mask)
            assert all(not d.any() for d in down) and not mid.any()
            torch.testing.assert_close(video(sample, 10, text, down, mid), video(sample, 10, text), atol=0, rtol=0)


def test_trained_encoder_changes_the_output_and_scale_zero_does_not(unet):
    video = VideoUNet(unet, make_tiny_motion_modules()).eval()
    encoder = randomised(SparseControlEncoder.from_unet(unet, tiny_config()))
    sample, text, condition, mask = inputs(encoder)
    with torch.no_grad():
        plain = video(sample, 10, text)
        down, mid = encoder(sample, 10, text, condition, mask)
        assert (video(sample, 10, text, down, mid) - plain).abs().max() > 1e-3
        down0, mid0 = encoder(sample, 10, text, condition, mask, conditioning_scale=0.0)
        torch.testing.assert_close(video(sample, 10, text, down0, mid0), plain, atol=0, rtol=0)
        down2, mid2 = encoder(sample, 10, text, condition, mask, conditioning_scale=2.0)
    for one, two in zip([*down, mid], [*down2, mid2]):
        torch.testing.assert_close(two, 2 * one)


def test_noisy_sample_is_ignored(unet):
    """Official set_noisy_sample_input_to_zero: only the condition, timestep and text reach the encoder."""
    encoder = randomised(SparseControlEncoder.from_unet(unet, tiny_config()))
    sample, text, condition, mask = inputs(encoder)
    with torch.no_grad():
        first = encoder(sample, 10, text, condition, mask)
        second = encoder(torch.randn_like(sample) * 5, 10, text, condition, mask)
        other_time = encoder(sample, 500, text, condition, mask)
    for a, b in zip([*first[0], first[1]], [*second[0], second[1]]):
        assert torch.equal(a, b)
    assert not torch.allclose(first[1], other_time[1])


def frame_residual(down: list[torch.Tensor], frame: int) -> torch.Tensor:
    """The residuals of one frame (batch 1: `(b f)` is just `f`)."""
    return torch.cat([d[frame].flatten() for d in down])


@pytest.mark.parametrize("condition_type", ["rgb", "sketch"])
def test_temporal_layers_propagate_a_keyframe_and_the_ablation_does_not(unet, condition_type):
    """SparseCtrl's point (paper §3.2): with temporal layers a keyframe on frame 0 reaches frame 3; without
    (frame-by-frame ControlNet) frame 3 sees exactly what it sees with no keyframe at all."""
    for temporal in (True, False):
        encoder = randomised(SparseControlEncoder.from_unet(unet, tiny_config(condition_type, temporal=temporal)))
        sample, text, condition, mask = inputs(encoder, keyframes=(0,))
        with torch.no_grad():
            keyed, _ = encoder(sample, 10, text, condition, mask)
            empty, _ = encoder(sample, 10, text, torch.zeros_like(condition), torch.zeros_like(mask))
        assert not torch.allclose(frame_residual(keyed, 0), frame_residual(empty, 0))
        changed = not torch.allclose(frame_residual(keyed, 3), frame_residual(empty, 3), atol=1e-6)
        assert changed == temporal


def test_ablation_has_no_motion_parameters(unet):
    ablation = SparseControlEncoder.from_unet(unet, tiny_config(temporal=False))
    temporal = SparseControlEncoder.from_unet(unet, tiny_config())
    assert not ablation.has_motion_modules and list(ablation.motion_parameters()) == []
    assert not any(".motion_modules." in key for key in ablation.state_dict())
    motion_count = sum(p.numel() for p in temporal.motion_parameters())
    assert motion_count > 0
    assert sum(p.numel() for p in temporal.parameters()) - sum(p.numel() for p in ablation.parameters()) == motion_count
    # Fresh motion modules are zero-initialised: with the same image weights, temporal == ablation.
    randomised(ablation)
    result = temporal.load_state_dict(ablation.state_dict(), strict=False)
    assert not result.unexpected_keys and all(".motion_modules." in key for key in result.missing_keys)
    sample, text, condition, mask = inputs(temporal)
    with torch.no_grad():
        down_a, mid_a = temporal(sample, 10, text, condition, mask)
        down_b, mid_b = ablation(sample, 10, text, condition, mask)
    torch.testing.assert_close(mid_a, mid_b)
    assert mid_a.abs().max() > 0


def test_condition_broadcasts_over_a_doubled_batch_and_copies_are_independent(unet):
    encoder = randomised(SparseControlEncoder.from_unet(unet, tiny_config()))
    sample, text, condition, mask = inputs(encoder, batch=1)
    doubled_sample, doubled_text = sample.repeat(2, 1, 1, 1, 1), text.repeat(2, 1, 1)
    with torch.no_grad():
        single = encoder(sample, 10, text, condition, mask)
        double = encoder(doubled_sample, torch.tensor([10, 10]), doubled_text, condition, mask)
        copied = copy.deepcopy(encoder)(sample, 10, text, condition, mask)
    torch.testing.assert_close(double[1][:FRAMES], single[1], atol=1e-4, rtol=1e-4)  # batched kernels
    torch.testing.assert_close(double[1][FRAMES:], single[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(copied[1], single[1], atol=0, rtol=0)


def test_bad_inputs_raise_input_errors(unet):
    encoder = SparseControlEncoder.from_unet(unet, tiny_config())
    sample, text, condition, mask = inputs(encoder)
    with pytest.raises(InputError, match=r"expected \(batch, 4, 4"):
        encoder(sample, 10, text, condition[:, :3], mask)
    with pytest.raises(InputError, match="mask is missing"):
        encoder(sample, 10, text, condition, None)
    sketch = SparseControlEncoder.from_unet(unet, tiny_config("sketch"))
    small = torch.zeros(1, 3, FRAMES, SIZE, SIZE)
    with pytest.raises(InputError, match=r"at \(16, 16\)"):
        sketch(sample, 10, text, small, torch.zeros(1, 1, FRAMES, SIZE, SIZE))
    with pytest.raises(ConfigError, match="condition"):
        SparseControlConfig(condition="depth")
    short_pe = tiny_motion_config(attentions_per_block=1, max_frames=2)
    short = SparseControlEncoder.from_unet(unet, tiny_config(motion=short_pe))
    with pytest.raises(FrameCountError, match="covers 2"):
        short(sample, 10, text, condition, mask)


def test_config_defaults_and_round_trip():
    rgb, sketch = SparseControlConfig("rgb"), SparseControlConfig("sketch")
    assert (rgb.conditioning_channels, rgb.use_simplified_condition_embedding, rgb.input_channels) == (4, True, 5)
    assert (sketch.conditioning_channels, sketch.use_simplified_condition_embedding) == (3, False)
    assert sketch.downsample_factor == 8 and rgb.downsample_factor == 1
    assert rgb.motion.attentions_per_block == 1 and rgb.motion.max_frames == 32 and not rgb.motion.mid_block
    for config in (rgb, sketch, tiny_config("sketch", temporal=False, conditioning_scale=0.5)):
        assert SparseControlConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown key"):
        SparseControlConfig.from_dict({"condition": "rgb", "strength": 1})


# ---------------------------------------------------------------------- keyframes


def test_resolve_indices_counts_negative_indices_from_the_end():
    assert resolve_indices([0, -1], 16) == [0, 15]
    assert resolve_indices([8, 3, -16], 16) == [8, 3, 0]
    assert resolve_indices([], 4) == []


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ([16], r"keyframe index 16 .*-16\.\.15"),
        ([-17], r"keyframe index -17 .*-16\.\.15"),
        ([0, -16], "index -16 .*frame 0 a second time"),
        ([1.5], "not an integer"),
    ],
)
def test_resolve_indices_errors_name_the_index_and_the_range(indices, message):
    with pytest.raises(InputError, match=message):
        resolve_indices(indices, 16)


def test_build_condition_places_images_and_mask():
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2) + 1
    condition, mask = build_condition(images, [0, -1], 5)
    assert condition.shape == (1, 3, 5, 2, 2) and mask.shape == (1, 1, 5, 2, 2)
    assert torch.equal(condition[0, :, 0], images[0]) and torch.equal(condition[0, :, 4], images[1])
    assert not condition[0, :, 1:4].any()
    assert mask[0, 0, :, 0, 0].tolist() == [1, 0, 0, 0, 1]
    assert torch.equal(mask.expand_as(condition) * condition, condition)
    with pytest.raises(InputError, match="2 keyframe image"):
        build_condition(images, [0], 5)
    empty_condition, empty_mask = build_condition(images[:0], [], 5)
    assert not empty_condition.any() and not empty_mask.any()


def test_normalize_sketch_matches_a_hand_computation():
    image = torch.tensor([[[0.2, 0.4], [0.6, 1.0]], [[0.2, 0.4], [0.6, 1.0]], [[0.5, 0.7], [0.9, 1.0]]])
    grey = torch.tensor([[0.3, 0.5], [0.7, 1.0]])
    expected = ((grey - 0.3) / 0.7).expand(3, 2, 2)
    torch.testing.assert_close(normalize_sketch(image), expected)
    batch = normalize_sketch(torch.stack([image, torch.full_like(image, 0.4)]))
    torch.testing.assert_close(batch[0], expected)
    assert torch.equal(batch[1], torch.zeros(3, 2, 2))  # a constant image has no strokes


def test_random_keyframes_are_reproducible_and_cover_every_pattern():
    first = [random_keyframes(8, torch.Generator().manual_seed(s), max_keyframes=3, p_zero=0.3) for s in range(200)]
    again = [random_keyframes(8, torch.Generator().manual_seed(s), max_keyframes=3, p_zero=0.3) for s in range(200)]
    assert first == again
    counts = {len(frames) for frames in first}
    assert counts == {0, 1, 2, 3}
    assert all(frames == sorted(set(frames)) and all(0 <= f < 8 for f in frames) for frames in first)
    assert {f for frames in first for f in frames} == set(range(8))
    assert 30 <= sum(not frames for frames in first) <= 90  # p_zero 0.3 of 200
    assert random_keyframes(8, torch.Generator().manual_seed(0), p_zero=1.0) == []
    with pytest.raises(InputError, match="max_keyframes"):
        random_keyframes(4, torch.Generator(), max_keyframes=5)


def test_keyframe_replacement_guide_pastes_only_keyframes_and_only_early() -> None:
    """The guide replaces the keyframes' latents with q(z_key, t) (the scheduler's own `add_noise`, the video's noise
    at those frames) for steps < until_step, and leaves everything else untouched."""
    from diffusers import DDIMScheduler

    from zoetrope.sampling.keyframes import keyframe_replacement, replacement_steps

    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 4, 8, 8, generator=generator)
    condition, mask = build_condition(keys, [0, -1], FRAMES)
    noise = torch.randn(2, 4, FRAMES, 8, 8, generator=generator)
    latents = torch.randn(2, 4, FRAMES, 8, 8, generator=generator)
    guide = keyframe_replacement(condition, mask, noise, scheduler, until_step=replacement_steps(0.3, 10))
    t = scheduler.timesteps[2]
    pasted = guide(2, t, latents)
    alpha = scheduler.alphas_cumprod[int(t)]
    for frame, key in ((0, keys[0]), (FRAMES - 1, keys[1])):
        expected = alpha.sqrt() * key + (1 - alpha).sqrt() * noise[:, :, frame]
        assert torch.allclose(pasted[:, :, frame], expected, atol=1e-5)
    assert torch.equal(pasted[:, :, 1:-1], latents[:, :, 1:-1])
    assert torch.equal(guide(3, scheduler.timesteps[3], latents), latents)  # 0.3 of 10 steps = steps 0, 1, 2
    with pytest.raises(InputError, match="sketches"):
        keyframe_replacement(torch.zeros(1, 3, FRAMES, 8, 8), mask, noise, scheduler, 3)
    with pytest.raises(InputError, match="at least one keyframe"):
        keyframe_replacement(condition, torch.zeros_like(mask), noise, scheduler, 3)


def test_a_text_reading_temporal_layer_in_the_encoder_is_refused() -> None:
    with pytest.raises(ConfigError, match="self-attention only"):
        SparseControlConfig(motion=tiny_motion_config(attentions_per_block=1, attention_block_types=("Temporal_Cross",)))
