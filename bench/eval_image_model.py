"""How well does a shapes-world *image* model follow its prompt, before any motion? (issue 3 diagnosis)

    python bench/eval_image_model.py --model runs/world/image/model.safetensors [--json out.json] [--trajectory]

The fidelity targets of issue 3 (colour and shape >= 90 %) are measured on clips from image model + motion module,
but a clip can only be as faithful as the stills its frozen image model draws. This scores the image model alone
in about a minute on a CPU: stills for a fixed grid of prompts (every colour, shape and background; seeds 0..n-1),
read back with the world's metrics (colour, shape, background accuracy), plus how much the picture changes when
only the direction word changes ("moving left" -> "moving right", same seed): near 0 means the model ignores the
direction, and no motion module can then make the direction follow the prompt (the motion module has no text
input of its own). Frames are independent stills (motion strength 0), so the bundled motion module only shapes
the pipeline; it does not act.

`--trajectory` asks *when* instead: the sampler's clean estimate at every step is decoded and read back, so the
table shows at which timestep each still's shape and colour are decided (`trajectory`).

It also prints where and how large the object is drawn for each motion word (mean centroid and area of those
stills). The image data's stills are first frames, so the words carry a real cue: a clip moving left starts in the
right half of the frame, one growing starts small. A model that learned the cue places the object accordingly.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from zoetrope.errors import CheckpointError, InputError
from zoetrope.formats.motion import save_motion_module
from zoetrope.media import frames_to_uint8
from zoetrope.models.motion_module import MotionModules
from zoetrope.pipelines.components import decode_latents, load_image_model
from zoetrope.pipelines.load import load_pipeline
from zoetrope.pipelines.text_to_video import default_guidance_rescale, generate
from zoetrope.training.stages import motion_config_for
from zoetrope.world.bundled import bundled_paths
from zoetrope.world.metrics import UNKNOWN, classify_background, classify_colour, classify_shape, track_object
from zoetrope.world.render import BACKGROUNDS, COLOURS, MOTION_PHRASES, SHAPES, Intent, caption

SIZE = 64


def prompt_grid(count: int) -> list[tuple[str, str, str]]:
    """`count` (colour, shape, background) triples cycling through every value of each (24 prompts: every colour
    4 times, every shape 6 times, every background 6 times)."""
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    return [
        (colours[i % len(colours)], SHAPES[(i // len(colours) + i) % len(SHAPES)], backgrounds[(i // 3) % len(backgrounds)])
        for i in range(count)
    ]


def grid_captions(grid: list[tuple[str, str, str]]) -> list[str]:
    """The world's clean still captions ("a red square on a grey background") of (colour, shape, background) triples."""
    return [caption(Intent(shape=shape, colour=colour, background=background), video=False) for colour, shape, background in grid]


def stills(
    pipeline, prompts: list[str], seeds: int, steps: int, guidance: float, rescale: float | None = None,
    scheduler: str = "ddim", callback=None,
) -> np.ndarray:
    """Stills as float 8-bit levels (len(prompts), seeds, h, w, 3): one generation per prompt, `seeds` frames each
    (independent noise per frame, motion off). `callback` goes to `generate` (per step)."""
    result = generate(
        pipeline, prompts, num_frames=seeds, width=SIZE, height=SIZE, steps=steps, guidance_scale=guidance,
        guidance_rescale=rescale, seed=list(range(len(prompts))), motion_strength=0.0, progress=False,
        scheduler=scheduler, callback=callback,
    )
    return np.stack([frames_to_uint8(video) for video in result.frames]).astype(np.float64)


def trajectory(
    pipeline, grid: list[tuple[str, str, str]], seeds: int, steps: int, guidance: float, rescale: float,
    scheduler: str = "ddim",
) -> dict:
    """Where along the sampler each still's shape and colour are decided.

    Every step's clean estimate (the sampler's x0 prediction, `generate`'s `denoised` preview) is decoded and read
    back like a finished still. Per step: the share of estimates in the asked shape / colour, and the share whose
    shape reading already equals the finished still's. Per still, the step from which its shape reading no longer
    changes ("decided"); the median timestep of that over the stills says at which noise level the outline is
    chosen (the twenty-ninth session: between t ~ 800 and ~ 450 on the world's models), so that training and
    sampling changes can be aimed there and checked."""
    texts = grid_captions(grid)
    asked_shapes = np.array([[shape] * seeds for _, shape, _ in grid])
    asked_colours = np.array([[colour] * seeds for colour, _, _ in grid])
    estimates: list[torch.Tensor] = []
    timesteps: list[int] = []

    def preview(step: int, t: int, latents: torch.Tensor, denoised: torch.Tensor | None) -> None:
        if denoised is None:
            raise InputError(f"--trajectory reads the sampler's clean estimate; scheduler {scheduler!r} reports none "
                             "(every sampler `--scheduler` offers reports one)")
        estimates.append(denoised.float().cpu())
        timesteps.append(int(t))

    def read(images: np.ndarray, classify) -> np.ndarray:
        return np.array([[classify(frame[None]) for frame in frames] for frames in images])

    final_shapes = read(stills(pipeline, texts, seeds, steps, guidance, rescale, scheduler, callback=preview), classify_shape)
    shape_right, colour_right, agreement, readings = [], [], [], []
    for estimate in estimates:
        frames = decode_latents(pipeline.image_model.vae, estimate.to(pipeline.device, pipeline.dtype))
        images = np.stack([frames_to_uint8(video) for video in frames]).astype(np.float64)
        shapes = read(images, classify_shape)
        shape_right.append(float((shapes == asked_shapes).mean()))
        colour_right.append(float((read(images, classify_colour) == asked_colours).mean()))
        agreement.append(float((shapes == final_shapes).mean()))
        readings.append(shapes)
    # The first step from which every later estimate reads the finished shape (the last estimate is the finished
    # latents up to the scheduler's final alpha, so nearly every still is decided by the last step).
    stable = np.ones_like(final_shapes, dtype=bool)
    decided = np.full(final_shapes.shape, len(readings) - 1)
    for index in range(len(readings) - 1, -1, -1):
        stable &= readings[index] == final_shapes
        decided = np.where(stable, index, decided)
    decided_t = np.asarray(timesteps)[decided]
    return {
        "timesteps": timesteps,
        "shape_accuracy": shape_right,
        "colour_accuracy": colour_right,
        "shape_agrees_with_final": agreement,
        "shape_decided_t": {name: float(np.percentile(decided_t, q)) for name, q in (("q25", 25), ("median", 50), ("q75", 75))},
    }


def object_placement(pictures: np.ndarray) -> dict[str, float]:
    """Mean object centroid (px from the top-left corner) and area (px) over the stills where an object is found."""
    tracks = [track_object(picture[None]) for picture in pictures]
    found = [track for track in tracks if track.valid[0]]
    if not found:
        return {"x": float("nan"), "y": float("nan"), "area": float("nan"), "found": 0}
    return {
        "x": float(np.mean([track.centre_x[0] for track in found])),
        "y": float(np.mean([track.centre_y[0] for track in found])),
        "area": float(np.mean([track.area[0] for track in found])),
        "found": len(found),
    }


def score_stills(
    grid: list[tuple[str, str, str]], images: np.ndarray
) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Hits per attribute (colour, shape, background) of stills `images` (len(grid), n, h, w, 3) asked for `grid`'s
    (colour, shape, background), and the shape confusion: asked shape -> how often each shape was read back
    (`UNKNOWN`: no object found). One column taking every row means the model draws one form whatever the word
    (a rendering problem); a spread-out row means it draws forms but not the asked one (a text-binding problem)."""
    hits = {"colour": 0, "shape": 0, "background": 0}
    confusion = {asked: {drawn: 0 for drawn in (*SHAPES, UNKNOWN)} for asked in SHAPES}
    for (colour, shape, background), frames in zip(grid, images, strict=True):
        for frame in frames:
            drawn = classify_shape(frame[None])
            confusion[shape][drawn] += 1
            hits["colour"] += classify_colour(frame[None]) == colour
            hits["shape"] += drawn == shape
            hits["background"] += classify_background(frame[None]) == background
    return hits, confusion


def stills_pipeline(model: str, vae: str | None = None):
    """The image model in a video pipeline for stills (motion is switched off with `motion_strength=0`).

    The pipeline still needs a motion module whose widths fit the UNet: the bundled one where it does (as every
    earlier measurement), else an untrained one built for this UNet (a UNet of other widths, e.g. a wider lineage);
    with motion off either gives the same stills."""
    try:
        return load_pipeline(model, bundled_paths()[1], vae=vae)
    except CheckpointError:
        pass
    unet = load_image_model(model).unet
    with tempfile.TemporaryDirectory() as folder:
        path = save_motion_module(MotionModules(motion_config_for(unet, "v3", {})), Path(folder) / "fresh.safetensors")
        return load_pipeline(model, path, vae=vae)


def evaluate(
    model: str, prompts: int = 24, seeds: int = 4, steps: int = 20, guidance: float = 7.5, rescale: float | None = None,
    vae: str | None = None, scheduler: str = "ddim",
) -> dict:
    """Colour/shape/background accuracy of stills, and the direction response (mean |left - right| in levels).

    `guidance` matters more than it looks: a zero-terminal-SNR v-prediction model over-saturates at SD's usual 7.5
    (colours drift, backgrounds wash out), which reads as lost fidelity; sweep it; `rescale` None takes the
    pipeline's default (0.7 for such a model)."""
    pipeline = stills_pipeline(model, vae)
    rescale = default_guidance_rescale(pipeline) if rescale is None else rescale
    grid = prompt_grid(prompts)
    texts = grid_captions(grid)
    images = stills(pipeline, texts, seeds, steps, guidance, rescale, scheduler)
    hits, confusion = score_stills(grid, images)
    total = prompts * seeds
    directions, placement = {}, {}
    for first, second in (("left", "right"), ("up", "down"), ("grow", "shrink")):
        one, two = (
            stills(
                pipeline,
                [f"a {c} {s} {MOTION_PHRASES[motion]} on a {b} background" for c, s, b in grid[:8]],
                seeds, steps, guidance, rescale, scheduler,
            )
            for motion in (first, second)
        )
        directions[f"{MOTION_PHRASES[first]} -> {MOTION_PHRASES[second]}"] = float(np.abs(one - two).mean())
        for motion, pictures in ((first, one), (second, two)):
            placement[MOTION_PHRASES[motion]] = object_placement(pictures.reshape(-1, *pictures.shape[-3:]))
            # Shape accuracy by motion word: "shrinking" stills start large, "growing" ones small, so the pair
            # says whether shapes come out better when the object covers more latent pixels.
            shape_hits = score_stills(grid[:8], pictures)[0]["shape"]
            placement[MOTION_PHRASES[motion]]["shape_accuracy"] = shape_hits / (pictures.shape[0] * pictures.shape[1])
    seed_change = float(np.abs(images[:8, :1] - images[:8, 1:2]).mean()) if seeds > 1 else None
    return {
        "model": model,
        "vae": vae,
        "guidance": guidance,
        "guidance_rescale": rescale,
        "scheduler": scheduler,
        "stills": total,
        **{f"{name}_accuracy": count / total for name, count in hits.items()},
        "shape_confusion": confusion,
        "word_change_levels": directions,
        "placement": placement,
        "seed_change_levels": seed_change,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="single-file SD image model (e.g. the image stage's export)")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument(
        "--guidance-rescale", type=float, default=None, help="0 = off; default 0.7 for zero-terminal-SNR models, else 0"
    )
    parser.add_argument("--vae", default=None, help="decode with this `vae` stage export instead of the model's VAE")
    parser.add_argument("--scheduler", default="ddim", help="sampler (zoetrope generate --scheduler names)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--trajectory", action="store_true",
        help="instead: read every step's clean estimate back, to see at which timestep shapes and colours are decided",
    )
    args = parser.parse_args()
    if args.trajectory:
        pipeline = stills_pipeline(args.model, args.vae)
        rescale = default_guidance_rescale(pipeline) if args.guidance_rescale is None else args.guidance_rescale
        path = trajectory(
            pipeline, prompt_grid(args.prompts), args.seeds, args.steps, args.guidance, rescale, args.scheduler
        )
        print(f"{args.model}: {args.prompts * args.seeds} stills, the clean estimate at every step read back")
        print(f"  {'step':>4} {'t':>5} {'shape right':>12} {'colour right':>13} {'shape = finished':>17}")
        for step, t in enumerate(path["timesteps"]):
            shape, colour = path["shape_accuracy"][step], path["colour_accuracy"][step]
            print(f"  {step:4d} {t:5d} {100 * shape:10.1f} % {100 * colour:11.1f} % "
                  f"{100 * path['shape_agrees_with_final'][step]:15.1f} %")
        quartiles = path["shape_decided_t"]
        print(f"  shape decided (its reading unchanged from then on) at t = {quartiles['median']:.0f} "
              f"(quartiles {quartiles['q75']:.0f} .. {quartiles['q25']:.0f})")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump({"model": args.model, "stills": args.prompts * args.seeds, **path}, handle, indent=2)
        return
    results = evaluate(
        args.model, args.prompts, args.seeds, args.steps, args.guidance, args.guidance_rescale, args.vae, args.scheduler
    )
    print(f"{results['model']}: {results['stills']} stills")
    for name in ("colour", "shape", "background"):
        print(f"  {name + ' accuracy':<30}{100 * results[f'{name}_accuracy']:6.1f} %")
    columns = next(iter(results["shape_confusion"].values()))
    print(f"  {'shape asked / read back':<30}" + " ".join(f"{name[:8]:>8}" for name in columns))
    for asked, row in results["shape_confusion"].items():
        print(f"  {asked:<30}" + " ".join(f"{count:8d}" for count in row.values()))
    for name, change in results["word_change_levels"].items():
        print(f"  {name:<30}{change:6.2f} levels changed (same seed)")
    for motion, place in results["placement"].items():
        print(f"  {'drawn, ' + motion:<30}x {place['x']:5.1f}  y {place['y']:5.1f}  area {place['area']:6.1f} px  "
              f"shape {100 * place['shape_accuracy']:5.1f} %")
    if results["seed_change_levels"] is not None:
        print(f"  {'another seed':<30}{results['seed_change_levels']:6.2f} levels changed (another noise draw, for scale)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
