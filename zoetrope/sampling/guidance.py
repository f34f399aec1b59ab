"""Classifier-free guidance and motion scale: small functions the pipelines compose into their predict.

Batch order follows the official AnimateDiff pipeline: the unconditional half first, then the conditional half.
"""

from __future__ import annotations

from typing import Sequence

import torch

from zoetrope.errors import ConfigError, InputError


def cfg(noise_uncond: torch.Tensor, noise_cond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598): uncond + scale * (cond - uncond).

    scale = 1 returns the conditional prediction, scale = 0 the unconditional one. `scale` may be a tensor that
    broadcasts against the predictions, e.g. `(1, 1, f, 1, 1)` for a per-frame guidance scale.
    """
    return noise_uncond + scale * (noise_cond - noise_uncond)


def scheduled_guidance(
    start: float, end: float | None, timestep: float | torch.Tensor, num_train_timesteps: int = 1000
) -> float:
    """The guidance scale at `timestep`: `start` at pure noise (t = T - 1), `end` at t = 0, linear in t between.

    Why: what guidance buys and what it costs fall at different noise levels. At high noise the sample's layout and
    (in a video) its motion are decided, and strong guidance makes them follow the prompt; later, strong guidance
    mostly saturates colours. A falling schedule (e.g. 7.5 -> 1) aims to keep the first and drop the second, as the
    "CFG scheduler" extensions of A1111 and ComfyUI do. (Measured on the world's pastel model: it does not keep that
    style, which is lost in the middle steps too; `dual_cfg` on the motion words does. docs/world-training.md.)
    It follows the timestep, not the step index, so video-to-video (`strength` < 1) and context windows see the
    scale of the noise level they are at. `end=None` is a constant scale (`start`).
    """
    if end is None:
        return float(start)
    t = float(torch.as_tensor(timestep).flatten()[0])
    fraction = min(max(t / max(num_train_timesteps - 1, 1), 0.0), 1.0)
    return float(end + (start - end) * fraction)


def dual_cfg(
    noise_uncond: torch.Tensor, noise_dual: torch.Tensor, noise_cond: torch.Tensor, scale: float, dual_scale: float
) -> torch.Tensor:
    """Guidance with a second positive prompt: uncond + scale * (dual - uncond) + dual_scale * (cond - dual).

    `dual` is the prediction for a prompt that says less than the full one (e.g. the prompt without its motion
    words), so `dual_scale` weighs only what the full prompt adds and `scale` everything else. This is ComfyUI's
    DualCFGGuider ("regular" style: cfg_cond2_negative = `scale`, cfg_conds = `dual_scale`), a two-term case of
    composable diffusion (Liu et al. 2022, arXiv 2206.01714). Why: a word the model hears weakly (a motion word to
    a frozen image UNet) can be pushed harder than the rest of the prompt without saturating colours.
    `dual_scale == scale` is plain CFG on the full prompt.
    """
    return noise_uncond + scale * (noise_dual - noise_uncond) + dual_scale * (noise_cond - noise_dual)


ZERO_SNR_GUIDANCE_RESCALE = 0.7
"""The guidance rescale a zero-terminal-SNR model samples with unless told otherwise (Lin et al. 2024 use 0.7)."""


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules...", §3.4, eq. 15-17; A1111's CFG rescale,
    diffusers' `guidance_rescale`): scale the guided output back to the standard deviation of the conditional one,
    then mix `rescale` of that with (1 - rescale) of the plain guided output.

    Why: with zero terminal SNR a large guidance scale over-exposes (the guided v has a much larger norm than any
    v the model was trained on); Lin et al. use 0.7. The std is taken per sample *and per frame* (over channels and
    pixels, as for one image in the paper), so one bright frame does not dim the others. `rescale` 0 is plain CFG.
    """
    if not 0.0 <= rescale <= 1.0:
        raise ConfigError(f"guidance rescale {rescale}: expected a fraction in [0, 1] (0 = off, 0.7 as Lin et al.)")
    if rescale == 0.0:
        return guided
    axes = (1, 3, 4) if guided.ndim == 5 else tuple(range(1, guided.ndim))  # (b, c, f, h, w): per frame
    ratio = cond.float().std(dim=axes, keepdim=True) / guided.float().std(dim=axes, keepdim=True).clamp(min=1e-12)
    return (rescale * guided.float() * ratio + (1.0 - rescale) * guided.float()).to(guided.dtype)


def cfg_batch(latents: torch.Tensor) -> torch.Tensor:
    """The model input for one CFG call: the latents twice, `[uncond half, cond half]` along the batch axis."""
    return torch.cat([latents, latents])


def split_cfg_batch(prediction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a `[uncond, cond]` model output along the batch axis into `(noise_uncond, noise_cond)`."""
    if prediction.shape[0] % 2:
        raise InputError(
            f"CFG batch of size {prediction.shape[0]}: expected an even batch [unconditional, conditional]"
        )
    noise_uncond, noise_cond = prediction.chunk(2)
    return noise_uncond, noise_cond


def guided(prediction: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """`cfg` applied to a `[uncond, cond]` batch output: one call for the common case."""
    return cfg(*split_cfg_batch(prediction), scale)


def motion_scale_schedule(value: float | Sequence[float] | torch.Tensor, num_frames: int) -> torch.Tensor:
    """Motion scale per frame, `(num_frames,)` float32.

    A number applies to every frame; a list (or 1-D tensor) gives one value per frame and must have exactly
    `num_frames` entries (ADE's `scale_multival` accepts the same two forms). The motion module multiplies its
    temporal attention by these values (ADE `CrossAttentionMM` scales the keys); 1 is the trained behaviour.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full((num_frames,), float(value))
    values = torch.as_tensor(value, dtype=torch.float32).flatten()
    if values.numel() == 1 and torch.as_tensor(value).dim() == 0:
        return values.expand(num_frames).clone()
    if values.numel() != num_frames:
        raise ConfigError(
            f"motion_scale: {values.numel()} values given for {num_frames} frames; give one number or one per frame"
        )
    return values
