"""How much of a shapes-world picture survives a VAE round trip? (issue 3 diagnosis)

    python bench/eval_vae.py --vae runs/world/vae/vae.safetensors        # a `vae` stage export
    python bench/eval_vae.py --model zoetrope/assets/world/base.safetensors   # the VAE inside an image model
    python bench/eval_vae.py --vae V --style pastel   # pictures in the personalisation style (and style accuracy)

Every clip the pipeline makes is decoded by the VAE, so the fidelity targets of issue 3 (colour and shape >= 90 %)
are capped by what the metrics still read after encode -> decode of a *true* picture. This renders `--count` fresh
stills of the world (the image-domain pictures the VAE trains on, with `--trail-alpha` as the data was made; or the
first frames of video-domain clips with `--video-domain`), round-trips them, and reports colour / shape /
background accuracy of the originals (100 % by construction of the metrics) and of the reconstructions, plus PSNR
over the whole frame and over the object's box, where the capacity of a small VAE goes last.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from zoetrope.media import frames_to_uint8, psnr
from zoetrope.pipelines.components import decode_latents, encode_frames
from zoetrope.world.metrics import classify_background, classify_colour, classify_shape, classify_style
from zoetrope.world.render import STYLES, WorldConfig, object_track, render_clip, render_image, sample_clip_spec


def load_vae(vae_file: str | None, model_file: str | None) -> torch.nn.Module:
    """The VAE of a `vae` stage export, or of a single-file image model."""
    if vae_file:
        from zoetrope.formats.vae_file import load_vae_file

        return load_vae_file(vae_file).float()
    from zoetrope.pipelines.load import load_image_model

    return load_image_model(model_file).vae.float().eval()


def pictures(
    count: int, config: WorldConfig, video_domain: bool, seed: int, style: str | None = None
) -> tuple[np.ndarray, list]:
    """`count` true pictures (n, h, w, 3) uint8 and their specs (every motion, colour, shape, background; drawn in
    a personalisation `style` if given)."""
    rng = np.random.default_rng(seed)
    specs = [sample_clip_spec(rng, config, style=style) for _ in range(count)]
    images = [render_clip(spec, config)[0] if video_domain else render_image(spec, config) for spec in specs]
    return np.stack(images), specs


def round_trip(vae: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """encode (posterior mean) -> decode with the pipeline's own functions, back to 8-bit levels as float."""
    video = rearrange(torch.from_numpy(images).float().div(255.0), "k h w c -> 1 c k h w")
    with torch.no_grad():
        decoded = decode_latents(vae, encode_frames(vae, video, sample=False))
    return frames_to_uint8(decoded[0]).astype(np.float64)


def object_box(spec, config: WorldConfig) -> tuple[slice, slice]:
    """Rows and columns of the object's bounding box in the first frame."""
    centre_x, centre_y, radius, _ = object_track(spec, config)
    x, y, r = float(centre_x[0]), float(centre_y[0]), float(radius[0])
    size = config.size
    return slice(max(0, int(y - r)), min(size, int(np.ceil(y + r)) + 1)), slice(max(0, int(x - r)), min(size, int(np.ceil(x + r)) + 1))


def evaluate(
    vae: torch.nn.Module, count: int, config: WorldConfig, video_domain: bool, seed: int = 0, style: str | None = None
) -> dict:
    """Accuracies of the originals and the round trips (plus the style's, for styled pictures) and PSNRs."""
    images, specs = pictures(count, config, video_domain, seed, style)
    rebuilt = round_trip(vae, images)
    results: dict = {"count": count, "video_domain": video_domain, "trail_alpha": config.trail_alpha, "style": style}
    for name, source in (("original", images.astype(np.float64)), ("round_trip", rebuilt)):
        hits = {"colour": 0, "shape": 0, "background": 0, **({"style": 0} if style else {})}
        for spec, picture in zip(specs, source, strict=True):
            hits["colour"] += classify_colour(picture[None], config) == spec.colour
            hits["shape"] += classify_shape(picture[None], config) == spec.shape
            hits["background"] += classify_background(picture[None], config) == spec.background
            if style:
                hits["style"] += classify_style(picture[None], config) == style
        results[name] = {key: value / count for key, value in hits.items()}
    results["psnr"] = float(np.mean([psnr(a, b) for a, b in zip(images, rebuilt, strict=True)]))
    boxes = [object_box(spec, config) for spec in specs]
    results["object_psnr"] = float(np.mean([psnr(a[box], b[box]) for a, b, box in zip(images, rebuilt, boxes, strict=True)]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--vae", help="a `vae` stage export (vae.safetensors)")
    source.add_argument("--model", help="a single-file image model; its VAE is measured")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--trail-alpha", type=float, default=0.0)
    parser.add_argument("--video-domain", action="store_true", help="first frames of watermarked, JPEG'd clips")
    parser.add_argument("--style", choices=tuple(STYLES), default=None, help="draw the pictures in a personalisation style")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    config = WorldConfig(trail_alpha=args.trail_alpha)
    results = evaluate(load_vae(args.vae, args.model), args.count, config, args.video_domain, style=args.style)
    results["vae"] = args.vae or args.model
    print(f"{results['vae']}: {args.count} {'video-domain' if args.video_domain else 'image-domain'} pictures")
    print(f"  PSNR {results['psnr']:.1f} dB (object box {results['object_psnr']:.1f} dB)")
    for name in ("colour", "shape", "background") + (("style",) if args.style else ()):
        print(f"  {name + ' accuracy':<22}original {100 * results['original'][name]:5.1f} %   round trip {100 * results['round_trip'][name]:5.1f} %")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
