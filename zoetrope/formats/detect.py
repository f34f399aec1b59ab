"""What is this file? One answer used by loading, `zoetrope inspect` and error messages (DESIGN principle 3).

Users routinely pass the wrong file to the wrong slot (the domain adapter as a MotionLoRA, an image LoRA as a
motion module, an SDXL module on SD1.5). Every loader asks `expect_kind`, which names the file, what it actually
is, what was expected, and which option takes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from zoetrope.errors import CheckpointError
from zoetrope.formats.safe_load import load_state_dict, read_metadata

KINDS = {
    "sd_model": ("a Stable Diffusion image model (UNet + VAE + text encoder)", "--model"),
    "sd_unet": ("a Stable Diffusion image UNet", "--model"),
    "motion_module": ("an AnimateDiff motion module", "--motion-module"),
    "motion_lora": ("a MotionLoRA (LoRA on the motion module)", "--motion-lora"),
    "domain_adapter": ("the AnimateDiff domain adapter (a LoRA on the image UNet's spatial attention)", "--adapter"),
    "image_lora": ("an image LoRA", "--lora"),
    "sparsectrl": ("a SparseCtrl condition encoder", "--control"),
    "unknown": ("not a file zoetrope recognises", None),
}


@dataclass
class FileInfo:
    """The answer of `inspect_file`: kind, layout (whose key names), details and parameter count."""

    path: Path
    kind: str
    layout: str
    num_parameters: int
    details: dict = field(default_factory=dict)

    def describe(self) -> str:
        text = KINDS[self.kind][0]
        extras = ", ".join(f"{key} {value}" for key, value in self.details.items() if key != "config")
        millions = self.num_parameters / 1e6
        return f"{text} [{self.layout} layout{', ' + extras if extras else ''}; {millions:.2f}M parameters]"


def _cross_attention_base(width: int | None) -> str:
    return {768: "SD1.5", 1024: "SD2", 2048: "SDXL"}.get(width or -1, "unknown base")


def classify(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> tuple[str, str, dict]:
    """(kind, layout, details) from key names and shapes alone."""
    keys = list(state)
    metadata = metadata or {}
    has = lambda fragment: any(fragment in key for key in keys)  # noqa: E731
    starts = lambda prefix: any(key.startswith(prefix) for key in keys)  # noqa: E731
    if "zoetrope.kind" in metadata and metadata["zoetrope.kind"] in KINDS:
        kind = metadata["zoetrope.kind"]
    else:
        kind = ""
    if kind == "sparsectrl" or has("controlnet_cond_embedding") or starts("controlnet_down_blocks"):
        variant = "sketch/image" if has("controlnet_cond_embedding.conv_in") else "rgb/latent"
        return "sparsectrl", "official", {"condition": variant}
    from zoetrope.formats.lora_files import classify_lora_keys

    lora_kind = classify_lora_keys(keys)
    if lora_kind is not None:
        ranks = sorted(
            {int(v.shape[0]) for k, v in state.items() if v.ndim >= 2 and ("down" in k or "lora_A" in k)}
        )
        details = {"rank": ranks[0] if len(ranks) == 1 else ranks}
        kind, layout = {
            "motion_lora": ("motion_lora", "official"),
            "domain_adapter": ("domain_adapter", "official"),
            "kohya": ("image_lora", "kohya"),
            "peft": ("image_lora", "peft"),
        }[lora_kind]
        return kind, layout, details
    if has(".motion_modules."):
        from zoetrope.formats.animatediff import is_official_motion_key
        from zoetrope.formats.motion import motion_state_to_ours

        layout = "official" if any(is_official_motion_key(k) for k in keys) else "diffusers"
        _, config = motion_state_to_ours(state, layout, metadata)
        details = {"version": config.version, "PE length": config.max_frames, "config": config}
        if config.reads_text:
            details["text attention"] = f"Temporal_Cross on width-{config.cross_attention_dim} prompts"
        return "motion_module", layout, details
    if starts("model.diffusion_model."):
        width = next(
            (int(v.shape[1]) for k, v in state.items() if k.endswith("attn2.to_k.weight")), None
        )
        kind = "sd_model" if starts("first_stage_model.") else "sd_unet"
        return kind, "ldm", {"base": _cross_attention_base(width)}
    if starts("conv_in.") and starts("down_blocks.") and has("resnets."):
        width = next((int(v.shape[1]) for k, v in state.items() if k.endswith("attn2.to_k.weight")), None)
        return "sd_unet", "diffusers", {"base": _cross_attention_base(width)}
    return "unknown", "unknown", {}


def _parameter_count(state: Mapping[str, torch.Tensor]) -> int:
    return sum(v.numel() for k, v in state.items() if not k.endswith(("pos_encoder.pe", "pos_embed.pe", "pos_encoding")))


def inspect_file(path: str | os.PathLike) -> FileInfo:
    """Classify a weights file or a diffusers folder (MotionAdapter or SD pipeline)."""
    path = Path(path)
    if path.is_dir():
        if (path / "model_index.json").exists():
            return FileInfo(path, "sd_model", "diffusers", 0, {"base": "diffusers folder"})
        weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        if not weights:
            raise CheckpointError(f"{path}: folder holds no weights (.safetensors/.bin) and no model_index.json")
        config_file = path / "config.json"
        state = load_state_dict(weights[0])
        kind, layout, details = classify(state)
        if kind == "motion_module" and config_file.exists():
            from zoetrope.formats.motion import motion_state_to_ours

            _, config = motion_state_to_ours(state, "diffusers", {}, json.loads(config_file.read_text()))
            details.update({"version": config.version, "PE length": config.max_frames, "config": config})
        return FileInfo(path, kind, layout, _parameter_count(state), details)
    state = load_state_dict(path)
    metadata = read_metadata(path)
    kind, layout, details = classify(state, metadata)
    return FileInfo(path, kind, layout, _parameter_count(state), details)


def expect_kind(info: FileInfo, expected: str) -> None:
    """Raise a one-line CheckpointError when `info` is not of the `expected` kind."""
    if info.kind == expected:
        return
    what, option = KINDS[info.kind]
    wanted = KINDS[expected][0]
    fix = f"pass it with {option}" if option else "check the path"
    raise CheckpointError(f"{info.path}: this is {what}, but {wanted} was expected here; {fix}")
