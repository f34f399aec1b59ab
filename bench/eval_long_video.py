"""Long-video and sampling-control measurements on the shapes world (issue: long videos and sampling controls).

    python bench/eval_long_video.py                      # the bundled shapes-world model
    python bench/eval_long_video.py --model M --motion-module MM --seeds 4

Measures, with equal seeds for every variant:
1. a 64-frame "moving right" clip in 16-frame context windows: the share of 16-frame segments (and of whole clips)
   whose motion is classified "moving right";
2. the seam score at window boundaries (static windows, so the boundaries are known) for pyramid vs flat fusion:
   mean frame-to-frame change across a boundary divided by the clip's median frame-to-frame change (1 = no seam);
3. temporal consistency (foreground-mask IoU, flicker) with FreeInit (3 iterations) vs without, on the prompt suite.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from zoetrope.media import frames_to_uint8
from zoetrope.pipelines.keyframes_first import KeyframesFirst, generate_keyframes_first
from zoetrope.pipelines.load import load_pipeline
from zoetrope.pipelines.text_to_video import FreeInitSettings, generate
from zoetrope.sampling.context import SCHEDULES, ContextConfig, context_windows
from zoetrope.sampling.noise import NOISE_PRIORS
from zoetrope.world.metrics import (
    PROMPT_SUITE, classify_motion, frame_changes, measure_motion, motion_of, temporal_consistency,
)


def to_clips(frames: torch.Tensor) -> list[np.ndarray]:
    """(b, c, f, h, w) in [0, 1] -> uint8 (f, h, w, 3) arrays."""
    return [frames_to_uint8(video) for video in frames]


def seam_score(clip: np.ndarray, boundaries: list[int]) -> float:
    """Change across window boundaries (between frame b-1 and b) relative to the clip's median change."""
    changes = frame_changes(clip)
    median = float(np.median(changes)) or 1e-6
    return float(np.mean([changes[b - 1] for b in boundaries if 0 < b < len(clip)]) / median)


PARTS = ("long", "seams", "freeinit")
"""The three measurements, in order; `--parts` picks some (each costs minutes on a CPU)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--motion-module", default=None)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--overlap", type=int, default=4)
    parser.add_argument(
        "--stride", type=int, default=1,
        help="largest window dilation of the long clip (ContextConfig.stride; 4 adds windows that span the clip)",
    )
    parser.add_argument("--schedule", choices=SCHEDULES, default="uniform", help="window schedule of the long clip")
    parser.add_argument(
        "--context-mode", choices=("unet", "motion"), default="unet",
        help="windows around the whole UNet or inside the motion modules only (FreeNoise views)",
    )
    parser.add_argument(
        "--noise", choices=sorted(NOISE_PRIORS), default=None,
        help="noise prior of the long clip (default: independent; freenoise_shuffle repeats one window's noise)",
    )
    parser.add_argument(
        "--keyframes-first", action="store_true",
        help="the long clip keyframes first (zoetrope.pipelines.keyframes_first): every k-th frame as one window, then "
        "contiguous windows with those frames as SparseCtrl RGB keyframes",
    )
    parser.add_argument("--control-model", default=None, help="--keyframes-first: RGB SparseCtrl encoder (default: bundled)")
    parser.add_argument(
        "--keyframe-lora", default=None, metavar="PATH[:STRENGTH]",
        help="--keyframes-first: MotionLoRA for the keyframe pass (default: none)",
    )
    parser.add_argument("--fill-guidance", type=float, default=4.0, help="--keyframes-first: guidance of the filling pass")
    parser.add_argument("--control-scale", type=float, default=1.0, help="--keyframes-first: SparseCtrl scale")
    parser.add_argument("--keyframe-replace", type=float, default=0.3, help="--keyframes-first: keyframe latent replacement")
    parser.add_argument(
        "--retime", action=argparse.BooleanOptionalAction, default=True,
        help="--keyframes-first: place keyframes by picture change (default on, as the library; --no-retime: every k-th)",
    )
    parser.add_argument("--levels", type=int, choices=(1, 2), default=2, help="--keyframes-first: 2 (the library's default) adds a half-rate pass; 1 fills straight from the keyframes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompt", default="a red circle moving right on a grey background")
    parser.add_argument("--suite-limit", type=int, default=8, help="prompts of the suite used for FreeInit")
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=None,
        help="which measurements to run (default: all that apply; FreeInit does not apply to a zero-terminal-SNR "
        "model, such as the bundled one: measure it on an epsilon model, e.g. the first lineage's runs/world/ exports)",
    )
    parser.add_argument("-o", "--output", default="outputs/eval_long_video.json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = load_pipeline(args.model, args.motion_module)
    if args.parts is None:
        args.parts = [part for part in PARTS if part != "freeinit" or not pipe.zero_terminal_snr]
        if "freeinit" not in args.parts:
            print("FreeInit left out: the model has zero terminal SNR (FreeInit needs an epsilon model)")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    results: dict = {"settings": vars(args)}

    if "long" in args.parts:
        long_motion(pipe, args, seeds, results)
    if "seams" in args.parts:
        seams(pipe, args, seeds, results)
    if "freeinit" in args.parts:
        freeinit_consistency(pipe, args, seeds, results)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {output}")


def keyframes_first_settings(pipe, args: argparse.Namespace):
    """`KeyframesFirst` from the bench's options (encoder, default bundled, and keyframe-pass LoRA loaded for `pipe`)."""
    return KeyframesFirst.from_files(
        pipe, args.control_model, args.keyframe_lora,
        control_scale=args.control_scale, replace=args.keyframe_replace, fill_guidance=args.fill_guidance,
        retime=args.retime, levels=args.levels,
    )


def long_motion(pipe, args: argparse.Namespace, seeds: list[int], results: dict) -> None:
    """1. Long clip in windows (`--stride`, `--schedule`, `--context-mode`, or `--keyframes-first`): motion direction
    over its whole length."""
    config = ContextConfig(length=args.window, overlap=args.overlap, stride=args.stride, schedule=args.schedule)
    keyframes = keyframes_first_settings(pipe, args) if args.keyframes_first else None
    segments, whole, labels, travel = [], [], [], []
    for seed in seeds:
        if keyframes is not None:
            video = generate_keyframes_first(
                pipe, args.prompt, keyframes, num_frames=args.frames, steps=args.steps, seed=seed, context=config,
                noise=args.noise, progress=False,
            )
        else:
            video = generate(
                pipe, args.prompt, num_frames=args.frames, steps=args.steps, seed=seed, context=config,
                context_mode=args.context_mode, noise=args.noise, progress=False,
            )
        clip = to_clips(video.frames)[0]
        whole.append(classify_motion(clip) == "right")
        starts = range(0, args.frames - args.window + 1, args.window)
        measured = [measure_motion(clip[start : start + args.window]) for start in starts]
        read = [motion_of(measurement, max(clip.shape[1:3])) for measurement in measured]
        segments.extend(label == "right" for label in read)
        labels.append(read)
        travel.append([round(measurement.dx, 2) for measurement in measured])
    results["long_motion_accuracy_segments"] = float(np.mean(segments))
    results["long_motion_accuracy_whole"] = float(np.mean(whole))
    results["long_segment_motions"] = labels  # what each 16-frame segment reads, per seed: where the motion stops
    results["long_segment_travel_px"] = travel  # horizontal travel of each segment (the threshold: 0.12 x the size)
    how = "keyframes first" if args.keyframes_first else f"{args.schedule}, dilation <= {args.stride}, {args.context_mode}"
    print(f"{args.frames}-frame '{args.prompt}' in {args.window}-frame windows ({how}, noise "
          f"{args.noise or 'independent'}): 'right' in "
          f"{results['long_motion_accuracy_segments']:.0%} of {args.window}-frame segments, "
          f"{results['long_motion_accuracy_whole']:.0%} of whole clips")


def seams(pipe, args: argparse.Namespace, seeds: list[int], results: dict) -> None:
    """2. Seams: static windows, pyramid vs flat fusion."""
    for fuse in ("pyramid", "flat"):
        config = ContextConfig(length=args.window, overlap=args.overlap, schedule="static", fuse=fuse)
        windows = context_windows(args.frames, 0, config)
        boundaries = sorted({w[0] for w in windows[1:]} | {w[-1] + 1 for w in windows[:-1]})
        scores = []
        for seed in seeds:
            clip = to_clips(generate(pipe, args.prompt, num_frames=args.frames, steps=args.steps, seed=seed, context=config, progress=False).frames)[0]
            scores.append(seam_score(clip, boundaries))
        results[f"seam_{fuse}"] = float(np.mean(scores))
    print(f"seam score (1 = none): pyramid {results['seam_pyramid']:.3f}, flat {results['seam_flat']:.3f}")


def freeinit_consistency(pipe, args: argparse.Namespace, seeds: list[int], results: dict) -> None:
    """3. FreeInit vs none on the prompt suite (16 frames)."""
    prompts = list(PROMPT_SUITE[: args.suite_limit])
    for name, freeinit in (("none", None), ("freeinit3", FreeInitSettings(iterations=3))):
        ious, flickers = [], []
        for seed in seeds:
            for clip in to_clips(generate(pipe, prompts, num_frames=args.window, steps=args.steps, seed=seed, freeinit=freeinit, progress=False).frames):
                consistency = temporal_consistency(clip)
                ious.append(consistency["mask_iou"])
                flickers.append(consistency["flicker"])
        results[f"consistency_{name}"] = {"mask_iou": statistics.fmean(ious), "flicker": statistics.fmean(flickers)}
    for name in ("none", "freeinit3"):
        values = results[f"consistency_{name}"]
        print(f"temporal consistency, {name:9s}: mask IoU {values['mask_iou']:.3f}, flicker {values['flicker']:.3f}")


if __name__ == "__main__":
    main()
