"""How strongly does an image model's UNet hear each kind of word? (shapes world, issue 3 diagnosis)

    python bench/probe_text_conditioning.py --model runs/world/image/model.safetensors

The motion module has no text input: AnimateDiff reads the prompt's motion from the frozen image UNet's features. If
changing "moving left" to "moving right" barely changes the UNet's noise prediction, no amount of motion training
can make the direction follow the prompt. This prints, for prompt pairs that differ in one word, the change of the
prediction on the same noisy latents relative to the prediction's own size. Seconds on a CPU.
"""

from __future__ import annotations

import argparse

import torch

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="single-file SD image model")
    parser.add_argument("--timestep", type=int, default=500)
    args = parser.parse_args()
    for name, change in prediction_changes(args.model, args.timestep).items():
        print(f"{name:30s} {100 * change:6.1f} %")


if __name__ == "__main__":
    main()
