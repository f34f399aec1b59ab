"""The one denoising loop: `denoise(predict, latents, scheduler)` over any diffusers scheduler.

No model inside: `predict(latents, t)` (or `predict(latents, t, step)`, see below) returns the model output in
the scheduler's `prediction_type` (epsilon for SD1.5), so guidance, context windows, SparseCtrl residuals and
prompt travel are wrappers built by the pipeline around the UNet call (the k-diffusion way), and this loop serves
text-to-video, image-to-video and video-to-video alike.

`step` protocol: if `predict` has a parameter named `step` (as the predict made by
`zoetrope.sampling.context.wrap_predict_with_context` has), it is called as `predict(latents, t, step=i)` with i
the index into `timesteps`, so schedules that change with the step (rotating context windows) need no state. The
same rule diffusers uses to pass `generator`/`eta` only to schedulers whose `step` takes them.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from zoetrope.errors import ConfigError

logger = logging.getLogger(__name__)

Predict = Callable[..., torch.Tensor]
# callback(step, t, latents), or with a `denoised` keyword also the step's clean estimate (see `denoise`)
StepCallback = Callable[..., None]
Guide = Callable[[int, Any, torch.Tensor], torch.Tensor]


def _accepts(function: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def clean_estimate(scheduler: Any, result: Any) -> torch.Tensor | None:
    """The scheduler's estimate of the clean latents at the step that just returned `result`, or None.

    Every scheduler computes one on the way, but diffusers reports it under different names: `pred_original_sample`
    (DDIM, DDPM, Euler, Euler a), `denoised` (LCM, its boundary-conditioned x0); the DPM-Solver++ family returns only
    `prev_sample` and keeps its converted model output, which for `algorithm_type="dpmsolver++"` *is* the x0
    estimate, as the newest entry of `model_outputs`. One place that knows the three, so a preview works with every
    sampler `--scheduler` offers.
    """
    for name in ("pred_original_sample", "denoised"):
        value = getattr(result, name, None)
        if value is not None:
            return value
    algorithm = getattr(getattr(scheduler, "config", None), "algorithm_type", None)
    outputs = getattr(scheduler, "model_outputs", None)
    return outputs[-1] if algorithm in ("dpmsolver++", "sde-dpmsolver++") and outputs else None


def start_step_for_strength(num_steps: int, strength: float, order: int = 1) -> int:
    """First index into the scheduler's timesteps for video-to-video at `strength` (1 = from pure noise).

    As diffusers' img2img `get_timesteps`: the last int(num_steps * strength) steps are run; `order` is the
    scheduler's `order` (2 for Heun/DPM2, whose timesteps list repeats entries).
    """
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"strength={strength}: must be in [0, 1] (1 = ignore the input video); try 0.6")
    steps_run = min(int(num_steps * strength), num_steps)
    return (num_steps - steps_run) * order


def denoise(
    predict: Predict,
    latents: torch.Tensor,
    scheduler: Any,
    timesteps: Sequence[Any] | torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    progress: bool = True,
    start_step: int = 0,
    guide: Guide | None = None,
) -> torch.Tensor:
    """Run the scheduler from `timesteps[start_step]` to the end and return the denoised latents.

    Each step: model_input = scheduler.scale_model_input(latents, t); output = predict(model_input, t[, step]);
    latents = scheduler.step(output, t, latents, generator=generator).prev_sample; callback(step, t, latents).
    `scheduler.set_timesteps` must have been called (timesteps default to `scheduler.timesteps`).
    `start_step` (video-to-video): the latents are already noised to `timesteps[start_step]`
    (`scheduler.add_noise`); see `start_step_for_strength`. `generator` feeds stochastic schedulers (DDPM,
    ancestral); it is passed only to schedulers whose `step` accepts it. `callback` gets `t` as a Python number;
    a callback with a `denoised` parameter also gets the scheduler's estimate of the clean latents at that step
    (`clean_estimate`: every sampler `--scheduler` offers has one; None from a scheduler that keeps none): the
    live preview of ComfyUI and A1111, and what `bench/eval_image_model.py --trajectory` reads to find the step
    where a sample's layout is decided (the latents themselves show it only at the end, buried in noise before).
    `guide(step, t, latents)`, when given, returns the latents to denoise at that step before the model sees them
    (keyframe latent replacement pastes re-noised keyframes in); the scheduler then steps from what it returned.
    """
    if timesteps is None:
        timesteps = scheduler.timesteps
    if timesteps is None or len(timesteps) == 0:
        raise ConfigError("denoise: the scheduler has no timesteps; call scheduler.set_timesteps(steps) first")
    if not 0 <= start_step <= len(timesteps):
        raise ConfigError(f"denoise: start_step={start_step} outside 0..{len(timesteps)} (the number of timesteps)")
    if start_step > 0 and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start_step)  # index-tracking schedulers (Euler, DPM++) start at the right sigma
    pass_step = _accepts(predict, "step")
    pass_denoised = callback is not None and _accepts(callback, "denoised")
    step_kwargs = {"generator": generator} if _accepts(scheduler.step, "generator") else {}
    logger.debug("denoise: %d steps from index %d", len(timesteps) - start_step, start_step)
    for step in tqdm(range(start_step, len(timesteps)), disable=not progress, desc="denoising", leave=False):
        t = timesteps[step]
        if guide is not None:
            latents = guide(step, t, latents)
        model_input = scheduler.scale_model_input(latents, t)
        output = predict(model_input, t, step=step) if pass_step else predict(model_input, t)
        result = scheduler.step(output, t, latents, **step_kwargs)
        latents = result.prev_sample
        if callback is not None:
            t_value = t.item() if isinstance(t, torch.Tensor) else t
            if pass_denoised:
                callback(step, t_value, latents, denoised=clean_estimate(scheduler, result))
            else:
                callback(step, t_value, latents)
    return latents
