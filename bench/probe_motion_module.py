"""What has a motion module learned? Three numbers per noise level on true shapes-world clips (issue 3 diagnosis).

    python bench/probe_motion_module.py --model zoetrope/assets/world/base.safetensors \
        --motion-module zoetrope/assets/world/motion_module.safetensors

A motion module has no text input and sees frames only through self-attention plus a sinusoidal position code, so
"moving left" can only come out of it if (a) it acts at the noise levels where a clip's layout is decided, (b) its
output depends on frame *order* (time-reversed "left" is "right"; order-blind attention can only smooth), and (c)
the caption's motion word, heard through the frozen image UNet, changes what it predicts. For `--clips` rendered
clips with motion words, noised at each `--timesteps` value with the training schedule (AnimateDiff's linear betas),
this prints:

- `motion share`: |eps - eps_image| / |eps_image|, eps_image the prediction with the motion module off;
- `order share`: |eps(x) - flip(eps(flip(x)))| / |eps - eps_image|, the part of the module's contribution that
  changes when time runs backwards (0 = an order-blind smoother);
- `loss true / swapped`: epsilon MSE with the true caption and with its motion word swapped (left <-> right,
  up <-> down, growing <-> shrinking), and `caption gain` = swapped / true - 1 (0 = the direction word is ignored).

Clips are rendered in the video domain (watermark band, JPEG), as the motion stage trains on; `--adapter` attaches
the domain adapter as that stage does (the numbers in docs/world-training.md were taken without it, as inference
runs). Seconds per clip and timestep on a CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from zoetrope.pipelines.components import encode_prompts
from zoetrope.training.probing import clip_latents, motion_noise_scheduler
from zoetrope.world.render import WorldConfig, caption, sample_clip_spec

SWAPS = {"moving left": "moving right", "moving right": "moving left", "moving up": "moving down",
         "moving down": "moving up", "growing": "shrinking", "shrinking": "growing"}
DIRECTED = ("left", "right", "up", "down", "grow", "shrink")


def swapped(text: str) -> str:
    """The caption with its motion word replaced by the opposite one."""
    for word, opposite in SWAPS.items():
        if word in text:
            return text.replace(word, opposite)
    raise ValueError(f"no directed motion word in {text!r}")


def probe(pipeline, clips: int, timesteps: list[int], seed: int = 0) -> dict[int, dict[str, float]]:
    """Mean motion share, order share, true/swapped losses and caption gain per timestep (see the module doc)."""
    world = WorldConfig()
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    unet, model = pipeline.video_unet, pipeline.image_model
    scheduler = motion_noise_scheduler(model.parameterization)  # the motion stage's betas, the model's parameterization
    velocity = scheduler.config.prediction_type == "v_prediction"
    totals: dict[int, dict[str, float]] = {t: {"motion": 0.0, "order": 0.0, "true": 0.0, "swapped": 0.0} for t in timesteps}
    with torch.no_grad():
        for _ in range(clips):
            spec = sample_clip_spec(rng, world, motions=DIRECTED)
            latents = clip_latents(model.vae, spec, world, video_domain=False)
            text = caption(spec)
            true_text, other_text = encode_prompts(model.tokenizer, model.text_encoder, [text, swapped(text)])
            for t in timesteps:
                noise = torch.randn(latents.shape, generator=generator)
                step = torch.tensor([t])
                noisy = scheduler.add_noise(latents, noise, step)
                target = scheduler.get_velocity(latents, noise, step) if velocity else noise
                full = unet(noisy, step, true_text[None])
                image = unet(noisy, step, true_text[None], motion_strength=0.0)
                reverse = unet(noisy.flip(2), step, true_text[None]).flip(2)
                other = unet(noisy, step, other_text[None])
                contribution = (full - image).norm()
                row = totals[t]
                row["motion"] += float(contribution / image.norm()) / clips
                row["order"] += float((full - reverse).norm() / contribution) / clips
                row["true"] += float(((full - target) ** 2).mean()) / clips
                row["swapped"] += float(((other - target) ** 2).mean()) / clips
    for row in totals.values():
        row["caption_gain"] = row["swapped"] / row["true"] - 1.0
    return totals


def main() -> None:
    from zoetrope.pipelines.load import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="single-file SD image model")
    parser.add_argument("--motion-module", required=True)
    parser.add_argument("--adapter", help="domain adapter to attach (PATH[:SCALE]), as during motion training")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[300, 600, 900, 999])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", help="also write the numbers as JSON here")
    args = parser.parse_args()
    pipeline = load_pipeline(args.model, args.motion_module, adapter=args.adapter)
    results = probe(pipeline, args.clips, args.timesteps, args.seed)
    print(f"{'t':>5} {'motion share':>13} {'order share':>12} {'loss true':>10} {'swapped':>10} {'caption gain':>13}")
    for t, row in results.items():
        print(f"{t:>5} {row['motion']:>13.3f} {row['order']:>12.3f} {row['true']:>10.5f} {row['swapped']:>10.5f} "
              f"{100 * row['caption_gain']:>12.2f}%")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"settings": vars(args), "timesteps": results}, indent=2))


if __name__ == "__main__":
    main()
