"""Image LoRA files: kohya/A1111 (`lora_unet_…`, `lora_te_…`) and diffusers/peft layouts, onto diffusers models.

kohya's sd-scripts name a LoRA module by its dotted module path with every dot replaced by `_`
(`lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`, `lora_te_text_model_encoder_layers_0_
self_attn_q_proj`) and store `lora_down.weight (rank, in[, kh, kw])`, `lora_up.weight (out, rank[, 1, 1])` and a
scalar `alpha`. Because module names themselves contain underscores (`down_blocks`, `to_q`), the flattened name is
resolved against the model's *actual* module names (a map `name.replace('.', '_') -> name`), never by guessing
where the dots were. A1111 semantics: `ΔW = scale · alpha/rank · up @ down`, missing alpha meaning alpha = rank.

transformers 5 flattened `CLIPTextModel` (its modules are `encoder.layers.0…`, no `text_model.` level); kohya files
always say `text_model_encoder_…`, so both spellings resolve, and we write the `text_model_` one.

diffusers/peft files (`unet.<module>.lora_A.weight` / `lora_B.weight`, `text_encoder.<module>…`, the older
`.lora.down.weight` / `.lora_linear_layer.down.weight`, or `unet.…processor.to_q_lora.down.weight`) use dotted
module names directly; their multiplier is alpha/rank when an `alpha` is stored and 1 otherwise (peft's default
`lora_alpha = r`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from zoetrope import __version__
from zoetrope.adapters.lora import LoRANetwork
from zoetrope.errors import CheckpointError
from zoetrope.formats.lora_files import (
    LoRAEntries,
    build_network,
    file_kind,
    parse_lora_state,
    raise_for_unparsed,
    wrong_kind_error,
)
from zoetrope.formats.rename import sample_keys
from zoetrope.formats.safe_load import load_state_dict, save_state_dict

logger = logging.getLogger(__name__)

UNET_PREFIX = "lora_unet_"
TEXT_ENCODER_PREFIX = "lora_te_"


@dataclass
class ImageLoRA:
    """An image LoRA: one network for the UNet and one for the text encoder (either may be None)."""

    unet: LoRANetwork | None
    text_encoder: LoRANetwork | None

    def networks(self) -> Iterator[LoRANetwork]:
        yield from (network for network in (self.unet, self.text_encoder) if network is not None)

    def set_scale(self, scale: float) -> None:
        for network in self.networks():
            network.scale = float(scale)

    def attach(self, unet: nn.Module, text_encoder: nn.Module | None = None) -> "ImageLoRA":
        for network, model in self._pairs(unet, text_encoder):
            network.attach(model)
        return self

    def detach(self) -> None:
        for network in self.networks():
            network.detach()

    def merge(self, unet: nn.Module, text_encoder: nn.Module | None = None) -> None:
        for network, model in self._pairs(unet, text_encoder):
            network.merge(model)

    def unmerge(self, unet: nn.Module, text_encoder: nn.Module | None = None) -> None:
        for network, model in self._pairs(unet, text_encoder):
            network.unmerge(model)

    def _pairs(self, unet: nn.Module, text_encoder: nn.Module | None) -> list[tuple[LoRANetwork, nn.Module]]:
        pairs: list[tuple[LoRANetwork, nn.Module]] = []
        if self.unet is not None:
            pairs.append((self.unet, unet))
        if self.text_encoder is not None:
            if text_encoder is None:
                logger.warning("image LoRA has a text-encoder part but no text encoder was given; it is not applied")
            else:
                pairs.append((self.text_encoder, text_encoder))
        return pairs


# ---------------------------------------------------------------------------------------------------- name maps
def _lora_modules(model: nn.Module) -> Iterator[str]:
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            yield name


def flattened_name_map(model: nn.Module, text_model_alias: bool = False) -> dict[str, str]:
    """`name.replace('.', '_') -> name` for every Linear/Conv2d of `model`.

    With `text_model_alias`, a CLIP text model without the `text_model.` level (transformers >= 5) also answers to
    `text_model_<name>`, the spelling in every kohya file.
    """
    mapping: dict[str, str] = {}
    has_text_model = any(name.startswith("text_model.") for name in _lora_modules(model))
    for name in _lora_modules(model):
        flat = name.replace(".", "_")
        if flat in mapping:  # two modules flattening alike would make the format ambiguous; never true for SD
            raise CheckpointError(f"modules {mapping[flat]!r} and {name!r} share the kohya name {flat!r}")
        mapping[flat] = name
        if text_model_alias and not has_text_model:
            mapping["text_model_" + flat] = name
    return mapping


def _dotted_resolver(model: nn.Module) -> Callable[[str], str | None]:
    """For peft paths: the path itself, or with/without a `text_model.` level (transformers 4 vs 5 CLIP)."""
    names = set(_lora_modules(model))

    def resolve(path: str) -> str | None:
        for candidate in (path, path.removeprefix("text_model."), "text_model." + path):
            if candidate in names:
                return candidate
        return None

    return resolve


# ---------------------------------------------------------------------------------------------------- loading
def _split(entries: LoRAEntries, prefixes: Mapping[str, str]) -> dict[str, LoRAEntries]:
    """Entries grouped by target ("unet"/"text_encoder") by path prefix (kept, so errors show the file's own
    names); paths with none of the prefixes go under ""."""
    groups: dict[str, LoRAEntries] = {}
    for path, entry in entries.items():
        target = next((target for prefix, target in prefixes.items() if path.startswith(prefix)), "")
        groups.setdefault(target, {})[path] = entry
    return groups


def _strip(prefix: str, resolve: Callable[[str], str | None]) -> Callable[[str], str | None]:
    return lambda path: resolve(path.removeprefix(prefix))


_LDM_NAMES = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")


def load_image_lora(
    path: str | os.PathLike,
    unet: nn.Module,
    text_encoder: nn.Module | None = None,
    scale: float = 1.0,
) -> ImageLoRA:
    """Read a kohya/A1111 or diffusers/peft image LoRA for a diffusers UNet (and a CLIP text encoder).

    Returns unattached networks checked against the models; `attach` them (live, removable, stackable) or `merge`
    them. `scale` is the A1111 weight (`<lora:name:scale>`). Without `text_encoder`, a text-encoder part is
    skipped with a warning.
    """
    state = load_state_dict(path)
    kind = file_kind(state)
    if kind not in ("kohya", "peft"):
        raise wrong_kind_error(path, kind, "an image LoRA")
    entries, unparsed = parse_lora_state(state, path)
    raise_for_unparsed(unparsed, path)
    if kind == "kohya":
        return _kohya_networks(entries, unet, text_encoder, path, scale)
    return _peft_networks(entries, unet, text_encoder, path, scale)


def _kohya_networks(
    entries: LoRAEntries, unet: nn.Module, text_encoder: nn.Module | None, source: str | os.PathLike, scale: float
) -> ImageLoRA:
    groups = _split(entries, {UNET_PREFIX: "unet", TEXT_ENCODER_PREFIX: "text_encoder"})
    if "" in groups:
        others = sorted(groups[""])
        sdxl = any(key.startswith(("lora_te1_", "lora_te2_")) for key in others)
        hint = "an SDXL LoRA (two text encoders); use an SD1.5 LoRA" if sdxl else "an unknown kohya prefix"
        raise CheckpointError(f"{source}: LoRA modules {sample_keys(others)} are {hint}")
    ldm_named = sorted(path for path in groups.get("unet", {}) if path.startswith(_LDM_NAMES))
    if ldm_named:
        raise CheckpointError(
            f"{source}: LoRA modules {sample_keys(ldm_named)} use the original LDM UNet names (input_blocks/"
            "output_blocks), which zoetrope does not map; convert the LoRA to diffusers module names (kohya "
            "sd-scripts' networks/convert) or use another LoRA"
        )
    unet_network = None
    if "unet" in groups:
        unet_network = build_network(
            groups["unet"], unet, _strip(UNET_PREFIX, flattened_name_map(unet).get), source, scale=scale,
            alpha_semantics=True, describe_model="the UNet",
        )
    text_network = _text_encoder_network(
        groups.get("text_encoder"),
        text_encoder,
        lambda model: _strip(TEXT_ENCODER_PREFIX, flattened_name_map(model, text_model_alias=True).get),
        source,
        scale,
    )
    return ImageLoRA(unet_network, text_network)


def _peft_networks(
    entries: LoRAEntries, unet: nn.Module, text_encoder: nn.Module | None, source: str | os.PathLike, scale: float
) -> ImageLoRA:
    entries = {path.removeprefix("base_model.model."): entry for path, entry in entries.items()}
    groups = _split(entries, {"unet.": "unet", "text_encoder.": "text_encoder"})
    unet_entries = {**groups.get("unet", {}), **groups.get("", {})}  # an unprefixed peft file is a UNet LoRA
    unet_network = None
    if unet_entries:
        unet_network = build_network(
            unet_entries, unet, _strip("unet.", _dotted_resolver(unet)), source, scale=scale, alpha_semantics=True,
            describe_model="the UNet",
        )
    text_network = _text_encoder_network(
        groups.get("text_encoder"), text_encoder, lambda model: _strip("text_encoder.", _dotted_resolver(model)),
        source, scale,
    )
    return ImageLoRA(unet_network, text_network)


def _text_encoder_network(
    entries: LoRAEntries | None,
    text_encoder: nn.Module | None,
    resolver: Callable[[nn.Module], Callable[[str], str | None]],
    source: str | os.PathLike,
    scale: float,
) -> LoRANetwork | None:
    if not entries:
        return None
    if text_encoder is None:
        logger.warning("%s: %d text-encoder LoRA modules skipped (no text encoder given)", source, len(entries))
        return None
    return build_network(
        entries, text_encoder, resolver(text_encoder), source, scale=scale, alpha_semantics=True,
        describe_model="the text encoder",
    )


# ---------------------------------------------------------------------------------------------------- saving
def kohya_state(unet: LoRANetwork | None = None, text_encoder: LoRANetwork | None = None) -> dict[str, torch.Tensor]:
    """Networks -> kohya tensors (`lora_unet_…`/`lora_te_…`; `alpha` = the layer's alpha, or its rank when the
    layer has official semantics, which keeps `alpha/rank = 1`)."""
    state: dict[str, torch.Tensor] = {}
    for prefix, network in ((UNET_PREFIX, unet), (TEXT_ENCODER_PREFIX, text_encoder)):
        if network is None:
            continue
        for name, layer in network.named_layers():
            if prefix == TEXT_ENCODER_PREFIX and not name.startswith("text_model."):
                name = "text_model." + name
            base = prefix + name.replace(".", "_")
            state[f"{base}.lora_down.weight"] = layer.down.detach()
            state[f"{base}.lora_up.weight"] = layer.up.detach()
            alpha = layer.alpha if layer.alpha is not None else float(layer.rank)
            state[f"{base}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return state


def save_kohya_lora(
    path: str | os.PathLike,
    unet: LoRANetwork | None = None,
    text_encoder: LoRANetwork | None = None,
    metadata: Mapping[str, object] | None = None,
) -> Path:
    """Write networks as a kohya/A1111 LoRA (safetensors), readable by A1111, ComfyUI and `load_image_lora`."""
    state = kohya_state(unet, text_encoder)
    if not state:
        raise CheckpointError(f"{path}: nothing to save; pass a UNet and/or text-encoder network")
    layers = [layer for network in (unet, text_encoder) if network is not None for _, layer in network.named_layers()]
    ranks = {layer.rank for layer in layers}
    alphas = {layer.alpha if layer.alpha is not None else float(layer.rank) for layer in layers}
    info: dict[str, object] = {
        "zoetrope.kind": "image_lora",
        "zoetrope.version": __version__,
        "ss_network_module": "networks.lora",
    }
    if len(ranks) == 1:
        info["ss_network_dim"] = str(ranks.pop())
    if len(alphas) == 1:
        info["ss_network_alpha"] = str(alphas.pop())
    return save_state_dict(state, path, {**info, **(metadata or {})})
