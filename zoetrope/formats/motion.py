"""Load and save motion modules in every supported layout: official AnimateDiff and diffusers MotionAdapter.

`load_motion_module(path)` is the public entry point (`zoetrope.load_motion_module`): it accepts an official
`.ckpt`/`.safetensors` (optionally wrapped in `state_dict`, with `animatediff_config` entries or a DDP `module.`
prefix), a diffusers MotionAdapter folder or its weights file, detects version and PE length from the keys, and
loads strictly: the only keys allowed to be missing are the positional encodings, which are deterministic sinusoids
(files re-saved by the current official code no longer store them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Mapping

import torch

from zoetrope import __version__
from zoetrope.errors import CheckpointError, ConfigError
from zoetrope.formats.animatediff import CONFIG_METADATA_KEY, OFFICIAL, infer_config
from zoetrope.formats.diffusers_motion import config_from_diffusers, config_to_diffusers, from_diffusers, to_diffusers
from zoetrope.formats.rename import describe_mismatch, key_mismatch
from zoetrope.formats.safe_load import load_state_dict, read_metadata, save_state_dict
from zoetrope.models.motion_module import MotionModuleConfig, MotionModules

Layout = Literal["official", "diffusers"]


def motion_state_to_ours(
    state: Mapping[str, torch.Tensor],
    layout: Layout,
    metadata: Mapping[str, str] | None = None,
    diffusers_config: Mapping | None = None,
) -> tuple[dict[str, torch.Tensor], MotionModuleConfig]:
    """Rename a foreign motion-module state dict to our names and work out its config."""
    if layout == "official":
        ours = OFFICIAL.map_to_ours(state)
        return ours, infer_config(ours, metadata)
    provisional = {key: value for key, value in from_diffusers(state, MotionModuleConfig()).items()}
    config = infer_config(provisional, metadata)
    if diffusers_config is not None:
        config = config_from_diffusers(diffusers_config, config)
    return from_diffusers(state, config), config


def build_motion_modules(
    state: Mapping[str, torch.Tensor], config: MotionModuleConfig, source: str | os.PathLike
) -> MotionModules:
    """Instantiate `MotionModules(config)` and load `state` strictly (only positional encodings may be missing)."""
    modules = MotionModules(config.with_(zero_init=False))
    expected = modules.state_dict()
    missing, unexpected = key_mismatch(expected, state)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: motion-module keys do not match a {config.version} layout "
            f"({describe_mismatch(missing, unexpected)}); the file "
            "is damaged or from an unsupported variant"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)} for this layout"
            )
    full = dict(expected)
    full.update(state)
    modules.load_state_dict(full, strict=True)
    modules.config = config
    return modules


def extend_motion_modules(modules: MotionModules, attention_block_types: tuple[str, ...], cross_attention_dim: int) -> MotionModules:
    """`modules` with more attentions per transformer block, appended after its own and starting as no-ops.

    The use: warm-start a module with a text cross-attention (`Temporal_Cross`) from a trained self-attention-only
    one. The new attentions' output projections are zero, so the extended modules compute exactly what `modules`
    did until training moves them. Existing attentions must be a prefix of `attention_block_types`.
    """
    old = modules.config.attention_types
    new = tuple(attention_block_types)
    if new[: len(old)] != old or len(new) <= len(old):
        raise ConfigError(
            f"model.motion.attention_block_types={list(new)} cannot extend the loaded motion module's {list(old)}: "
            "list its attentions first and append the new ones"
        )
    config = modules.config.with_(
        attention_block_types=new, attentions_per_block=len(new), cross_attention_dim=cross_attention_dim
    )
    extended = MotionModules(config)
    missing, unexpected = extended.load_state_dict(modules.state_dict(), strict=False)
    new_indices = tuple(range(len(old), len(new)))
    if unexpected or any(not any(f".attentions.{i}." in key or f".attention_norms.{i}." in key for i in new_indices) for key in missing):
        raise CheckpointError(f"extending the motion module left unexpected keys {unexpected[:3]} / {missing[:3]}")
    with torch.no_grad():
        for name, parameter in extended.named_parameters():
            if any(f".attentions.{i}.to_out." in name for i in new_indices):
                parameter.zero_()
    return extended


def load_motion_module(
    path: str | os.PathLike, *, norm_mode: str | None = None, unet_norm_mode: str | None = None
) -> MotionModules:
    """Load any supported motion-module file or folder; version and PE length come from the file.

    `norm_mode` overrides the motion module's GroupNorm mode (e.g. "joint" to match diffusers exactly).
    """
    from zoetrope.formats.detect import expect_kind, inspect_file

    path = Path(path)
    info = inspect_file(path)
    expect_kind(info, "motion_module")
    diffusers_config = None
    if path.is_dir():
        weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        config_file = path / "config.json"
        diffusers_config = json.loads(config_file.read_text()) if config_file.exists() else None
        state, metadata = load_state_dict(weights[0]), read_metadata(weights[0])
    else:
        state, metadata = load_state_dict(path), read_metadata(path)
    ours, config = motion_state_to_ours(state, info.layout, metadata, diffusers_config)
    overrides = {}
    if norm_mode is not None:
        overrides["norm_mode"] = norm_mode
    if unet_norm_mode is not None:
        overrides["unet_norm_mode"] = unet_norm_mode
    return build_motion_modules(ours, config.with_(**overrides), path)


def save_motion_module(
    modules: MotionModules,
    path: str | os.PathLike,
    layout: Layout = "official",
    metadata: Mapping[str, object] | None = None,
) -> Path:
    """Write motion modules as safetensors in the official layout (a file) or the diffusers layout.

    For the diffusers layout, a path without a `.safetensors` suffix is a MotionAdapter folder
    (`config.json` + `diffusion_pytorch_model.safetensors`). Our exact config always goes into the metadata.
    """
    path = Path(path)
    info = {
        CONFIG_METADATA_KEY: json.dumps(modules.config.to_dict()),
        "zoetrope.kind": "motion_module",
        "zoetrope.version": __version__,
        **(metadata or {}),
    }
    state = modules.state_dict()
    if layout == "official":
        return save_state_dict(OFFICIAL.map_to_theirs(state), path, info)
    if layout != "diffusers":
        raise CheckpointError(f"unknown motion-module layout {layout!r}; expected 'official' or 'diffusers'")
    config_to_diffusers(modules.config)  # refuses what a MotionAdapter cannot hold, before anything is written
    if path.suffix == ".safetensors":
        return save_state_dict(to_diffusers(state), path, info)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config_to_diffusers(modules.config), indent=2))
    save_state_dict(to_diffusers(state), path / "diffusion_pytorch_model.safetensors", info)
    return path
