"""How strongly does an image model's UNet hear each kind of word? (shapes world, issue 3 diagnosis)

    python bench/probe_text_conditioning.py --model runs/world/image/model.safetensors [--features]

The motion module has no text input: AnimateDiff reads the prompt's motion from the frozen image UNet's features. If
changing "moving left" to "moving right" barely changes the UNet's noise prediction, no amount of motion training
can make the direction follow the prompt. This prints, for prompt pairs that differ in one word, the change of the
prediction on the same noisy latents relative to the prediction's own size. Seconds on a CPU.

`--features` looks where the motion modules look instead: the hidden states at every motion-module insertion point
(the outputs of each down/up block's attentions, or ResNets where a block has none), since a word the output
ignores may still reach the intermediate features a motion module reads.
"""

from __future__ import annotations

import argparse

import torch

from zoetrope.models.video_unet import _insertion_targets
from zoetrope.pipelines.components import load_image_model

TEMPLATE = "a red circle {motion} on a grey background"
PAIRS = {
    "moving left -> moving right": (TEMPLATE.format(motion="moving left"), TEMPLATE.format(motion="moving right")),
    "moving up -> moving down": (TEMPLATE.format(motion="moving up"), TEMPLATE.format(motion="moving down")),
    "growing -> shrinking": (TEMPLATE.format(motion="growing"), TEMPLATE.format(motion="shrinking")),
    "red -> blue": (TEMPLATE.format(motion="moving left"), "a blue circle moving left on a grey background"),
    "circle -> star": (TEMPLATE.format(motion="moving left"), "a red star moving left on a grey background"),
}


def prediction_changes(model_path: str, timestep: int = 500, samples: int = 8, seed: int = 0) -> dict[str, float]:
    """Relative change |eps(a) - eps(b)| / |eps| per prompt pair, on `samples` shared noisy latents at `timestep`."""
    model = load_image_model(model_path)
    size = model.unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(samples, model.unet.config.in_channels, size, size, generator=generator)
    timesteps = torch.full((samples,), timestep)

    @torch.no_grad()
    def predict(prompt: str) -> torch.Tensor:
        ids = model.tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        text = model.text_encoder(ids)[0].expand(samples, -1, -1)
        return model.unet(latents, timesteps, encoder_hidden_states=text).sample

    scale = float(predict("").std())
    return {name: float((predict(a) - predict(b)).std()) / scale for name, (a, b) in PAIRS.items()}


def feature_changes(
    model_path: str, timestep: int = 500, samples: int = 8, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Relative change |h(a) - h(b)| / |h(a)| of the features each motion module would read, per pair and point.

    Points are named like the motion modules (`down_blocks.1.0`: block, then module index within the block).
    """
    model = load_image_model(model_path)
    unet = model.unet
    size = unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(samples, unet.config.in_channels, size, size, generator=generator)
    timesteps = torch.full((samples,), timestep)
    captured: dict[str, torch.Tensor] = {}
    handles = []
    blocks = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    blocks += [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]
    for block_name in blocks:
        for index, target in enumerate(_insertion_targets(unet, block_name)):

            def hook(_module, _args, output, name=f"{block_name}.{index}") -> None:
                hidden = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
                captured[name] = hidden.detach()

            handles.append(target.register_forward_hook(hook))

    @torch.no_grad()
    def features(prompt: str) -> dict[str, torch.Tensor]:
        ids = model.tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        captured.clear()
        unet(latents, timesteps, encoder_hidden_states=model.text_encoder(ids)[0].expand(samples, -1, -1))
        return dict(captured)

    try:
        result = {}
        for name, (a, b) in PAIRS.items():
            first, second = features(a), features(b)
            result[name] = {point: float((first[point] - second[point]).std() / first[point].std()) for point in first}
        return result
    finally:
        for handle in handles:
            handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="single-file SD image model")
    parser.add_argument("--timestep", type=int, default=500)
    parser.add_argument("--features", action="store_true", help="changes at the motion-module insertion points")
    args = parser.parse_args()
    if args.features:
        changes = feature_changes(args.model, args.timestep)
        points = list(next(iter(changes.values())))
        print(f"{'prompt change':30s} " + " ".join(f"{point.replace('_blocks', ''):>8s}" for point in points))
        for name, row in changes.items():
            print(f"{name:30s} " + " ".join(f"{100 * row[point]:7.1f}%" for point in points))
        return
    for name, change in prediction_changes(args.model, args.timestep).items():
        print(f"{name:30s} {100 * change:6.1f} %")


if __name__ == "__main__":
    main()
