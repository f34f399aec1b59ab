"""Video-to-video: encode a video, noise it to a strength, denoise it with the motion module.

The input's frame count and fps are kept. Strength 1 ignores the input (text-to-video); strength 0 returns the input
up to the VAE round trip; in between, the first `round(steps * strength)` steps are skipped as in diffusers'
img2img (`start_step_for_strength`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from zoetrope.errors import InputError
from zoetrope.pipelines.components import encode_frames
from zoetrope.pipelines.text_to_video import PromptInput, VideoPipeline, VideoResult, generate


def load_video_frames(path: str | os.PathLike, width: int, height: int, max_frames: int | None = None) -> tuple[torch.Tensor, float]:
    """Read a video or frame folder as `(1, 3, f, height, width)` in [0, 1] (resize + centre crop) and its fps."""
    from PIL import Image

    from zoetrope.media import read_video

    frames, fps = read_video(Path(path), max_frames=max_frames)
    resized = []
    for frame in frames:
        image = Image.fromarray(frame)
        scale = max(width / image.width, height / image.height)
        image = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.BICUBIC)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        resized.append(np.asarray(image.crop((left, top, left + width, top + height))))
    video = torch.from_numpy(np.stack(resized)).float() / 255.0
    return rearrange(video, "f h w c -> 1 c f h w"), fps


@torch.no_grad()
def video_to_video(
    pipeline: VideoPipeline,
    video: torch.Tensor | str | os.PathLike,
    prompt: PromptInput,
    *,
    strength: float = 0.6,
    width: int | None = None,
    height: int | None = None,
    encode_chunk_size: int = 16,
    **settings: Any,
) -> VideoResult:
    """Re-render `video` (a path or frames `(1, 3, f, H, W)` in [0, 1]) following `prompt` at `strength`."""
    if not 0.0 <= strength <= 1.0:
        raise InputError(f"strength={strength}: must be between 0 and 1")
    fps = None
    if not isinstance(video, torch.Tensor):
        video, fps = load_video_frames(video, width or pipeline.default_size, height or pipeline.default_size)
    if video.ndim != 5 or video.shape[1] != 3:
        raise InputError(f"video: expected frames (1, 3, f, H, W) in [0, 1], got shape {tuple(video.shape)}")
    height, width, num_frames = video.shape[3], video.shape[4], video.shape[2]
    model = pipeline.image_model
    seed = settings.get("seed")
    generator = torch.Generator().manual_seed(seed if isinstance(seed, int) and seed >= 0 else 0)
    latents = encode_frames(
        model.vae, video.to(device=pipeline.device, dtype=pipeline.dtype), chunk_size=encode_chunk_size,
        generator=generator, sample=False,
    )
    result = generate(
        pipeline, prompt, num_frames=num_frames, width=width, height=height, init_latents=latents,
        strength=strength, **settings,
    )
    if fps is not None:
        result.settings.extras["fps"] = fps
    return result
