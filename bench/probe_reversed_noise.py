"""Does a clip's motion come from the model or from the noise? Reverse the initial noise in time and look.

    python bench/probe_reversed_noise.py --model zoetrope/assets/world/base.safetensors \
        --motion-module zoetrope/assets/world/motion_module.safetensors \
        --motion-lora zoetrope/assets/world/motion_lora_zoom_in.safetensors --suite camera

A motion module (or MotionLoRA) that has learned a direction makes the same motion from initial noise N and from N
with its frames in reverse order: a zoom-in LoRA zooms in whatever the noise. A model whose output is time-reversal
equivariant (G(reversed N) = reversed G(N)) cannot: the direction of each clip is then whatever the noise suggests.
That is what training rewards when the direction can be *read* from the noisy input instead of produced: at t = 999
AnimateDiff's linear schedule keeps sqrt(alpha_bar) = 0.068 of the training clip in x_t. For each prompt and seed
this generates the pair and classifies both clips (`zoetrope.world.metrics`: camera motion for `--suite camera`,
object motion for `--suite base`), then counts pairs that move the `same` way (the direction comes from the model),
`reversed` pairs (zoom in <-> zoom out, left <-> right, grow <-> shrink: it comes from the noise), pairs with no
direction in both (`undirected`: still, none, rotate) and the rest (`other`). Writes JSON with every pair.

`--palindrome` asks the complementary question: clips from palindromic noise (frame k = frame F-1-k, so the noise
suggests no direction at all). An equivariant model then makes a time-symmetric clip (out and back, read as no net
motion); a model with a learned direction still moves one way. Prints the motions read and the clips' mean
time asymmetry |clip - reversed clip| in 8-bit levels (0 = perfectly symmetric).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from zoetrope.media import frames_to_uint8
from zoetrope.pipelines.text_to_video import generate, initial_noise
from zoetrope.world.metrics import CAMERA_SUITE, PROMPT_SUITE, classify_camera, classify_motion
from zoetrope.world.render import WorldConfig

OPPOSITE = {"zoom in": "zoom out", "zoom out": "zoom in", "pan left": "pan right", "pan right": "pan left",
            "left": "right", "right": "left", "up": "down", "down": "up", "grow": "shrink", "shrink": "grow"}


def compare(first: str, second: str) -> str:
    """`same`, `reversed`, `undirected` or `other` for the motions read from the clips of N and of reversed N."""
    if first == second:
        return "same" if first in OPPOSITE else "undirected"
    return "reversed" if OPPOSITE.get(first) == second else "other"


def palindrome(noise: torch.Tensor) -> torch.Tensor:
    """`(b, c, f, h, w)` noise whose frame k equals frame f-1-k (the first half mirrored): it has no direction."""
    frames = noise.shape[2]
    order = [min(k, frames - 1 - k) for k in range(frames)]
    return noise[:, :, order]


def _clip(pipeline, prompt, latents, frames, size, steps, guidance) -> np.ndarray:
    result = generate(pipeline, prompt, num_frames=frames, width=size, height=size, steps=steps,
                      guidance_scale=guidance, latents=latents, progress=False)
    return frames_to_uint8(result.frames[0])


def _noise(pipeline, seed: int, frames: int, size: int) -> torch.Tensor:
    latent = size // pipeline.vae_scale
    shape = (pipeline.video_unet.config.in_channels, frames, latent, latent)
    return initial_noise([seed], shape, pipeline.device, pipeline.dtype)


def clip_pair(pipeline, prompt: str, seed: int, frames: int, size: int, steps: int,
              guidance: float) -> tuple[np.ndarray, np.ndarray]:
    """uint8 clips `(f, h, w, 3)` from the seed's official noise and from the same noise with its frames reversed."""
    noise = _noise(pipeline, seed, frames, size)
    return tuple(_clip(pipeline, prompt, latents, frames, size, steps, guidance) for latents in (noise, noise.flip(2)))


def palindrome_clip(pipeline, prompt: str, seed: int, frames: int, size: int, steps: int, guidance: float) -> np.ndarray:
    """uint8 clip `(f, h, w, 3)` from the seed's noise made palindromic (`palindrome`)."""
    return _clip(pipeline, prompt, palindrome(_noise(pipeline, seed, frames, size)), frames, size, steps, guidance)


def asymmetry(clip: np.ndarray) -> float:
    """Mean |clip - time-reversed clip| in 8-bit levels."""
    return float(np.abs(clip.astype(np.float32) - clip[::-1].astype(np.float32)).mean())


def main() -> None:
    from zoetrope.pipelines.load import WeightedFile, load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--motion-module", required=True)
    parser.add_argument("--motion-lora", default=None)
    parser.add_argument("--suite", choices=("camera", "base"), default="camera")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--palindrome", action="store_true", help="clips from direction-free (palindromic) noise")
    parser.add_argument("-o", "--output", default="outputs/probe_reversed_noise.json")
    args = parser.parse_args()

    loras = [WeightedFile(Path(args.motion_lora), 1.0)] if args.motion_lora else []
    pipeline = load_pipeline(args.model, args.motion_module, motion_loras=loras)
    config = WorldConfig(size=args.size, num_frames=args.frames)
    prompts = CAMERA_SUITE if args.suite == "camera" else PROMPT_SUITE
    classify = classify_camera if args.suite == "camera" else classify_motion
    if args.palindrome:
        rows = []
        for seed in range(args.seeds):
            for prompt in prompts:
                clip = palindrome_clip(pipeline, prompt, seed, args.frames, args.size, args.steps, args.guidance)
                rows.append({"prompt": prompt, "seed": seed, "motion": classify(clip, config),
                             "asymmetry": asymmetry(clip)})
        counts = Counter(row["motion"] for row in rows)
        mean_asymmetry = float(np.mean([row["asymmetry"] for row in rows]))
        print(f"{len(rows)} clips from palindromic noise ({args.suite} suite, motion LoRA: {args.motion_lora or 'none'}):"
              f" motions {dict(counts)}, mean time asymmetry {mean_asymmetry:.2f} levels")
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({"settings": vars(args), "counts": dict(counts),
                                      "mean_asymmetry": mean_asymmetry, "clips": rows}, indent=2))
        print(f"wrote {output}")
        return
    pairs = []
    for seed in range(args.seeds):
        for prompt in prompts:
            forward, backward = clip_pair(pipeline, prompt, seed, args.frames, args.size, args.steps, args.guidance)
            read = (classify(forward, config), classify(backward, config))
            pairs.append({"prompt": prompt, "seed": seed, "noise": read[0], "reversed_noise": read[1],
                          "verdict": compare(*read)})
    counts = Counter(pair["verdict"] for pair in pairs)
    print(f"{len(pairs)} pairs ({args.suite} suite, motion LoRA: {args.motion_lora or 'none'}): "
          + ", ".join(f"{name} {counts.get(name, 0)}" for name in ("same", "reversed", "undirected", "other")))
    print("motions from N:", dict(Counter(pair["noise"] for pair in pairs)))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"settings": vars(args), "counts": dict(counts), "pairs": pairs}, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
