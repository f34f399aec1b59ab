"""Text-to-video pipeline on a tiny real model: shapes, seeds, guidance, schedulers, callbacks, bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import make_tiny_pipeline
from zoetrope.errors import ConfigError, FrameCountError, InputError
from zoetrope.pipelines.components import Parameterization
from zoetrope.pipelines.text_to_video import default_guidance_rescale, generate, make_frame_predict, resolve_seeds

SMALL = dict(num_frames=4, width=32, height=32, steps=3, progress=False)


@pytest.fixture(scope="module")
def pipeline():
    return make_tiny_pipeline()


def test_shapes_and_range(pipeline) -> None:
    result = generate(pipeline, ["a red circle", "a blue square"], seed=3, **SMALL)
    assert result.frames.shape == (2, 3, 4, 32, 32)
    assert 0.0 <= result.frames.min().item() and result.frames.max().item() <= 1.0
    assert result.settings.seeds == [3, 4]


def test_seed_per_video_is_reproducible_alone_or_in_a_batch(pipeline) -> None:
    both = generate(pipeline, ["a red circle", "a blue square"], seed=[11, 12], return_latents=True, **SMALL)
    second = generate(pipeline, "a blue square", seed=12, return_latents=True, **SMALL)
    again = generate(pipeline, "a blue square", seed=12, return_latents=True, **SMALL)
    assert torch.equal(second.latents, again.latents)
    assert torch.allclose(both.latents[1], second.latents[0], atol=1e-4)  # batch 2 vs 1 GEMM blocking: ~5e-5 apart on one thread
    other = generate(pipeline, "a blue square", seed=13, return_latents=True, **SMALL)
    assert not torch.allclose(other.latents, second.latents, atol=1e-3)


def test_guidance_and_negative_prompt_change_the_result(pipeline) -> None:
    base = generate(pipeline, "a red circle", seed=1, guidance_scale=7.5, return_latents=True, **SMALL)
    no_cfg = generate(pipeline, "a red circle", seed=1, guidance_scale=1.0, return_latents=True, **SMALL)
    negative = generate(pipeline, "a red circle", seed=1, negative_prompt="blurry", return_latents=True, **SMALL)
    assert not torch.allclose(base.latents, no_cfg.latents, atol=1e-4)
    assert not torch.allclose(base.latents, negative.latents, atol=1e-4)


def test_guidance_rescale_changes_guided_videos_only(pipeline) -> None:
    plain = generate(pipeline, "a red circle", seed=1, return_latents=True, **SMALL)
    rescaled = generate(pipeline, "a red circle", seed=1, guidance_rescale=0.7, return_latents=True, **SMALL)
    assert not torch.allclose(plain.latents, rescaled.latents, atol=1e-4)
    assert rescaled.metadata(0)["guidance_rescale"] == 0.7 and "guidance_rescale" not in plain.metadata(0)
    unguided = [generate(pipeline, "a red circle", seed=1, guidance_scale=1.0, guidance_rescale=r, return_latents=True, **SMALL).latents for r in (0.0, 0.7)]
    assert torch.equal(*unguided)  # no CFG, nothing to rescale
    with pytest.raises(ConfigError, match="guidance_rescale=2"):
        generate(pipeline, "a red circle", guidance_rescale=2, **SMALL)


def text_mean_unet(batch, timestep, text, **_):
    """A stand-in video UNet whose output for each batch entry is its text embedding's mean, so the guided output
    is the guidance formula applied to known numbers."""
    return text.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1).expand(batch.shape).clone()


def test_scheduled_guidance_applies_the_scale_of_each_timestep() -> None:
    """The guided output at t is uncond + w(t) (cond - uncond), w linear from the start scale at T - 1 to the end at 0."""
    unet = text_mean_unet  # uncond 0, cond 1
    cond, uncond = torch.ones(1, 3, 8), torch.zeros(1, 3, 8)
    predict = make_frame_predict(unet, cond, uncond, 7.5, guidance_end=1.5, num_train_timesteps=1000)
    latents = torch.zeros(1, 4, 2, 2, 2)
    for t, scale in ((999, 7.5), (0, 1.5), (333, 1.5 + 6.0 / 3)):
        torch.testing.assert_close(predict(latents, torch.tensor(t), [0, 1]), torch.full_like(latents, scale))
    constant = make_frame_predict(unet, cond, uncond, 7.5)
    torch.testing.assert_close(constant(latents, torch.tensor(0), [0, 1]), torch.full_like(latents, 7.5))
    rising = make_frame_predict(unet, cond, uncond, 1.0, guidance_end=3.0)  # CFG runs although it starts at 1
    torch.testing.assert_close(rising(latents, torch.tensor(0), [0, 1]), torch.full_like(latents, 3.0))


def test_dual_prompt_guidance_combines_three_predictions() -> None:
    unet = text_mean_unet
    cond, dual, uncond = torch.ones(1, 3, 8), torch.full((1, 3, 8), 0.25), torch.zeros(1, 3, 8)
    latents = torch.zeros(1, 4, 2, 2, 2)
    predict = make_frame_predict(unet, cond, uncond, 2.0, dual=dual, dual_guidance=6.0)
    torch.testing.assert_close(predict(latents, torch.tensor(500), [0, 1]), torch.full_like(latents, 2 * 0.25 + 6 * 0.75))
    scheduled = make_frame_predict(unet, cond, uncond, 4.0, guidance_end=1.0, dual=dual, dual_guidance=6.0)  # both -> 1
    torch.testing.assert_close(scheduled(latents, torch.tensor(999), [0, 1]), torch.full_like(latents, 4 * 0.25 + 6 * 0.75))
    torch.testing.assert_close(scheduled(latents, torch.tensor(0), [0, 1]), torch.ones_like(latents))  # = cond
    midway = 2.5 * 0.25 + 3.5 * 0.75  # t = 999 / 2: each scale halfway to 1
    torch.testing.assert_close(scheduled(latents, torch.tensor(499.5), [0, 1]), torch.full_like(latents, midway))


def test_dual_prompt_in_generate(pipeline) -> None:
    plain = generate(pipeline, ["a red circle", "a blue star"], seed=1, return_latents=True, **SMALL)
    same = generate(pipeline, ["a red circle", "a blue star"], seed=1, dual_prompt=["a red circle", "a blue star"],
                    return_latents=True, **SMALL)
    torch.testing.assert_close(same.latents, plain.latents, atol=1e-4, rtol=0)  # the dual says all: plain CFG
    pushed = generate(pipeline, ["a red circle", "a blue star"], seed=1, dual_prompt="a circle", dual_guidance=12.0,
                      return_latents=True, **SMALL)
    assert not torch.allclose(pushed.latents, plain.latents, atol=1e-3)
    assert pushed.metadata(1)["dual_prompt"] == ["a circle", "a circle"] and pushed.metadata(0)["dual_guidance"] == 12.0
    assert "dual_prompt" not in plain.metadata(0) and same.metadata(0)["dual_guidance"] == 7.5
    with pytest.raises(InputError, match="give dual_prompt too"):
        generate(pipeline, "a red circle", dual_guidance=3.0, **SMALL)
    with pytest.raises(InputError, match="does not combine with prompt travel"):
        generate(pipeline, {0: "a red circle", 3: "a blue star"}, dual_prompt="a circle", **SMALL)
    with pytest.raises(InputError, match="dual_prompt: 3 given for 2 prompts"):
        generate(pipeline, ["a red circle", "a blue star"], dual_prompt=["a", "b", "c"], **SMALL)


def test_guidance_end_changes_the_video_and_is_recorded(pipeline) -> None:
    plain = generate(pipeline, "a red circle", seed=1, return_latents=True, **SMALL)
    flat = generate(pipeline, "a red circle", seed=1, guidance_end=7.5, return_latents=True, **SMALL)
    falling = generate(pipeline, "a red circle", seed=1, guidance_end=1.0, return_latents=True, **SMALL)
    unguided = generate(pipeline, "a red circle", seed=1, guidance_scale=1.0, return_latents=True, **SMALL)
    assert torch.equal(plain.latents, flat.latents)  # a schedule that does not move is plain CFG
    assert not torch.allclose(falling.latents, plain.latents, atol=1e-4)
    assert not torch.allclose(falling.latents, unguided.latents, atol=1e-4)
    assert falling.metadata(0)["guidance_end"] == 1.0 and "guidance_end" not in plain.metadata(0)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="guidance_end=.*finite scale >= 0"):
            generate(pipeline, "a red circle", guidance_end=bad, **SMALL)


def test_a_zero_snr_model_samples_with_guidance_rescale_unless_told_otherwise(pipeline) -> None:
    """Lin et al.'s 0.7 is the default only where the checkpoint says zero terminal SNR (plain CFG over-saturates)."""
    schedule = Parameterization("v_prediction", True).apply(pipeline.scheduler_config)
    zero_snr = dataclasses.replace(pipeline, scheduler_config=schedule)
    default, explicit, off = (
        generate(zero_snr, "a red circle", seed=1, return_latents=True, **SMALL, **rescale)
        for rescale in ({}, {"guidance_rescale": 0.7}, {"guidance_rescale": 0.0})
    )
    assert torch.equal(default.latents, explicit.latents)
    assert not torch.allclose(default.latents, off.latents, atol=1e-4)
    assert default.metadata(0)["guidance_rescale"] == 0.7 and "guidance_rescale" not in off.metadata(0)
    assert "guidance_rescale" not in generate(pipeline, "a red circle", seed=1, **SMALL).metadata(0)  # epsilon: off
    assert (default_guidance_rescale(zero_snr), default_guidance_rescale(pipeline)) == (0.7, 0.0)


def test_callback_sees_every_step(pipeline) -> None:
    seen = []
    generate(pipeline, "a red circle", seed=1, callback=lambda step, t, latents: seen.append((step, latents.shape)), **SMALL)
    assert [s for s, _ in seen] == [0, 1, 2]
    assert seen[0][1] == (1, 4, 4, 4, 4)


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler_a", "dpm++2m-karras"])
def test_schedulers(pipeline, scheduler) -> None:
    result = generate(pipeline, "a red circle", seed=1, scheduler=scheduler, **SMALL)
    assert torch.isfinite(result.frames).all()


def test_bad_sizes_and_frames(pipeline) -> None:
    with pytest.raises(InputError, match="width=30.*multiple of 8"):
        generate(pipeline, "x", **{**SMALL, "width": 30})
    with pytest.raises(FrameCountError, match="32"):
        generate(pipeline, "x", **{**SMALL, "num_frames": 40})
    with pytest.raises(InputError, match="negative_prompt"):
        generate(pipeline, ["a", "b", "c"], negative_prompt=["x", "y"], **SMALL)


def test_resolve_seeds() -> None:
    assert resolve_seeds(5, 3) == [5, 6, 7]
    assert resolve_seeds([1, 9], 2) == [1, 9]
    random_seeds = resolve_seeds(-1, 2)
    assert random_seeds[1] == random_seeds[0] + 1
    with pytest.raises(InputError):
        resolve_seeds([1, 2, 3], 2)


def test_reduced_precision_runs(pipeline) -> None:
    tiny = make_tiny_pipeline().to(dtype=torch.bfloat16)
    result = generate(tiny, "a red circle", seed=1, **SMALL)
    assert torch.isfinite(result.frames).all() and result.frames.dtype == torch.float32
