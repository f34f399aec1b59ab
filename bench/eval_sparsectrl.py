"""SparseCtrl measurements on the shapes world (issue 5: keyframe control).

    python bench/eval_sparsectrl.py --model runs/world/image/model.safetensors \
        --motion-module runs/world/motion/motion_module.safetensors \
        --adapter runs/world/domain-adapter/domain_adapter.safetensors \
        --control-model runs/world/sparsectrl-rgb/sparse_control.safetensors \
        --ablation-model runs/world/sparsectrl-rgb-notemporal/sparse_control.safetensors

For `--prompts` prompts spread over the world's prompt suite (one per motion by default) a ground-truth clip is
rendered (`zoetrope.world.render`, in the watermarked video domain the encoders were trained on, or `--clean`), and
two SparseCtrl tasks are run with equal seeds for the trained encoder and, side by side, the no-temporal ablation:

1. image animation: frame 0 of the clip is the only keyframe;
2. interpolation: frames 0 and -1 are the keyframes.

A sketch encoder (`--control-model` of condition "sketch") gets the keyframes as edge maps
(`zoetrope.training.conditions.edge_map`, the form it was trained on) instead of pictures; its keyframe PSNR is then
informative only (a sketch carries no colour), and the keyframe centroid error below is what says whether the
object was drawn where the sketch put it.

Measured (targets in brackets):
- keyframe PSNR: generated frames at the keyframes vs the given keyframe images (>= 25 dB); the VAE round trip of
  the same frames (encode at the posterior mode, decode) is printed as the ceiling no generation can beat;
- seam ratio: the mean absolute change between a conditioned frame and its neighbour divided by the clip's median
  frame-to-frame change (<= 1.5; 1 = the keyframe blends in, large = the keyframe "pops" out of the clip);
- interpolation centroid error: the object's centroid in the generated middle frame (the mean of the two middle
  frames for even lengths) vs the straight-line midpoint of the keyframes' object centroids, in pixels (<= 3 px),
  with the middle frame's spread ratio beside it (~1: one object on the path; ~2: a cross-fade of the keyframes,
  which also puts the centroid on the midpoint), and the error split into its parts along the path (mean absolute,
  and mean signed "lead": > 0 the object is ahead of the midpoint) and across it (off the straight line);
- keyframe centroid error: the generated object's centroid at each keyframe vs the keyframe's, in pixels (no
  target; the sketch encoder's counterpart of keyframe PSNR).
Prints a table and writes JSON. About 15 minutes on 2 CPU cores with the defaults (6 prompts, 20 steps, 1 seed,
two encoders); seconds on a GPU (`--device cuda`).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from zoetrope.errors import InputError
from zoetrope.media import frames_to_uint8, psnr
from zoetrope.pipelines.components import decode_latents, encode_frames
from zoetrope.pipelines.image_to_video import load_control_for, prepare_control
from zoetrope.pipelines.load import load_pipeline
from zoetrope.pipelines.text_to_video import generate
from zoetrope.training.conditions import edge_map
from zoetrope.world.metrics import PROMPT_SUITE, frame_changes, prompts_with_motions, track_object
from zoetrope.world.render import WorldConfig, render_clip, spec_for_prompt

TASKS = {"animation": [0], "interpolation": [0, -1]}
TARGETS = {"keyframe_psnr": (">=", 25.0), "seam_ratio": ("<=", 1.5), "centroid_error": ("<=", 3.0)}
REFERENCES = {**TARGETS, "middle_spread_ratio": ("~", 1.0)}  # what the table prints beside each metric (no verdict)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (k, h, w, 3) -> (k, 3, h, w) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div(255.0).permute(0, 3, 1, 2)


def keyframe_images(truth: np.ndarray, frames: list[int], condition: str) -> list[torch.Tensor]:
    """The keyframe conditions for `frames` of a ground-truth clip: the frames themselves for an RGB encoder, their
    edge maps (what the sketch encoder was trained on) for a sketch encoder; each (3, h, w) in [0, 1]."""
    images = to_tensor(truth[frames])
    return list(edge_map(images) if condition == "sketch" else images)


def keyframe_centroid_errors(clip: np.ndarray, truth: np.ndarray, frames: list[int], config: WorldConfig) -> list[float]:
    """Distance in px between the generated and the true object centroid at each keyframe (skipped where either
    has no object)."""
    generated, true = track_object(clip[frames], config), track_object(truth[frames], config)
    found = generated.valid & true.valid
    return [
        float(math.hypot(gx - tx, gy - ty))
        for gx, gy, tx, ty in zip(generated.centre_x[found], generated.centre_y[found], true.centre_x[found], true.centre_y[found])
    ]


def seam_ratio(clip: np.ndarray, frames: list[int]) -> float:
    """Change between each conditioned frame and its neighbour (the next one; the previous for the last frame),
    averaged over the conditioned frames, divided by the clip's median frame-to-frame change."""
    changes = frame_changes(clip)
    median = float(np.median(changes)) or 1e-6
    neighbour = [changes[frame] if frame < len(clip) - 1 else changes[frame - 1] for frame in frames]
    return float(np.mean(neighbour)) / median


def centroid_error(
    clip: np.ndarray, first: np.ndarray, last: np.ndarray, config: WorldConfig
) -> tuple[float, float, float, float] | None:
    """(distance in px from the generated middle-frame centroid to the midpoint of the keyframes' centroids,
    the middle frame's spread over the keyframes' spread, the offset along the path, the offset across it).

    The two offsets split the distance: along the first -> last direction (signed; > 0 = ahead of the midpoint, the
    object got there early; < 0 = lagging) and across it (unsigned: off the straight line). A timing error (easing in
    or out) shows up along, a curved or wrong path across; both are 0 when the keyframes' centroids coincide.

    The spread ratio guards the centroid: a cross-fade of the two keyframes also has its centroid on the midpoint,
    but two half-faded copies spread ~2x as far from it as one object (`Track.spread`); ~1 means one object moved.
    None when the object is not found in a keyframe or in the middle frame(s).
    """
    keys = track_object(np.stack([first, last]), config)
    generated = track_object(clip, config)
    middle = [(len(clip) - 1) // 2, len(clip) // 2]  # one frame for odd lengths, the two middle frames for even
    if not keys.valid.all() or not generated.valid[middle].all():
        return None
    target = np.array([keys.centre_x.mean(), keys.centre_y.mean()])
    found = np.array([generated.centre_x[middle].mean(), generated.centre_y[middle].mean()])
    spread = float(generated.spread[middle].mean() / max(keys.spread.mean(), 1e-6))
    path = np.array([keys.centre_x[1] - keys.centre_x[0], keys.centre_y[1] - keys.centre_y[0]])
    length = float(np.linalg.norm(path))
    offset = found - target
    along = float(offset @ path) / length if length > 1e-6 else 0.0
    across = abs(float(offset[0] * path[1] - offset[1] * path[0])) / length if length > 1e-6 else 0.0
    return float(np.linalg.norm(offset)), spread, along, across


@torch.no_grad()
def vae_ceiling(pipe, images: np.ndarray) -> list[float]:
    """PSNR of the VAE round trip (mode, then decode) of uint8 images (k, h, w, 3): the best a latent model can do."""
    video = rearrange(to_tensor(images), "k c h w -> 1 c k h w").to(pipe.device, pipe.dtype)
    decoded = decode_latents(pipe.image_model.vae, encode_frames(pipe.image_model.vae, video, sample=False))
    return [psnr(a, b) for a, b in zip(frames_to_uint8(decoded[0]), images)]


def mean(values: list[float | None]) -> float | None:
    kept = [value for value in values if value is not None and math.isfinite(value)]
    return statistics.fmean(kept) if kept else None


def evaluate(pipe, encoder, clips: list[tuple[str, np.ndarray]], args, config: WorldConfig) -> dict:
    """Both tasks with one encoder over every (prompt, ground-truth clip) and seed."""
    size = config.size
    results: dict = {}
    for task, indices in TASKS.items():
        psnrs, seams, errors, spreads, failures, per_prompt, placed = [], [], [], [], 0, [], []
        alongs: list[float | None] = []
        acrosses: list[float | None] = []
        for prompt, truth in clips:
            frames = [index % len(truth) for index in indices]
            keyframes = list(zip(indices, keyframe_images(truth, frames, encoder.config.condition)))
            control = prepare_control(
                pipe, encoder, keyframes, len(truth), size, size, scale=args.control_scale, replace=args.keyframe_replace
            )
            for seed in range(args.seeds):
                result = generate(
                    pipe, prompt, num_frames=len(truth), width=size, height=size, steps=args.steps,
                    guidance_scale=args.guidance, seed=seed, control=control, progress=False,
                    color_match=args.color_match if encoder.config.condition == "rgb" else 0.0,
                )
                clip = frames_to_uint8(result.frames[0])
                clip_psnrs = [psnr(clip[frame], truth[frame]) for frame in frames]
                psnrs += clip_psnrs
                placed += keyframe_centroid_errors(clip, truth, frames, config)
                seams.append(seam_ratio(clip, frames))
                per_prompt.append({"prompt": prompt, "seed": seed, "seam_ratio": seams[-1],
                                   "keyframe_psnr": [round(value, 2) for value in clip_psnrs],
                                   "median_change": float(np.median(frame_changes(clip)))})
                if task == "interpolation":
                    measured = centroid_error(clip, truth[0], truth[-1], config)
                    failures += measured is None
                    error, spread, along, across = measured if measured is not None else (None,) * 4
                    errors.append(error)
                    spreads.append(spread)
                    alongs.append(along)
                    acrosses.append(across)
                    per_prompt[-1].update(centroid_error=error, spread=spread, along=along, across=across)
        results[task] = {"keyframe_psnr": mean(psnrs), "seam_ratio": mean(seams), "keyframe_centroid_error": mean(placed)}
        if task == "interpolation":
            results[task]["centroid_error"] = mean(errors)
            results[task]["middle_spread_ratio"] = mean(spreads)
            results[task]["path_lead"] = mean(alongs)  # signed: > 0 ahead of the midpoint, < 0 lagging
            results[task]["path_along"] = mean([None if value is None else abs(value) for value in alongs])
            results[task]["path_across"] = mean(acrosses)
            results[task]["centroid_untracked"] = failures
        results[task]["per_prompt"] = per_prompt
    return results


def passes(metric: str, value: float | None, condition: str = "rgb") -> str:
    if value is None:
        return "n/a"
    if metric == "keyframe_psnr" and condition != "rgb":
        return ""  # the PSNR target is for pictures given as keyframes; a sketch has no colours to reproduce
    sign, bound = TARGETS[metric]
    return "ok" if (value >= bound if sign == ">=" else value <= bound) else "MISS"


def table(results: dict) -> str:
    names = [name for name in ("temporal", "no_temporal") if name in results["encoders"]]
    header = f"{'task':14s} {'metric':16s} " + " ".join(f"{name:>14s}" for name in names) + f" {'target':>8s}"
    rows = [header, "-" * len(header)]
    for task in TASKS:
        for metric in ("keyframe_psnr", "keyframe_centroid_error", "seam_ratio", "centroid_error", "path_along",
                       "path_across", "path_lead", "middle_spread_ratio"):
            if metric not in results["encoders"][names[0]][task]:
                continue
            cells = []
            for name in names:
                value = results["encoders"][name][task][metric]
                condition = results["encoders"][name].get("condition", "rgb")
                verdict = passes(metric, value, condition) if metric in TARGETS else ""
                cells.append(f"{'-' if value is None else f'{value:.2f}'} {verdict:>4s}".rjust(14))
            sign, bound = REFERENCES.get(metric, ("", 0.0))
            target = f" {sign}{bound:>6g}" if sign else ""
            rows.append(f"{task:14s} {metric[:16]:16s} " + " ".join(cells) + target)
    ceiling = results["vae_ceiling_psnr"]
    rows.append(f"{'':14s} {'VAE ceiling':16s} {ceiling:>14.2f}  (PSNR of the keyframes' VAE round trip)")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the image model (single-file SD)")
    parser.add_argument("--motion-module", required=True)
    parser.add_argument("--adapter", default=None, help="domain adapter (merged), as the encoder was trained with")
    parser.add_argument("--control-model", required=True, help="the trained SparseCtrl encoder (RGB or sketch)")
    parser.add_argument("--ablation-model", default=None, help="the no-temporal encoder (side-by-side comparison)")
    parser.add_argument("--prompts", type=int, default=6, help="how many prompts, spread evenly over the world's suite")
    parser.add_argument(
        "--motions", default="",
        help="only the suite's prompts with these motions, comma-separated (left,right,up,down: the interpolations "
             "whose straight path is not a point)",
    )
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=8.5, help="official SparseCtrl configs use 8.5")
    parser.add_argument("--control-scale", type=float, default=1.0)
    parser.add_argument("--keyframe-replace", type=float, default=0.0, metavar="FRACTION",
                        help="also paste the re-noised keyframe latents for this fraction of the first steps (0 = off)")
    parser.add_argument("--color-match", type=float, default=0.0, metavar="STRENGTH",
                        help="RGB encoders: move each frame's colours towards the keyframes' (0 = off, 1 = full)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="world frame size (must match the model)")
    parser.add_argument("--clean", action="store_true", help="render clean image-domain keyframes (no watermark/JPEG)")
    parser.add_argument("--world-seed", type=int, default=0, help="seed of the ground-truth clip placements")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-o", "--output", default="outputs/eval_sparsectrl.json")
    args = parser.parse_args()

    pipe = load_pipeline(args.model, args.motion_module, adapter=args.adapter, device=args.device)
    config = WorldConfig(size=args.size, num_frames=args.frames)
    rng = np.random.default_rng(args.world_seed)
    suite = list(PROMPT_SUITE)
    if args.motions:
        try:
            suite = prompts_with_motions(suite, args.motions)
        except InputError as error:
            parser.error(str(error))
    stride = max(1, len(suite) // args.prompts)  # every motion of the suite, not just its first ones
    prompts = suite[::stride][: args.prompts]
    clips = [
        (prompt, render_clip(spec_for_prompt(prompt, rng, config), config, video_domain=not args.clean))
        for prompt in prompts
    ]

    results: dict = {"settings": vars(args), "encoders": {}}
    ceiling = [value for _, truth in clips for value in vae_ceiling(pipe, np.stack([truth[0], truth[-1]]))]
    results["vae_ceiling_psnr"] = mean(ceiling)
    encoders = {"temporal": args.control_model, "no_temporal": args.ablation_model}
    for name, path in encoders.items():
        if path is None:
            continue
        encoder = load_control_for(pipe, path)
        if encoder.config.condition != "rgb" and args.keyframe_replace:
            parser.error(f"{path} is a {encoder.config.condition} encoder: --keyframe-replace needs an RGB encoder "
                         "(a sketch has no keyframe latent to paste); drop it")
        results["encoders"][name] = {"file": path, "condition": encoder.config.condition,
                                     "has_temporal_layers": encoder.has_motion_modules,
                                     **evaluate(pipe, encoder, clips, args, config)}

    print(f"SparseCtrl on the shapes world: {len(prompts)} prompts x {args.seeds} seed(s), {args.frames} frames, "
          f"{args.steps} steps, CFG {args.guidance}, keyframe replacement {args.keyframe_replace}, "
          f"colour match {args.color_match}, "
          f"{'clean' if args.clean else 'video-domain'} keyframes")
    print(table(results))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
