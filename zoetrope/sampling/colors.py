"""Colour matching of generated frames to keyframe pictures (the "color match" step of image-to-video workflows).

Why: a SparseCtrl encoder carries a keyframe's layout to the other frames better than its colours. Where the text-to-
image model has its own idea of a colour (the world's model draws "a navy background" grey), the free frames drift to
the model's colours and even the keyframe comes back partly in them: a lower keyframe PSNR and a colour pop at the
keyframe (a seam). ComfyUI users fix this after sampling with a colour-match node against the input image; this is
that step, per frame, with references interpolated in time between keyframes so that interpolation between two
differently coloured keyframes fades from one palette to the other.

The transfer is Reinhard et al. (2001)'s per-channel mean and standard deviation, in RGB: for a picture of a few flat
colours (the shapes world, a product shot) it maps each colour onto the reference's when the areas agree, and it
never invents structure. Pure tensor functions; frames are `(c, f, h, w)` in [0, 1].
"""

from __future__ import annotations

from typing import Sequence

import torch
from einops import rearrange

from zoetrope.errors import ConfigError, InputError

# Bounds on the per-channel contrast gain: a flat generated channel (std ~ 0) would otherwise be stretched into
# noise, and a reference with no contrast would flatten a frame to one colour.
MIN_GAIN, MAX_GAIN = 0.25, 4.0


def channel_statistics(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame, per-channel mean and standard deviation of `(c, f, h, w)` frames: two `(c, f)` tensors."""
    flat = rearrange(frames.double(), "c f h w -> c f (h w)")
    return flat.mean(dim=-1), flat.std(dim=-1, unbiased=False)


def keyframe_weights(indices: Sequence[int], num_frames: int) -> torch.Tensor:
    """`(num_frames, k)` weights of each keyframe for each frame: linear between the two nearest keyframes, the
    nearest one alone before the first and after the last. Rows sum to 1; a keyframe's own row is one-hot."""
    order = sorted(range(len(indices)), key=lambda i: indices[i])
    placed = [int(indices[i]) for i in order]
    if not placed:
        raise InputError("colour matching needs at least one keyframe")
    if len(set(placed)) != len(placed) or placed[0] < 0 or placed[-1] >= num_frames:
        raise InputError(f"keyframe indices {list(indices)} must be distinct frames in 0..{num_frames - 1}")
    weights = torch.zeros(num_frames, len(indices), dtype=torch.float64)
    for frame in range(num_frames):
        if frame <= placed[0]:
            weights[frame, order[0]] = 1.0
        elif frame >= placed[-1]:
            weights[frame, order[-1]] = 1.0
        else:
            right = next(i for i, index in enumerate(placed) if index >= frame)
            left = right - 1
            span = placed[right] - placed[left]
            weights[frame, order[right]] = (frame - placed[left]) / span
            weights[frame, order[left]] = (placed[right] - frame) / span
    return weights


def match_colors(
    frames: torch.Tensor, references: torch.Tensor, indices: Sequence[int], strength: float = 1.0
) -> torch.Tensor:
    """Frames `(c, f, h, w)` with each frame's channel means and deviations moved to those of the references
    `(k, c, h', w')` (the keyframe pictures; any size) weighted by `keyframe_weights`; `strength` in [0, 1] blends
    the result with the input (0 returns the frames unchanged). Returns the input's dtype, clamped to [0, 1]."""
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"colour-match strength {strength}: expected a fraction in [0, 1]")
    if references.dim() != 4 or references.shape[1] != frames.shape[0] or references.shape[0] != len(indices):
        raise InputError(
            f"references of shape {tuple(references.shape)} for {len(indices)} keyframes of {frames.shape[0]}-channel frames"
        )
    if strength == 0.0:
        return frames
    weights = keyframe_weights(indices, frames.shape[1])  # f k
    ref_mean, ref_std = channel_statistics(rearrange(references, "k c h w -> c k h w"))  # c k
    target_mean = torch.einsum("fk,ck->cf", weights, ref_mean)
    target_std = torch.einsum("fk,ck->cf", weights, ref_std)
    mean, std = channel_statistics(frames)
    gain = (target_std / std.clamp_min(1e-6)).clamp(MIN_GAIN, MAX_GAIN)
    matched = (frames.double() - mean[..., None, None]) * gain[..., None, None] + target_mean[..., None, None]
    blended = frames.double() + strength * (matched - frames.double())
    return blended.clamp(0.0, 1.0).to(frames.dtype)
