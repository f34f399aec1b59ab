"""Where is a pixel? How well the features a motion module reads tell it (issue 3 diagnosis of the zoom LoRA).

    python bench/probe_position.py [--model M] [--motion-module MM] [--lora SPATIAL[:S]] [--clips 16]

A zoom's flow at a pixel is proportional to the pixel's offset from the frame's centre (v = s (p - c)); a pan's flow
is the same everywhere. The motion module's temporal attention and feed-forward act on each latent pixel's frames
alone, so a MotionLoRA can only make a zoom if the features it reads say where the pixel is. This captures the input
of every motion module while the video UNet denoises true zoom-in clips (noised on the motion stage's schedule) and
fits a probe from a pixel's feature vector to its position (x, y in [-1, 1] from the centre): ridge regression
(linear) and a small MLP, trained on half of the clips and scored (R^2) on the other half. Also printed: the same
probe on the UNet's input latents (nothing but the clip: a position-free baseline). R^2 near 1 means the module could
read the zoom's flow direction; near 0, it cannot, whatever its LoRA learns. `--lora` attaches an image-UNet LoRA
first (a `lora.spatial_target` export: did its convolutions learn to carry position?). Minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from zoetrope.adapters.position import position_features
from zoetrope.pipelines.components import encode_prompts
from zoetrope.training.probing import clip_latents, motion_noise_scheduler
from zoetrope.world.render import WorldConfig, caption, sample_clip_spec


def positions(height: int, width: int) -> np.ndarray:
    """(h * w, 2) pixel-centre coordinates x, y in [-1, 1], row-major like a flattened feature map: the position
    code's own coordinates (`position_features` without harmonics)."""
    return position_features(height, width, frequencies=0).numpy().astype(np.float64)


def r_squared(predicted: np.ndarray, target: np.ndarray) -> float:
    """Coefficient of determination averaged over the target's columns (1 = exact, 0 = the mean, < 0 = worse)."""
    residual = ((predicted - target) ** 2).sum(0)
    total = ((target - target.mean(0)) ** 2).sum(0)
    return float(np.mean(1.0 - residual / total))


def ridge_r2(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, alpha: float = 1e-2) -> float:
    """Held-out R^2 of a ridge regression (features standardised on the training half)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    a = np.concatenate([a, np.ones((len(a), 1))], 1)
    b = np.concatenate([b, np.ones((len(b), 1))], 1)
    weights = np.linalg.solve(a.T @ a + alpha * len(a) * np.eye(a.shape[1]), a.T @ train_y)
    return r_squared(b @ weights, test_y)


def mlp_r2(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, steps: int = 400, seed: int = 0) -> float:
    """Held-out R^2 of a one-hidden-layer MLP (64 units), full-batch Adam: a probe for non-linearly stored position."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x = torch.from_numpy((train_x - mean) / std).float()
    y = torch.from_numpy(train_y).float()
    hidden = 64
    w1 = (torch.randn(x.shape[1], hidden, generator=generator) / x.shape[1] ** 0.5).requires_grad_()
    b1 = torch.zeros(hidden, requires_grad=True)
    w2 = torch.zeros(hidden, y.shape[1], requires_grad=True)
    b2 = torch.zeros(y.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([w1, b1, w2, b2], lr=1e-2)
    with torch.enable_grad():
        for _ in range(steps):
            loss = ((torch.relu(x @ w1 + b1) @ w2 + b2 - y) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        test = torch.from_numpy((test_x - mean) / std).float()
        predicted = (torch.relu(test @ w1 + b1) @ w2 + b2).numpy()
    return r_squared(predicted, test_y)


def capture(pipeline, clips: int, timesteps: list[int], seed: int = 0) -> dict[int, dict[str, list[np.ndarray]]]:
    """Per timestep and motion module (name `block.index (h x w)`): one (frames * h * w, channels) array per clip."""
    world = WorldConfig()
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    unet, model = pipeline.video_unet, pipeline.image_model
    scheduler = motion_noise_scheduler(model.parameterization)
    modules = [
        (f"{name}.{index}", module)
        for name, block in unet.motion_modules.named_blocks()
        for index, module in enumerate(block.motion_modules)
    ]
    found: dict[str, np.ndarray] = {}

    def keep(name: str):
        def hook(_module, args):
            found[name] = rearrange(args[0].float(), "n c h w -> (n h w) c").numpy()
            found[name + ":shape"] = np.array(args[0].shape[-2:])

        return hook

    handles = [module.register_forward_pre_hook(keep(name)) for name, module in modules]
    result: dict[int, dict[str, list[np.ndarray]]] = {t: {} for t in timesteps}
    try:
        with torch.no_grad():
            for _ in range(clips):
                spec = sample_clip_spec(rng, world, camera="zoom in")
                latents = clip_latents(model.vae, spec, world, video_domain=True)
                text = encode_prompts(model.tokenizer, model.text_encoder, [caption(spec)])
                for t in timesteps:
                    noise = torch.randn(latents.shape, generator=generator)
                    noisy = scheduler.add_noise(latents, noise, torch.tensor([t]))
                    found.clear()
                    unet(noisy, torch.tensor([t]), text)
                    rows = result[t]
                    rows.setdefault("latents (UNet input)", []).append(rearrange(noisy[0], "c f h w -> (f h w) c").numpy())
                    for name, _ in modules:
                        height, width = found[name + ":shape"]
                        rows.setdefault(f"{name} ({height}x{width})", []).append(found[name])
    finally:
        for handle in handles:
            handle.remove()
    return result


def probe(features: list[np.ndarray], size: tuple[int, int], frames: int) -> tuple[float, float]:
    """(linear R^2, MLP R^2) of x, y from the features: first half of the clips to fit, second half to score."""
    target = np.tile(positions(*size), (frames, 1))
    half = len(features) // 2
    train_x, test_x = np.concatenate(features[:half]), np.concatenate(features[half:])
    train_y, test_y = np.tile(target, (half, 1)), np.tile(target, (len(features) - half, 1))
    return ridge_r2(train_x, train_y, test_x, test_y), mlp_r2(train_x, train_y, test_x, test_y)


def main() -> None:
    from zoetrope.pipelines.load import load_pipeline
    from zoetrope.world.bundled import bundled_folder

    folder = bundled_folder()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(folder / "base.safetensors"))
    parser.add_argument("--motion-module", default=str(folder / "motion_module.safetensors"))
    parser.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH]", help="image LoRA to attach")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[999, 700, 400, 100])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", help="also write the numbers as JSON here")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    pipeline = load_pipeline(args.model, args.motion_module, loras=args.lora)
    frames = WorldConfig().num_frames
    captured = capture(pipeline, args.clips, args.timesteps, args.seed)
    table: dict[str, dict[int, tuple[float, float]]] = {}
    for t, rows in captured.items():
        for name, features in rows.items():
            size = (16, 16) if name.startswith("latents") else tuple(int(v) for v in name.split("(")[1].rstrip(")").split("x"))
            table.setdefault(name, {})[t] = probe(features, size, frames)
    print("held-out R^2 of the pixel's (x, y) from its features, linear / MLP, per timestep")
    print(f"{'features':34s}" + "".join(f"{f't = {t}':>16s}" for t in args.timesteps))
    for name, row in table.items():
        print(f"{name:34s}" + "".join(f"{row[t][0]:>8.2f}{row[t][1]:>8.2f}" for t in args.timesteps))
    if args.output:
        Path(args.output).write_text(json.dumps({name: {str(t): list(v) for t, v in row.items()} for name, row in table.items()}, indent=2))


if __name__ == "__main__":
    main()
