"""Long videos keyframes first: draw every k-th frame as one short clip, then fill the frames between with SparseCtrl.

Why a second long-video sampler beside context windows (`zoetrope.sampling.context`): a motion module trained on
16-frame clips has one idea of how far things move in 16 frames. Contiguous windows each make that whole trip and
the long clip jumps back at window seams; dilated windows spread the trip, but where many windows overlap their
predictions disagree and the average stands still (docs/world-training.md, fourteenth and nineteenth sessions).
Pasting short-clip keyframes into contiguous windows does not help either: the motion module ignores pasted frames,
and the free frames between them run off at the module's own speed (twentieth session).

Here the long clip's layout is decided once, by one window of keyframes `0, k, 2k, ...` (k = `spacing`) sampled as
an ordinary short clip, optionally with a MotionLoRA merged in for that pass only (a "fast" LoRA: the keyframes are
k times further apart in time than the frames the module was trained on). The full clip is then sampled in
contiguous context windows with those keyframes as SparseCtrl RGB keyframes (and, by default, their latents pasted
in for the first 30 % of the steps): the encoder was trained to interpolate between keyframes, so every window
follows the one trajectory. The idea is the coarse-to-fine order of NUWA-XL (Yin et al. 2023) and of the
keyframe + interpolation cascades (Video LDM, Blattmann et al. 2023), built from AnimateDiff's own parts.

The keyframe pass moves at an uneven speed, so by default the keyframes are not pasted every k frames but retimed:
each gap gets frames in proportion to how much its two keyframe pictures differ (`retimed_positions`). (Stretching
the keyframes to the clip's last frame instead of `(n - 1) k`, and placing them by the subject's travel instead of
pixel change, were measured and are worse: 24 / 32 and 25 / 32 segments against 27 / 32; docs/world-training.md,
twenty-first session.)

Both passes start from one noise tensor for the whole clip (the keyframe pass takes its frames at the keyframes),
so a seed gives one result. Frame-keyed prompts (prompt travel) are re-keyed for each pass (`rekeyed_prompts`).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator, Mapping, Sequence

import torch

from zoetrope.adapters.lora import LoRANetwork
from zoetrope.errors import ConfigError, InputError
from zoetrope.pipelines.components import decode_latents
from zoetrope.pipelines.text_to_video import (
    SparseControl,
    VideoPipeline,
    VideoResult,
    _as_list,
    generate,
    initial_noise,
    resolve_seeds,
)
from zoetrope.sampling.context import ContextConfig
from zoetrope.sampling.guidance import motion_scale_schedule
from zoetrope.sampling.prompts import parse_prompt_map


@dataclass
class KeyframesFirst:
    """Settings of the keyframes-first sampler.

    encoder:        an RGB SparseCtrl encoder for the pipeline's UNet (it reads VAE latents, so the keyframe pass's
                    latents are its condition as they are: no decode / encode round trip).
    spacing:        frames between keyframes; None = ceil(num_frames / window length), the closest spacing whose
                    keyframes fit one window.
    motion_lora:    a MotionLoRA merged into the motion modules for the keyframe pass only (the bundle's fast-motion
                    LoRA for the shapes world); None = the motion module as it is.
    control_scale:  SparseCtrl conditioning scale in the filling pass.
    replace:        fraction of the filling pass's first steps that paste the keyframes' re-noised latents in
                    (`zoetrope.sampling.keyframes.keyframe_replacement`); 0 = residuals only.
    fill_guidance:  classifier-free guidance of the filling pass; None = the keyframe pass's. (SparseCtrl follows
                    its keyframes better at lower guidance: 4 for the bundled zero-terminal-SNR model.)
    retime:         place the keyframes at times proportional to how much consecutive keyframe pictures differ
                    (`retimed_positions`; costs one VAE decode of the keyframes); False = every `spacing` frames.
                    On by default: on the shapes world it lifts the 64-frame segments that read "right" from 22 / 32
                    to 27 / 32 (docs/world-training.md, twentieth session).
    levels:         2 (default) = first draw every 2nd frame of the clip (a half-rate clip, in the same windows,
                    with the keyframes as SparseCtrl keyframes), then fill the frames between those; 1 = fill every
                    frame straight from the keyframes. Why: between keyframes 4-5 frames apart the fill moves the
                    object in a step near the next keyframe rather than steadily; with a keyframe every 2nd frame
                    there is one free frame per gap. Costs a second filling pass at half the frames. On the shapes
                    world: 48 / 48 64-frame segments read "right" against 41 / 48 with one level (twenty-first
                    session).
    """

    encoder: torch.nn.Module
    spacing: int | None = None
    motion_lora: LoRANetwork | None = None
    control_scale: float = 1.0
    replace: float = 0.3
    fill_guidance: float | None = None
    retime: bool = True
    levels: int = 2

    def __post_init__(self) -> None:
        if self.levels not in (1, 2):
            raise ConfigError(f"keyframes first: levels={self.levels!r}; expected 1 or 2 (2 adds a half-rate pass)")

    @classmethod
    def from_files(
        cls, pipeline: VideoPipeline, encoder: str | os.PathLike | None, motion_lora: str | None = None, **options: Any
    ) -> "KeyframesFirst":
        """Settings with the SparseCtrl encoder file `encoder` (None = the bundled RGB encoder) and the MotionLoRA
        `motion_lora` ("PATH[:STRENGTH]", None or "none" for none) loaded for `pipeline` (its device and dtype);
        `options` are the other fields."""
        from zoetrope.formats.lora_files import load_motion_lora
        from zoetrope.pipelines.image_to_video import load_control_for
        from zoetrope.pipelines.load import WeightedFile
        from zoetrope.world.bundled import bundled_files

        loaded = load_control_for(pipeline, encoder or bundled_files()["sparsectrl_rgb"])
        lora = None
        if motion_lora and motion_lora.lower() != "none":
            item = WeightedFile.parse(motion_lora)
            lora = load_motion_lora(item.path, pipeline.video_unet.motion_modules, item.strength)
        return cls(encoder=loaded, motion_lora=lora, **options)


def retimed_positions(changes: Sequence[float], last: int) -> list[int]:
    """Frame positions for keyframes whose consecutive pictures differ by `changes` (one value per interval): the
    first at 0, the last at `last`, each interval's length proportional to its change, strictly increasing.

    Why: the keyframe pass moves at an uneven speed (a short clip of the module speeds up and slows down by about
    +-40 %), and the filling pass follows its keyframes; giving a large step more frames evens the long clip's speed,
    as frame-interpolation tools retime by motion. Equal changes give equal spacing.
    """
    values = torch.as_tensor(list(changes), dtype=torch.float64).clamp_min(0)
    if values.numel() < 1 or last < values.numel():
        raise InputError(f"retiming {values.numel() + 1} keyframes into frames 0..{last}: not enough frames")
    if float(values.sum()) <= 0:
        values = torch.ones_like(values)
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), values.cumsum(0)])
    positions = [int(round(float(c))) for c in cumulative / cumulative[-1] * last]
    for index in range(1, len(positions)):  # strictly increasing, and room left for the keyframes after this one
        positions[index] = min(max(positions[index], positions[index - 1] + 1), last - (len(positions) - 1 - index))
    return positions


def picture_changes(pictures: torch.Tensor) -> list[float]:
    """Mean absolute change between consecutive pictures `(c, f, h, w)`: the retiming signal, one value per gap."""
    return (pictures[:, 1:] - pictures[:, :-1]).abs().mean(dim=(0, 2, 3)).tolist()


def keyframe_indices(num_frames: int, length: int, spacing: int | None = None) -> list[int]:
    """Frames drawn in the keyframe pass: `0, spacing, 2 * spacing, ...` below `num_frames`, at most `length` of them
    (they are sampled as one window of the motion module)."""
    if length < 2:
        raise ConfigError(f"keyframes first: the window length is {length}; it needs at least 2 frames per window")
    if num_frames <= length:
        raise InputError(
            f"keyframes first: {num_frames} frames fit one {length}-frame window; generate them directly (drop "
            "--keyframes-first)"
        )
    smallest = math.ceil(num_frames / length)
    if spacing is None:
        spacing = smallest
    if not isinstance(spacing, int) or spacing < smallest:
        raise ConfigError(
            f"keyframes first: spacing {spacing!r} puts more than {length} keyframes in {num_frames} frames, and the "
            f"keyframes are sampled as one {length}-frame window; use a spacing of at least {smallest}"
        )
    return list(range(0, num_frames, spacing))


def rekeyed_prompts(
    prompt_map: Mapping[int, str], num_frames: int, source: Sequence[int], target: Sequence[int], where: str
) -> dict[int, str]:
    """A frame-keyed prompt map of the long clip with each key moved from frame `f` to `round(interp(f, source,
    target))` (piecewise linear; keys past `source[-1]` go to `target[-1]`). Negative keys count from the end of
    the long clip. Two keys landing on one frame are refused by name (`where` says which pass).

    Why: the keyframe pass is a short clip whose frame i is the long clip's keyframe i, and after retiming keyframe i
    sits at another frame of the long clip; a prompt keyed at a keyframe must follow it in both passes."""
    resolved = parse_prompt_map(prompt_map, num_frames)
    moved: dict[int, str] = {}
    sources: dict[int, int] = {}
    for frame, text in resolved.items():
        if frame >= source[-1]:
            key = int(target[-1])
        else:
            right = next(i for i, value in enumerate(source) if value > frame)
            left = right - 1
            fraction = (frame - source[left]) / (source[right] - source[left])
            key = int(round(target[left] + fraction * (target[right] - target[left])))
        if key in moved:
            raise InputError(
                f"keyframes first: prompts keyed at frames {sources[key]} and {frame} fall on one frame of {where}; "
                f"key prompts at least {max((b - a for a, b in zip(source, source[1:])), default=num_frames)} frames apart"
            )
        moved[key], sources[key] = text, frame
    return moved


@contextmanager
def merged(network: LoRANetwork | None, model: torch.nn.Module) -> Iterator[None]:
    """Merge `network` into `model` for the duration of the block (nothing if None); unmerged even on error."""
    if network is None:
        yield
        return
    network.merge(model)
    try:
        yield
    finally:
        network.unmerge(model)


@torch.no_grad()
def generate_keyframes_first(
    pipeline: VideoPipeline,
    prompt: str | Sequence[str],
    settings: KeyframesFirst,
    *,
    num_frames: int,
    context: ContextConfig,
    seed: int | Sequence[int] | None = None,
    guidance_scale: float = 7.5,
    noise: str | None = None,
    noise_params: Mapping[str, float] | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> VideoResult:
    """A `num_frames` clip per prompt, keyframes first (see the module docstring). `context` gives the window length
    and the filling pass's windows; the other keyword arguments go to both passes of `generate` (steps, width,
    height, negative_prompt, scheduler, guidance_rescale, motion_scale, ...), except `return_latents` and `decode`,
    which apply to the filling pass (the keyframe pass always returns latents and never decodes). Returns what
    `generate` returns, with the keyframe indices and settings in `settings.extras["keyframes_first"]`."""
    if kwargs.pop("context_mode", None) not in (None, "unet"):
        raise InputError("keyframes first fills the clip in windows around the whole UNet; drop context_mode='motion'")
    for name in ("latents", "control", "init_latents", "freeinit"):
        if kwargs.get(name) is not None:
            raise InputError(f"keyframes first: `{name}` is not supported (the sampler sets it for each pass)")
        kwargs.pop(name, None)
    if getattr(settings.encoder, "config", None) is None or settings.encoder.config.conditioning_channels != 4:
        raise ConfigError(
            "keyframes first needs an RGB SparseCtrl encoder (it conditions on the keyframe pass's latents); this "
            "encoder reads sketches: pass the RGB encoder (--control-model)"
        )
    prompts = [prompt] if isinstance(prompt, (str, Mapping)) else list(prompt)
    if not prompts:
        raise InputError("prompt: at least one prompt is needed")
    anchors = keyframe_indices(num_frames, context.length, settings.spacing)
    pipeline.video_unet.check_frames(len(anchors))
    seeds = resolve_seeds(seed, len(prompts))
    size = pipeline.default_size
    width, height = kwargs.pop("width", None) or size, kwargs.pop("height", None) or size
    scale = pipeline.vae_scale
    channels = pipeline.video_unet.config.in_channels
    shape = (channels, num_frames, height // scale, width // scale)
    fill_guidance = guidance_scale if settings.fill_guidance is None else settings.fill_guidance
    fill_only = {"return_latents": kwargs.pop("return_latents", False), "decode": kwargs.pop("decode", True)}
    even = list(range(0, num_frames, 2))
    key_only, half_only = {}, {}
    for name in ("motion_scale", "motion_strength"):  # per-frame lists: shorter passes take their frames' values
        value = kwargs.pop(name, 1.0)
        per_frame = motion_scale_schedule(value, num_frames)  # checks a list's length against the long clip
        fill_only[name] = value
        key_only[name] = value if isinstance(value, (int, float)) else per_frame[anchors].tolist()
        half_only[name] = value if isinstance(value, (int, float)) else per_frame[even].tolist()
    negative = kwargs.pop("negative_prompt", None)
    negatives = (  # one per prompt, as `generate` broadcasts them (None -> "")
        [negative] * len(prompts) if isinstance(negative, Mapping) else _as_list(negative, len(prompts), "negative_prompt")
    )
    indices = list(range(len(anchors)))
    every = anchors[1] if len(anchors) > 1 else num_frames

    def on_keyframes(text: Any) -> Any:  # a keyed prompt as the keyframe pass sees it (its frame i = keyframe i)
        if not isinstance(text, Mapping):
            return text
        return rekeyed_prompts(text, num_frames, anchors, indices, f"the keyframe pass (a keyframe every {every} frames)")

    def on_fill(text: Any, positions: list[int]) -> Any:  # and as the fill sees it, following the retimed keyframes
        if not isinstance(text, Mapping) or positions == anchors:
            return text
        return rekeyed_prompts(text, num_frames, anchors, positions, "the retimed clip")

    def on_half(text: Any) -> Any:  # a keyed prompt of the fill as the half-rate pass sees it (its frame j = 2 j)
        if not isinstance(text, Mapping):
            return text
        return rekeyed_prompts(text, num_frames, even, list(range(len(even))), "the half-rate pass")

    def sparse(latents: torch.Tensor, frames: list[int], count: int) -> SparseControl:  # latents as RGB keyframes
        condition = torch.zeros(1, channels, count, *shape[2:], dtype=torch.float32)
        condition[:, :, frames] = latents.float().cpu()
        mask = torch.zeros(1, 1, count, *shape[2:], dtype=torch.float32)
        mask[:, :, frames] = 1.0
        return SparseControl(settings.encoder, condition, mask, settings.control_scale, settings.replace)

    results, placed = [], []
    for text, negative, video_seed in zip(prompts, negatives, seeds):
        start = initial_noise([video_seed], shape, pipeline.device, pipeline.dtype, noise, noise_params)
        with merged(settings.motion_lora, pipeline.video_unet.motion_modules):
            keys = generate(
                pipeline, on_keyframes(text), negative_prompt=on_keyframes(negative), num_frames=len(anchors),
                width=width, height=height, seed=video_seed, guidance_scale=guidance_scale,
                latents=start[:, :, anchors], decode=False, return_latents=True, progress=progress, **key_only,
                **kwargs,
            ).latents
        positions = anchors
        if settings.retime:
            pictures = decode_latents(pipeline.image_model.vae, keys)[0]  # c f h w in [0, 1]
            positions = retimed_positions(picture_changes(pictures), anchors[-1])
        placed.append(positions)
        text, fill_negative = on_fill(text, positions), on_fill(negative, positions)
        guides, guided = keys, positions
        if settings.levels == 2:  # every 2nd frame first, the keyframes at their nearest even frame
            slots, chosen = [], []
            for index, position in enumerate(positions):
                slot = min(int(round(position / 2)), len(even) - 1)
                if slot not in slots:
                    slots.append(slot)
                    chosen.append(index)
            guides = generate(
                pipeline, on_half(text), negative_prompt=on_half(fill_negative), num_frames=len(even), width=width,
                height=height, seed=video_seed, guidance_scale=fill_guidance, latents=start[:, :, even],
                context=context if len(even) > context.length else None,
                control=sparse(keys[:, :, chosen], slots, len(even)), decode=False, return_latents=True,
                progress=progress, **half_only, **kwargs,
            ).latents
            guided = even
        control = sparse(guides, guided, num_frames)
        results.append(generate(
            pipeline, text, negative_prompt=fill_negative, num_frames=num_frames, width=width, height=height, seed=video_seed,
            guidance_scale=fill_guidance, latents=start, context=context, control=control, progress=progress,
            **fill_only, **kwargs,
        ))
    first = results[0].settings
    extras = dict(first.extras)
    extras.pop("keyframes", None)
    extras["keyframes_first"] = {
        "keyframes": placed[0] if len(placed) == 1 else placed, "retime": settings.retime,
        "keyframe_guidance": guidance_scale, "control_scale": settings.control_scale,
        "replace": settings.replace, "motion_lora": settings.motion_lora is not None, "levels": settings.levels,
    }
    if noise is not None:
        extras["noise"] = noise
        if noise_params:
            extras["noise_params"] = dict(noise_params)
    combined = replace(  # the prompts as given (keyed on the long clip's frames): the same call gives the same clip
        first, prompt=[p if isinstance(p, str) else dict(p) for p in prompts],
        negative_prompt=[n if isinstance(n, str) else dict(n) for n in negatives],
        seeds=seeds, extras=extras,
    )
    latents = torch.cat([r.latents for r in results]) if fill_only["return_latents"] else None
    return VideoResult(frames=torch.cat([r.frames for r in results]), settings=combined, latents=latents)
