"""Read and write weight files safely.

Why this module exists: checkpoints shared on model sites are torch pickles (`.ckpt`/`.pt`/`.pth`) or
safetensors. A pickle can run arbitrary code, so pickles are only ever read with `weights_only=True`; the
official AnimateDiff files also carry wrappers (`state_dict`), DDP prefixes (`module.`) and non-tensor entries
(`animatediff_config`, once even a pickled OmegaConf object) that every loader must strip. All of that happens here,
once, and every failure becomes a `CheckpointError` that names the file.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Mapping

import torch

from zoetrope.errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WRAPPER_KEYS = ("state_dict", "model", "module", "controlnet")


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file ({} for pickles or files without it)."""
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises several private error types
        raise CheckpointError(f"{path}: cannot read the safetensors header ({error}); the file is damaged or truncated: download it again") from error


def _load_raw(path: Path) -> object:
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({error}); it is damaged or truncated: download it again"
            ) from error
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: the pickle holds objects other than tensors ({str(error).splitlines()[0]}); zoetrope only reads "
            "weights (weights_only=True) so that no code in the file can run. Re-save it as .safetensors, or "
            "convert it with a trusted tool"
        ) from error
    except Exception as error:  # torch raises many types (RuntimeError, KeyError, EOFError...) for non-checkpoints
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
            "the file is truncated, damaged or not a weights file: check the path or download it again"
        ) from error


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a flat `{name: tensor}` dict from a safetensors or pickle checkpoint, safely.

    Unwraps a single `state_dict` (or `model`/`module`) wrapper, drops non-tensor entries such as
    `animatediff_config`, and strips a DDP `module.` prefix when every key has it.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a weights file (.safetensors or .ckpt)")
    raw = _load_raw(path)
    if isinstance(raw, Mapping):
        for wrapper in WRAPPER_KEYS:
            inner = raw.get(wrapper)
            if isinstance(inner, Mapping) and any(isinstance(value, torch.Tensor) for value in inner.values()):
                raw = inner
                break
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: holds a {type(raw).__name__}, expected a dict of tensors (a state dict)")
    tensors = {str(key): value for key, value in raw.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: contains no tensors; it is not a weights file")
    if all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module."):]: value for key, value in tensors.items()}
    return tensors


def save_state_dict(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, object] | None = None
) -> Path:
    """Write tensors as safetensors atomically (temp file + rename), with string metadata.

    Non-string metadata values are JSON-encoded. Tensors are made contiguous and un-shared (safetensors refuses
    tensors that share memory, e.g. the duplicated positional encodings of official motion modules).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {key: value.detach().to("cpu").contiguous().clone() for key, value in tensors.items()}
    text_metadata = {
        key: value if isinstance(value, str) else json.dumps(value) for key, value in (metadata or {}).items()
    }
    temporary = path.with_name(path.name + ".tmp")
    save_file(clean, str(temporary), metadata=text_metadata)
    os.replace(temporary, path)
    return path
