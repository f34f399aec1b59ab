"""LoRA files: key parsing for every LoRA layout, and the official AnimateDiff MotionLoRA / domain-adapter format.

The official AnimateDiff repository ships two kinds of LoRA, both in the old diffusers "attention processor" naming
(guoyww/AnimateDiff `animatediff/utils/convert_lora_safetensor_to_diffusers.py: load_diffusers_lora`):

    <attention path>.processor.{to_q,to_k,to_v,to_out}_lora.{down,up}.weight      down (rank, in), up (out, rank)

- **MotionLoRA** (`v2_lora_ZoomIn.ckpt`, ...): on the motion modules' temporal self-attention; the attention path is an
  official motion-module path (`down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.
  attention_blocks.0`). Files were trained on v2, so they carry `mid_block` keys; those are skipped on modules
  without a mid block (as ComfyUI-AnimateDiff-Evolved does).
- **Domain adapter** (`v3_sd15_adapter.ckpt`): on the image UNet's spatial attention; the attention path is a
  diffusers UNet path (`down_blocks.0.attentions.0.transformer_blocks.0.attn1`).

Both merge as `W += strength · up @ down` with **no alpha/rank factor**: `strength` (their `alpha`,
`adapter_lora_scale`) is the only knob, so these networks are built with `alpha=None` (multiplier 1).

`classify_lora_keys` tells the LoRA layouts apart (used by `zoetrope.formats.detect` and by every loader's
wrong-file error). `parse_lora_state` splits any LoRA state dict into `{module path: {"down", "up"[, "alpha"]}}`
in the file's own namespace; the format modules (here and `kohya.py`) map those paths onto a model.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Literal, Mapping

import torch
from torch import nn

from zoetrope import __version__
from zoetrope.adapters.lora import LoRALayer, LoRANetwork, fit_to_module
from zoetrope.errors import CheckpointError, ConfigError, InputError
from zoetrope.formats.rename import sample_keys
from zoetrope.formats.safe_load import load_state_dict, read_metadata, save_state_dict

if TYPE_CHECKING:
    from zoetrope.adapters.position import PositionCode

logger = logging.getLogger(__name__)

LoRAKind = Literal["motion_lora", "domain_adapter", "kohya", "peft"]
#: `{module path: {"down": tensor, "up": tensor, "alpha": scalar tensor (optional)}}`
LoRAEntries = dict[str, dict[str, torch.Tensor]]

# The attention-processor naming of old diffusers (and of the official AnimateDiff LoRAs).
_PROCESSOR = re.compile(
    r"^(?P<path>.+)\.processor\.(?P<projection>to_q|to_k|to_v|to_out)_lora\.(?P<role>down|up)\.weight$"
)
# kohya / A1111: `lora_unet_<flattened path>.lora_down.weight`, `.lora_up.weight`, `.alpha`.
_KOHYA = re.compile(r"^(?P<path>lora_(?:unet|te\d?)_[^.]+)\.(?P<role>lora_down\.weight|lora_up\.weight|alpha)$")
# diffusers / peft: `.lora_A[.adapter].weight`, `.lora.down.weight` (LoRACompatibleLinear), `.lora_linear_layer.down`.
_PEFT = (
    (re.compile(r"^(?P<path>.+)\.lora_(?P<role>A|B)(?:\.[^.]+)?\.weight$"), {"A": "down", "B": "up"}),
    (re.compile(r"^(?P<path>.+)\.lora\.(?P<role>down|up)\.weight$"), {"down": "down", "up": "up"}),
    (re.compile(r"^(?P<path>.+)\.lora_linear_layer\.(?P<role>down|up)\.weight$"), {"down": "down", "up": "up"}),
)
_PEFT_ALPHA = re.compile(r"^(?P<path>.+)\.alpha$")
_KOHYA_ROLES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
# Adapter families we recognise but cannot apply (named in the error instead of "unknown key").
_UNSUPPORTED = {
    "hada_w1_a": "LyCORIS LoHa",
    "lokr_w1": "LyCORIS LoKr",
    "dora_scale": "DoRA",
    "lora_magnitude_vector": "DoRA",
    "diff_b": "a full-weight difference",
    ".diff": "a full-weight difference",
}

# One wording for "this file is X; pass it with --Y", matching zoetrope.formats.detect.KINDS.
WHAT_IT_IS = {
    "motion_lora": ("a MotionLoRA (a LoRA on the motion module)", "--motion-lora"),
    "domain_adapter": ("the domain adapter (a LoRA on the image UNet's spatial attention)", "--adapter"),
    "kohya": ("an image LoRA (kohya/A1111 layout)", "--lora"),
    "peft": ("an image LoRA (diffusers/peft layout)", "--lora"),
    "motion_module": ("an AnimateDiff motion module, not a LoRA", "--motion-module"),
}


# ---------------------------------------------------------------------------------------------------- detection
def _is_motion(key: str) -> bool:
    return ".motion_modules." in key or "_motion_modules_" in key


def classify_lora_keys(keys: Iterable[str]) -> LoRAKind | None:
    """Which LoRA layout a state dict's keys are in, or None when it is not a LoRA we know.

    - `motion_lora`: any LoRA key on `motion_modules` (official processor naming, or diffusers' converted one);
    - `kohya`: `lora_unet_…` / `lora_te…` keys;
    - `domain_adapter`: processor naming (`….processor.to_q_lora.down.weight`) on the image UNet, unprefixed;
    - `peft`: diffusers/peft keys (`lora_A`/`lora_B`, `.lora.down`, `lora_linear_layer`, or processor naming under a
      `unet.` / `text_encoder.` prefix, which old diffusers training scripts wrote).
    """
    keys = list(keys)
    processor = [key for key in keys if _PROCESSOR.match(key)]
    kohya = [key for key in keys if _KOHYA.match(key)]
    peft = [key for key in keys if any(pattern.match(key) for pattern, _ in _PEFT)]
    lora_keys = processor + kohya + peft
    if not lora_keys:
        return None
    if any(_is_motion(key) for key in lora_keys):
        return "motion_lora"
    if kohya:
        return "kohya"
    if processor and not any(key.startswith(("unet.", "text_encoder.")) for key in processor):
        return "domain_adapter"
    return "peft"


def _looks_like_motion_module(keys: Iterable[str]) -> bool:
    return any(".motion_modules." in key and key.endswith((".to_q.weight", ".proj_in.weight")) for key in keys)


def wrong_kind_error(path: str | os.PathLike, found: str | None, expected: str) -> CheckpointError:
    """The one-line error for a file of kind `found` passed where `expected` (a human phrase) was wanted."""
    if found in WHAT_IT_IS:
        what, option = WHAT_IT_IS[found]
        return CheckpointError(f"{path}: this is {what}, but {expected} was expected here; pass it with {option}")
    return CheckpointError(
        f"{path}: not a LoRA file zoetrope recognises (no `…_lora.down.weight`, `lora_unet_…`, `lora_A` keys), but "
        f"{expected} was expected here; check the path"
    )


def file_kind(state: Mapping[str, torch.Tensor]) -> str | None:
    """`classify_lora_keys`, plus `motion_module` for full motion-module checkpoints (for wrong-file errors)."""
    kind = classify_lora_keys(state)
    if kind is None and _looks_like_motion_module(state):
        return "motion_module"
    return kind


# ---------------------------------------------------------------------------------------------------- parsing
def parse_lora_state(state: Mapping[str, torch.Tensor], source: str | os.PathLike) -> tuple[LoRAEntries, list[str]]:
    """Split a LoRA state dict into per-module `{"down", "up"[, "alpha"]}` entries; returns (entries, unparsed keys).

    Processor-named paths get their projection appended as a diffusers module name (`…attn1.to_q`,
    `…attn1.to_out.0`), so every layout ends up as "the path of the Linear the LoRA modifies" in the file's
    namespace. Each entry must have both halves.
    """
    entries: LoRAEntries = {}
    unparsed: list[str] = []
    for key, value in state.items():
        path, role = _parse_key(key)
        if path is None:
            unparsed.append(key)
            continue
        entry = entries.setdefault(path, {})
        if role in entry:
            raise CheckpointError(f"{source}: two LoRA weights for {path} ({role}); the file is malformed")
        entry[role] = value
    incomplete = [path for path, entry in entries.items() if "down" not in entry or "up" not in entry]
    if incomplete:
        raise CheckpointError(
            f"{source}: LoRA modules with only one of down/up: {sample_keys(incomplete)}; the file is truncated or "
            "malformed: download it again"
        )
    return entries, unparsed


def _parse_key(key: str) -> tuple[str | None, str]:
    match = _PROCESSOR.match(key)
    if match:
        projection = match["projection"]
        module = "to_out.0" if projection == "to_out" else projection
        return f"{match['path']}.{module}", match["role"]
    match = _KOHYA.match(key)
    if match:
        return match["path"], _KOHYA_ROLES[match["role"]]
    for pattern, roles in _PEFT:
        match = pattern.match(key)
        if match:
            return match["path"], roles[match["role"]]
    match = _PEFT_ALPHA.match(key)
    if match:
        return match["path"], "alpha"
    return None, ""


def unsupported_family(keys: Iterable[str]) -> str | None:
    """The name of a LoRA-like family we recognise but do not apply (LoHa, LoKr, DoRA...), if any key shows one."""
    for key in keys:
        for fragment, family in _UNSUPPORTED.items():
            if fragment in key:
                return family
    return None


def raise_for_unparsed(unparsed: list[str], source: str | os.PathLike) -> None:
    if not unparsed:
        return
    family = unsupported_family(unparsed)
    if family:
        raise CheckpointError(
            f"{source}: holds {family} weights ({sample_keys(unparsed)}), which zoetrope does not apply; "
            "use a plain LoRA (lora_down/lora_up) file"
        )
    raise CheckpointError(
        f"{source}: keys that are not LoRA weights: {sample_keys(unparsed)}; expected only down/up (and alpha) "
        "weights: check that this is a LoRA file"
    )


def build_network(
    entries: LoRAEntries,
    model: nn.Module,
    resolve: Callable[[str], str | None],
    source: str | os.PathLike,
    *,
    scale: float,
    alpha_semantics: bool,
    describe_model: str,
    skip: Callable[[str], bool] = lambda _path: False,
) -> LoRANetwork:
    """A LoRANetwork for `model` from parsed entries.

    `resolve` maps a file path to a module name of `model` (None when it has none); `skip` drops paths on purpose
    (logged). `alpha_semantics`: kohya/peft multiplier alpha/rank (missing alpha = rank), else 1 (official).
    Weights take the target module's device and dtype (the caller owns both). Unmatched paths or shape mismatches
    raise a CheckpointError naming the file and a few of the offenders.
    """
    network = LoRANetwork(scale=scale)
    unmatched: list[str] = []
    skipped: list[str] = []
    ranks: set[int] = set()
    for path, entry in entries.items():
        if skip(path):
            skipped.append(path)
            continue
        name = resolve(path)
        if name is None:
            unmatched.append(path)
            continue
        module = model.get_submodule(name)
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            unmatched.append(path)
            continue
        down = fit_to_module(entry["down"], module, "down").to(module.weight)
        up = fit_to_module(entry["up"], module, "up").to(module.weight)
        rank = int(down.shape[0])
        alpha = None
        if alpha_semantics:
            alpha = float(entry["alpha"].float().item()) if "alpha" in entry else float(rank)
        try:
            layer = LoRALayer.for_module(module, rank, alpha)
        except ConfigError as error:
            raise CheckpointError(f"{source}: cannot put a LoRA on {name}: {error}") from error
        if tuple(layer.down.shape) != tuple(down.shape) or tuple(layer.up.shape) != tuple(up.shape):
            raise CheckpointError(
                f"{source}: LoRA for {name} has down {tuple(down.shape)} / up {tuple(up.shape)} but {describe_model} "
                f"needs down {tuple(layer.down.shape)} / up {tuple(layer.up.shape)}: the LoRA was made for a "
                "different base model; use one made for this model"
            )
        with torch.no_grad():
            layer.down.copy_(down)
            layer.up.copy_(up)
        network.add_layer(name, layer)
        ranks.add(rank)
    if skipped:
        logger.info("%s: skipped %d LoRA modules (%s)", source, len(skipped), sample_keys(skipped, 2))
    if unmatched:
        raise CheckpointError(
            f"{source}: {len(unmatched)} LoRA modules match nothing in {describe_model} ({sample_keys(unmatched)}); "
            "the LoRA was made for a different base model or layout: use one made for this model"
        )
    if not len(network):
        raise CheckpointError(f"{source}: no LoRA weights apply to {describe_model}; the file is empty for it")
    network.rank = max(ranks)
    return network


def _module_names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_modules()}


# ---------------------------------------------------------------------------------------------------- MotionLoRA
def _motion_path_to_ours(path: str) -> str:
    """A MotionLoRA module path (official or diffusers naming, optional `unet.` prefix) -> our module name."""
    from zoetrope.formats.animatediff import official_module_to_ours
    from zoetrope.formats.diffusers_motion import DIFFUSERS

    path = path.removeprefix("unet.")
    if ".temporal_transformer." in path:
        return official_module_to_ours(path)
    return DIFFUSERS.to_ours(path + ".weight")[: -len(".weight")]


def _read_lora_of_kind(
    path: str | os.PathLike, kind: str, wanted: str
) -> tuple[dict[str, torch.Tensor], LoRAEntries]:
    """Read a LoRA file that must be of `kind` (else the wrong-slot error naming `wanted`); every key must parse.

    Returns the raw state (for format hints such as alpha conventions) and the parsed LoRA entries.
    """
    state = load_state_dict(path)
    found = file_kind(state)
    if found != kind:
        raise wrong_kind_error(path, found, wanted)
    entries, unparsed = parse_lora_state(state, path)
    raise_for_unparsed(unparsed, path)
    return state, entries


def load_motion_lora(path: str | os.PathLike, motion_modules: nn.Module, strength: float = 1.0) -> LoRANetwork:
    """Read a MotionLoRA (official `.ckpt`/`.safetensors`, or diffusers' converted layout) for `motion_modules`.

    Returns an unattached network checked against `motion_modules` (our `MotionModules`): call
    `network.attach(motion_modules)` (live, removable) or `network.merge(motion_modules)` (as the official script
    does). `strength` is the official `alpha`: `W += strength · up @ down`.
    """
    state, entries = _read_lora_of_kind(path, "motion_lora", "a MotionLoRA (a LoRA on the motion module)")
    names = _module_names(motion_modules)
    has_mid = getattr(motion_modules, "mid_block", None) is not None or any(n.startswith("mid_block.") for n in names)
    # Official processor naming has no alpha (multiplier 1); diffusers/peft-converted files may carry alphas.
    alpha_semantics = not any(_PROCESSOR.match(key) for key in state)

    def resolve(file_path: str) -> str | None:
        name = _motion_path_to_ours(file_path)
        return name if name in names else None

    def skip(file_path: str) -> bool:
        return not has_mid and file_path.removeprefix("unet.").startswith("mid_block.")

    network = build_network(
        entries,
        motion_modules,
        resolve,
        path,
        scale=strength,
        alpha_semantics=alpha_semantics,
        describe_model="the motion modules",
        skip=skip,
    )
    logger.info("%s: MotionLoRA with %d layers (rank %d), strength %s", path, len(network), network.rank, strength)
    return network


def load_domain_adapter(path: str | os.PathLike, image_unet: nn.Module, scale: float = 1.0) -> LoRANetwork:
    """Read the AnimateDiff v3 domain adapter (LoRA on the image UNet's spatial attention) for `image_unet`.

    Returns an unattached network checked against `image_unet` (a diffusers UNet2DConditionModel); attach or merge
    it. `scale` is the official `adapter_lora_scale`: `W += scale · up @ down`. The adapter absorbed the training
    videos' artifacts (watermarks, blur); lowering `scale` trades those for the base model's look.
    """
    state, entries = _read_lora_of_kind(
        path, "domain_adapter", "the domain adapter (a LoRA on the image UNet's spatial attention)"
    )
    names = _module_names(image_unet)
    network = build_network(
        entries,
        image_unet,
        lambda file_path: file_path if file_path in names else None,
        path,
        scale=scale,
        alpha_semantics=False,
        describe_model="the image UNet",
    )
    logger.info("%s: domain adapter with %d layers (rank %d), scale %s", path, len(network), network.rank, scale)
    return network


# ---------------------------------------------------------------------------------------------------- saving
_PROJECTION = re.compile(r"^(?P<attention>.+)\.(?P<projection>to_q|to_k|to_v|to_out)(?:\.0)?$")


def _processor_state(network: LoRANetwork, to_file_path: Callable[[str], str], what: str) -> dict[str, torch.Tensor]:
    """Processor-named tensors; a layer's alpha/rank multiplier is folded into `up` (the format has no alpha)."""
    state: dict[str, torch.Tensor] = {}
    for name, layer in network.named_layers():
        match = _PROJECTION.match(to_file_path(name))
        if match is None or layer.is_conv:
            raise ConfigError(
                f"{what} files hold LoRAs on attention projections (to_q/to_k/to_v/to_out) only; the network also "
                f"has {name}: save it in kohya format instead"
            )
        prefix = f"{match['attention']}.processor.{match['projection']}_lora"
        state[f"{prefix}.down.weight"] = layer.down.detach()
        state[f"{prefix}.up.weight"] = layer.up.detach() * layer.multiplier
    return state


def _metadata(kind: str, network: LoRANetwork, metadata: Mapping[str, object] | None) -> dict[str, object]:
    ranks = sorted({layer.rank for _, layer in network.named_layers()})
    return {"zoetrope.kind": kind, "zoetrope.version": __version__, "zoetrope.rank": ranks, **(metadata or {})}


def save_motion_lora(
    network: LoRANetwork, path: str | os.PathLike, metadata: Mapping[str, object] | None = None
) -> Path:
    """Write a network on our motion modules as an official-format MotionLoRA (safetensors).

    The strength (`network.scale`) is not stored: it is chosen when the file is loaded, as in the official configs.
    """
    from zoetrope.formats.animatediff import ours_module_to_official

    state = _processor_state(network, ours_module_to_official, "MotionLoRA")
    return save_state_dict(state, path, _metadata("motion_lora", network, metadata))


def save_domain_adapter(
    network: LoRANetwork, path: str | os.PathLike, metadata: Mapping[str, object] | None = None
) -> Path:
    """Write a network on the image UNet's attention in the official domain-adapter naming (safetensors)."""
    state = _processor_state(network, lambda name: name, "domain adapter")
    return save_state_dict(state, path, _metadata("domain_adapter", network, metadata))


# ---------------------------------------------------------------------------------------------- position codes
POSITION_CODE_NAME = "position_code.safetensors"
"""The file beside a MotionLoRA export that holds its position code (`lora.position_code`)."""


def save_position_code(code: "PositionCode", path: str | os.PathLike, metadata: Mapping[str, object] | None = None) -> Path:
    """Write a `zoetrope.adapters.position.PositionCode` as safetensors (float32), its frequency count in the metadata."""
    tensors = {key: value.float() for key, value in code.named_weights().items()}
    return save_state_dict(
        tensors, path, {**(metadata or {}), "zoetrope_kind": "position_code", "position_frequencies": str(code.frequencies)}
    )


def load_position_code(path: str | os.PathLike, motion_modules: nn.Module, strength: float = 1.0) -> "PositionCode":
    """A `PositionCode` from `save_position_code`'s file, attached to `motion_modules`; a file of another kind, or one
    for another motion module (names or widths), is refused by name."""
    from zoetrope.adapters.position import PositionCode

    path = Path(path)
    if not path.is_file():
        raise InputError(f"position code {path}: no such file")
    metadata = read_metadata(path)
    if metadata.get("zoetrope_kind") != "position_code":
        raise InputError(f"{path} is not a position code (a MotionLoRA stage export with lora.position_code: true)")
    try:
        frequencies = int(metadata.get("position_frequencies", "3"))
    except ValueError:
        raise InputError(f"position code {path}: metadata position_frequencies is not an integer; re-export it") from None
    tensors = load_state_dict(path)
    code = PositionCode(motion_modules, frequencies, strength)
    expected = code.named_weights()
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise InputError(
            f"position code {path} does not fit this motion module (missing {missing[:2]}, unexpected {extra[:2]}); "
            "load it with the motion module it was trained on"
        )
    with torch.no_grad():
        for key, weight in expected.items():
            if tensors[key].shape != weight.shape:
                raise InputError(
                    f"position code {path}: {key} has shape {tuple(tensors[key].shape)}, this motion module needs "
                    f"{tuple(weight.shape)}; load it with the motion module it was trained on"
                )
            weight.copy_(tensors[key])
    first = next(iter(motion_modules.parameters()))
    return code.to(device=first.device, dtype=first.dtype).attach(motion_modules)
