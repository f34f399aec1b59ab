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
import math
import os
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence, Union

import torch

from zoetrope.errors import ConfigError, InputError
from zoetrope.models.motion_module import MotionWindows
from zoetrope.models.video_unet import VideoUNet
from zoetrope.pipelines.components import (
    ImageModel,
    decode_latents,
    default_scheduler_config,
    encode_prompts,
    make_scheduler,
)
from zoetrope.sampling.colors import match_colors
from zoetrope.sampling.context import ContextConfig, context_windows, window_weights, wrap_predict_with_context
from zoetrope.sampling.guidance import (
    ZERO_SNR_GUIDANCE_RESCALE, cfg, dual_cfg, motion_scale_schedule, rescale_guidance, scheduled_guidance,
)
from zoetrope.sampling.keyframes import keyframe_replacement, replacement_steps
from zoetrope.sampling.loop import StepCallback, denoise, start_step_for_strength
from zoetrope.sampling.noise import freeinit_filter, freeinit_mix, make_noise
from zoetrope.sampling.prompts import parse_prompt_map, travel_embeddings

logger = logging.getLogger(__name__)


@dataclass
class GenerationSettings:
    """Everything that decides a generation besides the weights; saved beside every output."""

    prompt: list[str | dict]
    negative_prompt: list[str | dict]
    seeds: list[int]
    num_frames: int = 16
    width: int = 512
    height: int = 512
    steps: int = 25
    guidance_scale: float = 7.5
    scheduler: str = "ddim"
    motion_strength: float | list = 1.0
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

    @property
    def zero_terminal_snr(self) -> bool:
        """Whether the schedule ends at zero SNR (Lin et al. 2024): it changes the default guidance rescale, rules out
        FreeInit and is recorded with every output."""
        return bool(self.scheduler_config.get("rescale_betas_zero_snr"))

    @property
    def default_size(self) -> int:
        """The frame side (pixels) the image model was trained at: UNet sample size x VAE downscale (512 for SD1.5)."""
        return int(self.video_unet.config.sample_size) * self.vae_scale

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "VideoPipeline":
        moves = {key: value for key, value in (("device", device), ("dtype", dtype)) if value is not None}
        for module in (self.image_model.text_encoder, self.image_model.vae, self.video_unet):
            module.to(**moves)
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


def _dual_prompts(
    dual_prompt: str | Sequence[str] | None, dual_guidance: float | None, prompts: Sequence[object]
) -> list[str] | None:
    """The second positive prompt of each video (`dual_cfg`), or None without one; bad combinations refused."""
    if dual_prompt is None:
        if dual_guidance is not None:
            raise InputError(
                "dual_guidance (--dual-guidance) weighs the step from dual_prompt to the prompt; give dual_prompt too "
                "(--dual-prompt: the prompt without the words to push)"
            )
        return None
    if any(not isinstance(p, str) for p in prompts):
        raise InputError(
            "dual_prompt gives one text per video; it does not combine with prompt travel (frame-keyed prompts): "
            "drop one of the two"
        )
    return _as_list(dual_prompt, len(prompts), "dual_prompt")


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
    seeds: Sequence[int],
    shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    prior: str | None = None,
    params: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """Latent noise `(b, c, f, h, w)`, video i drawn from a CPU generator seeded with seeds[i] (device-independent).

    With no prior this is the official draw (`torch.randn` of the whole video after seeding), so a seed gives the
    same noise as the reference code; a named prior (`zoetrope.sampling.noise`) draws frame by frame.
    """
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    if prior is None:
        videos = torch.stack([torch.randn(shape, generator=g) for g in generators])
    else:
        videos = make_noise(prior, (len(seeds), *shape), generators, **dict(params or {}))
    return videos.to(device=device, dtype=dtype)


@dataclass
class TravelSettings:
    """Prompt travel: frame-keyed prompts blended between keys (animatediff-cli-prompt-travel semantics)."""

    hold: float = 0.0
    method: str = "lerp"
    circular: bool = False
    head: str = ""
    tail: str = ""


@dataclass
class FreeInitSettings:
    """FreeInit (Wu et al. 2023): re-run sampling from the result's low frequencies plus fresh high frequencies."""

    iterations: int = 0
    filter: str = "butterworth"
    d_s: float = 0.25
    d_t: float = 0.25
    order: int = 4


PromptInput = Union[str, Sequence[str], Mapping[int, str]]


@dataclass
class SparseControl:
    """SparseCtrl inputs for one generation: the encoder, keyframe condition `(1, c, f, H, W)` and mask
    `(1, 1, f, H, W)` (zeros except at keyframes), and the conditioning scale. Residuals are recomputed every step
    on the same (CFG-doubled) batch and text as the UNet, as in the official pipeline. `replace` > 0 (RGB keyframes
    only; not in the official pipeline) also pastes the keyframes' re-noised latents into the video for that
    fraction of the first sampling steps (`zoetrope.sampling.keyframes.keyframe_replacement`). `pictures`
    `(k, 3, H, W)` in [0, 1] are the RGB keyframe images at frames `picture_indices`, kept for `generate`'s
    `color_match` (None for sketches and for conditions built from latents)."""

    encoder: torch.nn.Module
    condition: torch.Tensor
    mask: torch.Tensor
    scale: float = 1.0
    replace: float = 0.0
    pictures: torch.Tensor | None = None
    picture_indices: tuple[int, ...] | None = None


def _encode_one(model: ImageModel, prompt: str | Mapping[int, str], num_frames: int, travel: TravelSettings) -> torch.Tensor:
    """`(tokens, dim)` for a plain prompt, `(frames, tokens, dim)` for a frame-keyed prompt map."""
    if isinstance(prompt, Mapping):
        keyed = parse_prompt_map(prompt, num_frames, head=travel.head, tail=travel.tail)
        keys = sorted(keyed)
        embeddings = encode_prompts(model.tokenizer, model.text_encoder, [keyed[k] for k in keys])
        return travel_embeddings(
            embeddings.float(), keys, num_frames, hold=travel.hold, circular=travel.circular, method=travel.method
        )
    return encode_prompts(model.tokenizer, model.text_encoder, [prompt])[0]


def encode_conditioning(
    model: ImageModel,
    prompts: Sequence[str | Mapping[int, str]],
    negatives: Sequence[str | Mapping[int, str]],
    num_frames: int,
    travel: TravelSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond): `(b, tokens, dim)`, or `(b, f, tokens, dim)` as soon as any prompt travels."""
    cond = [_encode_one(model, p, num_frames, travel) for p in prompts]
    uncond = [_encode_one(model, n, num_frames, travel) for n in negatives]
    if any(e.ndim == 3 for e in cond + uncond):
        cond = [e if e.ndim == 3 else e.expand(num_frames, -1, -1) for e in cond]
        uncond = [e if e.ndim == 3 else e.expand(num_frames, -1, -1) for e in uncond]
    return torch.stack(cond), torch.stack(uncond)


def _per_frame(value: float | Sequence[float] | torch.Tensor, num_frames: int) -> float | torch.Tensor:
    if isinstance(value, (int, float)):
        return float(value)
    return motion_scale_schedule(value, num_frames)


def make_frame_predict(
    video_unet: VideoUNet,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance_scale: float,
    motion_strength: float | torch.Tensor = 1.0,
    motion_scale: float | torch.Tensor = 1.0,
    motion_windows: Callable[[int], MotionWindows | None] | None = None,
    control: SparseControl | None = None,
    guidance_rescale: float = 0.0,
    guidance_end: float | None = None,
    num_train_timesteps: int = 1000,
    dual: torch.Tensor | None = None,
    dual_guidance: float | None = None,
):
    """predict(latents, t, frame_indices, step) -> guided noise for those frames.

    Unconditional and conditional halves run as one batch (official order: uncond first). Per-frame inputs
    (travelling prompt embeddings, per-frame motion strength/scale) are sliced with `frame_indices`, so the same
    predict serves whole videos and context windows. With `guidance_end` the scale moves linearly in the timestep from
    `guidance_scale` at pure noise to `guidance_end` at t = 0 (`scheduled_guidance`). With `dual` (the embeddings of
    a second positive prompt, shaped like `cond`) the batch is [uncond, dual, cond] and `dual_cfg` combines them;
    `guidance_end` schedules `dual_guidance` too (both scales reach it at t = 0); None = `guidance_scale`.
    """
    use_cfg = guidance_scale != 1.0 or (guidance_end is not None and guidance_end != 1.0) or dual is not None
    texts = (uncond, cond) if dual is None else (uncond, dual, cond)
    dual_guidance = guidance_scale if dual_guidance is None else dual_guidance

    def pick(value, frames):
        return value[frames] if isinstance(value, torch.Tensor) and value.ndim == 1 else value

    def predict(latents: torch.Tensor, timestep: torch.Tensor, frame_indices: list[int], step: int = 0) -> torch.Tensor:
        frames = torch.as_tensor(frame_indices)
        picked = [e[:, frames] if e.ndim == 4 else e for e in texts]
        text = torch.cat(picked) if use_cfg else picked[-1]
        batch = torch.cat([latents] * len(picked)) if use_cfg else latents
        scale = pick(motion_scale, frames)
        residuals = {}
        if control is not None:
            down, mid = control.encoder(
                batch, timestep, text, control.condition[:, :, frames], control.mask[:, :, frames],
                conditioning_scale=control.scale,
            )
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        noise = video_unet(
            batch, timestep, text, motion_strength=pick(motion_strength, frames), **residuals,
            motion_scale=None if isinstance(scale, float) and scale == 1.0 else scale,
            motion_windows=motion_windows(step) if motion_windows is not None else None,
        )
        if not use_cfg:
            return noise
        scale = scheduled_guidance(guidance_scale, guidance_end, timestep, num_train_timesteps)
        if dual is None:
            noise_uncond, noise_cond = noise.chunk(2)
            guided = cfg(noise_uncond, noise_cond, scale)
        else:
            noise_uncond, noise_dual, noise_cond = noise.chunk(3)
            dual_scale = scheduled_guidance(dual_guidance, guidance_end, timestep, num_train_timesteps)
            guided = dual_cfg(noise_uncond, noise_dual, noise_cond, scale, dual_scale)
        return rescale_guidance(guided, noise_cond, guidance_rescale)

    return predict


def make_step_predict(frame_predict, num_frames: int, context: ContextConfig | None, context_mode: str):
    """The loop's predict(latents, t, step): windows around the whole UNet, or (motion mode) one full call."""
    if context is not None and context_mode == "unet":
        return wrap_predict_with_context(lambda latents, t, frames, step=0: frame_predict(latents, t, frames, step), context)
    all_frames = list(range(num_frames))
    return lambda latents, t, step: frame_predict(latents, t, all_frames, step)


def _motion_windows(num_frames: int, context: ContextConfig) -> Callable[[int], MotionWindows]:
    def at(step: int) -> MotionWindows:
        windows = context_windows(num_frames, step, context)
        return MotionWindows(windows, window_weights(windows, num_frames, context))

    return at


def default_guidance_rescale(pipeline: VideoPipeline) -> float:
    """The guidance rescale `generate` uses when none is given: 0.7 where the weights say zero terminal SNR, else 0."""
    return ZERO_SNR_GUIDANCE_RESCALE if pipeline.zero_terminal_snr else 0.0


@torch.no_grad()
def generate(
    pipeline: VideoPipeline,
    prompt: PromptInput | Sequence[Mapping[int, str]],
    *,
    negative_prompt: str | Sequence[str] | Mapping[int, str] | None = None,
    num_frames: int = 16,
    width: int | None = None,
    height: int | None = None,
    steps: int = 25,
    guidance_scale: float = 7.5,
    guidance_rescale: float | None = None,
    guidance_end: float | None = None,
    dual_prompt: str | Sequence[str] | None = None,
    dual_guidance: float | None = None,
    seed: int | Sequence[int] | None = None,
    scheduler: str = "ddim",
    motion_strength: float | Sequence[float] = 1.0,
    motion_scale: float | Sequence[float] = 1.0,
    context: ContextConfig | None = None,
    context_mode: str = "unet",
    travel: TravelSettings | None = None,
    noise: str | None = None,
    noise_params: Mapping[str, float] | None = None,
    freeinit: FreeInitSettings | None = None,
    decode_chunk_size: int = 16,
    callback: StepCallback | None = None,
    progress: bool = True,
    return_latents: bool = False,
    latents: torch.Tensor | None = None,
    decode: bool = True,
    init_latents: torch.Tensor | None = None,
    strength: float = 1.0,
    control: SparseControl | None = None,
    color_match: float = 0.0,
) -> VideoResult:
    """Generate one video per prompt. Returns frames `(b, c, f, h, w)` in [0, 1] and the settings used.

    `prompt` may be a frame-keyed map (`{0: "...", 16: "..."}`) for prompt travel; `context` samples videos longer
    than the motion module's positional encoding in overlapping windows (`context_mode="unet"`: windows around the
    whole UNet, memory bounded by the window; `"motion"`: windows inside the motion modules only, FreeNoise-style);
    `noise` picks a noise prior (default: the official draw, `torch.randn` of the whole video from the seed);
    `freeinit` re-samples from the low frequencies of the result. `latents` replaces the initial noise (benchmarks
    feed two pipelines the same); `init_latents` + `strength` < 1 start from an encoded video (video-to-video).
    `decode=False` skips the VAE. `callback(step, t, latents)` runs after every step; one that takes a `denoised`
    keyword also gets the step's estimate of the clean latents (a live preview). `guidance_rescale` (0 = off; 0.7
    for zero-terminal-SNR models, Lin et al. 2024) pulls the guided prediction's per-frame std back towards the
    conditional one's; left at None it is 0.7 for a model whose checkpoint says zero terminal SNR and 0 otherwise,
    because such a model over-saturates at SD's usual guidance without it (the world's zero-SNR model: 70 % of
    stills in the prompted colour at 7.5, 88 % with the rescale; docs/world-training.md, twelfth session).
    `guidance_end` schedules the guidance: the scale is `guidance_scale` at pure noise and moves linearly in the
    timestep to `guidance_end` at t = 0 (None = constant; `scheduled_guidance`). `dual_prompt` (one per prompt, or
    one for all) is a second positive prompt that says less than the prompt (e.g. without its motion words): the
    guided prediction is uncond + guidance * (dual - uncond) + dual_guidance * (cond - dual) (ComfyUI's
    DualCFGGuider; `dual_cfg`), at 1.5x the model calls; `dual_guidance` None = `guidance_scale`; `guidance_end`
    moves both scales. `color_match` in (0, 1] (RGB SparseCtrl keyframes only) moves each decoded frame's colours
    towards the keyframe pictures' (`zoetrope.sampling.colors`), the colour-match step of image-to-video workflows;
    0 = off.
    """
    # 1. Check and normalise the request.
    if isinstance(prompt, (str, Mapping)):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise InputError("prompt: at least one prompt is needed")
    travel = travel or TravelSettings()
    if guidance_rescale is None:
        guidance_rescale = default_guidance_rescale(pipeline)
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ConfigError(f"guidance_rescale={guidance_rescale}: expected a fraction in [0, 1] (0 = off, 0.7 as Lin et al. 2024)")
    for name, value in (("guidance_scale", guidance_scale), ("guidance_end", guidance_end), ("dual_guidance", dual_guidance)):
        if value is not None and not (math.isfinite(value) and value >= 0.0):
            raise ConfigError(f"{name}={value}: expected a finite scale >= 0 (1 = no guidance, 7.5 as SD)")
    if freeinit and freeinit.iterations > 1 and pipeline.zero_terminal_snr:
        raise ConfigError(
            "FreeInit re-noises each result to t = T and keeps its low frequencies, but with zero terminal SNR nothing "
            "of the result survives at t = T (alpha_bar_T = 0), so the iterations would only redraw the high "
            "frequencies of the same noise; drop --freeinit for this model"
        )
    if color_match:
        if not 0.0 < color_match <= 1.0:
            raise ConfigError(f"color_match={color_match}: expected a strength in (0, 1] (0 = off)")
        if control is None or control.pictures is None:
            raise InputError(
                "color_match moves the frames' colours to the keyframe pictures', so it needs RGB SparseCtrl keyframes "
                "(--control rgb --keyframe INDEX:IMAGE); drop --color-match otherwise"
            )
        if not decode:
            raise InputError("color_match works on decoded frames; drop it or decode")
    width, height = width or pipeline.default_size, height or pipeline.default_size
    check_size(width, height, pipeline.vae_scale)
    if context is None:
        pipeline.video_unet.check_frames(num_frames)
    elif context_mode not in ("unet", "motion"):
        raise InputError(f"context_mode={context_mode!r}: expected 'unet' or 'motion'")
    else:
        pipeline.video_unet.check_frames(min(context.length, num_frames))
    negatives = (
        [negative_prompt] * len(prompts) if isinstance(negative_prompt, Mapping)
        else _as_list(negative_prompt, len(prompts), "negative_prompt")
    )
    duals = _dual_prompts(dual_prompt, dual_guidance, prompts)
    if duals is not None and dual_guidance is None:
        dual_guidance = guidance_scale
    seeds = resolve_seeds(seed, len(prompts))
    settings = GenerationSettings(
        prompt=[p if isinstance(p, str) else dict(p) for p in prompts],
        negative_prompt=[n if isinstance(n, str) else dict(n) for n in negatives], seeds=seeds,
        num_frames=num_frames, width=width, height=height, steps=steps, guidance_scale=guidance_scale,
        scheduler=scheduler, motion_strength=motion_strength, decode_chunk_size=decode_chunk_size,
        extras={
            key: value for key, value in {
                "motion_scale": motion_scale if motion_scale != 1.0 else None,
                "guidance_rescale": guidance_rescale or None,
                "guidance_end": guidance_end,
                "dual_prompt": duals, "dual_guidance": dual_guidance if duals is not None else None,
                "context": asdict(context) if context else None, "context_mode": context_mode if context else None,
                "travel": asdict(travel) if any(isinstance(p, Mapping) for p in prompts) else None,
                "noise": noise, "noise_params": dict(noise_params) if noise_params else None,
                "freeinit": asdict(freeinit) if freeinit and freeinit.iterations else None,
                "strength": strength if init_latents is not None else None,
                "control_scale": control.scale if control is not None else None,
                "keyframe_replace": control.replace if control is not None and control.replace else None,
                "color_match": color_match or None,
                "sources": pipeline.sources or None,
                "prediction_type": pipeline.scheduler_config.get("prediction_type", "epsilon"),
                "zero_terminal_snr": True if pipeline.zero_terminal_snr else None,
                "keyframes": [int(i) for i in control.mask[0, 0, :, 0, 0].nonzero().flatten()] if control is not None else None,
            }.items() if value is not None
        },
    )
    device, dtype = pipeline.device, pipeline.dtype
    model = pipeline.image_model

    # 2. Encode the prompts: one embedding per video, or per frame when prompts travel.
    if duals is None:
        cond, uncond = encode_conditioning(model, prompts, negatives, num_frames, travel)
        dual = None
    else:  # in one call, so all three take the same form (per video, or per frame where a negative travels)
        both, uncond = encode_conditioning(model, [*prompts, *duals], negatives, num_frames, travel)
        cond, dual = both[: len(prompts)], both[len(prompts):].to(device=device, dtype=dtype)
    cond, uncond = cond.to(device=device, dtype=dtype), uncond.to(device=device, dtype=dtype)

    # 3. Initial noise, one seed per video.
    channels = pipeline.video_unet.config.in_channels
    latent_shape = (channels, num_frames, height // pipeline.vae_scale, width // pipeline.vae_scale)
    if latents is None:
        latents = initial_noise(seeds, latent_shape, device, dtype, noise, noise_params)
    elif tuple(latents.shape) != (len(prompts), *latent_shape):
        raise InputError(f"latents: shape {tuple(latents.shape)}, expected {(len(prompts), *latent_shape)}")
    else:
        latents = latents.to(device=device, dtype=dtype)
    start_noise = latents

    # 4. Scheduler (and, for video-to-video, the partial start).
    noise_scheduler = make_scheduler(scheduler, pipeline.scheduler_config)
    noise_scheduler.set_timesteps(steps, device=device)
    start_step = 0
    if init_latents is not None and strength < 1.0:
        start_step = start_step_for_strength(steps, strength, getattr(noise_scheduler, "order", 1))
        if start_step >= len(noise_scheduler.timesteps):
            latents = init_latents.to(device=device, dtype=dtype)
        else:
            first = noise_scheduler.timesteps[start_step : start_step + 1].repeat(len(prompts))
            latents = noise_scheduler.add_noise(init_latents.to(device=device, dtype=dtype), start_noise, first)
    else:
        latents = latents * noise_scheduler.init_noise_sigma

    # 5. Denoise with classifier-free guidance (and context windows), FreeInit iterations around it; keyframe
    #    replacement (SparseCtrl RGB keyframes) pastes the re-noised keyframes in during the first steps.
    control = _control_on(control, device, dtype, num_frames)
    frame_predict = make_frame_predict(
        pipeline.video_unet, cond, uncond, guidance_scale,
        motion_strength=_per_frame(motion_strength, num_frames), motion_scale=_per_frame(motion_scale, num_frames),
        motion_windows=_motion_windows(num_frames, context) if context is not None and context_mode == "motion" else None,
        control=control, guidance_rescale=guidance_rescale, guidance_end=guidance_end,
        num_train_timesteps=int(pipeline.scheduler_config.get("num_train_timesteps", 1000)),
        dual=dual, dual_guidance=dual_guidance,
    )
    guide = None
    if control is not None and control.replace:
        until = replacement_steps(control.replace, len(noise_scheduler.timesteps))
        guide = keyframe_replacement(control.condition, control.mask, start_noise, noise_scheduler, until)
    predict = make_step_predict(frame_predict, num_frames, context, context_mode)
    generator = torch.Generator().manual_seed(seeds[0])  # only ancestral samplers draw from it
    iterations = max(1, freeinit.iterations) if freeinit else 1
    for iteration in range(iterations):
        if iteration > 0:
            latents = _freeinit_restart(latents, start_noise, noise_scheduler, freeinit, seeds, iteration, steps)
        latents = denoise(
            predict, latents, noise_scheduler, generator=generator, callback=callback, progress=progress,
            start_step=start_step, guide=guide,
        )

    # 6. Decode in chunks of frames.
    frames = decode_latents(model.vae, latents, chunk_size=decode_chunk_size) if decode else torch.empty(0)
    if color_match:
        frames = torch.stack([
            match_colors(video.float().cpu(), control.pictures.float().cpu(), control.picture_indices, color_match)
            for video in frames
        ])
    return VideoResult(frames=frames.float().cpu(), settings=settings, latents=latents if return_latents else None)


def _control_on(control: SparseControl | None, device, dtype, num_frames: int) -> SparseControl | None:
    if control is None:
        return None
    if control.condition.shape[2] != num_frames:
        raise InputError(f"SparseCtrl condition covers {control.condition.shape[2]} frames, the video has {num_frames}")
    return replace(
        control, condition=control.condition.to(device=device, dtype=dtype), mask=control.mask.to(device=device, dtype=dtype)
    )


def _freeinit_restart(
    clean: torch.Tensor, start_noise: torch.Tensor, scheduler, settings: FreeInitSettings, seeds: Sequence[int],
    iteration: int, steps: int,
) -> torch.Tensor:
    """Re-noise the result to the first timestep with the original noise, keep its low frequencies, take fresh
    high frequencies (FreeInit, Wu et al. 2023, Alg. 1), and reset the scheduler for another pass."""
    scheduler.set_timesteps(steps, device=clean.device)
    first = scheduler.timesteps[:1].repeat(clean.shape[0])
    renoised = scheduler.add_noise(clean, start_noise, first)
    fresh = initial_noise([s + 7919 * iteration for s in seeds], tuple(clean.shape[1:]), clean.device, clean.dtype)
    fresh = fresh * scheduler.init_noise_sigma
    lowpass = freeinit_filter(clean.shape[2:], settings.filter, settings.d_s, settings.d_t, settings.order)
    return freeinit_mix(renoised, fresh, lowpass.to(clean.device))


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
