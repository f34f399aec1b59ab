"""Guidance helpers and the denoising loop, checked against diffusers schedulers with an exactly known answer."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler

from zoetrope.errors import ConfigError, InputError
from zoetrope.sampling.context import ContextConfig, wrap_predict_with_context
from zoetrope.sampling.guidance import (
    cfg, cfg_batch, dual_cfg, guided, motion_scale_schedule, rescale_guidance, scheduled_guidance, split_cfg_batch,
)
from zoetrope.sampling.loop import denoise, start_step_for_strength

# SD1.5 betas. DDIM tests set clip_sample=False: its default clips the predicted x0 to [-1, 1].
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", num_train_timesteps=1000)

# -- guidance ---------------------------------------------------------------------------------------------------


def test_cfg_formula_and_special_scales():
    uncond, cond = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0])
    assert torch.equal(cfg(uncond, cond, 7.5), torch.tensor([1 + 7.5 * 2, 2 + 7.5 * -4]))
    assert torch.equal(cfg(uncond, cond, 1.0), cond)
    assert torch.equal(cfg(uncond, cond, 0.0), uncond)
    per_frame = torch.tensor([1.0, 0.0])  # a tensor scale broadcasts
    assert torch.equal(cfg(uncond, cond, per_frame), torch.tensor([3.0, 2.0]))


def test_cfg_batch_round_trip():
    latents = torch.randn(2, 4, 3, 2, 2)
    batch = cfg_batch(latents)
    assert batch.shape == (4, 4, 3, 2, 2)
    uncond, cond = split_cfg_batch(batch * torch.tensor([0.0, 0.0, 1.0, 1.0]).view(-1, 1, 1, 1, 1))
    assert torch.equal(uncond, torch.zeros_like(latents)) and torch.equal(cond, latents)
    assert torch.equal(guided(torch.cat([uncond, cond]), 2.0), 2 * latents)
    with pytest.raises(InputError, match="even batch"):
        split_cfg_batch(torch.zeros(3, 1))


def test_motion_scale_schedule():
    assert torch.equal(motion_scale_schedule(1.25, 4), torch.full((4,), 1.25))
    assert torch.equal(motion_scale_schedule([1.0, 1.1, 1.2], 3), torch.tensor([1.0, 1.1, 1.2]))
    assert torch.equal(motion_scale_schedule(torch.tensor(0.5), 2), torch.tensor([0.5, 0.5]))
    assert motion_scale_schedule(1, 3).dtype == torch.float32
    with pytest.raises(ConfigError, match="3 values given for 16 frames"):
        motion_scale_schedule([1.0, 1.1, 1.2], 16)


def test_dual_cfg_weighs_what_the_full_prompt_adds():
    generator = torch.Generator().manual_seed(0)
    uncond, dual, cond = (torch.randn(2, 4, 3, 2, 2, generator=generator) for _ in range(3))
    torch.testing.assert_close(dual_cfg(uncond, dual, cond, 7.5, 7.5), cfg(uncond, cond, 7.5))  # equal scales: CFG
    torch.testing.assert_close(dual_cfg(uncond, uncond, cond, 7.5, 3.0), cfg(uncond, cond, 3.0))  # dual says nothing
    torch.testing.assert_close(dual_cfg(uncond, dual, cond, 2.0, 5.0), uncond + 2 * (dual - uncond) + 5 * (cond - dual))


def test_scheduled_guidance_is_linear_in_the_timestep():
    assert scheduled_guidance(7.5, None, 999) == 7.5 and scheduled_guidance(7.5, None, 0) == 7.5  # constant
    assert scheduled_guidance(7.5, 1.0, torch.tensor(999)) == 7.5  # pure noise: the start scale
    assert scheduled_guidance(7.5, 1.0, torch.tensor([0, 0])) == 1.0  # t = 0: the end scale (a batch of equal t)
    assert scheduled_guidance(7.5, 1.0, 999 / 2) == pytest.approx(4.25)
    assert scheduled_guidance(1.0, 5.0, 999 * 0.25) == pytest.approx(4.0)  # rising: three quarters of the way at t = T / 4
    assert scheduled_guidance(3.0, 1.0, 99, num_train_timesteps=100) == 3.0  # the model's own T
    assert scheduled_guidance(3.0, 1.0, 1200) == 3.0 and scheduled_guidance(3.0, 1.0, -1.0) == 1.0  # clamped


# -- loop -------------------------------------------------------------------------------------------------------


def oracle(scheduler, x0: torch.Tensor, calls: list | None = None):
    """predict(x_t, t) = the exact noise that makes x_t from x0: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""

    def predict(latents, t):
        if calls is not None:
            calls.append(t)
        alpha_bar = scheduler.alphas_cumprod[int(torch.as_tensor(t).round())]
        return (latents - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()

    return predict


def test_ddim_with_exact_noise_recovers_x0():
    torch.manual_seed(0)
    x0 = torch.randn(1, 4, 3, 4, 4) * 0.5
    scheduler = DDIMScheduler(**SD_BETAS, set_alpha_to_one=True, clip_sample=False)
    scheduler.set_timesteps(10)
    calls, seen = [], []
    latents = denoise(
        oracle(scheduler, x0, calls), torch.randn(1, 4, 3, 4, 4), scheduler, progress=False,
        callback=lambda step, t, x: seen.append((step, t, x.shape)),
    )
    assert torch.allclose(latents, x0, atol=1e-5)
    assert [int(t) for t in calls] == scheduler.timesteps.tolist()
    assert [(s, t) for s, t, _ in seen] == list(enumerate(scheduler.timesteps.tolist()))
    assert all(isinstance(t, int) for _, t, _ in seen)


def test_callback_with_denoised_sees_the_clean_estimate():
    """With the exact noise every step's clean estimate is x0 itself, under each name diffusers gives it: DDIM and
    Euler (`pred_original_sample`), LCM (`denoised`), DPM++ 2M Karras (its converted model output); a scheduler
    that reports none gives None; a callback without the keyword is called as before."""
    torch.manual_seed(1)
    x0 = torch.randn(1, 4, 2, 4, 4) * 0.5
    for scheduler in (
        DDIMScheduler(**SD_BETAS, set_alpha_to_one=True, clip_sample=False), EulerDiscreteScheduler(**SD_BETAS),
        LCMScheduler(**SD_BETAS, clip_sample=False),
        DPMSolverMultistepScheduler(**SD_BETAS, algorithm_type="dpmsolver++", use_karras_sigmas=True),
    ):
        scheduler.set_timesteps(6)
        estimates, plain = [], []
        noise = torch.randn(1, 4, 2, 4, 4) * scheduler.init_noise_sigma

        def preview(step, t, latents, denoised):
            estimates.append((step, denoised))

        denoise(oracle(scheduler, x0), noise, scheduler, progress=False, callback=preview)
        assert [step for step, _ in estimates] == list(range(6))
        for _, denoised in estimates:
            torch.testing.assert_close(denoised, x0, atol=5e-3, rtol=0)  # Euler, DPM++: t rounds to the table
        scheduler.set_timesteps(6)
        denoise(oracle(scheduler, x0), noise, scheduler, progress=False, callback=lambda s, t, x: plain.append(s))
        assert plain == list(range(6))

    class NoEstimate:  # a scheduler whose step output has no pred_original_sample (as DPM++)
        timesteps = torch.tensor([999, 499])

        def scale_model_input(self, latents, t):
            return latents

        def step(self, output, t, latents):
            return type("Out", (), {"prev_sample": latents * 0.5})()

    seen = []
    denoise(lambda x, t: x, torch.ones(1, 2), NoEstimate(), progress=False,
            callback=lambda step, t, x, denoised=0: seen.append(denoised))
    assert seen == [None, None]


def test_scale_model_input_is_applied():
    """Euler keeps latents at sigma scale; the oracle is only right if the loop scales the model input."""
    torch.manual_seed(1)
    x0 = torch.randn(1, 4, 2, 4, 4) * 0.5
    scheduler = EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="leading", steps_offset=1)
    scheduler.set_timesteps(12)
    latents = torch.randn(1, 4, 2, 4, 4) * scheduler.init_noise_sigma
    result = denoise(oracle(scheduler, x0), latents, scheduler, progress=False)
    assert torch.allclose(result, x0, atol=1e-4)


def test_start_step_video_to_video():
    torch.manual_seed(2)
    x0 = torch.randn(1, 4, 3, 4, 4) * 0.5
    scheduler = DDIMScheduler(**SD_BETAS, set_alpha_to_one=True, clip_sample=False)
    scheduler.set_timesteps(20)
    start = start_step_for_strength(20, 0.4)
    assert start == 12
    t_start = scheduler.timesteps[start]
    noisy = scheduler.add_noise(x0, torch.randn_like(x0), t_start.view(1))
    calls = []
    result = denoise(oracle(scheduler, x0, calls), noisy, scheduler, progress=False, start_step=start)
    assert len(calls) == 8 and int(calls[0]) == int(t_start)
    assert torch.allclose(result, x0, atol=1e-5)
    # Euler tracks its step index: set_begin_index makes start_step land on the right sigma
    euler = EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="leading", steps_offset=1)
    euler.set_timesteps(20)
    noisy = x0 + euler.sigmas[start] * torch.randn_like(x0)
    assert torch.allclose(denoise(oracle(euler, x0), noisy, euler, progress=False, start_step=start), x0, atol=1e-4)


def test_start_step_for_strength_edges():
    assert start_step_for_strength(25, 1.0) == 0
    assert start_step_for_strength(25, 0.0) == 25
    assert start_step_for_strength(10, 0.5, order=2) == 10
    with pytest.raises(ConfigError, match="strength"):
        start_step_for_strength(25, 1.5)


def test_generator_drives_stochastic_schedulers():
    x0 = torch.zeros(1, 1, 2, 2, 2)

    def run(seed):
        scheduler = DDPMScheduler(**SD_BETAS)
        scheduler.set_timesteps(5)
        start = torch.ones(1, 1, 2, 2, 2)
        return denoise(oracle(scheduler, x0), start, scheduler, generator=torch.Generator().manual_seed(seed),
                       progress=False, timesteps=scheduler.timesteps[:3])

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_step_passed_to_step_aware_predict_and_context_wrapper():
    scheduler = DDIMScheduler(**SD_BETAS, set_alpha_to_one=True, clip_sample=False)
    scheduler.set_timesteps(4)
    steps = []

    def predict(latents, t, step):
        steps.append(step)
        return torch.zeros_like(latents)

    denoise(predict, torch.zeros(1, 1, 2, 1, 1), scheduler, progress=False, start_step=1)
    assert steps == [1, 2, 3]

    # the context wrapper plugs straight in: frame-local oracle on 40 frames, windows of 16, same answer
    torch.manual_seed(3)
    x0 = torch.randn(1, 4, 40, 2, 2) * 0.5
    scheduler.set_timesteps(6)
    exact = oracle(scheduler, x0)
    windows_seen = []

    def predict_frames(latents, t, frame_indices):
        windows_seen.append(list(frame_indices))
        alpha_bar = scheduler.alphas_cumprod[int(t)]
        return (latents - alpha_bar.sqrt() * x0[:, :, frame_indices]) / (1 - alpha_bar).sqrt()

    noise = torch.randn_like(x0)
    windowed = wrap_predict_with_context(predict_frames, ContextConfig(length=16, overlap=4))
    result = denoise(windowed, noise, scheduler, progress=False)
    scheduler.set_timesteps(6)
    plain = denoise(exact, noise, scheduler, progress=False)
    assert torch.allclose(result, plain, atol=1e-5) and torch.allclose(result, x0, atol=1e-5)
    assert all(len(window) == 16 for window in windows_seen) and len(windows_seen) >= 18


def test_denoise_errors():
    scheduler = DDIMScheduler(**SD_BETAS)
    with pytest.raises(ConfigError, match="set_timesteps"):
        denoise(lambda x, t: x, torch.zeros(1, 1, 1, 1, 1), scheduler, timesteps=[], progress=False)
    scheduler.set_timesteps(3)
    with pytest.raises(ConfigError, match="start_step=5"):
        denoise(lambda x, t: x, torch.zeros(1, 1, 1, 1, 1), scheduler, start_step=5, progress=False)


def test_guidance_rescale_matches_the_conditional_std_per_frame() -> None:
    generator = torch.Generator().manual_seed(0)
    uncond, cond = torch.randn(2, 4, 3, 5, 5, generator=generator), torch.randn(2, 4, 3, 5, 5, generator=generator)
    cond[:, :, 1] *= 3.0  # one loud frame must not dim the others
    guided = cfg(uncond, cond, 7.5)
    assert rescale_guidance(guided, cond, 0.0) is guided
    full = rescale_guidance(guided, cond, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 3, 4)), cond.std(dim=(1, 3, 4)))
    assert not torch.allclose(full.std(dim=(1, 3, 4)), guided.std(dim=(1, 3, 4)))
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.7), 0.7 * full + 0.3 * guided)  # Lin et al. eq. 17
    # the direction of every frame's guided output is kept: only its scale changes
    ratio = full / guided
    torch.testing.assert_close(ratio, ratio[:, :1, :, :1, :1].expand_as(ratio))
    with pytest.raises(ConfigError, match=r"expected a fraction in \[0, 1\]"):
        rescale_guidance(guided, cond, 1.5)
