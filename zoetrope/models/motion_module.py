"""The AnimateDiff motion module: a temporal transformer over the frame axis.

One implementation serves every public version (v1, v2, v3, SDXL beta), training, MotionLoRA and SparseCtrl;
versions differ only by `MotionModuleConfig` (DESIGN principle 2). The maths follows the official
`VanillaTemporalModule` / `TemporalTransformer3DModel` (guoyww/AnimateDiff, `animatediff/models/motion_module.py`):

    x (b f) c h w -> GroupNorm -> (b h w) f c -> proj_in -> [LayerNorm -> +PE -> self-attention over f -> +x]*n
      -> LayerNorm -> GEGLU feed-forward -> +x -> proj_out -> (b f) c h w -> + input

Two details decide parity with the released checkpoints:
- the sinusoidal positional encoding is added to the *LayerNormed input of each attention*, not to the residual
  stream (official `VersatileAttention.forward`);
- the input GroupNorm is per frame in the official SD1.5 code but joint over frames in the SDXL beta code and in
  diffusers' `AnimateDiffTransformer3D`; `norm_mode` selects between them.

The official code also has a `Temporal_Cross` attention type (`attention_block_types`), in which the frame tokens
(with their positional codes) attend to the prompt's text tokens instead of to each other. No public checkpoint
uses it; it is here because a motion module can only follow a motion word its inputs carry, and an image UNet that
never needed the word may not pass it on (docs/world-training.md, eighth session).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from zoetrope.config import dump_config, load_config
from zoetrope.errors import ConfigError, InputError

NormMode = Literal["per_frame", "joint"]
NORM_MODES = ("per_frame", "joint")
ATTENTION_TYPES = ("Temporal_Self", "Temporal_Cross")


@dataclass(frozen=True)
class MotionModuleConfig:
    """Shape and behaviour of a set of motion modules; defaults reproduce AnimateDiff v3 for SD1.5.

    `norm_mode` is the motion module's own input GroupNorm; `unet_norm_mode` is how the *image* UNet's ResNet
    GroupNorms (and `conv_norm_out`) pool statistics once inflated: AnimateDiff v1 was trained with them joint over
    frames (official `use_inflated_groupnorm: false`), v2/v3 per frame. `max_frames` is the length of the
    positional encoding, taken from the checkpoint (24 for v1, 32 for v2/v3/SDXL). `attention_block_types` names
    each attention of a transformer block as in the official YAML (`Temporal_Self` or `Temporal_Cross`); empty means
    `attentions_per_block` self-attentions, which is every released checkpoint. A `Temporal_Cross` attention reads
    the prompt embedding (width `cross_attention_dim`).
    """

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    mid_block: bool = False
    num_attention_heads: int = 8
    num_transformer_blocks: int = 1
    attentions_per_block: int = 2
    max_frames: int = 32
    norm_num_groups: int = 32
    norm_mode: NormMode = "per_frame"
    unet_norm_mode: NormMode = "per_frame"
    zero_init: bool = True
    version: str = "v3"
    attention_block_types: tuple[str, ...] = ()
    cross_attention_dim: int = 768

    def __post_init__(self) -> None:
        if self.attention_block_types:
            unknown = [kind for kind in self.attention_block_types if kind not in ATTENTION_TYPES]
            if unknown:
                raise ConfigError(
                    f"MotionModuleConfig.attention_block_types: unknown type(s) {unknown}; expected {ATTENTION_TYPES}"
                )
            if len(self.attention_block_types) != self.attentions_per_block:
                raise ConfigError(
                    f"MotionModuleConfig: attention_block_types lists {len(self.attention_block_types)} attentions but "
                    f"attentions_per_block is {self.attentions_per_block}; make them agree"
                )
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        for name in ("norm_mode", "unet_norm_mode"):
            if getattr(self, name) not in NORM_MODES:
                raise ConfigError(f"MotionModuleConfig.{name}={getattr(self, name)!r}; expected one of {NORM_MODES}")
        for channels in self.block_out_channels:
            if channels % self.num_attention_heads:
                raise ConfigError(
                    f"MotionModuleConfig: {channels} channels do not split into {self.num_attention_heads} heads; "
                    "choose num_attention_heads dividing every block width"
                )
            if channels % self.norm_num_groups:
                raise ConfigError(
                    f"MotionModuleConfig: {channels} channels do not split into {self.norm_num_groups} GroupNorm groups"
                )
        if self.max_frames < 1 or self.layers_per_block < 1 or self.attentions_per_block < 1:
            raise ConfigError("MotionModuleConfig: max_frames, layers_per_block, attentions_per_block must be >= 1")

    def to_dict(self) -> dict:
        return dump_config(self)

    @property
    def attention_types(self) -> tuple[str, ...]:
        """The type of every attention in a transformer block (resolving the empty default)."""
        return self.attention_block_types or ("Temporal_Self",) * self.attentions_per_block

    @property
    def reads_text(self) -> bool:
        """Whether the modules cross-attend to the prompt (then every call must pass the text embedding)."""
        return "Temporal_Cross" in self.attention_types

    @classmethod
    def from_dict(cls, values: dict) -> "MotionModuleConfig":
        """Strict: an unknown field or a wrong type is a ConfigError naming the key."""
        return load_config(dict(values), cls)

    def with_(self, **changes: object) -> "MotionModuleConfig":
        return replace(self, **changes)


#: Presets for the public checkpoints (official configs/inference/inference-v{1,2,3}.yaml and the sdxl branch).
PRESETS: dict[str, MotionModuleConfig] = {
    "v1": MotionModuleConfig(max_frames=24, unet_norm_mode="joint", version="v1"),
    "v2": MotionModuleConfig(max_frames=32, mid_block=True, version="v2"),
    "v3": MotionModuleConfig(max_frames=32, version="v3"),
    "sdxl": MotionModuleConfig(block_out_channels=(320, 640, 1280), max_frames=32, norm_mode="joint", version="sdxl"),
}


def sinusoidal_encoding(length: int, channels: int) -> torch.Tensor:
    """The standard transformer sinusoid (Vaswani et al. 2017, §3.5), shape (1, length, channels).

    Identical to the official `PositionalEncoding`: sin on even channels, cos on odd ones.
    """
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels))
    encoding = torch.zeros(1, length, channels)
    encoding[0, :, 0::2] = torch.sin(position * frequency)
    encoding[0, :, 1::2] = torch.cos(position * frequency)
    return encoding


class TemporalAttention(nn.Module):
    """Multi-head self-attention across frames, independently at every spatial location.

    Input and output are `(batch*height*width, frames, channels)`. The positional encoding is added to the
    (already LayerNormed) input from which queries, keys and values are computed, as in the official code.
    With `cross_attention_dim` set (official `Temporal_Cross`), keys and values come from the text embedding
    instead: each frame token, position code included, attends to the prompt's tokens (those of its own frame when
    the prompt travels).
    """

    def __init__(self, channels: int, num_heads: int, max_frames: int, cross_attention_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.is_cross = cross_attention_dim is not None
        source = cross_attention_dim if cross_attention_dim is not None else channels
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(source, channels, bias=False)
        self.to_v = nn.Linear(source, channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        self.register_buffer("pos_encoding", sinusoidal_encoding(max_frames, channels), persistent=True)

    def forward(
        self, tokens: torch.Tensor, key_scale: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`key_scale` (frames,) multiplies the keys: ComfyUI's "motion scale" (a temperature on temporal attention).

        `text` is the prompt embedding `(b, tokens, dim)` or per frame `(b, frames, tokens, dim)`; only a cross
        attention reads it (and ignores `key_scale`: its keys are words, not frames).
        """
        num_frames = tokens.shape[1]
        tokens = tokens + self.pos_encoding[:, :num_frames].to(tokens.dtype)
        if self.is_cross:
            return self._cross(tokens, text)
        query, key, value = (
            rearrange(projection(tokens), "n f (heads d) -> n heads f d", heads=self.num_heads)
            for projection in (self.to_q, self.to_k, self.to_v)
        )
        if key_scale is not None:
            key = key * key_scale.to(key)[None, None, :, None]
        attended = F.scaled_dot_product_attention(query, key, value)
        return self.to_out(rearrange(attended, "n heads f d -> n f (heads d)"))

    def _cross(self, tokens: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """Every (location, frame) token of a video queries that video's text; keys are computed once per video."""
        if text is None:
            raise InputError(
                "this motion module cross-attends to the prompt (Temporal_Cross) but was called without the text "
                "embedding; call it through VideoUNet, which passes encoder_hidden_states on"
            )
        if text.shape[-1] != self.to_k.in_features:
            raise InputError(
                f"the motion module's text attention expects embeddings of width {self.to_k.in_features}, got "
                f"{text.shape[-1]}: the motion module was trained for another text encoder"
            )
        num_frames, heads = tokens.shape[1], self.num_heads
        batch = text.shape[0]
        query = self.to_q(tokens).to(text.dtype)
        key, value = self.to_k(text), self.to_v(text)
        if text.ndim == 3:  # one prompt per video: all its (location, frame) tokens form one query sequence
            query = rearrange(query, "(b s) f (heads d) -> b heads (s f) d", b=batch, heads=heads)
            key, value = (rearrange(x, "b l (heads d) -> b heads l d", heads=heads) for x in (key, value))
            attended = F.scaled_dot_product_attention(query, key, value)
            attended = rearrange(attended, "b heads (s f) d -> (b s) f (heads d)", f=num_frames)
        else:  # prompt travel: each frame's tokens query that frame's prompt
            query = rearrange(query, "(b s) f (heads d) -> (b f) heads s d", b=batch, heads=heads)
            key, value = (rearrange(x, "b f l (heads d) -> (b f) heads l d", heads=heads) for x in (key, value))
            attended = F.scaled_dot_product_attention(query, key, value)
            attended = rearrange(attended, "(b f) heads s d -> (b s) f (heads d)", f=num_frames)
        return self.to_out(attended.to(tokens.dtype))


class GEGLUFeedForward(nn.Module):
    """Gated-GELU feed-forward (Shazeer 2020), width 4x: the diffusers-0.11 `FeedForward(activation_fn="geglu")`."""

    def __init__(self, channels: int, multiplier: int = 4) -> None:
        super().__init__()
        self.proj_in = nn.Linear(channels, 2 * multiplier * channels)
        self.proj_out = nn.Linear(multiplier * channels, channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj_in(tokens).chunk(2, dim=-1)
        return self.proj_out(hidden * F.gelu(gate))


class TemporalTransformerBlock(nn.Module):
    """Pre-norm residual block: `attentions_per_block` temporal self-attentions, then a GEGLU feed-forward."""

    def __init__(self, channels: int, config: "MotionModuleConfig") -> None:
        super().__init__()
        types = config.attention_types
        self.attention_norms = nn.ModuleList(nn.LayerNorm(channels) for _ in types)
        self.attentions = nn.ModuleList(
            TemporalAttention(
                channels, config.num_attention_heads, config.max_frames,
                config.cross_attention_dim if kind == "Temporal_Cross" else None,
            )
            for kind in types
        )
        self.ff_norm = nn.LayerNorm(channels)
        self.ff = GEGLUFeedForward(channels)

    def forward(
        self, tokens: torch.Tensor, key_scale: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> torch.Tensor:
        for norm, attention in zip(self.attention_norms, self.attentions):
            tokens = attention(norm(tokens), key_scale, text) + tokens
        return self.ff(self.ff_norm(tokens)) + tokens


class MotionModule(nn.Module):
    """One temporal transformer inserted into the image UNet; maps `(b f) c h w` to the same shape.

    `forward` returns `input + strength * delta`, where `delta` is the transformer's output; strength 1 is the
    trained behaviour, 0 switches the module off (the image model per frame), values between blend motion in.
    """

    def __init__(self, channels: int, config: MotionModuleConfig) -> None:
        super().__init__()
        self.norm_mode = config.norm_mode
        self.norm = nn.GroupNorm(config.norm_num_groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            TemporalTransformerBlock(channels, config) for _ in range(config.num_transformer_blocks)
        )
        self.proj_out = nn.Linear(channels, channels)
        if config.zero_init:
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def forward(
        self,
        hidden: torch.Tensor,
        num_frames: int,
        strength: float | torch.Tensor = 1.0,
        key_scale: torch.Tensor | None = None,
        windows: "MotionWindows | None" = None,
        text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`(b f) c h w -> (b f) c h w`.

        `strength` (float or per-frame tensor) scales the module's output delta (ComfyUI's "effect");
        `key_scale` (per frame) scales attention keys (ComfyUI's "motion scale"); `windows` runs the temporal
        transformer on overlapping frame windows and fuses them (FreeNoise-style views inside the motion module);
        `text` is the prompt embedding, read only by `Temporal_Cross` attentions.
        """
        height, width = hidden.shape[-2:]
        if self.norm_mode == "joint":
            normed = rearrange(
                self.norm(rearrange(hidden, "(b f) c h w -> b c f h w", f=num_frames)), "b c f h w -> (b f) c h w"
            )
        else:
            normed = self.norm(hidden)
        tokens = self.proj_in(rearrange(normed, "(b f) c h w -> (b h w) f c", f=num_frames))
        if windows is None:
            tokens = self._transform(tokens, key_scale, text)
        else:
            tokens = windows.apply(
                lambda part, frames: self._transform(
                    part,
                    None if key_scale is None else key_scale[frames],
                    text if text is None or text.ndim == 3 else text[:, frames],
                ),
                tokens,
            )
        delta = rearrange(self.proj_out(tokens), "(b h w) f c -> (b f) c h w", h=height, w=width)
        if isinstance(strength, torch.Tensor):
            # A per-frame strength (frames,) broadcast over the batch: `(b f)` is batch-major.
            strength = strength.to(delta)[None, :].expand(delta.shape[0] // num_frames, -1).reshape(-1, 1, 1, 1)
        elif strength == 1.0:
            return hidden + delta
        return hidden + strength * delta

    def _transform(
        self, tokens: torch.Tensor, key_scale: torch.Tensor | None, text: torch.Tensor | None = None
    ) -> torch.Tensor:
        for block in self.transformer_blocks:
            tokens = block(tokens, key_scale, text)
        return tokens


@dataclass
class MotionWindows:
    """Frame windows for the temporal transformer and each window's per-frame fusion weights.

    `apply(transform, tokens)` runs `transform(tokens[:, window], window)` for each window and averages the
    overlapping outputs with the weights (Qiu et al. 2023, FreeNoise, §3.3 "window-based attention fusion").
    """

    windows: list[list[int]]
    weights: list[torch.Tensor]

    def apply(self, transform, tokens: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(tokens, dtype=torch.float32)
        norm = torch.zeros(tokens.shape[1], dtype=torch.float32, device=tokens.device)
        for window, weights in zip(self.windows, self.weights):
            index = torch.as_tensor(window, device=tokens.device)
            weights = weights.to(device=tokens.device, dtype=torch.float32)
            total[:, index] += transform(tokens[:, index], index).float() * weights[None, :, None]
            norm[index] += weights
        return (total / norm[None, :, None]).to(tokens.dtype)


class MotionBlock(nn.Module):
    """The motion modules of one UNet block (a container, so keys read `down_blocks.i.motion_modules.j`)."""

    def __init__(self, channels: int, count: int, config: MotionModuleConfig) -> None:
        super().__init__()
        self.motion_modules = nn.ModuleList(MotionModule(channels, config) for _ in range(count))


class MotionModules(nn.Module):
    """Every motion module of a video UNet, laid out like the UNet's blocks.

    Down block i holds `layers_per_block` modules of width `block_out_channels[i]`, up block i holds
    `layers_per_block + 1` of width `reversed(block_out_channels)[i]`, and the mid block one (v2 only).
    """

    def __init__(self, config: MotionModuleConfig = PRESETS["v3"]) -> None:
        super().__init__()
        self.config = config
        widths = config.block_out_channels
        self.down_blocks = nn.ModuleList(MotionBlock(c, config.layers_per_block, config) for c in widths)
        self.mid_block = MotionBlock(widths[-1], 1, config) if config.mid_block else None
        self.up_blocks = nn.ModuleList(MotionBlock(c, config.layers_per_block + 1, config) for c in reversed(widths))

    def named_blocks(self) -> list[tuple[str, MotionBlock]]:
        """(`down_blocks.i` | `mid_block` | `up_blocks.i`, block) in UNet order: the names the UNet uses too."""
        blocks = [(f"down_blocks.{i}", block) for i, block in enumerate(self.down_blocks)]
        if self.mid_block is not None:
            blocks.append(("mid_block", self.mid_block))
        blocks += [(f"up_blocks.{i}", block) for i, block in enumerate(self.up_blocks)]
        return blocks

    def num_modules(self) -> int:
        return sum(len(block.motion_modules) for _, block in self.named_blocks())


@dataclass
class FrameContext:
    """Per-call state the UNet hooks read: frame count and motion strength. Owned by one VideoUNet call."""

    num_frames: int
    strength: float | torch.Tensor = 1.0
    key_scale: torch.Tensor | None = None
    windows: MotionWindows | None = None
    text: torch.Tensor | None = None
