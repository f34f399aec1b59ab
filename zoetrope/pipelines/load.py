"""Assemble a VideoPipeline from the files users have, in the official loading order.

Order (official `load_weights`): image model (base, DreamBooth or merged) -> image LoRAs -> domain adapter ->
motion module -> MotionLoRAs. Every file is checked with `formats.detect` first, so a file in the wrong slot gets
one line naming what it is and where it belongs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from zoetrope.errors import CheckpointError, InputError
from zoetrope.formats.detect import expect_kind, inspect_file
from zoetrope.formats.motion import load_motion_module
from zoetrope.models.motion_module import MotionModules
from zoetrope.models.video_unet import VideoUNet
from zoetrope.pipelines.components import Parameterization, default_scheduler_config, load_image_model
from zoetrope.pipelines.text_to_video import VideoPipeline

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightedFile:
    """A file with a strength, from `PATH[:STRENGTH]` on the command line."""

    path: Path
    strength: float = 1.0

    @classmethod
    def parse(cls, text: str | os.PathLike | "WeightedFile", default: float = 1.0) -> "WeightedFile":
        if isinstance(text, WeightedFile):
            return text
        text = str(text)
        head, sep, tail = text.rpartition(":")
        if sep and head and _is_number(tail):
            return cls(Path(head), float(tail))
        return cls(Path(text), default)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def replacement_vae(path: str | os.PathLike, current: torch.nn.Module) -> torch.nn.Module:
    """The VAE in `path` (a `vae` stage export), checked to speak the same latents as `current` (the model's own).

    A VAE with other latent channels, another downscale or another scaling factor would decode the UNet's latents
    into garbage without any error, so each is compared and named."""
    from zoetrope.formats.vae_file import load_vae_file

    if not Path(path).is_file():
        raise InputError(f"--vae {path}: no such file; pass the vae.safetensors a `vae` training stage wrote")
    try:
        replacement = load_vae_file(path)
    except CheckpointError as error:
        raise InputError(f"--vae {path}: {error}") from error
    new, old = replacement.config, current.config
    checks = (
        ("latent channels", new.latent_channels, old.latent_channels),
        ("downscale (2 ** (VAE blocks - 1))", 2 ** (len(new.block_out_channels) - 1), 2 ** (len(old.block_out_channels) - 1)),
        ("scaling_factor", round(float(new.scaling_factor), 6), round(float(old.scaling_factor), 6)),
    )
    for name, theirs, ours in checks:
        if theirs != ours:
            raise InputError(
                f"--vae {path}: its {name} is {theirs}, the image model's VAE has {ours}; it does not share the "
                "model's latent space. Use a VAE fine-tuned from this model's (vae_train: decoder keeps it)"
            )
    return replacement


def load_pipeline(
    model: str | os.PathLike | None = None,
    motion_module: str | os.PathLike | None = None,
    *,
    motion_loras: Sequence[str | WeightedFile] = (),
    loras: Sequence[str | WeightedFile] = (),
    adapter: str | WeightedFile | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    motion_norm_mode: str | None = None,
    prediction_type: str | None = None,
    zero_terminal_snr: bool | None = None,
    vae: str | os.PathLike | None = None,
    position_code: str | WeightedFile | None = None,
) -> VideoPipeline:
    """Load an image model plus a motion module (and optional LoRAs) into a ready VideoPipeline.

    `vae` replaces the image model's VAE with a `vae` stage export (e.g. a decoder fine-tune, `vae_train: decoder`),
    as A1111/ComfyUI users swap in sd-vae-ft-mse; it must share the model's latent space (checked: channels,
    downscale and scaling factor).

    With `model` and `motion_module` both None the bundled shapes-world model is used (offline, CPU-sized).
    `prediction_type` / `zero_terminal_snr` override what the image model's file says it predicts (for v-prediction
    checkpoints that do not record it, as ComfyUI's ModelSamplingDiscrete node does); zero SNR implies v.
    `position_code` attaches a motion-module position code (`zoetrope.adapters.position`) at its strength.
    """
    from zoetrope.formats.kohya import load_image_lora
    from zoetrope.formats.lora_files import load_domain_adapter, load_motion_lora, load_position_code

    if model is None and motion_module is None:
        from zoetrope.world.bundled import bundled_paths

        model, motion_module = bundled_paths()
    if model is None or motion_module is None:
        raise InputError("give both an image model (--model) and a motion module (--motion-module), or neither")
    for path, kind in ((model, "sd_model"), (motion_module, "motion_module")):
        info = inspect_file(path)
        if kind == "sd_model" and info.kind == "sd_unet":
            continue
        expect_kind(info, kind)

    # 1. The frozen image model, and what it predicts.
    image_model = load_image_model(model, dtype=dtype)
    known = image_model.parameterization
    zero = known.zero_terminal_snr if zero_terminal_snr is None else zero_terminal_snr
    kind = prediction_type or ("v_prediction" if zero_terminal_snr else known.prediction_type)
    image_model.parameterization = Parameterization(kind, zero)
    if vae is not None:
        image_model.vae = replacement_vae(vae, image_model.vae)
        if dtype != torch.float32:
            image_model.vae.to(dtype=dtype)
    # 2. Image LoRAs (kohya / diffusers-peft), merged into the UNet and text encoder.
    for item in map(WeightedFile.parse, loras):
        expect_kind(inspect_file(item.path), "image_lora")
        load_image_lora(item.path, image_model.unet, image_model.text_encoder, item.strength).merge(
            image_model.unet, image_model.text_encoder
        )
    # 3. The domain adapter (a LoRA on the spatial attention), merged with its scale.
    if adapter is not None:
        item = WeightedFile.parse(adapter)
        expect_kind(inspect_file(item.path), "domain_adapter")
        load_domain_adapter(item.path, image_model.unet, item.strength).merge(image_model.unet)
    # 4. The motion module, attached to the image UNet.
    modules: MotionModules = load_motion_module(motion_module, norm_mode=motion_norm_mode).to(dtype=dtype)
    video_unet = VideoUNet(image_model.unet, modules)
    # 5. MotionLoRAs, merged into the motion modules (official semantics: W + strength * up @ down).
    for item in map(WeightedFile.parse, motion_loras):
        expect_kind(inspect_file(item.path), "motion_lora")
        load_motion_lora(item.path, modules, item.strength).merge(modules)
    code = None if position_code is None else WeightedFile.parse(position_code)
    if code is not None:
        load_position_code(code.path, modules, code.strength)
    pipeline = VideoPipeline(
        image_model=image_model,
        video_unet=video_unet.eval(),
        scheduler_config=image_model.parameterization.apply(default_scheduler_config()),
        sources={
            "model": str(model), "motion_module": str(motion_module),
            "loras": [f"{item.path}:{item.strength}" for item in map(WeightedFile.parse, loras)],
            "adapter": str(adapter) if adapter is not None else None,
            "vae": str(vae) if vae is not None else None,
            "motion_loras": [f"{item.path}:{item.strength}" for item in map(WeightedFile.parse, motion_loras)],
            "position_code": None if code is None else f"{code.path}:{code.strength}",
        },
    )
    return pipeline.to(device=device)
