"""SparseCtrl training conditions: which frames are keyframes, and what the encoder sees at them.

SparseCtrl (Guo et al. 2023, arXiv:2311.16933, §3.2) trains its condition encoder on random sparsity patterns so
that one encoder serves image animation (frame 0), interpolation (first and last), storyboards and the
unconditioned case ("unifying sparsity via masking"). No training code was released; the pattern mixture here is
zoetrope's recipe (shared/reference/seed-systems.md §2.3). Conditions are built per clip, from the clip itself:

- RGB: the keyframes' VAE latents, taken at the posterior mode, exactly as `prepare_control` encodes user keyframes
  at inference (so train and test conditions come from the same function);
- sketch: an edge map of the keyframes (`edge_map`), a line drawing computed from the pixels, because the shapes
  world has no hand-drawn scribbles; users then feed `normalize_sketch`-ed drawings of the same look.

Every random draw comes from the `torch.Generator` passed in (the engine's loop generator), so a resumed run draws
the same patterns as an uninterrupted one.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from zoetrope.errors import InputError
from zoetrope.sampling.keyframes import build_condition, random_keyframes

#: Rec. 601 luma weights: the grey image an edge detector looks at.
LUMA = (0.299, 0.587, 0.114)


def edge_map(frames: torch.Tensor) -> torch.Tensor:
    """A sketch-like edge map `(k, 3, H, W)` in [0, 1] of frames `(k, 3, H, W)` in [0, 1].

    Sobel gradient magnitude (Sobel & Feldman 1968; `|G| = sqrt(Gx^2 + Gy^2)` with the 3x3 kernels
    `[[-1,0,1],[-2,0,2],[-1,0,1]]` and its transpose) of the Rec. 601 luminance, replicate-padded so borders do not
    light up, then divided by each image's maximum (a flat image gives zeros) and repeated to 3 channels: the same
    grey, max-normalised, 3-channel form `normalize_sketch` gives user drawings, so trained and user sketches look
    alike to the encoder.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise InputError(f"edge_map expects RGB frames (count, 3, H, W) in [0, 1], got shape {tuple(frames.shape)}")
    weights = torch.tensor(LUMA, dtype=torch.float32, device=frames.device)
    grey = torch.einsum("kchw,c->khw", frames.float(), weights)[:, None]
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=frames.device)
    kernels = torch.stack([sobel_x, sobel_x.T])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    gradients = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = gradients.square().sum(dim=1, keepdim=True).sqrt()
    peak = magnitude.amax(dim=(1, 2, 3), keepdim=True)
    normalized = torch.where(peak > 0, magnitude / peak.clamp_min(torch.finfo(magnitude.dtype).tiny), 0.0)
    return repeat(normalized, "k 1 h w -> k c h w", c=3).to(frames.dtype)


def keyframe_pattern(
    num_frames: int,
    generator: torch.Generator,
    max_keyframes: int = 4,
    p_zero: float = 0.1,
    p_first: float = 0.5,
    p_first_last: float = 0.2,
) -> list[int]:
    """A random training sparsity pattern: sorted distinct frame numbers, possibly none.

    One uniform draw picks the kind: no keyframe (`p_zero`, the encoder must then stay neutral so text-only
    generation is unharmed), frame 0 (`p_first`, image animation), first and last (`p_first_last`,
    interpolation), else `random_keyframes` (uniform count in 1..max_keyframes, uniform positions).
    """
    probabilities = (p_zero, p_first, p_first_last)
    if not all(0.0 <= value <= 1.0 for value in probabilities) or sum(probabilities) > 1.0 + 1e-9:
        raise InputError(
            f"keyframe probabilities {probabilities} must lie in [0, 1] and sum to at most 1"
        )
    draw = float(torch.rand((), generator=generator))
    if draw < p_zero:
        return []
    if draw < p_zero + p_first:
        return [0]
    if draw < p_zero + p_first + p_first_last:
        return sorted({0, num_frames - 1})
    return random_keyframes(num_frames, generator, max_keyframes=min(max_keyframes, num_frames), p_zero=0.0)


@torch.no_grad()
def keyframe_latents(vae: nn.Module, pixels: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
    """VAE latents `(k, c, h, w)` (posterior mode, scaled) of frames `(k, 3, H, W)` in [0, 1]; `k` may be 0."""
    from zoetrope.pipelines.components import encode_frames

    if pixels.shape[0] == 0:
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        height, width = pixels.shape[-2] // factor, pixels.shape[-1] // factor
        return pixels.new_zeros(0, int(vae.config.latent_channels), height, width)
    video = rearrange(pixels, "k c h w -> 1 c k h w")
    latents = encode_frames(vae, video, chunk_size, sample=False)
    return rearrange(latents, "1 c k h w -> k c h w").float()


def clip_condition(
    pixels: torch.Tensor,
    frames: Sequence[int],
    kind: str,
    vae: nn.Module | None = None,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(condition `(1, c, f, H, W)`, mask `(1, 1, f, H, W)`) of one clip `(f, 3, H, W)` in [0, 1] at `frames`.

    `kind="rgb"` encodes the keyframes with `vae` (latent size); `"sketch"` takes their `edge_map` (pixel size).
    """
    num_frames = pixels.shape[0]
    chosen = pixels[list(frames)]
    if kind == "rgb":
        if vae is None:
            raise InputError("an RGB SparseCtrl condition needs the VAE that encodes the keyframes")
        images = keyframe_latents(vae, chosen.to(vae.device), chunk_size)
    elif kind == "sketch":
        images = edge_map(chosen)
    else:
        raise InputError(f"SparseCtrl condition kind {kind!r} is unknown; expected 'rgb' or 'sketch'")
    return build_condition(images, list(frames), num_frames)


__all__ = ["edge_map", "keyframe_pattern", "keyframe_latents", "clip_condition"]
