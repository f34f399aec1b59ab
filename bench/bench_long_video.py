"""Peak memory of long videos with context windows: 64 frames in 16-frame windows vs 16 frames plain.

    python bench/bench_long_video.py            # CPU: peak process RSS, each run in its own subprocess
    python bench/bench_long_video.py --device cuda
    python bench/bench_long_video.py --keyframes-first   # also 64 frames keyframes first (+ a SparseCtrl encoder)
    python bench/bench_long_video.py --keyframes-first --levels 1   # ... without the half-rate pass

Each configuration runs in a fresh subprocess so peaks do not mix. Reported: the peak (RSS on CPU, allocated
memory on CUDA), the part of it above the same process after loading the model (what sampling itself costs), and
the ratio of the 64-frame windowed run to the 16-frame run. The model is a random-weight SD1.5-shaped UNet at reduced
width (so activations, not weights, dominate) with a v3-layout motion module.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

CHILD = r"""
import json, resource, sys, torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel
from zoetrope.models.motion_module import MotionModuleConfig, MotionModules
from zoetrope.models.video_unet import VideoUNet
from zoetrope.pipelines.components import ImageModel, bundled_tokenizer
from zoetrope.pipelines.text_to_video import VideoPipeline, generate
from zoetrope.sampling.context import ContextConfig

frames, window, size, device, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
levels = int(sys.argv[6]) if len(sys.argv) > 6 else 2
torch.manual_seed(0)
unet = UNet2DConditionModel(block_out_channels=(64, 128, 256, 256), cross_attention_dim=64, attention_head_dim=8,
                            norm_num_groups=32, sample_size=size // 8)
vae = AutoencoderKL(block_out_channels=(16, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=16, latent_channels=4)
text = CLIPTextModel(CLIPTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4))
motion = MotionModules(MotionModuleConfig(block_out_channels=(64, 128, 256, 256), zero_init=False))
pipe = VideoPipeline(ImageModel(bundled_tokenizer(), text.eval(), vae.eval(), unet.eval()), VideoUNet(unet, motion).eval())
pipe.to(device)
if mode == "keyframes-first":
    from zoetrope.models.sparse_control import SparseControlConfig, SparseControlEncoder
    from zoetrope.pipelines.keyframes_first import KeyframesFirst, generate_keyframes_first

    encoder = SparseControlEncoder.from_unet(unet, SparseControlConfig(condition="rgb", motion=MotionModuleConfig(
        block_out_channels=(64, 128, 256, 256), attentions_per_block=1, mid_block=False))).to(device).eval()
if device == "cuda":
    torch.cuda.synchronize(); base = torch.cuda.max_memory_allocated()
else:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
context = ContextConfig(length=window, overlap=4) if window else None
if mode == "keyframes-first":
    generate_keyframes_first(pipe, "a red circle moving right", KeyframesFirst(encoder, levels=levels), num_frames=frames,
                             width=size, height=size, steps=2, seed=0, context=context, progress=False,
                             decode_chunk_size=16)
else:
    generate(pipe, "a red circle moving right", num_frames=frames, width=size, height=size, steps=2, seed=0,
             context=context, progress=False, decode_chunk_size=16)
if device == "cuda":
    torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated()
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"base": base, "peak": peak}))
"""


def run(frames: int, window: int, size: int, device: str, mode: str = "windows", levels: int = 2) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(frames), str(window), str(size), device, mode, str(levels)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=256, help="pixels (square)")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument(
        "--keyframes-first", action="store_true",
        help="also measure the long clip keyframes first (keyframe window, then windows with a SparseCtrl encoder)",
    )
    parser.add_argument("--levels", type=int, choices=(1, 2), default=2, help="--keyframes-first: 2 (default) adds the half-rate pass")
    args = parser.parse_args()
    short = run(args.window, 0, args.size, args.device)
    runs = {f"{args.frames} frames, {args.window}-frame windows": run(args.frames, args.window, args.size, args.device)}
    if args.keyframes_first:
        runs[f"{args.frames} frames, keyframes first, {args.levels} level(s)"] = run(
            args.frames, args.window, args.size, args.device, "keyframes-first", args.levels
        )
    unit = 2**20
    kind = "allocated" if args.device == "cuda" else "RSS"
    print(f"device {args.device}; {args.size}x{args.size}; peak {kind}")
    for name, values in ((f"{args.window} frames, no windows", short), *runs.items()):
        print(f"{name:36s}: peak {values['peak'] / unit:8.1f} MiB  (sampling adds {(values['peak'] - values['base']) / unit:7.1f} MiB)")
    for name, values in runs.items():
        print(f"ratio of peaks ({name} / {args.window} plain): {values['peak'] / short['peak']:.3f}; of sampling "
              f"memory: {(values['peak'] - values['base']) / max(1, short['peak'] - short['base']):.3f}")


if __name__ == "__main__":
    main()
