"""Image animation, keyframe interpolation and sketch-to-video with SparseCtrl.

Keyframes are given as (frame index, image) pairs; negative indices count from the end, so `[(0, a), (-1, b)]`
interpolates from a to b. RGB keyframes are encoded by the VAE (`vae.encode(x * 2 - 1)` times the scaling factor,
the official RGB encoder's input); sketches stay pixels in [0, 1] (optionally normalised as the official
`normalize_condition_images`). The condition tensor is zeros except at keyframes, with a mask channel.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from einops import rearrange

from zoetrope.errors import InputError
from zoetrope.pipelines.components import encode_frames
from zoetrope.pipelines.text_to_video import SparseControl, VideoPipeline
from zoetrope.sampling.keyframes import build_condition, normalize_sketch, replacement_steps, resolve_indices

Keyframe = tuple[int, "str | os.PathLike | torch.Tensor"]


def parse_keyframe(text: str) -> tuple[int, Path]:
    """`INDEX:IMAGE` from the command line (`-1:last.png`)."""
    head, sep, tail = text.partition(":")
    try:
        return int(head), Path(tail)
    except ValueError:
        raise InputError(f"--keyframe {text!r}: expected INDEX:IMAGE, e.g. 0:first.png or -1:last.png") from None


def _image_tensor(image: str | os.PathLike | torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(3, height, width) in [0, 1]: a path is read, resized to cover and centre-cropped."""
    if isinstance(image, torch.Tensor):
        if image.shape[-2:] != (height, width):
            raise InputError(f"keyframe tensor of size {tuple(image.shape[-2:])}, expected {(height, width)}")
        return image.float()
    from zoetrope.media import read_image

    pixels = read_image(Path(image), size=(height, width))
    return torch.from_numpy(np.ascontiguousarray(pixels)).float().div(255.0).permute(2, 0, 1)


def _check_placement(pipeline: VideoPipeline, encoder: torch.nn.Module) -> None:
    """Refuse an encoder on another device or dtype than the pipeline up front: `load_sparse_control` returns the
    file's dtype (float16 for the bundled encoders), and the mismatch would otherwise surface as a matmul dtype
    error deep inside the first sampling step."""
    parameter = next(encoder.parameters(), None)
    if parameter is None:
        return
    if parameter.dtype != pipeline.dtype or parameter.device.type != pipeline.device.type:
        raise InputError(
            f"the SparseCtrl encoder is on {parameter.device.type} / {parameter.dtype} but the pipeline runs on "
            f"{pipeline.device.type} / {pipeline.dtype}; move it first: "
            "encoder.to(device=pipeline.device, dtype=pipeline.dtype)"
        )


def load_control_for(pipeline: VideoPipeline, path: str | os.PathLike) -> torch.nn.Module:
    """A SparseCtrl encoder file (official or diffusers) loaded for `pipeline`'s UNet, on its device and dtype, in
    eval mode: what `prepare_control` needs (the file's own dtype, float16 for the bundled encoders, would be
    refused there)."""
    from zoetrope.formats.sparsectrl import load_sparse_control

    encoder = load_sparse_control(path, pipeline.video_unet.image_unet)
    return encoder.to(device=pipeline.device, dtype=pipeline.dtype).eval()


def prepare_control(
    pipeline: VideoPipeline,
    encoder: torch.nn.Module,
    keyframes: Sequence[Keyframe],
    num_frames: int,
    width: int,
    height: int,
    scale: float = 1.0,
    normalize: bool = False,
    replace: float = 0.0,
) -> SparseControl:
    """Build the SparseCtrl condition for `keyframes` at the output size.

    `replace` (RGB encoders only) also pastes the re-noised keyframe latents into the video for that fraction of
    the first sampling steps (see `SparseControl`); 0 is the official behaviour.
    """
    if not keyframes:
        raise InputError("SparseCtrl needs at least one --keyframe INDEX:IMAGE")
    _check_placement(pipeline, encoder)
    replacement_steps(replace, 1)  # range check before any encoding
    if replace and encoder.config.conditioning_channels != 4:
        raise InputError(
            f"keyframe replacement ({replace}) needs an RGB SparseCtrl encoder: sketches are not pictures of the "
            "frame, so there is no keyframe latent to paste; drop --keyframe-replace or use --control rgb"
        )
    indices = resolve_indices([index for index, _ in keyframes], num_frames)
    images = torch.stack([_image_tensor(image, width, height) for _, image in keyframes])
    channels = encoder.config.conditioning_channels
    pictures = None
    if channels == 4:  # RGB encoder: VAE latents of the keyframes
        pictures = images.clone()
        video = rearrange(images, "k c h w -> 1 c k h w").to(device=pipeline.device, dtype=pipeline.dtype)
        latents = encode_frames(pipeline.image_model.vae, video, sample=False)
        images = rearrange(latents, "1 c k h w -> k c h w").float().cpu()
    elif normalize:
        images = normalize_sketch(images)
    condition, mask = build_condition(images, indices, num_frames)
    return SparseControl(
        encoder=encoder, condition=condition, mask=mask, scale=scale, replace=replace, pictures=pictures,
        picture_indices=tuple(int(index) for index in indices) if pictures is not None else None,
    )
