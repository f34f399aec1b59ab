"""Does a zoom MotionLoRA expand the whole frame, or only part of it? (issue 3 diagnosis)

    python bench/probe_zoom_regions.py [--motion-lora PATH] [--lora SPATIAL] [--strengths 0 2 3] [--seeds 2] [--steps 15]

A zoom is a flow that points away from the frame's centre, so every pixel must know where it is; a pan is the
same flow everywhere. Temporal attention acts on each latent pixel's frames alone, so a motion module on a small
latent may only know where a pixel is near the frame's edges (zero padding). This fits the camera metric's
translation + zoom flow (`zoetrope.world.metrics.measure_camera`) separately on the frame's centre and on its
border ring, for true zoom-in clips and for clips generated with the bundled model and a zoom LoRA on the camera
suite: a true zoom reads the same in both, a LoRA that learned "content moves outward near the edges" does not.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from zoetrope.media import frames_to_uint8
from zoetrope.pipelines.load import WeightedFile, load_pipeline
from zoetrope.pipelines.text_to_video import generate
from zoetrope.world.bundled import bundled_folder
from zoetrope.world.metrics import CAMERA_SUITE, measure_camera
from zoetrope.world.render import WorldConfig, render_clip, sample_clip_spec

SIZE = 64


def regions(size: int = SIZE, half: int = 16) -> dict[str, np.ndarray]:
    """The centre square (|x|, |y| < `half` px from the middle) and the ring around it."""
    axis = np.arange(size) + 0.5 - size / 2
    distance = np.maximum(np.abs(axis)[:, None], np.abs(axis)[None, :])
    return {"centre": distance < half, "border": distance >= half}


def region_zooms(clips: list[np.ndarray]) -> dict[str, float]:
    """Mean log zoom over the clips in each region and over the whole frame."""
    parts = regions()
    result = {name: float(np.mean([measure_camera(clip, region=mask).log_zoom for clip in clips])) for name, mask in parts.items()}
    result["whole"] = float(np.mean([measure_camera(clip).log_zoom for clip in clips]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    folder = bundled_folder()
    parser.add_argument("--motion-lora", default=str(folder / "motion_lora_zoom_in.safetensors"))
    parser.add_argument(
        "--lora", default=None, help="the image-UNet LoRA trained beside the MotionLoRA (lora.spatial_target), at its strength"
    )
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 2.0, 3.0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    config = WorldConfig()
    rng = np.random.default_rng(0)
    true = [render_clip(sample_clip_spec(rng, config, camera="zoom in"), config) for _ in range(16)]
    rows = [("true zoom-in clips (16)", region_zooms(true))]
    prompts = list(CAMERA_SUITE)
    for strength in args.strengths:
        pipeline = load_pipeline(
            folder / "base.safetensors", folder / "motion_module.safetensors",
            motion_loras=[WeightedFile.parse(f"{args.motion_lora}:{strength}")],
            loras=[WeightedFile.parse(f"{args.lora}:{strength}")] if args.lora else (),
        )
        clips = []
        for seed in range(args.seeds):
            result = generate(
                pipeline, prompts, num_frames=16, width=SIZE, height=SIZE, steps=args.steps,
                seed=[seed] * len(prompts), progress=False,
            )
            clips += [frames_to_uint8(video) for video in result.frames]
        rows.append((f"LoRA strength {strength:g} ({len(clips)} clips)", region_zooms(clips)))
    print(f"{'clips':<32}{'centre':>10}{'border':>10}{'whole':>10}   (log zoom; > 0 zooms in)")
    for name, values in rows:
        print(f"{name:<32}{values['centre']:10.3f}{values['border']:10.3f}{values['whole']:10.3f}")


if __name__ == "__main__":
    main()
