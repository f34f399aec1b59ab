"""The bundled shapes-world model: tiny weights shipped inside the package so `zoetrope generate PROMPT` works offline.

Why bundle a model at all: every other path needs multi-gigabyte SD1.5 and AnimateDiff downloads; the shapes world
(`zoetrope.world`) is small enough that all AnimateDiff stages (Guo et al. 2024, "AnimateDiff", §4: domain adapter,
motion module, MotionLoRA, on top of a base and a personalised image model) can be trained from nothing on a CPU,
and the result fits in a few megabytes. `tools/train_world_vz.sh` is the exact recipe that produced the files and
`docs/world-training.md` records how long each stage took and what the model measures.

The files live in the package data folder `zoetrope/assets/world/`, stored in float16 to keep the wheel small; every
loader copies them into the caller's dtype (float32 by default), so nothing downstream sees half precision unless it
asks for it.
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path
from typing import Mapping

import torch

from zoetrope.errors import CheckpointError

logger = logging.getLogger(__name__)

BUNDLED_FILES: dict[str, str] = {
    "model": "base.safetensors",
    "personalized_model": "pastel.safetensors",
    "motion_module": "motion_module.safetensors",
    "domain_adapter": "domain_adapter.safetensors",
    "motion_lora_zoom_in": "motion_lora_zoom_in.safetensors",
    "motion_lora_pan_left": "motion_lora_pan_left.safetensors",
    "motion_lora_fast": "motion_lora_fast.safetensors",
    "sparsectrl_rgb": "sparsectrl_rgb.safetensors",
    "sparsectrl_sketch": "sparsectrl_sketch.safetensors",
}
"""Role -> file name in `zoetrope/assets/world/`. `model` + `motion_module` are what `zoetrope generate` uses by
default; the personalised model (pastel style, trigger "zxq"), the domain adapter, the two camera MotionLoRAs, the
fast-motion MotionLoRA (the keyframe pass of `generate --keyframes-first`) and the two SparseCtrl encoders
(`generate --control rgb|sketch` with no `--control-model`) are there to try the other
AnimateDiff parts without downloading anything."""

SIZE_LIMIT_BYTES = 40 * 1024 * 1024
"""The bundle's budget (issue 3): everything under `zoetrope/assets/world/` together."""


def bundled_folder() -> Path:
    """The package data folder holding the bundled weights (it may not exist in a source tree without them)."""
    return Path(str(resources.files("zoetrope").joinpath("assets", "world")))


def bundled_files() -> dict[str, Path]:
    """Every bundled file by role (see `BUNDLED_FILES`); raises `CheckpointError` naming the missing ones."""
    folder = bundled_folder()
    files = {role: folder / name for role, name in BUNDLED_FILES.items()}
    missing = sorted(name for name, path in zip(BUNDLED_FILES.values(), files.values()) if not path.is_file())
    if missing:
        raise CheckpointError(
            f"{folder}: the bundled shapes-world model is incomplete (missing {', '.join(missing)}); reinstall "
            "zoetrope, run tools/train_world_vz.sh to rebuild it, or pass --model and --motion-module explicitly"
        )
    return files


def bundled_paths() -> tuple[Path, Path]:
    """`(image model, motion module)` of the bundled model: what `load_pipeline()` uses when given no files."""
    files = bundled_files()
    return files["model"], files["motion_module"]


IMAGE_MODEL_ROLES = ("model", "personalized_model")
"""The roles that hold a full SD1.5 single file (UNet + VAE + text encoder): the ones `install_bundle(vae=...)` changes."""


def with_replaced_vae(model: str | os.PathLike, vae: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The weights and metadata of the single-file image model `model` with its VAE replaced by the `vae` stage export.

    Why: a decoder-only VAE fine-tune (`vae_train: decoder`) keeps the latent space, so it improves every model
    above it without retraining them (the shapes world's colours, docs/world-training.md, thirteenth session); users
    get it with `--vae`, and the bundle ships it inside its image models so the default command has it too. The
    replacement must share the model's latents (checked as for `--vae`); the UNet and text encoder are unchanged.
    """
    from zoetrope.formats.safe_load import read_metadata
    from zoetrope.formats.sd_single_file import CONFIGS_METADATA_KEY, configs_metadata, load_sd_single_file, sd_state_dict
    from zoetrope.pipelines.load import replacement_vae

    parts = load_sd_single_file(model)
    new_vae = replacement_vae(vae, parts.vae)
    metadata = dict(read_metadata(model))
    metadata[CONFIGS_METADATA_KEY] = configs_metadata({"unet": parts.unet, "vae": new_vae, "text_encoder": parts.text_encoder})
    metadata["zoetrope.vae_source"] = Path(vae).name
    return sd_state_dict(parts.unet, new_vae, parts.text_encoder), metadata


def install_bundle(
    sources: Mapping[str, str | os.PathLike],
    folder: str | os.PathLike | None = None,
    vae: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Copy trained exports into the bundle folder by role, casting floating-point tensors to float16.

    Half precision halves the shipped size; the weights were trained in float32 and the loaders upcast, so the only
    change is float16 rounding (relative error ~5e-4), far below what the shapes-world metrics can see. Metadata
    (configs, training provenance) is kept as written by the training stage. `vae` (a `vae` stage export sharing the
    models' latent space, e.g. a decoder fine-tune) replaces the VAE inside the image models (`IMAGE_MODEL_ROLES`,
    see `with_replaced_vae`). Returns the written paths by role.
    """
    from zoetrope.formats.safe_load import load_state_dict, read_metadata, save_state_dict

    unknown = sorted(set(sources) - set(BUNDLED_FILES))
    if unknown:
        raise CheckpointError(f"install_bundle: unknown role(s) {unknown}; expected among {sorted(BUNDLED_FILES)}")
    if vae is not None and not set(sources) & set(IMAGE_MODEL_ROLES):
        raise CheckpointError(
            f"install_bundle: a VAE was given but no image model to put it in; add one of {list(IMAGE_MODEL_ROLES)}"
        )
    target = Path(folder) if folder is not None else bundled_folder()
    target.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for role, source in sources.items():
        if vae is not None and role in IMAGE_MODEL_ROLES:
            state, metadata = with_replaced_vae(source, vae)
        else:
            state, metadata = load_state_dict(source), read_metadata(source)
        half = {key: value.to(torch.float16) if value.is_floating_point() else value for key, value in state.items()}
        written[role] = save_state_dict(half, target / BUNDLED_FILES[role], metadata)
        logger.info("bundled %s -> %s (%.2f MB)", source, written[role], written[role].stat().st_size / 1e6)
    total = sum(path.stat().st_size for path in target.glob("*.safetensors"))
    if total > SIZE_LIMIT_BYTES:
        logger.warning("the bundle is %.1f MB, over its %.0f MB budget", total / 2**20, SIZE_LIMIT_BYTES / 2**20)
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m zoetrope.world.bundled ROLE=PATH ...`: install trained exports into the bundle (tools/train_world_vz.sh)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m zoetrope.world.bundled", description=main.__doc__)
    parser.add_argument("files", nargs="+", metavar="ROLE=PATH", help=f"roles: {', '.join(BUNDLED_FILES)}")
    parser.add_argument("--folder", default=None, help="target folder (default: the package's assets/world)")
    parser.add_argument(
        "--vae", default=None, metavar="PATH",
        help="a `vae` stage export (e.g. a decoder fine-tune) to put inside the image models (model, personalized_model)",
    )
    args = parser.parse_args(argv)
    pairs = [item.partition("=") for item in args.files]
    bad = [head for head, sep, tail in pairs if not sep or not tail]
    if bad:
        parser.error(f"expected ROLE=PATH, got {bad}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    install_bundle({role: path for role, _, path in pairs}, args.folder, vae=args.vae)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
