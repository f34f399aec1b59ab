"""Single-file Stable Diffusion 1.5 checkpoints in the original LDM layout (CompVis / A1111 / civitai files).

Why: personalised SD1.5 models (DreamBooth, merges) are shared as one `.safetensors`/`.ckpt` holding the three parts
under the LDM names of the original training code (Rombach et al. 2022, `ldm/models/diffusion/ddpm.py`):

    model.diffusion_model.*              the UNet        -> diffusers `UNet2DConditionModel`
    first_stage_model.*                  the VAE         -> diffusers `AutoencoderKL`
    cond_stage_model.transformer.*       CLIP ViT-L/14   -> transformers `CLIPTextModel`

The file carries no config, so the SD1.5 configs are bundled (`zoetrope/assets/sd15/*.json`) and nothing is fetched
from a hub (DESIGN principle 7). Files written by zoetrope embed their exact configs in the safetensors metadata
(`zoetrope.configs`), which is how tiny test and bundled models round-trip through this same layout.

The diffusers <-> LDM name map is data: a table of module prefixes derived from the config (LDM numbers its
`input_blocks`/`output_blocks` serially, so the index is `1 + block * (layers_per_block + 1) + layer`) plus small
rename tables for the inside of a ResNet or VAE attention block. The same table writes files and reads them; the
tests check it against diffusers' own converter on the full-size SD1.5 key set. Loading is strict: a missing or an
unconsumed key under the three prefixes is a `CheckpointError` naming the file and a few keys.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from zoetrope import __version__
from zoetrope.errors import CheckpointError
from zoetrope.formats.rename import RenameRules, describe_mismatch, sample_keys
from zoetrope.formats.safe_load import load_state_dict, read_metadata, save_state_dict

logger = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
TEXT_MODEL = "text_model."
CONFIGS_METADATA_KEY = "zoetrope.configs"
PARTS = ("unet", "vae", "text_encoder")
# Keys real SD1.5 files carry under our prefixes that are not weights: older transformers saved CLIP's position ids.
IGNORED_SUFFIXES = ("embeddings.position_ids",)

# Inside an LDM ResBlock (`ldm/modules/diffusionmodules/openaimodel.py`): Sequential indices instead of names.
UNET_RESNET = RenameRules(
    (
        (".norm1.", ".in_layers.0."),
        (".conv1.", ".in_layers.2."),
        (".time_emb_proj.", ".emb_layers.1."),
        (".norm2.", ".out_layers.0."),
        (".conv2.", ".out_layers.3."),
        (".conv_shortcut.", ".skip_connection."),
    )
)
VAE_RESNET = RenameRules(((".conv_shortcut.", ".nin_shortcut."),))
# The VAE's single-head attention (`ldm/modules/diffusionmodules/model.py` AttnBlock) uses 1x1 convs.
VAE_ATTENTION = RenameRules(
    (
        (".group_norm.", ".norm."),
        (".to_q.", ".q."),
        (".to_k.", ".k."),
        (".to_v.", ".v."),
        (".to_out.0.", ".proj_out."),
    )
)
IDENTITY = RenameRules(())


@dataclass(frozen=True)
class PrefixMap:
    """diffusers module prefix -> (LDM module prefix, rename rules for the names inside that module)."""

    entries: Mapping[str, tuple[str, RenameRules]]

    def to_ldm(self, key: str) -> str | None:
        """LDM name of a diffusers parameter name, or None when no prefix of it is in the table."""
        parts = key.split(".")
        for length in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:length])
            if prefix in self.entries:
                target, inner = self.entries[prefix]
                rest = inner.to_theirs("." + ".".join(parts[length:]))
                return target + rest
        return None


def unet_prefix_map(config: Mapping[str, Any]) -> PrefixMap:
    """The UNet's block-level name table for `config` (SD1.5-style UNet2DConditionModel).

    LDM stores down/up blocks as flat `input_blocks.i`/`output_blocks.i` lists: input block 0 is `conv_in`, then
    each down block contributes `layers_per_block` (resnet, attention) pairs and one downsampler; each up block
    contributes `layers_per_block + 1` pairs, the last of which also holds the upsampler (at index 2 when the pair
    has an attention, else 1).
    """
    layers = int(config["layers_per_block"])
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    entries: dict[str, tuple[str, RenameRules]] = {
        "time_embedding.linear_1": ("time_embed.0", IDENTITY),
        "time_embedding.linear_2": ("time_embed.2", IDENTITY),
        "conv_in": ("input_blocks.0.0", IDENTITY),
        "conv_norm_out": ("out.0", IDENTITY),
        "conv_out": ("out.2", IDENTITY),
        "mid_block.resnets.0": ("middle_block.0", UNET_RESNET),
        "mid_block.attentions.0": ("middle_block.1", IDENTITY),
        "mid_block.resnets.1": ("middle_block.2", UNET_RESNET),
    }
    if config.get("addition_embed_type") == "text":
        # A caption pooled into the timestep embedding (diffusers' TextTimeEmbedding), named as DeepFloyd IF's
        # LDM-style UNet names it (`encoder_pooling`: LayerNorm, AttentionPooling, Linear, LayerNorm).
        for index, name in enumerate(("norm1", "pool", "proj", "norm2")):
            entries[f"add_embedding.{name}"] = (f"encoder_pooling.{index}", IDENTITY)
    for block, block_type in enumerate(down_types):
        for layer in range(layers):
            index = 1 + block * (layers + 1) + layer
            entries[f"down_blocks.{block}.resnets.{layer}"] = (f"input_blocks.{index}.0", UNET_RESNET)
            if block_type.startswith("CrossAttn"):
                entries[f"down_blocks.{block}.attentions.{layer}"] = (f"input_blocks.{index}.1", IDENTITY)
        if block < len(down_types) - 1:
            downsampler = f"input_blocks.{(block + 1) * (layers + 1)}.0.op"
            entries[f"down_blocks.{block}.downsamplers.0.conv"] = (downsampler, IDENTITY)
    for block, block_type in enumerate(up_types):
        has_attention = block_type.startswith("CrossAttn")
        for layer in range(layers + 1):
            index = block * (layers + 1) + layer
            entries[f"up_blocks.{block}.resnets.{layer}"] = (f"output_blocks.{index}.0", UNET_RESNET)
            if has_attention:
                entries[f"up_blocks.{block}.attentions.{layer}"] = (f"output_blocks.{index}.1", IDENTITY)
        if block < len(up_types) - 1:
            last = block * (layers + 1) + layers
            upsampler = f"output_blocks.{last}.{2 if has_attention else 1}.conv"
            entries[f"up_blocks.{block}.upsamplers.0.conv"] = (upsampler, IDENTITY)
    return PrefixMap(entries)


def vae_prefix_map(config: Mapping[str, Any]) -> PrefixMap:
    """The VAE's name table: LDM numbers decoder levels from the lowest resolution up, diffusers the other way."""
    levels = len(config["block_out_channels"])
    layers = int(config["layers_per_block"])
    entries: dict[str, tuple[str, RenameRules]] = {}
    for name in ("conv_in", "conv_out", "quant_conv", "post_quant_conv"):
        entries[name] = (name, IDENTITY)
    for side in ("encoder", "decoder"):
        for name in ("conv_in", "conv_out"):
            entries[f"{side}.{name}"] = (f"{side}.{name}", IDENTITY)
        entries[f"{side}.conv_norm_out"] = (f"{side}.norm_out", IDENTITY)
        entries[f"{side}.mid_block.resnets.0"] = (f"{side}.mid.block_1", VAE_RESNET)
        entries[f"{side}.mid_block.resnets.1"] = (f"{side}.mid.block_2", VAE_RESNET)
        entries[f"{side}.mid_block.attentions.0"] = (f"{side}.mid.attn_1", VAE_ATTENTION)
    for level in range(levels):
        for layer in range(layers):
            entries[f"encoder.down_blocks.{level}.resnets.{layer}"] = (f"encoder.down.{level}.block.{layer}", VAE_RESNET)
        if level < levels - 1:
            downsampler = f"encoder.down.{level}.downsample.conv"
            entries[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = (downsampler, IDENTITY)
        ldm_level = levels - 1 - level
        for layer in range(layers + 1):
            entries[f"decoder.up_blocks.{level}.resnets.{layer}"] = (f"decoder.up.{ldm_level}.block.{layer}", VAE_RESNET)
        if level < levels - 1:
            entries[f"decoder.up_blocks.{level}.upsamplers.0.conv"] = (f"decoder.up.{ldm_level}.upsample.conv", IDENTITY)
    return PrefixMap(entries)


def _with_text_model(ldm_key: str) -> str:
    rest = ldm_key[len(TEXT_PREFIX):]
    return ldm_key if rest.startswith(TEXT_MODEL) else TEXT_PREFIX + TEXT_MODEL + rest


def _text_to_ldm(key: str) -> str:
    """transformers >= 5.6 flattened `CLIPTextModel` (no `text_model.`); SD files keep the wrapped names."""
    return TEXT_PREFIX + (key if key.startswith(TEXT_MODEL) else TEXT_MODEL + key)


def ldm_names(part: str, config: Mapping[str, Any], keys: Iterable[str]) -> dict[str, str]:
    """{diffusers/transformers name: full LDM name} for the state-dict `keys` of one part.

    Raises a CheckpointError for a key the SD1.5 layout has no name for (e.g. an SDXL UNet's `add_embedding`).
    """
    names: dict[str, str] = {}
    if part == "text_encoder":
        return {key: _text_to_ldm(key) for key in keys}
    table, prefix = (unet_prefix_map(config), UNET_PREFIX) if part == "unet" else (vae_prefix_map(config), VAE_PREFIX)
    unmapped = []
    for key in keys:
        name = table.to_ldm(key)
        if name is None:
            unmapped.append(key)
        else:
            names[key] = prefix + name
    if unmapped:
        raise CheckpointError(
            f"the {part} has parameters with no name in the SD1.5 LDM layout ({sample_keys(unmapped)}); only "
            "SD1.5-style models can be written as a single LDM file: save it as a diffusers folder instead"
        )
    return names


# ----------------------------------------------------------------------------------------------- configs


def sd15_config(part: str) -> dict[str, Any]:
    """A bundled SD1.5 config (`unet`, `vae`, `text_encoder` or `scheduler`) as a fresh dict."""
    source = resources.files("zoetrope").joinpath("assets", "sd15", f"{part}.json")
    return json.loads(source.read_text(encoding="utf-8"))


def model_config(model: torch.nn.Module) -> dict[str, Any]:
    """A JSON-ready config of a diffusers model or a transformers CLIPTextModel (private `_` keys dropped)."""
    config = model.config
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {
        key: list(value) if isinstance(value, tuple) else value for key, value in raw.items() if not key.startswith("_")
    }


def _configs_for(path: Path, metadata: Mapping[str, str], overrides: Mapping[str, Mapping] | None) -> dict[str, dict]:
    """Config per part: explicit `overrides` > the file's `zoetrope.configs` metadata > bundled SD1.5 defaults."""
    embedded: dict[str, dict] = {}
    if CONFIGS_METADATA_KEY in metadata:
        try:
            embedded = json.loads(metadata[CONFIGS_METADATA_KEY])
        except json.JSONDecodeError as error:
            raise CheckpointError(
                f"{path}: metadata `{CONFIGS_METADATA_KEY}` is not valid JSON ({error}); re-save the file with zoetrope"
            ) from error
        if not isinstance(embedded, dict) or set(embedded) - set(PARTS):
            raise CheckpointError(
                f"{path}: metadata `{CONFIGS_METADATA_KEY}` must be a JSON object with keys among {', '.join(PARTS)}; "
                f"found {sorted(embedded) if isinstance(embedded, dict) else type(embedded).__name__}"
            )
    configs = {}
    for part in PARTS:
        chosen = (overrides or {}).get(part) or embedded.get(part)
        configs[part] = dict(chosen) if chosen else sd15_config(part)
    return configs


# ----------------------------------------------------------------------------------------------- building


def _unet_factory(config: Mapping[str, Any]) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(dict(config))


def _vae_factory(config: Mapping[str, Any]) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config(dict(config))


def _text_factory(config: Mapping[str, Any]) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig.from_dict(dict(config)))


FACTORIES: dict[str, Callable[[Mapping[str, Any]], torch.nn.Module]] = {
    "unet": _unet_factory,
    "vae": _vae_factory,
    "text_encoder": _text_factory,
}
PART_PREFIXES = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": TEXT_PREFIX}
PART_NAMES = {"unet": "UNet", "vae": "VAE", "text_encoder": "text encoder"}


def _fit_shape(value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """LDM stores the VAE attention projections as 1x1 convs `[C, C, 1, 1]`; diffusers uses Linear `[C, C]`."""
    if value.shape != shape and value.ndim == 4 and value.shape[2:] == (1, 1) and value.shape[:2] == shape:
        return value[:, :, 0, 0]
    return value


def _fill_position_ids(model: torch.nn.Module) -> None:
    """Fill CLIP's `position_ids` buffer, which a state dict never holds (it is non-persistent).

    The models are built on the meta device (no wasted random init of ~1B parameters) and filled with
    `assign=True`, so a non-persistent buffer would stay empty; `position_ids` (arange over positions) is the only
    one in these three model classes, and anything else left on the meta device is a bug worth failing loudly on.
    """
    for module in model.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_meta and name == "position_ids":
                positions = torch.arange(buffer.shape[-1], dtype=buffer.dtype).expand(buffer.shape).clone()
                module.register_buffer(name, positions, persistent=False)
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:
        raise RuntimeError(f"{type(model).__name__}: tensors left unloaded on the meta device: {left[:3]}")


def build_part(
    part: str, config: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str | os.PathLike, dtype: torch.dtype
) -> torch.nn.Module:
    """Build one part from its config and load `state` (LDM names, prefix included) strictly.

    Every model parameter must be present under its LDM name with the right shape, and every key of the file under
    the part's prefix must be consumed (except `IGNORED_SUFFIXES`).
    """
    prefix = PART_PREFIXES[part]
    with torch.device("meta"):
        model = FACTORIES[part](config)
    expected = model.state_dict()
    names = ldm_names(part, config, expected)
    present = {key for key in state if key.startswith(prefix) and not key.endswith(IGNORED_SUFFIXES)}
    # Very old files lack the `text_model.` level that transformers 4.x added to CLIP: read them under that name.
    aliases = {_with_text_model(key) if part == "text_encoder" else key: key for key in present}
    wanted = set(names.values())
    missing = sorted(wanted - set(aliases))
    unexpected = sorted(aliases[key] for key in set(aliases) - wanted)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: the {PART_NAMES[part]} weights do not match the SD1.5 layout for its config "
            f"({describe_mismatch(missing, unexpected)}); the file is damaged, or a different model family (SD2/SDXL) or a different "
            "config than the bundled SD1.5 one"
        )
    loaded: dict[str, torch.Tensor] = {}
    for key, target in expected.items():
        value = _fit_shape(state[aliases[names[key]]], target.shape)
        if value.shape != target.shape:
            raise CheckpointError(
                f"{source}: {aliases[names[key]]} has shape {tuple(value.shape)}, expected {tuple(target.shape)} for "
                f"the {PART_NAMES[part]} config; the file is another model family (SD2/SDXL?) or needs its own config"
            )
        # A fresh copy: tensors read from a file may sit at unaligned addresses, where some CPU kernels take another
        # code path and results differ in the last bits; copies make a loaded model compute exactly like the saved one.
        loaded[key] = value.to(dtype=dtype if value.is_floating_point() else value.dtype, copy=True)
    model.load_state_dict(loaded, strict=True, assign=True)
    _fill_position_ids(model)
    return model.eval()


# ----------------------------------------------------------------------------------------------- public API


@dataclass
class SDModels:
    """The parts read from a single file; a part that was not requested (e.g. UNet-only loading) is None."""

    unet: torch.nn.Module | None
    vae: torch.nn.Module | None
    text_encoder: torch.nn.Module | None


def _check_kind(path: Path, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str], full: bool) -> str:
    """Refuse files that are not LDM SD models (a motion module, a LoRA, ...) with the detector's one-line answer."""
    from zoetrope.formats.detect import FileInfo, classify, expect_kind

    kind, layout, details = classify(state, metadata)
    if kind not in ("sd_model", "sd_unet"):
        expect_kind(FileInfo(path, kind, layout, 0, details), "sd_model")
    if layout != "ldm":
        raise CheckpointError(
            f"{path}: holds a UNet with diffusers parameter names, expected a single-file SD checkpoint in the LDM "
            "layout (`model.diffusion_model.*`); pass the whole diffusers model folder instead"
        )
    base = details.get("base")
    if base in ("SD2", "SDXL") and CONFIGS_METADATA_KEY not in metadata:
        raise CheckpointError(
            f"{path}: this is an {base} model; zoetrope's image models are SD1.5: pass an SD1.5 checkpoint"
        )
    if full and kind == "sd_unet":
        raise CheckpointError(
            f"{path}: holds only a UNet (`model.diffusion_model.*`), but a full SD1.5 model (UNet + VAE + text encoder) "
            "is needed here; pass a full checkpoint or a diffusers folder"
        )
    return kind


def load_sd_single_file(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    parts: Iterable[str] = PARTS,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> SDModels:
    """Load the requested `parts` of an LDM-layout SD1.5 checkpoint (.safetensors, or .ckpt read weights-only).

    Configs come from `configs` (per part), else the file's `zoetrope.configs` metadata, else the bundled SD1.5
    configs. A UNet-only file is accepted when `parts` is `("unet",)`. Models are returned in eval mode, on the CPU,
    in `dtype`.
    """
    path = Path(path)
    parts = tuple(parts)
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not parts:
        raise CheckpointError(f"unknown model parts {unknown or '[]'}; expected some of {', '.join(PARTS)}")
    state = load_state_dict(path)
    metadata = read_metadata(path)
    _check_kind(path, state, metadata, full=set(parts) != {"unet"})
    chosen = _configs_for(path, metadata, configs)
    built = {part: build_part(part, chosen[part], state, path, dtype) for part in parts}
    ignored = [key for key in state if not key.startswith(tuple(PART_PREFIXES[part] for part in PARTS))]
    if ignored:
        logger.debug("%s: ignored %d keys outside the model parts (%s)", path, len(ignored), sample_keys(ignored))
    return SDModels(unet=built.get("unet"), vae=built.get("vae"), text_encoder=built.get("text_encoder"))


def load_sd_unet(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32, config: Mapping[str, Any] | None = None
) -> torch.nn.Module:
    """Only the UNet of an LDM-layout file: a full SD1.5 checkpoint or a UNet-only one (`model.diffusion_model.*`)."""
    return load_sd_single_file(path, dtype, parts=("unet",), configs={"unet": config} if config else None).unet


def sd_state_dict(
    unet: torch.nn.Module, vae: torch.nn.Module | None = None, text_encoder: torch.nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """The parts' weights under LDM names (the VAE attention projections as 1x1 convs, like the original files)."""
    state: dict[str, torch.Tensor] = {}
    for part, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        if model is None:
            continue
        weights = model.state_dict()
        for key, name in ldm_names(part, model_config(model), weights).items():
            value = weights[key]
            if part == "vae" and ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 2:
                value = value[:, :, None, None]
            state[name] = value
    return state


def configs_metadata(models: Mapping[str, torch.nn.Module | None]) -> str:
    """The `CONFIGS_METADATA_KEY` value for the given parts (`unet`, `vae`, `text_encoder`; None parts left out):
    the constructor configs that let a file be rebuilt offline without guessing architectures from shapes."""
    return json.dumps({part: model_config(model) for part, model in models.items() if model is not None})


def save_sd_single_file(
    unet: torch.nn.Module,
    vae: torch.nn.Module | None,
    text_encoder: torch.nn.Module | None,
    path: str | os.PathLike,
    metadata: Mapping[str, object] | None = None,
) -> Path:
    """Write an LDM-layout `.safetensors` that A1111/ComfyUI/diffusers can read; the configs go into the metadata.

    `vae` and `text_encoder` may be None to write a UNet-only file.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path}: zoetrope writes SD checkpoints only as .safetensors; use a .safetensors name")
    info = {
        CONFIGS_METADATA_KEY: configs_metadata({"unet": unet, "vae": vae, "text_encoder": text_encoder}),
        "zoetrope.kind": "sd_model" if vae is not None and text_encoder is not None else "sd_unet",
        "zoetrope.version": __version__,
        **(metadata or {}),
    }
    return save_state_dict(sd_state_dict(unet, vae, text_encoder), path, info)
