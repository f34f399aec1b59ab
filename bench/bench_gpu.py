"""zoetrope vs diffusers' AnimateDiffPipeline: same random weights, same settings, same process.

    python bench/bench_gpu.py                      # SD1.5 + v2-layout motion module, 16 x 512^2, 25 DDIM steps, fp16, CUDA
    python bench/bench_gpu.py --tiny --device cpu  # tiny random model on the CPU (what CI can afford)

Prints the device, min and median time of each pipeline, the ratio, peak memory, the FLOP count of one UNet call
and the achieved TFLOP/s, and the largest difference between the two pipelines' final latents. zoetrope runs in
diffusers' joint motion-GroupNorm mode here so that both compute the same function (the official per-frame mode
differs by design). Benchmarks print; they are never run as tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from importlib import resources

import torch

TINY_UNET = dict(
    sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=4,
    norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
TINY_VAE = dict(
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def _bundled(name: str) -> dict:
    return json.loads(resources.files("zoetrope.assets").joinpath("sd15").joinpath(name).read_text())


def build_models(tiny: bool, seed: int = 0):
    """Random-weight UNet, VAE, text encoder and a v2-layout MotionAdapter (proj_out randomised too)."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet_config = TINY_UNET if tiny else {k: v for k, v in _bundled("unet.json").items() if not k.startswith("_")}
    vae_config = TINY_VAE if tiny else {k: v for k, v in _bundled("vae.json").items() if not k.startswith("_")}
    text_values = {k: v for k, v in _bundled("text_encoder.json").items() if not k.startswith("_")}
    if tiny:
        text_values.update(TINY_TEXT)
    unet = UNet2DConditionModel(**unet_config)
    vae = AutoencoderKL(**vae_config)
    text_encoder = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in text_values.items() if k in CLIPTextConfig().to_dict()}))
    adapter = MotionAdapter(
        block_out_channels=tuple(unet.config.block_out_channels), motion_layers_per_block=unet.config.layers_per_block,
        motion_num_attention_heads=4 if tiny else 8, motion_norm_num_groups=unet.config.norm_num_groups,
        use_motion_mid_block=True, motion_max_seq_length=32,
    )
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.normal_(0.0, 0.02) if parameter.ndim > 1 else parameter.zero_()
    return unet.eval(), vae.eval(), text_encoder.eval(), adapter.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(function, runs: int, device: torch.device) -> tuple[list[float], float, object]:
    times, peak, output = [], 0.0, None
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        start = time.perf_counter()
        output = function()
        _sync(device)
        times.append(time.perf_counter() - start)
        if device.type == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated() / 2**30)
    return times, peak, output


def unet_flops(video_unet, batch: int, frames: int, latent: int, text_dim: int, device, dtype) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    sample = torch.randn(batch, 4, frames, latent, latent, device=device, dtype=dtype)
    text = torch.randn(batch, 77, text_dim, device=device, dtype=dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        video_unet(sample, torch.tensor([500] * batch, device=device), text)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random model (CPU-sized)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"), help="default fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="width = height in pixels")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-decode", action="store_true", help="time to latents only")
    args = parser.parse_args()

    from diffusers import AnimateDiffPipeline, DDIMScheduler

    from zoetrope.formats.motion import motion_state_to_ours, build_motion_modules
    from zoetrope.models.video_unet import VideoUNet
    from zoetrope.pipelines.components import ImageModel, bundled_tokenizer, default_scheduler_config
    from zoetrope.pipelines.text_to_video import VideoPipeline, generate

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    ]
    frames = args.frames or (8 if args.tiny else 16)
    size = args.size or (64 if args.tiny else 512)
    steps = args.steps or (4 if args.tiny else 25)

    unet, vae, text_encoder, adapter = build_models(args.tiny)
    tokenizer = bundled_tokenizer()
    scheduler_config = default_scheduler_config()
    reference = AnimateDiffPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, motion_adapter=adapter,
        scheduler=DDIMScheduler.from_config(scheduler_config),
    ).to(device=device, dtype=dtype)
    reference.set_progress_bar_config(disable=True)

    ours_state, config = motion_state_to_ours(adapter.state_dict(), "diffusers")
    modules = build_motion_modules(ours_state, config.with_(norm_mode="joint", num_attention_heads=4 if args.tiny else 8), "bench")
    ours = VideoPipeline(
        image_model=ImageModel(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, unet=unet),
        video_unet=VideoUNet(unet, modules).eval(), scheduler_config=scheduler_config,
    ).to(device=device, dtype=dtype)

    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    latent = size // vae_scale
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, frames, latent, latent, generator=generator).to(device=device, dtype=dtype)
    prompt = "a red circle moving right"

    def run_reference():
        with torch.no_grad():
            return reference(
                prompt, num_frames=frames, height=size, width=size, num_inference_steps=steps,
                guidance_scale=args.guidance, latents=latents.clone(), output_type="latent" if args.no_decode else "pt",
            )

    captured: dict = {}

    def run_ours():
        result = generate(
            ours, prompt, num_frames=frames, width=size, height=size, steps=steps, guidance_scale=args.guidance,
            latents=latents.clone(), progress=False, return_latents=True, decode=not args.no_decode,
        )
        captured["latents"] = result.latents
        return result

    # Warm-up (kernels, allocator), then timed runs.
    run_reference(), run_ours()
    ref_times, ref_peak, _ = _timed(run_reference, args.runs, device)
    our_times, our_peak, _ = _timed(run_ours, args.runs, device)

    # Final latents of diffusers for the difference (output_type="latent").
    with torch.no_grad():
        ref_latents = reference(
            prompt, num_frames=frames, height=size, width=size, num_inference_steps=steps,
            guidance_scale=args.guidance, latents=latents.clone(), output_type="latent",
        ).frames
    ref_latents = ref_latents if ref_latents.shape == captured["latents"].shape else ref_latents.permute(0, 2, 1, 3, 4)
    difference = (captured["latents"].float() - ref_latents.float()).abs()

    flops = unet_flops(ours.video_unet, 2, frames, latent, text_encoder.config.hidden_size, device, dtype)
    our_min, ref_min = min(our_times), min(ref_times)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'} ({device}), dtype {dtype}")
    print(f"setting: {'tiny' if args.tiny else 'SD1.5'} + v2-layout motion module, {frames} frames, {size}x{size}, "
          f"{steps} DDIM steps, CFG {args.guidance}, {'latents only' if args.no_decode else 'with VAE decoding'}")
    print(f"diffusers : min {ref_min:.4f} s  median {statistics.median(ref_times):.4f} s  peak {ref_peak:.2f} GiB")
    print(f"zoetrope  : min {our_min:.4f} s  median {statistics.median(our_times):.4f} s  peak {our_peak:.2f} GiB")
    print(f"speed-up (diffusers min / zoetrope min): {ref_min / our_min:.2f}x")
    print(f"one UNet call (CFG batch 2 x {frames} frames): {flops / 1e12:.4f} TFLOP; "
          f"zoetrope achieved {flops * steps / our_min / 1e12:.3f} TFLOP/s over the whole run")
    print(f"final latents: max |diff| {difference.max().item():.3e}, mean {difference.mean().item():.3e}")


if __name__ == "__main__":
    main()
