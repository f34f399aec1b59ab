"""diffusers' `MotionAdapter` format (`diffusion_pytorch_model.safetensors` + `config.json`).

diffusers names the two attentions `attn1`/`attn2`, their LayerNorms `norm1`/`norm2` and the feed-forward norm
`norm3`, drops `temporal_transformer.`, and stores the positional encoding once per transformer block
(`transformer_blocks.k.pos_embed.pe`) instead of once per attention. Its config.json carries the layout
(`block_out_channels`, `motion_layers_per_block`, `motion_num_attention_heads`, `motion_norm_num_groups`,
`motion_max_seq_length`, `use_motion_mid_block`).
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from zoetrope.errors import CheckpointError

from zoetrope.formats.rename import RenameRules
from zoetrope.models.motion_module import MotionModuleConfig

DIFFUSERS = RenameRules(
    (
        (".attentions.0.pos_encoding", ".pos_embed.pe"),
        (".attention_norms.0.", ".norm1."),
        (".attention_norms.1.", ".norm2."),
        (".ff_norm.", ".norm3."),
        (".attentions.0.", ".attn1."),
        (".attentions.1.", ".attn2."),
        (".to_out.", ".to_out.0."),
        (".ff.proj_in.", ".ff.net.0.proj."),
        (".ff.proj_out.", ".ff.net.2."),
    )
)

_EXTRA_PE = re.compile(r"\.attentions\.([1-9]\d*)\.pos_encoding$")


def is_diffusers_motion_key(key: str) -> bool:
    return ".motion_modules." in key and ".temporal_transformer." not in key and (
        ".attn1." in key or ".pos_embed." in key or ".proj_in." in key
    )


def to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> diffusers keys; the per-attention PE copies beyond the first are dropped (equal by design)."""
    return {DIFFUSERS.to_theirs(k): v for k, v in state.items() if not _EXTRA_PE.search(k)}


def from_diffusers(state: Mapping[str, torch.Tensor], config: MotionModuleConfig) -> dict[str, torch.Tensor]:
    """diffusers keys -> ours; the one PE per block is copied to every attention of that block."""
    ours = {DIFFUSERS.to_ours(k): v for k, v in state.items()}
    for key in [k for k in ours if k.endswith(".attentions.0.pos_encoding")]:
        for index in range(1, config.attentions_per_block):
            ours[key.replace(".attentions.0.", f".attentions.{index}.")] = ours[key]
    return ours


def config_to_diffusers(config: MotionModuleConfig) -> dict:
    """The MotionAdapter config.json for a motion-module config."""
    if config.reads_text:
        raise CheckpointError(
            "this motion module cross-attends to text (Temporal_Cross), which diffusers' MotionAdapter cannot hold; "
            "save it in the official layout"
        )
    return {
        "_class_name": "MotionAdapter",
        "block_out_channels": list(config.block_out_channels),
        "motion_layers_per_block": config.layers_per_block,
        "motion_transformer_layers_per_block": config.num_transformer_blocks,
        "motion_mid_block_layers_per_block": 1,
        "motion_transformer_layers_per_mid_block": config.num_transformer_blocks,
        "motion_num_attention_heads": config.num_attention_heads,
        "motion_norm_num_groups": config.norm_num_groups,
        "motion_max_seq_length": config.max_frames,
        "use_motion_mid_block": config.mid_block,
        "conv_in_channels": None,
    }


def config_from_diffusers(values: Mapping, base: MotionModuleConfig) -> MotionModuleConfig:
    """A MotionAdapter config.json -> our config; fields diffusers does not store come from `base`."""
    return base.with_(
        block_out_channels=tuple(values.get("block_out_channels", base.block_out_channels)),
        layers_per_block=int(values.get("motion_layers_per_block", base.layers_per_block)),
        num_transformer_blocks=int(values.get("motion_transformer_layers_per_block", base.num_transformer_blocks)),
        num_attention_heads=int(values.get("motion_num_attention_heads", base.num_attention_heads)),
        norm_num_groups=int(values.get("motion_norm_num_groups", base.norm_num_groups)),
        max_frames=int(values.get("motion_max_seq_length", base.max_frames)),
        mid_block=bool(values.get("use_motion_mid_block", base.mid_block)),
    )
