"""The `vae` stage's file: a VAE as safetensors with diffusers parameter names and its constructor config in the
metadata. A format, not a training detail: the pipelines read it too (`--vae`), and they may not import training."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch

from zoetrope.errors import CheckpointError

VAE_CONFIG_KEY = "zoetrope.vae_config"


def save_vae_file(vae: torch.nn.Module, path: str | os.PathLike, metadata: Mapping[str, object] | None = None) -> Path:
    """A VAE as safetensors with diffusers parameter names and its constructor config in the metadata.

    This is the `vae` stage's export; the `image` stage reads it through `model.vae`, and the image stage's own
    single-file export then carries the VAE in the LDM layout.
    """
    from zoetrope.formats.safe_load import save_state_dict
    from zoetrope.formats.sd_single_file import model_config

    info = {"zoetrope.kind": "vae", VAE_CONFIG_KEY: json.dumps(model_config(vae)), **(metadata or {})}
    return save_state_dict(vae.state_dict(), path, info)


def load_vae_file(path: str | os.PathLike) -> torch.nn.Module:
    """Read a file written by `save_vae_file` (strictly) into a frozen `AutoencoderKL`."""
    from diffusers import AutoencoderKL

    from zoetrope.formats.safe_load import load_state_dict, read_metadata

    metadata = read_metadata(path)
    if VAE_CONFIG_KEY not in metadata:
        raise CheckpointError(
            f"{path}: not a VAE written by the `vae` training stage (no `{VAE_CONFIG_KEY}` metadata); pass the "
            "vae.safetensors from that stage, or leave model.vae empty to use the image model's VAE"
        )
    vae = AutoencoderKL.from_config(json.loads(metadata[VAE_CONFIG_KEY]))
    state = load_state_dict(path)
    try:
        vae.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise CheckpointError(f"{path}: VAE weights do not match its stored config ({first}); the file is damaged") from error
    return vae.eval().requires_grad_(False)
