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

from zoetrope.errors import InputError
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
) -> VideoPipeline:
    """Load an image model plus a motion module (and optional LoRAs) into a ready VideoPipeline.

    With `model` and `motion_module` both None the bundled shapes-world model is used (offline, CPU-sized).
    `prediction_type` / `zero_terminal_snr` override what the image model's file says it predicts (for v-prediction
    checkpoints that do not record it, as ComfyUI's ModelSamplingDiscrete node does); zero SNR implies v.
    """
    from zoetrope.formats.kohya import load_image_lora
    from zoetrope.formats.lora_files import load_domain_adapter, load_motion_lora

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
    pipeline = VideoPipeline(
        image_model=image_model,
        video_unet=video_unet.eval(),
        scheduler_config=image_model.parameterization.apply(default_scheduler_config()),
        sources={
            "model": str(model), "motion_module": str(motion_module),
            "loras": [f"{item.path}:{item.strength}" for item in map(WeightedFile.parse, loras)],
            "adapter": str(adapter) if adapter is not None else None,
            "motion_loras": [f"{item.path}:{item.strength}" for item in map(WeightedFile.parse, motion_loras)],
        },
    )
    return pipeline.to(device=device)
