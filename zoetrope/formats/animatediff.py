"""The official AnimateDiff motion-module format (guoyww/AnimateDiff `.ckpt`/`.safetensors`).

Official keys carry `temporal_transformer.`, `attention_blocks.a`, `norms.a`, `to_out.0`, `ff.net.0.proj`,
`ff.net.2` and one stored sinusoid per attention (`pos_encoder.pe`, shape `[1, 24|32, C]`). The config is not
stored in released files: version, layout and PE length are read from the keys (same rules as ComfyUI and
diffusers' single-file loader: a `mid_block.` module means v2, three blocks with 320 channels at `up_blocks.2`
mean SDXL beta, a PE of length 24 means v1, otherwise v3). An attention whose `to_k` reads a width other than the
block's is the official code's `Temporal_Cross` (text cross-attention). Files written by zoetrope also carry their
exact config in the safetensors metadata (`zoetrope.motion_config`), which takes precedence.
"""

from __future__ import annotations

import json
import re
from typing import Mapping

import torch

from zoetrope.errors import CheckpointError
from zoetrope.formats.rename import RenameRules
from zoetrope.models.motion_module import PRESETS, MotionModuleConfig

OFFICIAL = RenameRules(
    (
        (".motion_modules.{n}.", ".motion_modules.{n}.temporal_transformer."),
        (".attention_norms.{n}.", ".norms.{n}."),
        (".attentions.{n}.", ".attention_blocks.{n}."),
        (".to_out.", ".to_out.0."),
        (".ff.proj_in.", ".ff.net.0.proj."),
        (".ff.proj_out.", ".ff.net.2."),
        (".pos_encoding", ".pos_encoder.pe"),
    )
)

CONFIG_METADATA_KEY = "zoetrope.motion_config"


def official_to_ours(key: str) -> str:
    """Official parameter name -> our parameter name (`…temporal_transformer.…to_out.0.weight` -> `…to_out.weight`)."""
    return OFFICIAL.to_ours(key)


def ours_to_official(key: str) -> str:
    """Our parameter name -> the official parameter name."""
    return OFFICIAL.to_theirs(key)


def official_module_to_ours(path: str) -> str:
    """Official *module* path (no parameter suffix, as in LoRA files) -> our module path."""
    return official_to_ours(path + ".weight")[: -len(".weight")]


def ours_module_to_official(path: str) -> str:
    return ours_to_official(path + ".weight")[: -len(".weight")]


def is_official_motion_key(key: str) -> bool:
    return ".motion_modules." in key and ".temporal_transformer." in key and ".processor." not in key


_MODULE = re.compile(r"^(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.motion_modules\.(\d+)\.")


def infer_config(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> MotionModuleConfig:
    """Read the motion-module layout from our-named keys (after renaming); metadata config wins when present."""
    if metadata and CONFIG_METADATA_KEY in metadata:
        return MotionModuleConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
    counts: dict[str, int] = {}
    widths: dict[str, int] = {}
    for key, value in state.items():
        match = _MODULE.match(key)
        if not match:
            continue
        block, index = match.group(1), int(match.group(2))
        counts[block] = max(counts.get(block, 0), index + 1)
        if key.endswith(".proj_in.weight") and ".ff." not in key and ".transformer_blocks." not in key:
            widths[block] = int(value.shape[0])
    down = sorted((b for b in counts if b.startswith("down_blocks.")), key=lambda b: int(b.split(".")[1]))
    if not down:
        raise CheckpointError("no motion-module keys (`down_blocks.N.motion_modules.M.…`) found")
    block_out_channels = tuple(widths[b] for b in down)
    layers_per_block = counts[down[0]]
    first = f"{down[0]}.motion_modules.0."
    attentions = {int(m) for k in state for m in re.findall(r"\.attentions\.(\d+)\.", k) if k.startswith(first)}
    transformer_blocks = {
        int(m) for k in state for m in re.findall(r"\.transformer_blocks\.(\d+)\.", k) if k.startswith(first)
    }
    # A self-attention's to_k reads its own block's width, a Temporal_Cross one the text width in every block; look
    # at all blocks, since the text width may equal one of them.
    module_widths = {f"{b}.motion_modules.": w for b, w in widths.items()}
    attention_types, cross_widths = [], set()
    for index in sorted(attentions):
        sources = {
            (int(value.shape[1]), next((w for p, w in module_widths.items() if key.startswith(p)), None))
            for key, value in state.items()
            if key.endswith(f".attentions.{index}.to_k.weight")
        }
        is_cross = any(source != width for source, width in sources if width is not None)
        attention_types.append("Temporal_Cross" if is_cross else "Temporal_Self")
        if is_cross:
            cross_widths |= {source for source, _ in sources}
    pe_lengths = {int(v.shape[1]) for k, v in state.items() if k.endswith(".pos_encoding")}
    mid = "mid_block" in counts
    if len(block_out_channels) == 3:
        version = "sdxl"
    elif mid:
        version = "v2"
    elif pe_lengths == {24}:
        version = "v1"
    else:
        version = "v3"
    preset = PRESETS[version]
    cross = {}
    if len(cross_widths) > 1:
        raise CheckpointError(f"motion module's text attentions read different widths {sorted(cross_widths)}")
    if cross_widths:
        cross = dict(attention_block_types=tuple(attention_types), cross_attention_dim=cross_widths.pop())
    return preset.with_(
        **cross,
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        mid_block=mid,
        attentions_per_block=max(attentions) + 1 if attentions else preset.attentions_per_block,
        num_transformer_blocks=max(transformer_blocks) + 1 if transformer_blocks else 1,
        max_frames=max(pe_lengths) if pe_lengths else preset.max_frames,
        norm_num_groups=_guess_groups(min(block_out_channels), preset.norm_num_groups),
    )


def _guess_groups(smallest_width: int, default: int) -> int:
    """Official files are all 32 groups; tiny files without metadata fall back to a divisor of the width."""
    if smallest_width % default == 0:
        return default
    for groups in (8, 4, 2, 1):
        if smallest_width % groups == 0:
            return groups
    return 1
