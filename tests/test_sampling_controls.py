"""Sampling controls in the pipeline: context windows, prompt travel, noise priors, FreeInit, motion scale, v2v."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_pipeline
from zoetrope.errors import FrameCountError
from zoetrope.models.motion_module import MotionModules, MotionWindows
from zoetrope.models.video_unet import VideoUNet
from zoetrope.pipelines.components import decode_latents, encode_frames
from zoetrope.pipelines.text_to_video import FreeInitSettings, TravelSettings, generate
from zoetrope.pipelines.video_to_video import video_to_video
from zoetrope.sampling.context import ContextConfig

SMALL = dict(width=32, height=32, steps=2, progress=False, seed=3, return_latents=True, decode=False)


@pytest.fixture(scope="module")
def pipeline():
    return make_tiny_pipeline(max_frames=8)


@pytest.fixture(scope="module")
def frame_local():
    """Zero-initialised motion modules: the video model is the image model per frame (windows cannot matter)."""
    from conftest import tiny_motion_config

    pipe = make_tiny_pipeline()
    pipe.video_unet = VideoUNet(pipe.video_unet.detach(), MotionModules(tiny_motion_config(max_frames=8)))
    return pipe


def test_more_frames_than_the_pe_needs_context_windows(pipeline) -> None:
    with pytest.raises(FrameCountError, match="context"):
        generate(pipeline, "a red circle", num_frames=12, **SMALL)
    for mode in ("unet", "motion"):
        result = generate(pipeline, "a red circle", num_frames=12, context=ContextConfig(length=8, overlap=4), context_mode=mode, **SMALL)
        assert result.latents.shape[2] == 12 and torch.isfinite(result.latents).all()


def test_windows_do_not_change_a_frame_local_model(frame_local) -> None:
    plain = generate(frame_local, "a red circle", num_frames=8, **SMALL).latents
    windowed = generate(frame_local, "a red circle", num_frames=8, context=ContextConfig(length=4, overlap=2), **SMALL).latents
    assert torch.allclose(plain, windowed, atol=1e-4)  # 8 frames vs windows of 4: GEMM blocking differs (~1e-4 on one thread)


def test_one_motion_window_over_all_frames_is_no_window() -> None:
    video = make_tiny_pipeline().video_unet
    sample, text = torch.randn(1, 4, 6, 8, 8), torch.randn(1, 5, 32)
    with torch.no_grad():
        plain = video(sample, 10, text)
        windowed = video(sample, 10, text, motion_windows=MotionWindows([list(range(6))], [torch.ones(6)]))
        split = video(sample, 10, text, motion_windows=MotionWindows([[0, 1, 2, 3], [2, 3, 4, 5]], [torch.ones(4)] * 2))
    assert torch.allclose(plain, windowed, atol=1e-6)
    assert not torch.allclose(plain, split, atol=1e-4)


def test_prompt_travel_endpoints_and_equivalence(pipeline) -> None:
    same = generate(pipeline, {0: "a red circle", 5: "a red circle"}, num_frames=6, **SMALL).latents
    plain = generate(pipeline, "a red circle", num_frames=6, **SMALL).latents
    assert torch.allclose(same, plain, atol=1e-5)
    travel = generate(pipeline, {0: "a red circle", -1: "a blue star"}, num_frames=6, travel=TravelSettings(method="slerp"), **SMALL)
    assert not torch.allclose(travel.latents, plain, atol=1e-4)
    assert travel.settings.extras["travel"]["method"] == "slerp"


def test_noise_priors_reproducible_and_distinct(pipeline) -> None:
    a = generate(pipeline, "x", num_frames=6, noise="pyoco_mixed", noise_params={"alpha": 1.0}, **SMALL).latents
    b = generate(pipeline, "x", num_frames=6, noise="pyoco_mixed", noise_params={"alpha": 1.0}, **SMALL).latents
    c = generate(pipeline, "x", num_frames=6, noise="constant", **SMALL).latents
    assert torch.equal(a, b) and not torch.allclose(a, c, atol=1e-3)


def test_freeinit_reruns_and_changes_the_result(pipeline) -> None:
    calls = []
    plain = generate(pipeline, "x", num_frames=6, **SMALL).latents
    free = generate(
        pipeline, "x", num_frames=6, freeinit=FreeInitSettings(iterations=2, filter="gaussian"),
        callback=lambda step, t, latents: calls.append(step), **SMALL,
    ).latents
    assert len(calls) == 2 * SMALL["steps"]
    assert not torch.allclose(plain, free, atol=1e-4)


def test_freeinit_is_refused_on_a_zero_terminal_snr_schedule(pipeline) -> None:
    """FreeInit keeps the result's low band through t = T; at zero terminal SNR nothing survives there."""
    import dataclasses

    from zoetrope.errors import ConfigError
    from zoetrope.pipelines.components import Parameterization, make_scheduler

    zero = dataclasses.replace(pipeline, scheduler_config=Parameterization("v_prediction", True).apply(pipeline.scheduler_config))
    renoised = make_scheduler("ddim", zero.scheduler_config).add_noise(torch.ones(1, 4, 2, 2, 2), torch.zeros(1, 4, 2, 2, 2), torch.tensor([999]))
    assert renoised.abs().max().item() == 0.0  # the clean result is gone at t = T
    with pytest.raises(ConfigError, match="zero terminal SNR"):
        generate(zero, "x", num_frames=6, freeinit=FreeInitSettings(iterations=2), **SMALL)
    assert generate(zero, "x", num_frames=6, freeinit=FreeInitSettings(iterations=1), **SMALL).latents is not None


def test_motion_scale_and_strength(pipeline) -> None:
    plain = generate(pipeline, "x", num_frames=6, **SMALL).latents
    listed = generate(pipeline, "x", num_frames=6, motion_scale=[1.0] * 6, motion_strength=[1.0] * 6, **SMALL).latents
    scaled = generate(pipeline, "x", num_frames=6, motion_scale=1.5, **SMALL).latents
    assert torch.allclose(plain, listed, atol=1e-5)
    assert not torch.allclose(plain, scaled, atol=1e-4)


def test_video_to_video_strength_zero_returns_the_input(pipeline) -> None:
    torch.manual_seed(0)
    video = torch.rand(1, 3, 4, 32, 32)
    result = video_to_video(pipeline, video, "a red circle", strength=0.0, steps=4, seed=1, progress=False, return_latents=True)
    round_trip = decode_latents(pipeline.image_model.vae, encode_frames(pipeline.image_model.vae, video, sample=False))
    assert result.frames.shape == video.shape
    assert torch.allclose(result.frames, round_trip, atol=1e-5)
    changed = video_to_video(pipeline, video, "a red circle", strength=0.75, steps=4, seed=1, progress=False)
    assert (changed.frames - round_trip).abs().max().item() > 1e-3
