"""Keyframe conditions for SparseCtrl (Guo et al. 2023, arXiv:2311.16933): pure tensor helpers.

SparseCtrl sees a condition that is zero everywhere except at a few keyframes, plus a binary mask that says which
frames are conditioned ("unifying sparsity via masking", §3.2). The official pipeline builds them as
`cond[:, :, idx] = images` and `mask[:, :, idx] = 1`; `build_condition` does the same, after `resolve_indices` has
turned user indices (negative ones count from the end, as the official configs' `[0, -1]` for interpolation) into
checked frame numbers. `random_keyframes` draws the random sparsity patterns used to train an encoder.
"""

from __future__ import annotations

import operator
from typing import Callable, Sequence

import torch

from zoetrope.errors import InputError


def resolve_indices(indices: Sequence[int], num_frames: int) -> list[int]:
    """Frame numbers for keyframe indices: `-1` is the last frame; out of range or repeated -> InputError."""
    if num_frames < 1:
        raise InputError(f"keyframes need at least one frame, got num_frames={num_frames}")
    resolved: list[int] = []
    for given in indices:
        try:
            index = operator.index(given)  # ints, numpy/torch integer scalars; not floats or bools-as-strings
        except TypeError:
            raise InputError(f"keyframe index {given!r} is not an integer; use frame numbers like 0, 8 or -1") from None
        if not -num_frames <= index < num_frames:
            raise InputError(
                f"keyframe index {index} is outside the video; valid indices for {num_frames} frames are "
                f"{-num_frames}..{num_frames - 1}"
            )
        frame = index % num_frames
        if frame in resolved:
            raise InputError(
                f"keyframe index {index} names frame {frame} a second time; give each frame at most one keyframe"
            )
        resolved.append(frame)
    return resolved


def build_condition(
    images: torch.Tensor, indices: Sequence[int], num_frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(condition `(1, c, f, H, W)`, mask `(1, 1, f, H, W)`) with `images[k]` placed at frame `indices[k]`.

    `images` is `(k, c, H, W)`: VAE latents for the RGB encoder, pixels in [0, 1] for the sketch encoder. Frames
    without a keyframe are zero in both tensors (official `cond[:,:,idx] = images; mask[:,:,idx] = 1`).
    """
    if images.ndim != 4:
        raise InputError(f"keyframe images must be (count, channels, height, width), got shape {tuple(images.shape)}")
    if images.shape[0] != len(indices):
        raise InputError(
            f"{images.shape[0]} keyframe image(s) but {len(indices)} index(es); give one index per image"
        )
    frames = resolve_indices(indices, num_frames)
    _, channels, height, width = images.shape
    condition = images.new_zeros(1, channels, num_frames, height, width)
    mask = images.new_zeros(1, 1, num_frames, height, width)
    if frames:
        condition[0, :, frames] = images.transpose(0, 1)
        mask[0, :, frames] = 1
    return condition, mask


def normalize_sketch(images: torch.Tensor) -> torch.Tensor:
    """Grey, min-max normalised, 3-channel sketches (official `normalize_condition_images`).

    Each image `(c, H, W)` (or a batch `(k, c, H, W)`) is averaged over channels, shifted so its minimum is 0 and
    divided by its new maximum, then repeated to 3 channels: line drawings of any colour or contrast look alike to the
    scribble encoder. A constant image becomes all zeros (the official code would divide by zero).
    """
    if images.ndim not in (3, 4):
        raise InputError(f"sketches must be (channels, H, W) or (count, channels, H, W), got {tuple(images.shape)}")
    batched = images if images.ndim == 4 else images[None]
    grey = batched.float().mean(dim=1, keepdim=True)
    grey = grey - grey.amin(dim=(1, 2, 3), keepdim=True)
    peak = grey.amax(dim=(1, 2, 3), keepdim=True)
    grey = torch.where(peak > 0, grey / peak.clamp_min(torch.finfo(grey.dtype).tiny), torch.zeros_like(grey))
    normalized = grey.expand(-1, 3, -1, -1).to(images.dtype)
    return normalized if images.ndim == 4 else normalized[0]


def random_keyframes(
    num_frames: int, generator: torch.Generator, max_keyframes: int | None = None, p_zero: float = 0.0
) -> list[int]:
    """A random sparsity pattern for training: sorted distinct frame numbers, possibly none.

    With probability `p_zero` the clip gets no keyframe (the encoder must then stay neutral, which keeps text-only
    generation intact); otherwise the count is uniform in `1..max_keyframes` (default: every frame) and the positions
    are a uniform random subset, so the encoder sees every sparsity pattern it may meet at inference (paper §3.2,
    "unifying sparsity via masking").
    """
    if num_frames < 1:
        raise InputError(f"random_keyframes needs num_frames >= 1, got {num_frames}")
    if not 0.0 <= p_zero <= 1.0:
        raise InputError(f"p_zero={p_zero} is not a probability; use a value in [0, 1]")
    limit = num_frames if max_keyframes is None else max_keyframes
    if not 1 <= limit <= num_frames:
        raise InputError(f"max_keyframes={max_keyframes} must be in 1..{num_frames} for {num_frames} frames")
    if torch.rand((), generator=generator).item() < p_zero:
        return []
    count = int(torch.randint(1, limit + 1, (), generator=generator).item())
    positions = torch.randperm(num_frames, generator=generator)[:count]
    return sorted(int(frame) for frame in positions)


def replacement_steps(fraction: float, steps: int) -> int:
    """How many of the first sampling steps paste the keyframes in: `round(fraction * steps)`, fraction in [0, 1]."""
    if not 0.0 <= fraction <= 1.0:
        raise InputError(
            f"keyframe replacement {fraction}: must be a fraction of the sampling steps in [0, 1] (0 = off); try 0.5"
        )
    return round(fraction * steps)


def keyframe_replacement(
    condition: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor, scheduler, until_step: int
) -> Callable[[int, object, torch.Tensor], torch.Tensor]:
    """A `denoise` guide that pastes the keyframes' latents, noised to the current timestep, over the video's
    latents at the keyframes during the first `until_step` steps (latent replacement, as inpainting samplers do).

    Why: SparseCtrl's encoder only *steers* the UNet through residuals, so a weakly trained encoder (or a scale < 1)
    leaves the keyframe's colours and position to the text; replacing the keyframe's latent while the layout is
    decided anchors them exactly, and the free steps afterwards let the UNet blend the keyframe with its
    neighbours (no seam). The noise is the video's own initial noise at those frames, so a seed gives one result.
    `condition` `(1, c, f, h, w)` holds VAE latents at the keyframes (the RGB encoder's input), `mask`
    `(1, 1, f, h, w)` marks them, `noise` is `(b, c, f, h, w)` like the latents.
    """
    frames = [int(frame) for frame in mask[0, 0, :, 0, 0].nonzero().flatten()]
    if not frames:
        raise InputError("keyframe replacement needs at least one keyframe")
    if condition.shape[1] != noise.shape[1]:
        raise InputError(
            f"keyframe replacement needs keyframe latents ({noise.shape[1]} channels, RGB keyframes); this condition "
            f"has {condition.shape[1]} channels (sketches are not pictures of the frame); drop the replacement"
        )
    keys = condition[:, :, frames]

    def guide(step: int, timestep, latents: torch.Tensor) -> torch.Tensor:
        if step >= until_step:
            return latents
        batch = latents.shape[0]
        t = torch.as_tensor(timestep, device=latents.device).reshape(1).expand(batch)
        pasted = latents.clone()
        pasted[:, :, frames] = scheduler.add_noise(
            keys.to(latents).expand(batch, -1, -1, -1, -1), noise[:, :, frames].to(latents), t
        )
        return pasted

    return guide
