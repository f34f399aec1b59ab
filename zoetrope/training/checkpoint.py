"""Atomic training checkpoints and exact resume.

A checkpoint is a folder `checkpoints/step-0000060/` holding

- the **export**: only the trained parameters, in the format users load (a motion module, a MotionLoRA, ...), and
- `training_state.pt`: everything else needed to continue *exactly*: trained parameters at full precision,
  optimizer, LR scheduler and GradScaler states, the step, every rank's RNG states (torch, CUDA, numpy, python and
  the engine's noise generator) and the data sampler's epoch and position.

The folder is written under a temporary name and renamed into place, so a crash never leaves a checkpoint that
looks complete; `training_state.pt` is itself written to a temp file + `os.replace`. It is read back with
`torch.load(weights_only=True)` (DESIGN principle 7), so it holds only tensors and plain containers: the numpy RNG
state is stored as a tensor, not as a pickled array.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from zoetrope.errors import CheckpointError

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
CHECKPOINT_FOLDER = "checkpoints"
_STEP_FOLDER = re.compile(r"^step-(\d+)$")


# ---------------------------------------------------------------------------------------------------- RNG states
def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """All random-number states of this process, as tensors and plain values (safe for `weights_only` loading)."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(numpy_state[0]),
            "keys": torch.from_numpy(np.asarray(numpy_state[1], dtype=np.int64)),
            "position": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: Mapping[str, Any], generator: torch.Generator | None = None) -> None:
    """Undo `capture_rng`: every process-wide RNG and `generator` continue exactly where they were."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


# ---------------------------------------------------------------------------------------------------- files
def save_training_state(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """`torch.save` to a temp file, then `os.replace`: the file is either the old one or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(dict(state), temporary)
    os.replace(temporary, path)
    return path


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a `training_state.pt` with `weights_only=True`; a damaged file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state here; resume needs a checkpoint folder written by `zoetrope train`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: cannot read the training state ({first}); resume from an earlier checkpoint") from error
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: not a zoetrope training state (no `step`); resume from a checkpoint folder")
    return state


def checkpoint_folder(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / CHECKPOINT_FOLDER / f"step-{step:07d}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints (folders with a training state) as (step, folder), oldest first."""
    root = Path(output_dir) / CHECKPOINT_FOLDER
    found = []
    if root.is_dir():
        for folder in root.iterdir():
            match = _STEP_FOLDER.match(folder.name)
            if match and (folder / STATE_FILE).is_file():
                found.append((int(match[1]), folder))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


def write_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    export: Callable[[Path], Path],
    state: Mapping[str, Any],
    keep: int = 0,
) -> Path:
    """Write `checkpoints/step-N/` atomically: export + training state in a temp folder, then one rename.

    `export(folder)` writes the user-format file into the folder. With `keep > 0`, older checkpoints beyond the
    newest `keep` are removed.
    """
    final = checkpoint_folder(output_dir, step)
    temporary = final.with_name(final.name + ".tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    export(temporary)
    save_training_state(state, temporary / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    if keep > 0:
        for _, folder in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(folder, ignore_errors=True)
    logger.info("checkpoint written: %s", final)
    return final
