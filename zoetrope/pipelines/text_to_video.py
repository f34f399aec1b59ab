"""Text-to-video: the AnimateDiff pipeline, as numbered steps composing models, adapters and sampling.

    pipe = zoetrope.load_pipeline("model.safetensors", motion_module="mm_sd_v15_v2.ckpt")
    result = zoetrope.generate(pipe, "a red circle moving right", seed=1)
    zoetrope.save(result, "out.gif")

Behaviour follows the official `AnimationPipeline` (guoyww/AnimateDiff): DDIM with linear betas by default,
classifier-free guidance with the unconditional batch first, one latent noise tensor per video drawn from that
video's own seed (so video i of a batch is the same whether generated alone or with others), VAE decoding in
chunks of frames.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from zoetrope.errors import InputError
from zoetrope.models.video_unet import VideoUNet
from zoetrope.pipelines.components import (
    ImageModel,
    decode_latents,
    default_scheduler_config,
    encode_prompts,
    make_scheduler,
)
from zoetrope.sampling.guidance import cfg
from zoetrope.sampling.loop import denoise

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass
class GenerationSettings:
    """Everything that decides a generation besides the weights; saved beside every output."""

    prompt: list[str]
    negative_prompt: list[str]
    seeds: list[int]
    num_frames: int = 16
    width: int = 512
    height: int = 512
    steps: int = 25
    guidance_scale: float = 7.5
    scheduler: str = "ddim"
    motion_strength: float = 1.0
    decode_chunk_size: int = 16
    extras: dict = field(default_factory=dict)


@dataclass
class VideoResult:
    """Frames `(b, c, f, h, w)` in [0, 1] plus the settings (and seeds actually used) that made them."""

    frames: torch.Tensor
    settings: GenerationSettings
    latents: torch.Tensor | None = None

    def metadata(self, index: int) -> dict:
        """JSON-ready description of video `index` (its own prompt and seed)."""
        values = asdict(self.settings)
        values["prompt"] = self.settings.prompt[index]
        values["negative_prompt"] = self.settings.negative_prompt[index]
        values["seed"] = self.settings.seeds[index]
        del values["seeds"]
        values.update(values.pop("extras"))
        return values


@dataclass
class VideoPipeline:
    """The loaded parts of a text-to-video model. Call `generate(pipeline, ...)` to sample."""

    image_model: ImageModel
    video_unet: VideoUNet
    scheduler_config: dict = field(default_factory=default_scheduler_config)
    sources: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.video_unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.video_unet.dtype

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.image_model.vae.config.block_out_channels) - 1)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "VideoPipeline":
        for module in (self.image_model.text_encoder, self.image_model.vae, self.video_unet):
            module.to(device=device, dtype=dtype)
        return self


def _as_list(value: str | Sequence[str] | None, count: int, name: str) -> list[str]:
    if value is None:
        return [""] * count
    if isinstance(value, str):
        return [value] * count
    value = list(value)
    if len(value) == 1:
        return value * count
    if len(value) != count:
        raise InputError(f"{name}: {len(value)} given for {count} prompts; give one, or one per prompt")
    return value


def resolve_seeds(seed: int | Sequence[int] | None, count: int) -> list[int]:
    """One seed per video: an int gives seed, seed+1, ...; None or -1 draws a random seed (recorded in the output)."""
    if seed is None or (isinstance(seed, int) and seed < 0):
        seed = random.SystemRandom().randrange(2**31)
    if isinstance(seed, int):
        return [seed + index for index in range(count)]
    seeds = [int(s) for s in seed]
    if len(seeds) == 1:
        return [seeds[0] + index for index in range(count)]
    if len(seeds) != count:
        raise InputError(f"seed: {len(seeds)} seeds given for {count} prompts; give one, or one per prompt")
    return [s if s >= 0 else random.SystemRandom().randrange(2**31) for s in seeds]


def check_size(width: int, height: int, multiple: int = 8) -> None:
    for name, value in (("width", width), ("height", height)):
        if value <= 0 or value % multiple:
            raise InputError(
                f"{name}={value}: must be a positive multiple of {multiple} (the VAE downsamples by 8); "
                f"try {max(multiple, round(value / multiple) * multiple)}"
            )


def initial_noise(
    seeds: Sequence[int], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Latent noise `(b, c, f, h, w)`, video i drawn from a CPU generator seeded with seeds[i] (device-independent)."""
    videos = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(videos).to(device=device, dtype=dtype)


def make_guided_predict(
    video_unet: VideoUNet,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance_scale: float,
    motion_strength: float | torch.Tensor = 1.0,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """predict(latents, t) -> guided noise; unconditional and conditional run as one batch (official order)."""
    use_cfg = guidance_scale != 1.0
    text = torch.cat([uncond, cond]) if use_cfg else cond

    def predict(latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        batch = torch.cat([latents, latents]) if use_cfg else latents
        noise = video_unet(batch, timestep, text, motion_strength=motion_strength)
        if not use_cfg:
            return noise
        noise_uncond, noise_cond = noise.chunk(2)
        return cfg(noise_uncond, noise_cond, guidance_scale)

    return predict


@torch.no_grad()
def generate(
    pipeline: VideoPipeline,
    prompt: str | Sequence[str],
    *,
    negative_prompt: str | Sequence[str] | None = None,
    num_frames: int = 16,
    width: int | None = None,
    height: int | None = None,
    steps: int = 25,
    guidance_scale: float = 7.5,
    seed: int | Sequence[int] | None = None,
    scheduler: str = "ddim",
    motion_strength: float = 1.0,
    decode_chunk_size: int = 16,
    callback: StepCallback | None = None,
    progress: bool = True,
    return_latents: bool = False,
    latents: torch.Tensor | None = None,
    decode: bool = True,
) -> VideoResult:
    """Generate one video per prompt. Returns frames `(b, c, f, h, w)` in [0, 1] and the settings used.

    `latents` replaces the seeded initial noise (benchmarks and parity checks feed both pipelines the same);
    `decode=False` skips the VAE (frames is then empty) for latent-only work.
    """
    # 1. Check and normalise the request.
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise InputError("prompt: at least one prompt is needed")
    default_size = pipeline.video_unet.config.sample_size * pipeline.vae_scale
    width, height = width or default_size, height or default_size
    check_size(width, height, pipeline.vae_scale)
    pipeline.video_unet.check_frames(num_frames)
    negatives = _as_list(negative_prompt, len(prompts), "negative_prompt")
    seeds = resolve_seeds(seed, len(prompts))
    settings = GenerationSettings(
        prompt=prompts, negative_prompt=negatives, seeds=seeds, num_frames=num_frames, width=width, height=height,
        steps=steps, guidance_scale=guidance_scale, scheduler=scheduler, motion_strength=motion_strength,
        decode_chunk_size=decode_chunk_size,
    )
    device, dtype = pipeline.device, pipeline.dtype
    model = pipeline.image_model

    # 2. Encode the prompts (one embedding per video; the UNet repeats it per frame internally).
    cond = encode_prompts(model.tokenizer, model.text_encoder, prompts).to(device=device, dtype=dtype)
    uncond = encode_prompts(model.tokenizer, model.text_encoder, negatives).to(device=device, dtype=dtype)

    # 3. Initial noise, one seed per video.
    channels = pipeline.video_unet.config.in_channels
    latent_shape = (channels, num_frames, height // pipeline.vae_scale, width // pipeline.vae_scale)
    if latents is None:
        latents = initial_noise(seeds, latent_shape, device, dtype)
    elif tuple(latents.shape) != (len(prompts), *latent_shape):
        raise InputError(f"latents: shape {tuple(latents.shape)}, expected {(len(prompts), *latent_shape)}")
    else:
        latents = latents.to(device=device, dtype=dtype)

    # 4. Scheduler.
    noise_scheduler = make_scheduler(scheduler, pipeline.scheduler_config)
    noise_scheduler.set_timesteps(steps, device=device)
    latents = latents * noise_scheduler.init_noise_sigma

    # 5. Denoise with classifier-free guidance.
    predict = make_guided_predict(pipeline.video_unet, cond, uncond, guidance_scale, motion_strength)
    generator = torch.Generator().manual_seed(seeds[0])  # only ancestral samplers draw from it
    latents = denoise(predict, latents, noise_scheduler, generator=generator, callback=callback, progress=progress)

    # 6. Decode in chunks of frames.
    frames = decode_latents(model.vae, latents, chunk_size=decode_chunk_size) if decode else torch.empty(0)
    return VideoResult(frames=frames.float().cpu(), settings=settings, latents=latents if return_latents else None)


def save(result: VideoResult, path: str | os.PathLike, fps: int = 8) -> list[Path]:
    """Write each video of `result` (suffix `-i` when several) with its prompt, seed and settings as metadata."""
    from zoetrope.media import save_video

    path = Path(path)
    count = result.frames.shape[0]
    written = []
    for index in range(count):
        target = path if count == 1 else path.with_name(f"{path.stem}-{index}{path.suffix}")
        metadata = {**result.metadata(index), "fps": fps}
        written.append(save_video(result.frames[index], target, fps=fps, metadata=metadata))
    return written
