"""SparseCtrl checkpoints: the official files (guoyww/AnimateDiff v3) and diffusers' `SparseControlNetModel`.

Official files (`v3_sd15_sparsectrl_rgb.ckpt`, `v3_sd15_sparsectrl_scribble.ckpt`) hold the whole encoder, flat or
under a `controlnet` wrapper (safe_load unwraps it), sometimes with an `animatediff_config` entry (dropped) and with
or without the stored sinusoids `…attention_blocks.0.pos_encoder.pe`. Their key names are:

- image layers: exactly diffusers' `UNet2DConditionModel` names (`conv_in.*`, `time_embedding.*`,
  `down_blocks.i.{resnets,attentions,downsamplers}.*`, `mid_block.*`) — our encoder holds diffusers modules, so
  these need no rule;
- `controlnet_cond_embedding.{weight,bias}` (rgb: one conv on latents) or `controlnet_cond_embedding.{conv_in,
  blocks.n,conv_out}.*` (scribble: a conv stack on pixels); `controlnet_down_blocks.k.*` (12 for SD1.5) and
  `controlnet_mid_block.*` — our names are the same;
- motion modules `down_blocks.i.motion_modules.j.temporal_transformer.…attention_blocks.0.…` with ONE attention per
  module: the shared official motion-module rules (`formats/animatediff.OFFICIAL`).

diffusers' converter (`scripts/convert_animatediff_sparsectrl_to_diffusers.py`) renames only motion-module keys
(`attn1`, `norm1`, `norm3`, `pos_embed.pe`, no `temporal_transformer`): the shared diffusers motion rules
(`formats/diffusers_motion.DIFFUSERS`). Both rule tables are applied only to keys inside `.motion_modules.`, because
image-layer keys contain the same fragments (`down_blocks.0.attentions.0.…to_out.0`) and must stay untouched.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Literal, Mapping

import torch

from zoetrope import __version__
from zoetrope.errors import CheckpointError, ConfigError
from zoetrope.formats.animatediff import OFFICIAL
from zoetrope.formats.detect import FileInfo, classify, expect_kind
from zoetrope.formats.diffusers_motion import DIFFUSERS
from zoetrope.formats.rename import RenameRules, describe_mismatch, key_mismatch
from zoetrope.formats.safe_load import load_state_dict, read_metadata, save_state_dict
from zoetrope.models.motion_module import sinusoidal_encoding
from zoetrope.models.sparse_control import SPARSECTRL_MOTION, SparseControlConfig, SparseControlEncoder

logger = logging.getLogger(__name__)

Layout = Literal["official", "diffusers"]

#: Only keys containing this fragment are renamed (the motion modules); everything else keeps its name.
MOTION_SCOPE = ".motion_modules."
#: The rename tables per foreign layout (ours <-> theirs), shared with the motion-module formats.
RULES: dict[str, RenameRules] = {"official": OFFICIAL, "diffusers": DIFFUSERS}

CONFIG_METADATA_KEY = "zoetrope.sparsectrl_config"
KIND = "sparsectrl"


def to_ours(state: Mapping[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """A foreign SparseCtrl state dict -> our parameter names (only motion-module keys change)."""
    rules = RULES[layout]
    return {rules.to_ours(key) if MOTION_SCOPE in key else key: value for key, value in state.items()}


def to_theirs(state: Mapping[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """Our state dict -> the official or diffusers names."""
    rules = RULES[layout]
    return {rules.to_theirs(key) if MOTION_SCOPE in key else key: value for key, value in state.items()}


def detect_layout(state: Mapping[str, torch.Tensor]) -> Layout:
    """`official` when motion keys carry `temporal_transformer.`, `diffusers` when they do not.

    A file without motion modules (the frame-by-frame ablation) has the same names in both layouts.
    """
    motion_keys = [key for key in state if MOTION_SCOPE in key]
    if not motion_keys or any(".temporal_transformer." in key for key in motion_keys):
        return "official"
    return "diffusers"


def condition_kind(state: Mapping[str, torch.Tensor]) -> str:
    """`sketch` (pixel conv stack, official scribble) or `rgb` (one conv on latents), from the embedding keys."""
    if "controlnet_cond_embedding.conv_in.weight" in state:
        return "sketch"
    if "controlnet_cond_embedding.weight" in state:
        return "rgb"
    raise CheckpointError(
        "no SparseCtrl condition embedding (`controlnet_cond_embedding.weight` or `controlnet_cond_embedding."
        "conv_in.weight`) in the file; it is not a SparseCtrl encoder"
    )


def _guess_groups(smallest_width: int) -> int:
    """Official files use 32 GroupNorm groups; narrower test files fall back to a divisor of the width."""
    for groups in (32, 16, 8, 4, 2, 1):
        if smallest_width % groups == 0:
            return groups
    return 1


def infer_config(
    state: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    diffusers_config: Mapping | None = None,
) -> SparseControlConfig:
    """Work out the encoder config from our-named keys; zoetrope metadata wins, then diffusers' config.json.

    Official files store no config: the condition type and channels come from the embedding's shapes, the PE length
    from `pos_encoding` (32 when absent), the temporal layers from the presence of motion keys; heads (8) and
    GroupNorm groups (32) are the official values.
    """
    if metadata and CONFIG_METADATA_KEY in metadata:
        return SparseControlConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
    condition = condition_kind(state)
    diffusers_config = diffusers_config or {}
    concat_mask = bool(diffusers_config.get("concat_conditioning_mask", True))
    extra = 1 if concat_mask else 0
    if condition == "rgb":
        input_channels = int(state["controlnet_cond_embedding.weight"].shape[1])
        embedding_channels: tuple[int, ...] = SparseControlConfig().embedding_channels
    else:
        input_channels = int(state["controlnet_cond_embedding.conv_in.weight"].shape[1])
        widths = [int(state["controlnet_cond_embedding.conv_in.weight"].shape[0])]
        step = 1
        while f"controlnet_cond_embedding.blocks.{step}.weight" in state:
            widths.append(int(state[f"controlnet_cond_embedding.blocks.{step}.weight"].shape[0]))
            step += 2
        embedding_channels = tuple(widths)
    motion_widths = [int(v.shape[0]) for k, v in state.items() if MOTION_SCOPE in k and k.endswith(".norm.weight")]
    pe_lengths = {int(v.shape[1]) for k, v in state.items() if k.endswith(".pos_encoding")}
    blocks = {
        int(k.split(".transformer_blocks.")[1].split(".")[0])
        for k in state
        if MOTION_SCOPE in k and ".transformer_blocks." in k
    }
    heads = diffusers_config.get("motion_num_attention_heads", SPARSECTRL_MOTION.num_attention_heads)
    motion = SPARSECTRL_MOTION.with_(
        max_frames=max(pe_lengths) if pe_lengths else int(diffusers_config.get("motion_max_seq_length", 32)),
        num_attention_heads=int(heads),
        num_transformer_blocks=max(blocks) + 1 if blocks else 1,
        norm_num_groups=int(diffusers_config["norm_num_groups"])
        if "norm_num_groups" in diffusers_config
        else _guess_groups(min(motion_widths) if motion_widths else 32),
    )
    return SparseControlConfig(
        condition=condition,
        conditioning_channels=input_channels - extra,
        concat_mask=concat_mask,
        use_simplified_condition_embedding=condition == "rgb",
        embedding_channels=embedding_channels,
        motion=motion,
        temporal=bool(motion_widths),
    )


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], dict | None]:
    """(state, metadata, diffusers config.json or None) from a weights file or a diffusers folder."""
    if not path.is_dir():
        return load_state_dict(path), read_metadata(path), None
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    if not weights:
        raise CheckpointError(
            f"{path}: folder holds no weights (.safetensors/.bin); expected a SparseControlNetModel folder"
        )
    config_file = path / "config.json"
    diffusers_config = json.loads(config_file.read_text()) if config_file.exists() else None
    class_name = (diffusers_config or {}).get("_class_name", "SparseControlNetModel")
    if class_name != "SparseControlNetModel":
        raise CheckpointError(
            f"{config_file}: describes a {class_name}, expected SparseControlNetModel; pass a "
            "SparseCtrl folder or file"
        )
    return load_state_dict(weights[0]), read_metadata(weights[0]), diffusers_config


def load_sparse_control(
    path: str | os.PathLike, image_unet: torch.nn.Module, *, norm_mode: str | None = None
) -> SparseControlEncoder:
    """Load an official or diffusers SparseCtrl checkpoint (file or folder) into a `SparseControlEncoder`, strictly.

    `image_unet` (a diffusers `UNet2DConditionModel` or a `VideoUNet`) gives the encoder's structure; all weights
    come from the file. Only the positional encodings may be missing (deterministic sinusoids). The tensors are
    used as loaded (CPU, the file's dtype): the caller moves the encoder with `.to(device, dtype)`.
    `norm_mode` overrides the motion modules' GroupNorm mode ("joint" reproduces diffusers' behaviour exactly).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder; check the path")
    state, metadata, diffusers_config = _read(path)
    kind, _, _ = classify(state, metadata)
    layout = detect_layout(state)
    expect_kind(FileInfo(path, kind, layout, 0), KIND)
    ours = to_ours(state, layout)
    try:
        config = infer_config(ours, metadata, diffusers_config)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error
    if norm_mode is not None:
        config = config.with_(motion=config.motion.with_(norm_mode=norm_mode))
    try:
        with torch.device("meta"):
            encoder = SparseControlEncoder.from_unet(image_unet, config, copy_weights=False)
    except ConfigError as error:
        raise CheckpointError(
            f"{path}: this SparseCtrl encoder does not fit the loaded base model ({error})"
        ) from error
    expected = encoder.state_dict()
    missing, unexpected = key_mismatch(expected, ours)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: SparseCtrl keys do not match a {config.condition} encoder for this base model "
            f"({describe_mismatch(missing, unexpected)}); the file is damaged, from another base model, or an unsupported variant"
        )
    for key, value in ours.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}; this SparseCtrl "
                "file was made for a different base model (block widths) than the one loaded"
            )
    dtype = ours["conv_in.weight"].dtype
    full = dict(ours)
    for key in expected:
        if key not in full:  # a positional encoding the file does not store
            full[key] = sinusoidal_encoding(expected[key].shape[1], expected[key].shape[2]).to(dtype)
    encoder.load_state_dict(full, strict=True, assign=True)
    logger.info("loaded SparseCtrl %s encoder (%s layout) from %s", config.condition, layout, path)
    return encoder


def save_sparse_control(
    encoder: SparseControlEncoder, path: str | os.PathLike, metadata: Mapping[str, object] | None = None
) -> Path:
    """Write the encoder as safetensors in the official layout, with our config in the metadata."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path}: zoetrope writes SparseCtrl encoders as .safetensors; use a .safetensors path")
    info = {
        CONFIG_METADATA_KEY: json.dumps(encoder.config.to_dict()),
        "zoetrope.kind": KIND,
        "zoetrope.version": __version__,
        **(metadata or {}),
    }
    return save_state_dict(to_theirs(encoder.state_dict(), "official"), path, info)
