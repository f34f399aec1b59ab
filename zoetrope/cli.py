"""The `zoetrope` command line: the only module that prints for humans.

Errors a user can cause (`ZoetropeError`) are printed as one line (`error: ...`, exit status 2); `--debug` shows
the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from zoetrope.errors import ConfigError, InputError, ZoetropeError

logger = logging.getLogger("zoetrope")

SCHEDULERS = ("ddim", "euler", "euler_a", "dpm++2m-karras")
VIDEO_SUFFIXES = (".gif", ".mp4", ".webp", ".png")
NOISE_HELP = (
    "noise prior: independent, freenoise_shuffle, repeated_window, constant, pyoco_mixed, pyoco_progressive, "
    "zoom_warped (default: the official draw)"
)


def _slug(text: str, words: int = 10) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", " ".join(text.split()[:words])).strip("-")[:80] or "video"


def _dtype(name: str):
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise ConfigError(f"--dtype {name!r}: expected one of {sorted(table)}")
    return table[name]


def _device(name: str | None) -> str:
    if name:
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- generate
def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", "-L", type=int, default=16, help="number of frames (default 16)")
    parser.add_argument("--width", "-W", type=int, default=None, help="width in pixels, multiple of 8 (default: the model's)")
    parser.add_argument("--height", "-H", type=int, default=None, help="height in pixels, multiple of 8")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument(
        "--guidance-end", type=float, default=None, metavar="SCALE",
        help="schedule the guidance: --guidance (and --dual-guidance) at pure noise, moving linearly in the timestep to "
        "this scale at the end (e.g. --guidance 7.5 --guidance-end 1: layout and motion under strong guidance, colours under weak)",
    )
    parser.add_argument(
        "--dual-prompt", default=None, metavar="TEXT",
        help="a second positive prompt that says less than the prompt (e.g. without its motion words; ComfyUI's "
        "DualCFGGuider): --guidance pushes from the negative to it, --dual-guidance from it to the prompt",
    )
    parser.add_argument(
        "--dual-guidance", type=float, default=None, metavar="SCALE",
        help="guidance from --dual-prompt to the prompt (default: --guidance, i.e. plain CFG)",
    )
    parser.add_argument(
        "--guidance-rescale", type=float, default=None, metavar="FRACTION",
        help="guidance rescale (Lin et al. 2024, A1111's CFG rescale): 0 = off; default 0.7 for models whose "
        "checkpoint says zero terminal SNR, else 0",
    )
    parser.add_argument("--seed", type=int, default=-1, help="seed of the first video; -1 draws one (recorded)")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="ddim")
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--fps", type=int, default=None, help="frames per second of the output (default 8; video-to-video: the input's)")
    parser.add_argument("--motion-strength", default="1.0", help="multiplier on the motion modules' effect (0 = still image model); a comma list gives one per frame")
    parser.add_argument("--motion-scale", default="1.0", help="multiplier on temporal-attention keys (ComfyUI's motion scale); a comma list gives one per frame")
    parser.add_argument("--decode-chunk", type=int, default=16, help="frames decoded by the VAE at once")
    parser.add_argument("--dtype", default="fp32", help="fp32 | fp16 | bf16")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="SD1.5 image model: single file (.safetensors/.ckpt) or diffusers folder")
    parser.add_argument("--motion-module", default=None, help="motion module (official .ckpt/.safetensors or diffusers folder)")
    parser.add_argument("--motion-lora", action="append", default=[], metavar="PATH[:STRENGTH]", help="MotionLoRA; repeatable")
    parser.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH]", help="image LoRA (kohya or diffusers); repeatable")
    parser.add_argument(
        "--position-code", default=None, metavar="PATH[:STRENGTH]",
        help="a motion-module position code trained beside a MotionLoRA (lora.position_code; not official AnimateDiff)",
    )
    parser.add_argument("--adapter", default=None, metavar="PATH[:SCALE]", help="AnimateDiff domain adapter with its scale")
    parser.add_argument(
        "--vae", default=None, metavar="PATH",
        help="replace the model's VAE with a `vae` stage export sharing its latents (e.g. a decoder fine-tune)",
    )
    parser.add_argument(
        "--prediction-type", choices=("epsilon", "v_prediction"), default=None,
        help="what the image model predicts (default: what its file says, else epsilon as SD1.5)",
    )
    parser.add_argument(
        "--zero-snr", action=argparse.BooleanOptionalAction, default=None,
        help="the model was trained with zero terminal SNR (Lin et al. 2024; implies v_prediction, samples with trailing "
        "timesteps); default: what its file says",
    )


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("long videos (context windows)")
    group.add_argument("--context-length", type=int, default=0, help="frames per window (enables windows; 16 for v1-v3)")
    group.add_argument("--context-overlap", type=int, default=4, help="frames shared by neighbouring windows")
    group.add_argument("--context-stride", type=int, default=1, help="dilation: largest step between frames of a window (1 = contiguous only; 2 adds every-other-frame windows, ...)")
    group.add_argument("--context-schedule", choices=("uniform", "static"), default="uniform", help="uniform moves window seams every step")
    group.add_argument("--context-fuse", choices=("pyramid", "flat", "overlap-linear"), default="pyramid")
    group.add_argument("--context-mode", choices=("unet", "motion"), default="unet", help="windows around the whole UNet (memory bounded) or inside the motion modules only (FreeNoise)")
    group.add_argument("--closed-loop", action="store_true", help="let windows wrap from the last frame to the first (looping video)")
    group.add_argument("--show-windows", action="store_true", help="print the windows of every step")
    group.add_argument(
        "--keyframes-first", action="store_true",
        help="draw every k-th frame as one window first (k = --keyframe-spacing), then fill the clip in context windows "
        "with those frames as SparseCtrl RGB keyframes (--control-model; default: the bundled RGB encoder); needs "
        "--context-length",
    )
    group.add_argument("--keyframe-spacing", type=int, default=None, help="frames between the keyframes of --keyframes-first (default: frames / context length, rounded up)")
    group.add_argument(
        "--keyframe-lora", default=None, metavar="PATH[:STRENGTH]",
        help="MotionLoRA merged in while --keyframes-first draws its keyframes (default for the bundled model: its "
        "fast-motion LoRA, because the keyframes lie k frames apart; 'none' for none)",
    )
    group.add_argument("--fill-guidance", type=float, default=None, help="guidance while --keyframes-first fills the clip (default: --guidance)")
    group.add_argument(
        "--keyframe-levels", type=int, choices=(1, 2), default=2,
        help="--keyframes-first: 2 (default) = draw every 2nd frame between the keyframes first, then the rest "
        "(steady motion between keyframes; one more pass at half the frames); 1 = fill straight from the keyframes",
    )
    group.add_argument(
        "--keyframe-retime", action=argparse.BooleanOptionalAction, default=True,
        help="--keyframes-first: give each gap between keyframes frames in proportion to how much its two keyframe "
        "pictures differ, evening out the speed (default on; --no-keyframe-retime: every k-th frame)",
    )
    group = parser.add_argument_group("prompt travel")
    group.add_argument("--prompt-at", action="append", default=[], metavar='FRAME:"TEXT"', help="prompt keyed at a frame (negative = from the end); repeatable; PROMPT then becomes the head text")
    group.add_argument("--negative-at", action="append", default=[], metavar='FRAME:"TEXT"', help="negative prompt keyed at a frame")
    group.add_argument("--tail", default="", help="text appended to every keyed prompt")
    group.add_argument("--travel-hold", type=float, default=0.0, help="fraction of each segment that keeps its prompt before blending")
    group.add_argument("--travel-method", choices=("lerp", "slerp"), default="lerp")
    group.add_argument("--circular", action="store_true", help="blend the last prompt back into the first")
    group = parser.add_argument_group("noise")
    group.add_argument("--noise", default=None, help=NOISE_HELP)
    group.add_argument("--noise-param", action="append", default=[], metavar="NAME=VALUE", help="prior parameter, e.g. alpha=1.0 or window=16")
    group.add_argument("--freeinit", type=int, default=0, help="FreeInit iterations (0 = off)")
    group.add_argument("--freeinit-filter", choices=("gaussian", "butterworth", "ideal", "box"), default="butterworth")
    group.add_argument("--freeinit-ds", type=float, default=0.25, help="spatial stop frequency")
    group.add_argument("--freeinit-dt", type=float, default=0.25, help="temporal stop frequency")
    group = parser.add_argument_group("video-to-video and keyframes (SparseCtrl)")
    group.add_argument("--video", default=None, help="input video or frame folder for video-to-video (frame count and fps kept)")
    group.add_argument("--strength", type=float, default=0.6, help="video-to-video: how much to change (0 = input, 1 = ignore it)")
    group.add_argument("--control", choices=("rgb", "sketch"), default=None, help="SparseCtrl condition type")
    group.add_argument("--control-model", default=None, help="SparseCtrl encoder file (default: the bundled one for the bundled model)")
    group.add_argument("--keyframe", action="append", default=[], metavar="INDEX:IMAGE", help="keyframe image at a frame (negative = from the end); repeatable")
    group.add_argument("--control-scale", type=float, default=1.0)
    group.add_argument(
        "--color-match", type=float, default=0.0, metavar="STRENGTH",
        help="--control rgb: after sampling, move each frame's colour means and contrast towards the keyframes' "
        "(interpolated between keyframes), as image-to-video colour-match nodes do; 0 = off (default), 1 = full",
    )
    group.add_argument("--keyframe-replace", type=float, default=None, metavar="FRACTION", help="RGB keyframes: also paste each keyframe's re-noised latent into the video for this fraction of the first steps (default 0 = off, the official behaviour; 0.5 brings the bundled encoder from 17 to 25 dB at the keyframe; --keyframes-first: default 0.3)")
    group.add_argument("--normalize-sketch", action="store_true", help="grey + min-max normalise sketches (official normalize_condition_images)")


def _numbers(text: str) -> float | list[float]:
    values = [float(v) for v in str(text).split(",")]
    return values[0] if len(values) == 1 else values


def _keyed(items: Sequence[str], option: str) -> dict[int, str]:
    keyed = {}
    for item in items:
        head, sep, text = item.partition(":")
        try:
            keyed[int(head)] = text.strip().strip('"')
        except ValueError:
            raise ConfigError(f"{option} {item!r}: expected FRAME:TEXT, e.g. 0:\"a cat\"") from None
    return keyed


def _noise_settings(args: argparse.Namespace) -> dict[str, Any]:
    """`noise` / `noise_params` for `generate` from --noise and --noise-param NAME=VALUE (empty: the official draw)."""
    if not args.noise:
        return {}
    params: dict[str, float] = {}
    for item in args.noise_param:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--noise-param {item!r}: expected NAME=VALUE")
        params[name] = float(value) if "." in value else int(value)
    return {"noise": args.noise, "noise_params": params}


def generation_settings(args: argparse.Namespace) -> dict:
    """Keyword arguments of `generate` from the command line."""
    from zoetrope.pipelines.text_to_video import FreeInitSettings, TravelSettings
    from zoetrope.sampling.context import ContextConfig

    settings: dict = dict(
        num_frames=args.frames, width=args.width, height=args.height, steps=args.steps, guidance_scale=args.guidance,
        guidance_rescale=args.guidance_rescale, guidance_end=args.guidance_end, dual_prompt=args.dual_prompt,
        dual_guidance=args.dual_guidance, seed=args.seed, scheduler=args.scheduler, motion_strength=_numbers(args.motion_strength),
        motion_scale=_numbers(args.motion_scale), decode_chunk_size=args.decode_chunk,
    )
    prompt: object = args.prompt or ""
    if args.prompt_at:
        prompt = _keyed(args.prompt_at, "--prompt-at")
        settings["travel"] = TravelSettings(
            hold=args.travel_hold, method=args.travel_method, circular=args.circular, head=args.prompt or "", tail=args.tail,
        )
    settings["prompt"] = prompt
    settings["negative_prompt"] = _keyed(args.negative_at, "--negative-at") if args.negative_at else args.negative
    if args.context_length:
        settings["context"] = ContextConfig(
            length=args.context_length, overlap=args.context_overlap, stride=args.context_stride,
            schedule=args.context_schedule, closed_loop=args.closed_loop, fuse=args.context_fuse,
        )
        settings["context_mode"] = args.context_mode
    settings.update(_noise_settings(args))
    if args.freeinit:
        settings["freeinit"] = FreeInitSettings(args.freeinit, args.freeinit_filter, args.freeinit_ds, args.freeinit_dt)
    return settings


def cmd_generate(args: argparse.Namespace) -> int:
    from zoetrope.pipelines.load import load_pipeline
    from zoetrope.pipelines.text_to_video import generate, save
    from zoetrope.sampling.context import describe_windows

    if not args.prompt and not args.prompt_at:
        raise ConfigError("give a PROMPT, or keyed prompts with --prompt-at FRAME:TEXT")
    if (args.keyframe or args.keyframe_replace) and not args.control and not args.keyframes_first:
        raise ConfigError("--keyframe and --keyframe-replace steer SparseCtrl; add --control rgb (or sketch)")
    if args.color_match and args.control != "rgb":
        raise ConfigError("--color-match matches the frames to RGB keyframe images; add --control rgb --keyframe INDEX:IMAGE")
    pipeline = load_pipeline(
        args.model, args.motion_module, motion_loras=args.motion_lora, loras=args.lora, adapter=args.adapter,
        dtype=_dtype(args.dtype), device=_device(args.device), prediction_type=args.prediction_type,
        zero_terminal_snr=args.zero_snr, vae=args.vae, position_code=args.position_code,
    )
    settings = generation_settings(args)
    output = Path(args.output or f"outputs/{_slug(args.prompt or next(iter(settings['prompt'].values())))}.gif")
    if output.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"-o {output}: unknown video format {output.suffix!r}; use one of {VIDEO_SUFFIXES}")
    if args.show_windows and "context" in settings:
        print(describe_windows(args.frames, args.steps, settings["context"]))
    fps = args.fps or 8
    if args.preview:
        if args.keyframes_first:
            raise ConfigError("--preview shows one sampling pass; --keyframes-first runs several, so drop one of them")
        from zoetrope.pipelines.preview import PreviewWriter

        settings["callback"] = PreviewWriter(pipeline.image_model.vae, args.preview, every=args.preview_every, fps=fps)
    if args.video:
        from zoetrope.pipelines.video_to_video import video_to_video

        prompt = settings.pop("prompt")
        settings.pop("num_frames")
        result = video_to_video(pipeline, args.video, prompt, strength=args.strength, **settings)
        fps = args.fps or int(round(result.settings.extras.get("fps", fps)))
    elif args.keyframes_first:
        from zoetrope.pipelines.keyframes_first import generate_keyframes_first

        if "context" not in settings:
            raise ConfigError("--keyframes-first fills the clip in context windows; add --context-length (16 for v1-v3)")
        if args.control or args.keyframe:
            raise ConfigError("--keyframes-first makes its own keyframes; drop --control / --keyframe (the encoder is --control-model)")
        if args.context_mode != "unet":
            raise ConfigError("--keyframes-first fills the clip in windows around the whole UNet; drop --context-mode motion")
        prompt = settings.pop("prompt")
        settings.pop("context_mode")
        result = generate_keyframes_first(pipeline, prompt, _keyframes_first(args, pipeline), **settings)
    else:
        if args.control:
            settings["control"] = _control(args, pipeline)
        result = generate(pipeline, settings.pop("prompt"), color_match=args.color_match, **settings)
    for path in save(result, output, fps=fps):
        print(f"wrote {path} (seed {result.settings.seeds[0]})")
    return 0


def _control(args: argparse.Namespace, pipeline):
    from zoetrope.pipelines.image_to_video import parse_keyframe

    path = args.control_model
    if path is None:
        from zoetrope.world.bundled import bundled_files

        path = bundled_files().get(f"sparsectrl_{args.control}")
        if path is None:
            raise ConfigError(f"--control {args.control}: give the encoder file with --control-model PATH")
    keyframes = [parse_keyframe(item) for item in args.keyframe]
    size = pipeline.default_size
    return _sparse_control(
        pipeline, path, keyframes, args.frames, args.width or size, args.height or size, scale=args.control_scale,
        normalize=args.normalize_sketch, condition=args.control, option="--control", replace=args.keyframe_replace or 0.0,
    )


def _keyframes_first(args: argparse.Namespace, pipeline):
    """`KeyframesFirst` from the command line: the RGB encoder (default: bundled) and the keyframe pass's MotionLoRA
    (default: the bundled fast-motion LoRA when the model is the bundled one)."""
    from zoetrope.pipelines.keyframes_first import KeyframesFirst
    from zoetrope.world.bundled import bundled_files

    lora = args.keyframe_lora
    if lora is None and args.model is None and args.motion_module is None:
        lora = str(bundled_files()["motion_lora_fast"])
    return KeyframesFirst.from_files(
        pipeline, args.control_model, lora, spacing=args.keyframe_spacing,
        control_scale=args.control_scale, replace=0.3 if args.keyframe_replace is None else args.keyframe_replace,
        fill_guidance=args.fill_guidance, retime=args.keyframe_retime, levels=args.keyframe_levels,
    )


def _sparse_control(
    pipeline, path, keyframes, num_frames: int, width: int, height: int, scale: float, normalize: bool,
    condition: str | None, option: str, replace: float = 0.0,
):
    """Load a SparseCtrl encoder for `pipeline` and build its keyframe condition (shared by `generate` and `run`).

    `condition` is what the caller asked for ("rgb"/"sketch", None = whatever the file is); a mismatch is an error
    naming the right option, because an RGB encoder fed edge maps (or the reverse) gives silent garbage.
    """
    from zoetrope.pipelines.image_to_video import load_control_for, prepare_control

    encoder = load_control_for(pipeline, path)
    if condition is not None and encoder.config.condition != condition:
        raise ConfigError(f"{option} {condition}: {path} is a {encoder.config.condition} SparseCtrl encoder; use {option} {encoder.config.condition}")
    return prepare_control(
        pipeline, encoder, keyframes, num_frames, width, height, scale=scale, normalize=normalize, replace=replace
    )


# --------------------------------------------------------------------------- run (official prompt configs)
OFFICIAL_FIELDS = {
    "dreambooth_path", "lora_model_path", "lora_alpha", "motion_module", "motion_module_lora_configs",
    "adapter_lora_path", "adapter_lora_scale", "seed", "steps", "guidance_scale", "prompt", "n_prompt", "W", "H", "L",
    "inference_config", "base", "path", "domain_lora_scale", "scheduler", "fps",
    "controlnet_config", "controlnet_path", "controlnet_images", "controlnet_image_indexs", "normalize_condition_images",
    "controlnet_conditioning_scale",
}


def _entries(document: object, source: Path) -> list[tuple[str, dict]]:
    """An official prompt config is a list of entries, or (older configs) a dict of named entries."""
    if isinstance(document, list):
        return [(f"{index}", entry) for index, entry in enumerate(document)]
    if isinstance(document, dict) and all(isinstance(v, dict) for v in document.values()):
        return list(document.items())
    if isinstance(document, dict):
        return [("0", document)]
    raise ConfigError(f"{source}: expected a list of prompt entries (official AnimateDiff prompt config)")


def _official_keyframes(entry: dict, source: Path, name: str) -> list[tuple[int, Path]]:
    """SparseCtrl keyframes of an official prompt entry: `controlnet_images` at `controlnet_image_indexs`.

    Relative image paths are read relative to the config file's folder first, then to the working directory
    (official configs name them from the repository root). Indices default to 0, 1, ... as in the official script.
    """
    images = entry.get("controlnet_images") or []
    if not entry.get("controlnet_path"):
        if images:
            raise ConfigError(f"{source}: entry {name}: controlnet_images without controlnet_path; add the SparseCtrl encoder file")
        return []
    images = [images] if isinstance(images, str) else list(images)
    if not images:
        raise ConfigError(f"{source}: entry {name}: controlnet_path without controlnet_images; list the keyframe images")
    indices = entry.get("controlnet_image_indexs", list(range(len(images))))
    indices = [indices] if isinstance(indices, int) else list(indices)
    if len(indices) != len(images):
        raise ConfigError(
            f"{source}: entry {name}: {len(images)} controlnet_images but {len(indices)} controlnet_image_indexs; "
            "give one frame index per image"
        )
    keyframes = []
    for index, image in zip(indices, images):
        path = Path(image)
        if not path.is_absolute() and (source.parent / path).exists():
            path = source.parent / path
        keyframes.append((int(index), path))
    return keyframes


def cmd_run(args: argparse.Namespace) -> int:
    import yaml

    from zoetrope.pipelines.load import WeightedFile, load_pipeline
    from zoetrope.pipelines.text_to_video import generate, save

    source = Path(args.config)
    if not source.exists():
        raise ConfigError(f"{source}: no such config file")
    document = yaml.safe_load(source.read_text())
    out_dir = Path(args.output or f"samples/{source.stem}")
    used: list[dict] = []
    for name, entry in _entries(document, source):
        unknown = sorted(set(entry) - OFFICIAL_FIELDS)
        if unknown:
            raise ConfigError(f"{source}: entry {name}: unknown field(s) {unknown}; known fields: {sorted(OFFICIAL_FIELDS)}")
        keyframes = _official_keyframes(entry, source, name)
        model = entry.get("dreambooth_path") or args.model
        motion_modules = entry.get("motion_module") or args.motion_module
        motion_modules = motion_modules if isinstance(motion_modules, list) else [motion_modules]
        loras = [WeightedFile(Path(entry["lora_model_path"]), float(entry.get("lora_alpha", 0.8)))] if entry.get("lora_model_path") else []
        motion_loras = [WeightedFile(Path(c["path"]), float(c.get("alpha", 1.0))) for c in entry.get("motion_module_lora_configs") or []]
        adapter = (
            WeightedFile(Path(entry["adapter_lora_path"]), float(entry.get("adapter_lora_scale", 1.0)))
            if entry.get("adapter_lora_path") else None
        )
        prompts = entry.get("prompt") or []
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        negatives = entry.get("n_prompt") or [""]
        seeds = entry.get("seed", -1)
        seeds = seeds if isinstance(seeds, list) else [seeds]
        if len(seeds) == 1:
            seeds = seeds * len(prompts)
        for motion_module in motion_modules:
            pipeline = load_pipeline(
                model, motion_module, motion_loras=motion_loras, loras=loras, adapter=adapter,
                dtype=_dtype(args.dtype), device=_device(args.device),
            )
            num_frames = int(entry.get("L", args.frames))
            control = None
            if keyframes:
                size = pipeline.default_size
                control = _sparse_control(
                    pipeline, Path(entry["controlnet_path"]), keyframes, num_frames, entry.get("W") or size,
                    entry.get("H") or size, scale=float(entry.get("controlnet_conditioning_scale", 1.0)),
                    normalize=bool(entry.get("normalize_condition_images", False)), condition=None,
                    option=f"{source}: entry {name}: controlnet_path",
                )
            for index, prompt in enumerate(prompts):
                result = generate(
                    pipeline, prompt, negative_prompt=negatives[index % len(negatives)],
                    num_frames=num_frames, width=entry.get("W"), height=entry.get("H"),
                    steps=int(entry.get("steps", 25)), guidance_scale=float(entry.get("guidance_scale", 7.5)),
                    seed=int(seeds[index % len(seeds)]), scheduler=entry.get("scheduler", "ddim"), control=control,
                )
                stem = f"{name}-{index}-{_slug(prompt)}"
                path = out_dir / (stem if args.format == ".png" else stem + args.format)  # .png: a folder of frames
                save(result, path, fps=int(entry.get("fps", args.fps)))
                print(f"wrote {path} (seed {result.settings.seeds[0]})")
                used.append({**entry, "prompt": prompt, "random_seed": result.settings.seeds[0]})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(used, sort_keys=False))
    return 0


# --------------------------------------------------------------------------- inspect / convert
def cmd_inspect(args: argparse.Namespace) -> int:
    from zoetrope.formats.detect import inspect_file

    for path in args.files:
        info = inspect_file(path)
        print(f"{path}: {info.describe()}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from zoetrope.formats.motion import load_motion_module, save_motion_module

    modules = load_motion_module(args.input)
    written = save_motion_module(modules, args.output, layout=args.to)
    print(f"wrote {written} ({args.to} layout, motion module {modules.config.version}, PE {modules.config.max_frames})")
    return 0


# --------------------------------------------------------------------------- world / train / eval
def cmd_world_make(args: argparse.Namespace) -> int:
    from zoetrope.world.make import PRESETS, make_preset
    from zoetrope.world.render import WorldConfig

    if args.preset not in PRESETS:
        raise ConfigError(f"--preset {args.preset!r}: expected one of {sorted(PRESETS)}")
    config = WorldConfig(
        size=args.size, num_frames=args.frames, trail_alpha=args.trail_alpha, speed_range=tuple(args.speed_range),
        angle_range=tuple(args.angle_range), camera_speed_range=tuple(args.camera_speed_range),
        equal_area=args.equal_area, texture_amplitude=args.texture_amplitude, fixed_textures=args.fixed_textures,
    )
    files = make_preset(args.preset, args.output, config=config, seed=args.seed, scale=args.scale, overwrite=args.overwrite)
    print(f"wrote {args.preset} world to {args.output}: {files}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from zoetrope.training.engine import main_train

    exported = main_train(args.config, resume=args.resume, overrides=args.set)
    if exported is not None:
        print(f"wrote {exported}")
    return 0


def _scored_prompt(prompt: str, suffix: str) -> str:
    """The prompt the metrics score a clip against: with `suffix` when the world's caption grammar reads it (a style
    trigger, ", in zxq style": then style accuracy is measured), without it otherwise (free text the metrics cannot
    check, e.g. "high quality")."""
    from zoetrope.world.render import parse_caption

    if not suffix:
        return prompt
    try:
        parse_caption(prompt)
        return prompt
    except InputError:
        return prompt.replace(f", {suffix}", "")


def cmd_eval(args: argparse.Namespace) -> int:
    from zoetrope.media import frames_to_uint8
    from zoetrope.pipelines.load import load_pipeline
    from zoetrope.pipelines.text_to_video import generate
    from zoetrope.world.metrics import (
        CAMERA_SUITE, PROMPT_SUITE, evaluate_clips, format_table, noise_agreement, prompts_with_motions,
    )
    from zoetrope.world.render import caption, parse_caption

    suites = {"base": PROMPT_SUITE, "camera": CAMERA_SUITE}
    suite = list(suites[args.suite])
    if args.prompt:
        for prompt in args.prompt:
            parse_caption(prompt)  # the metrics score a clip from its prompt: refuse one they cannot read, up front
        suite = list(args.prompt)
    if args.motions:
        suite = prompts_with_motions(suite, args.motions, args.suite)
    if args.no_background:
        suite = [caption(replace(parse_caption(prompt), background=None)) for prompt in suite]

    def with_suffix(text: str) -> str:
        return text + (f", {args.suffix}" if args.suffix else "")

    suite = suite[: args.limit or None]
    prompts = [with_suffix(p) for p in suite]
    guide = {}
    if args.motion_guidance is not None:  # the dual prompt: the caption without its motion and camera words
        guide = dict(dual_guidance=args.motion_guidance, dual_prompt=[
            with_suffix(caption(replace(parse_caption(p), motion=None, camera=None))) for p in suite
        ])
    pipeline = load_pipeline(
        args.model, args.motion_module, motion_loras=args.motion_lora, loras=args.lora, adapter=args.adapter,
        dtype=_dtype(args.dtype), device=_device(args.device), prediction_type=args.prediction_type,
        zero_terminal_snr=args.zero_snr, vae=args.vae, position_code=args.position_code,
    )
    clips, used_prompts, seeds = [], [], []
    for seed in range(args.seed, args.seed + args.seeds):
        result = generate(
            pipeline, prompts, num_frames=args.frames, steps=args.steps, guidance_scale=args.guidance,
            guidance_rescale=args.guidance_rescale, guidance_end=args.guidance_end, **guide,
            seed=[seed] * len(prompts) if args.same_noise else seed,
            negative_prompt=args.negative, progress=False, motion_strength=args.motion_strength, **_noise_settings(args),
        )
        clips += [frames_to_uint8(video) for video in result.frames]
        used_prompts += [_scored_prompt(p, args.suffix) for p in prompts]
        seeds += result.settings.seeds
    results = evaluate_clips(clips, used_prompts)
    for row, seed in zip(results["clips"], seeds, strict=True):
        row["seed"] = seed
    if args.same_noise:
        results["summary"]["noise_agreement"] = noise_agreement(results["clips"])
    results["settings"] = {k: v for k, v in vars(args).items() if k != "handler"}
    if guide:
        results["settings"]["dual_prompts"] = guide["dual_prompt"]
    print(format_table(results))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {output}")
    return 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoetrope", description="Turn text-to-image diffusion models into video generators.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--quiet", action="store_true", help="less logging")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="text to video (also prompt travel, long videos, video-to-video, keyframes)")
    generate.add_argument("prompt", nargs="?", default=None)
    add_model_arguments(generate)
    add_generation_arguments(generate)
    add_sampling_arguments(generate)
    generate.add_argument("-o", "--output", default=None, help="output file: .gif, .mp4, .webp, or .png (frames folder)")
    generate.add_argument(
        "--preview", default=None, metavar="PATH",
        help="live preview: write the sampler's estimate of the finished first video here every --preview-every steps "
        "(rewritten in place; with {step} in the path, e.g. preview/{step:03d}.gif, one file per step)",
    )
    generate.add_argument("--preview-every", type=int, default=5, metavar="N", help="steps between previews (default 5)")
    generate.set_defaults(handler=cmd_generate)

    run = commands.add_parser("run", help="run an official AnimateDiff prompt config (YAML)")
    run.add_argument("config")
    run.add_argument("--model", default=None, help="image model used when an entry has no dreambooth_path")
    run.add_argument("--motion-module", default=None, help="motion module used when an entry has none")
    run.add_argument("-o", "--output", default=None, help="output folder (default samples/<config name>)")
    run.add_argument("--format", default=".gif", choices=VIDEO_SUFFIXES)
    run.add_argument("--frames", type=int, default=16)
    run.add_argument("--fps", type=int, default=8)
    run.add_argument("--dtype", default="fp32")
    run.add_argument("--device", default=None)
    run.set_defaults(handler=cmd_run)

    inspect = commands.add_parser("inspect", help="say what a checkpoint file is")
    inspect.add_argument("files", nargs="+")
    inspect.set_defaults(handler=cmd_inspect)

    convert = commands.add_parser("convert", help="convert a motion module between the official and diffusers layouts")
    convert.add_argument("input")
    convert.add_argument("output")
    convert.add_argument("--to", choices=("official", "diffusers"), default="diffusers")
    convert.set_defaults(handler=cmd_convert)

    world = commands.add_parser("world", help="the shapes world: synthetic captioned clips and images")
    world_commands = world.add_subparsers(dest="world_command", required=True)
    make = world_commands.add_parser("make", help="render a world data set to disk")
    make.add_argument("output")
    make.add_argument("--preset", default="base", help="base, zoom-in, zoom-out, pan-left, pan-right, pastel, striped")
    make.add_argument("--size", type=int, default=64)
    make.add_argument("--frames", type=int, default=16)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--scale", type=float, default=1.0, help="multiply the preset's clip/image counts")
    make.add_argument(
        "--trail-alpha", type=float, default=0.0, help="opacity of the motion trail behind moving objects (0 = none, < 0.3)"
    )
    make.add_argument(
        "--speed-range", type=float, nargs=2, default=[0.3, 0.45], metavar=("LOW", "HIGH"),
        help="travel of a left/right/up/down clip over its length, in image sizes (default 0.3 0.45, what the shipped "
        "models saw; wider ranges teach the slow and fast motion long videos need)",
    )
    make.add_argument(
        "--angle-range", type=float, nargs=2, default=[0.0, 360.0], metavar=("LOW", "HIGH"),
        help="start orientation of the shapes in degrees (default 0 360, what the shipped models saw; 0 0 = upright)",
    )
    make.add_argument(
        "--camera-speed-range", type=float, nargs=2, default=[0.3, 0.45], metavar=("LOW", "HIGH"),
        help="camera clips: zoom factor minus one, or pan travel in image sizes, over the clip (default 0.3 0.45, "
        "what the shipped pan LoRA saw; the shipped zoom LoRA saw 0.8 1.0)",
    )
    make.add_argument(
        "--equal-area", action="store_true",
        help="draw every shape with the area of a circle of the same size (default: the same circumradius, what the "
        "shipped models saw, where triangles and stars cover 43 %% of a circle's pixels)",
    )
    make.add_argument(
        "--texture-amplitude", type=float, default=16.0, metavar="LEVELS",
        help="peak of the faint background texture in 8-bit levels (default 16, what the shipped models saw; the "
        "texture is what makes camera motion visible: 8 still reads 40 / 40 camera clips, 4 reads 37 / 40)",
    )
    make.add_argument(
        "--fixed-textures", action="store_true",
        help="one background texture per background colour instead of a new one per clip (default: new per clip, "
        "what the shipped models saw)",
    )
    make.add_argument("--overwrite", action="store_true")
    make.set_defaults(handler=cmd_world_make)

    train = commands.add_parser("train", help="train a stage (image, personalize, domain-adapter, motion, motion-lora, ...)")
    train.add_argument("config", help="training YAML (see configs/)")
    train.add_argument("--resume", action="store_true", help="continue exactly from the last checkpoint")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("eval", help="score generated clips on the shapes world's prompt suite")
    add_model_arguments(evaluate)
    evaluate.add_argument("--suite", choices=("base", "camera"), default="base")
    evaluate.add_argument(
        "--prompt", action="append", default=[],
        help="score these prompts instead of the suite (repeatable; the shapes-world grammar, e.g. 'a red circle "
        "moving right')",
    )
    evaluate.add_argument("--suffix", default="", help="text appended to every prompt (e.g. a style trigger)")
    evaluate.add_argument("--noise", default=None, help=NOISE_HELP)
    evaluate.add_argument("--noise-param", action="append", default=[], metavar="NAME=VALUE", help="prior parameter, e.g. zoom=1.4")
    evaluate.add_argument("--limit", type=int, default=0, help="only the first N prompts")
    evaluate.add_argument(
        "--no-background", action="store_true",
        help="cut 'on a ... background' from the suite's prompts, as users write them (the world's captions always "
        "name one; the background is then not scored)",
    )
    evaluate.add_argument(
        "--motions", default="", help="only the suite's prompts with these motions, comma-separated (e.g. left,right)"
    )
    evaluate.add_argument(
        "--seeds", type=int, default=1,
        help="videos per prompt: round r gives prompt i the seed SEED + r + i (or SEED + r with --same-noise)",
    )
    evaluate.add_argument(
        "--same-noise", action="store_true",
        help="every prompt of a round starts from the same noise, so the motion read can be compared across prompts",
    )
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--frames", type=int, default=16)
    evaluate.add_argument("--steps", type=int, default=25)
    evaluate.add_argument("--guidance", type=float, default=7.5)
    evaluate.add_argument(
        "--guidance-end", type=float, default=None, help="guidance at t = 0, linear in the timestep from --guidance (and --motion-guidance; default: constant)"
    )
    evaluate.add_argument(
        "--motion-guidance", type=float, default=None, metavar="SCALE",
        help="dual-prompt guidance on the motion words: the second prompt is each caption without its motion and "
        "camera phrases, weighed by --guidance, and SCALE weighs what the motion words add (default: plain CFG)",
    )
    evaluate.add_argument(
        "--guidance-rescale", type=float, default=None, help="0 = off; default 0.7 for zero-terminal-SNR models, else 0"
    )
    evaluate.add_argument("--negative", default="")
    evaluate.add_argument("--motion-strength", type=float, default=1.0)
    evaluate.add_argument("--dtype", default="fp32")
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("-o", "--output", default="outputs/eval.json")
    evaluate.set_defaults(handler=cmd_eval)
    return parser


def _attach_negative_values(argv: Sequence[str]) -> list[str]:
    """`--keyframe -1:last.png` -> `--keyframe=-1:last.png`.

    argparse reads any word starting with "-" (other than a plain negative number) as an option, so the last-frame
    keyframe of an interpolation would fail with "expected one argument" unless written with "=".
    """
    words = list(argv)
    for index in range(len(words) - 1, 0, -1):
        if words[index - 1] in NEGATIVE_INDEX_OPTIONS and re.match(r"-\d", words[index]):
            words[index - 1 : index + 1] = [f"{words[index - 1]}={words[index]}"]
    return words


NEGATIVE_INDEX_OPTIONS = ("--keyframe", "--prompt-at", "--negative-at")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_attach_negative_values(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("diffusers", "transformers", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ZoetropeError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
