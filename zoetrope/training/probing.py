"""What the world's diagnostic probes (`bench/probe_*.py`) share: true clips as a motion stage sees them.

A probe that asks what a motion module or a MotionLoRA has learned must noise true clips the way that stage was
trained, or its losses say nothing about the training: the motion stage's linear betas with the image model's own
parameterization (epsilon, or v with zero terminal SNR), and clips encoded to the VAE posterior mean
(`latent_sample: false`, as every world config trains).
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange

from zoetrope.pipelines.components import Parameterization, encode_frames
from zoetrope.training.engine import make_noise_scheduler
from zoetrope.training.stages import get_stage
from zoetrope.world.render import ClipSpec, WorldConfig, render_clip


def motion_noise_scheduler(parameterization: Parameterization) -> Any:
    """The motion stage's forward process (`add_noise`, `get_velocity`) for a model of this parameterization."""
    return make_noise_scheduler(get_stage("motion").noise_schedule(parameterization))


def clip_latents(vae: torch.nn.Module, spec: ClipSpec, config: WorldConfig, video_domain: bool = False) -> torch.Tensor:
    """The rendered clip of `spec` as VAE posterior-mean latents `(1, c, f, h, w)` (`video_domain`: watermark + JPEG)."""
    video = rearrange(torch.from_numpy(render_clip(spec, config, video_domain)).float().div(255.0), "f h w c -> 1 c f h w")
    return encode_frames(vae, video, sample=False)
