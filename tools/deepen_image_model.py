"""Write a copy of an SD single-file image model whose UNet has more layers per block, drawing the same pictures.

    python tools/deepen_image_model.py IN.safetensors OUT.safetensors [--extra 1] [--motion-module M --motion-output O]
        [--domain-adapter A --adapter-output B]

Why: to ask whether UNet capacity is what holds the shapes world's shape fidelity, a trained model is continued with
more layers instead of trained again from nothing (`zoetrope.models.deepen`). The text encoder, VAE and the
parameterization metadata (v-prediction, zero terminal SNR) are kept; the new layers start as identities, and the
script checks that the two UNets agree on random inputs before it writes. `--motion-module` also writes a motion
module for the deeper UNet (one more zero-initialised module per block), so a module trained on the source can be
adapted to the deeper model instead of trained again; `--domain-adapter` rewrites a domain adapter's keys for the
deeper UNet (its LoRAs stay on the layers they were trained on).
"""

from __future__ import annotations

import argparse
import logging

import torch

from zoetrope.formats.safe_load import load_state_dict, read_metadata, save_state_dict
from zoetrope.formats.sd_single_file import CONFIGS_METADATA_KEY, save_sd_single_file
from zoetrope.formats.motion import load_motion_module, save_motion_module
from zoetrope.models.deepen import deepen_motion_modules, deepen_unet, deepened_path
from zoetrope.pipelines.components import load_image_model

logger = logging.getLogger("deepen_image_model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="single-file SD model (.safetensors)")
    parser.add_argument("output", help="where to write the deepened model (.safetensors)")
    parser.add_argument("--extra", type=int, default=1, help="layers to add to every UNet block")
    parser.add_argument("--motion-module", help="a motion module trained on the source model, to deepen as well")
    parser.add_argument("--motion-output", help="where to write the deepened motion module (official layout)")
    parser.add_argument("--domain-adapter", help="a domain adapter trained on the source model, to re-key as well")
    parser.add_argument("--adapter-output", help="where to write the re-keyed domain adapter")
    args = parser.parse_args()
    if bool(args.motion_module) != bool(args.motion_output):
        parser.error("--motion-module and --motion-output go together")
    if bool(args.domain_adapter) != bool(args.adapter_output):
        parser.error("--domain-adapter and --adapter-output go together")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model = load_image_model(args.source)
    grown = deepen_unet(model.unet, args.extra)
    size = model.unet.config.sample_size
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, model.unet.config.in_channels, size, size, generator=generator)
    context = torch.randn(2, 77, model.unet.config.cross_attention_dim, generator=generator)
    timesteps = torch.tensor([50, 900])
    with torch.no_grad():
        gap = (model.unet(latents, timesteps, context).sample - grown(latents, timesteps, context).sample).abs().max()
    if gap > 1e-5:
        raise SystemExit(f"the deepened UNet differs from the source by {gap:.2e}; nothing written")
    metadata = {key: value for key, value in read_metadata(args.source).items() if key != CONFIGS_METADATA_KEY}
    metadata["zoetrope.deepened_from"] = args.source
    save_sd_single_file(grown, model.vae, model.text_encoder, args.output, metadata)
    before = sum(p.numel() for p in model.unet.parameters())
    after = sum(p.numel() for p in grown.parameters())
    logger.info("%s: layers per block %d -> %d, UNet parameters %d -> %d; max output change %.1e",
                args.output, model.unet.config.layers_per_block, grown.config.layers_per_block, before, after, gap)
    if args.motion_module:
        modules = deepen_motion_modules(load_motion_module(args.motion_module), args.extra)
        save_motion_module(modules, args.motion_output, metadata={"zoetrope.deepened_from": args.motion_module})
        logger.info("%s: %d motion modules (from %s)", args.motion_output, modules.num_modules(), args.motion_module)
    if args.domain_adapter:
        state = {deepened_path(key, args.extra): value for key, value in load_state_dict(args.domain_adapter).items()}
        info = {**read_metadata(args.domain_adapter), "zoetrope.deepened_from": args.domain_adapter}
        save_state_dict(state, args.adapter_output, info)
        logger.info("%s: %d tensors re-keyed (from %s)", args.adapter_output, len(state), args.domain_adapter)


if __name__ == "__main__":
    main()
