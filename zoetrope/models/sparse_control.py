"""SparseCtrl: a ControlNet-style condition encoder with temporal layers (Guo et al. 2023, arXiv:2311.16933).

SparseCtrl steers a video UNet with conditions on only a few frames (keyframes): an RGB image (VAE latents) or a
sketch (pixels). The encoder is a trainable copy of the image UNet's encoder (conv_in, time embedding, down blocks,
mid block), as in ControlNet (Zhang et al. 2023), with three changes from the paper (§3.2):

- **temporal layers**: its own motion modules after every attention / ResNet of every down block (none in the mid
  block), so a condition on one frame propagates to unconditioned frames ("condition propagation across frames");
  `temporal=False` builds the frame-by-frame ControlNet the paper uses as its baseline (ablation);
- **no noisy input**: the noisy latent is replaced by zeros (official `set_noisy_sample_input_to_zero`), because at
  high noise levels it only disturbs the unconditioned frames ("quality degradation caused by manually noised
  latents"); only the condition, the timestep and the text drive the encoder;
- **a mask channel**: the condition is zero except at keyframes and a binary mask (1 at keyframes) is concatenated
  to it, which unifies any sparsity pattern ("unifying sparsity via masking").

Outputs are ControlNet residuals: one zero-initialised 1x1 conv per skip feature of the UNet encoder and one for the
mid block, multiplied by `conditioning_scale`, returned in the image UNet's `(b f) c h w` layout ready for
`VideoUNet(..., down_block_additional_residuals=..., mid_block_additional_residual=...)`.

Structure follows DESIGN principle 1: the encoder's image layers are diffusers modules (copied from the UNet, built
from its config), never re-typed; our motion modules live at `down_blocks.i.motion_modules.j`, the official place
and name, and run as forward hooks registered for the duration of one call. Parameter names equal the official
checkpoint's except inside motion modules, where `formats/sparsectrl.py` applies the shared motion-module rules.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any, Iterator, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from zoetrope.config import dump_config, load_config
from zoetrope.errors import ConfigError, FrameCountError, InputError
from zoetrope.models.motion_module import MotionBlock, MotionModule, MotionModuleConfig

Condition = Literal["rgb", "sketch"]
CONDITIONS = ("rgb", "sketch")

#: The SparseCtrl motion modules (official configs/inference/sparsectrl/*.yaml): one "Temporal_Self" attention per
#: block, 8 heads, one transformer block, PE length 32, no mid-block module.
SPARSECTRL_MOTION = MotionModuleConfig(attentions_per_block=1, max_frames=32, mid_block=False, version="sparsectrl")

#: The image-model parts a SparseCtrl encoder copies (official `from_unet`).
IMAGE_PARTS = ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block")


@dataclass(frozen=True)
class SparseControlConfig:
    """What a SparseCtrl encoder conditions on and how; defaults reproduce the official RGB model.

    `condition="rgb"` encodes VAE latents (4 channels) with one zero-initialised 3x3 conv (official
    `latent_condition.yaml`, `use_simplified_condition_embedding: true`); `"sketch"` encodes 3-channel pixels with a
    small conv stack that downsamples by `2 ** (len(embedding_channels) - 1)` (official `image_condition.yaml`:
    widths 16, 32, 96, 256 -> 8x, the VAE's factor). `None` fields take the value that matches `condition`.
    `temporal=False` is the paper's frame-by-frame ablation (no motion modules).
    """

    condition: Condition = "rgb"
    conditioning_channels: int | None = None
    concat_mask: bool = True
    use_simplified_condition_embedding: bool | None = None
    embedding_channels: tuple[int, ...] = (16, 32, 96, 256)
    motion: MotionModuleConfig = SPARSECTRL_MOTION
    temporal: bool = True
    conditioning_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.condition not in CONDITIONS:
            raise ConfigError(f"SparseControlConfig.condition={self.condition!r}; expected one of {CONDITIONS}")
        if self.conditioning_channels is None:
            object.__setattr__(self, "conditioning_channels", 4 if self.condition == "rgb" else 3)
        if self.use_simplified_condition_embedding is None:
            object.__setattr__(self, "use_simplified_condition_embedding", self.condition == "rgb")
        object.__setattr__(self, "embedding_channels", tuple(int(c) for c in self.embedding_channels))
        if self.conditioning_channels < 1:
            raise ConfigError(f"SparseControlConfig.conditioning_channels={self.conditioning_channels}; expected >= 1")
        if self.motion.reads_text:
            raise ConfigError(
                "SparseControlConfig.motion: the condition encoder's temporal layers are self-attention only (as in "
                "the official encoder); remove Temporal_Cross from attention_block_types"
            )
        if not self.use_simplified_condition_embedding and len(self.embedding_channels) < 1:
            raise ConfigError("SparseControlConfig.embedding_channels is empty; give at least one width, e.g. (16,)")

    @property
    def input_channels(self) -> int:
        """Channels entering the condition embedding: the condition plus the keyframe mask."""
        return self.conditioning_channels + (1 if self.concat_mask else 0)

    @property
    def downsample_factor(self) -> int:
        """How much larger the condition is than the latent (1 for latents, 2**steps for the pixel embedding)."""
        return 1 if self.use_simplified_condition_embedding else 2 ** (len(self.embedding_channels) - 1)

    def to_dict(self) -> dict:
        return dump_config(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> "SparseControlConfig":
        """Strict: an unknown field or a wrong type is a ConfigError naming the key."""
        return load_config(dict(values), cls)

    def with_(self, **changes: object) -> "SparseControlConfig":
        return replace(self, **changes)


#: Presets for the two released checkpoints (v3_sd15_sparsectrl_rgb.ckpt, v3_sd15_sparsectrl_scribble.ckpt).
SPARSECTRL_PRESETS: dict[str, SparseControlConfig] = {
    "rgb": SparseControlConfig(condition="rgb"),
    "sketch": SparseControlConfig(condition="sketch"),
}


def _zero(module: nn.Module) -> nn.Module:
    """Zero every parameter: a new ControlNet branch must start as a no-op (ControlNet's "zero convolution")."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ConditionEmbedding(nn.Module):
    """The sketch/pixel condition embedding (official `SparseControlNetConditioningEmbedding`).

    conv_in, then per width step a 3x3 conv and a stride-2 3x3 conv, SiLU after each, then a zero-initialised
    conv_out to the UNet's first width. Names (`conv_in`, `blocks.n`, `conv_out`) are the official ones.
    """

    def __init__(self, in_channels: int, out_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            self.blocks.append(nn.Conv2d(width_in, width_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(width_in, width_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = _zero(nn.Conv2d(widths[-1], out_channels, kernel_size=3, padding=1))

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.conv_in(condition))
        for block in self.blocks:
            hidden = F.silu(block(hidden))
        return self.conv_out(hidden)


def _motion_targets(block: nn.Module) -> list[nn.Module]:
    """The modules after which a down block's motion modules run: attentions if it has them, else ResNets."""
    attentions = getattr(block, "attentions", None)
    if attentions is not None and len(attentions) > 0:
        return list(attentions)
    return list(block.resnets)


def _skip_channels(image_unet_config: Mapping) -> list[int]:
    """Widths of the UNet encoder's skip features, in order: conv_in, then per block its layers and downsampler."""
    widths = list(image_unet_config["block_out_channels"])
    channels = [widths[0]]
    for index, width in enumerate(widths):
        channels += [width] * int(image_unet_config["layers_per_block"])
        if index < len(widths) - 1:
            channels.append(width)
    return channels


class SparseControlEncoder(nn.Module):
    """SparseCtrl condition encoder: `(condition, mask, timestep, text) -> ControlNet residuals`.

    Build it with `from_unet` (copies the image weights, as the official `from_unet` does) or load a checkpoint with
    `zoetrope.formats.sparsectrl.load_sparse_control`. Modules are created on the current default device, so
    `with torch.device("meta"):` builds a full-size encoder without memory.
    """

    def __init__(self, image_parts: Mapping[str, nn.Module], image_unet_config: Mapping, config: SparseControlConfig):
        super().__init__()
        self._check_unet(image_unet_config)
        widths = tuple(int(c) for c in image_unet_config["block_out_channels"])
        layers_per_block = int(image_unet_config["layers_per_block"])
        config = config.with_(motion=config.motion.with_(block_out_channels=widths, layers_per_block=layers_per_block))
        self.config = config
        self.image_unet_config = dict(image_unet_config)
        # Image layers: diffusers modules, the official names (conv_in, time_embedding, down_blocks, mid_block).
        self.conv_in = image_parts["conv_in"]
        self.time_proj = image_parts["time_proj"]
        self.time_embedding = image_parts["time_embedding"]
        self.down_blocks = image_parts["down_blocks"]
        self.mid_block = image_parts["mid_block"]
        # Condition embedding added to conv_in's output.
        if config.use_simplified_condition_embedding:
            self.controlnet_cond_embedding: nn.Module = _zero(
                nn.Conv2d(config.input_channels, widths[0], kernel_size=3, padding=1)
            )
        else:
            self.controlnet_cond_embedding = ConditionEmbedding(
                config.input_channels, widths[0], config.embedding_channels
            )
        # Temporal layers: `down_blocks.i.motion_modules.j`, the official location (none in the mid block).
        if config.temporal:
            for width, block in zip(widths, self.down_blocks):
                count = len(_motion_targets(block))
                block.motion_modules = MotionBlock(width, count, config.motion).motion_modules
        # Zero convolutions: one per skip feature, one for the mid block.
        self.controlnet_down_blocks = nn.ModuleList(
            _zero(nn.Conv2d(channels, channels, kernel_size=1)) for channels in _skip_channels(image_unet_config)
        )
        self.controlnet_mid_block = _zero(nn.Conv2d(widths[-1], widths[-1], kernel_size=1))

    @staticmethod
    def _check_unet(image_unet_config: Mapping) -> None:
        unsupported = [
            key for key in ("class_embed_type", "addition_embed_type", "num_class_embeds", "time_cond_proj_dim")
            if image_unet_config.get(key) is not None
        ]
        if unsupported:
            raise ConfigError(
                f"SparseCtrl supports SD1.5-style UNets only; this UNet sets {unsupported} (e.g. SDXL): use an SD1.5 "
                "base model"
            )

    @classmethod
    def from_unet(
        cls, image_unet: nn.Module, config: SparseControlConfig = SPARSECTRL_PRESETS["rgb"], copy_weights: bool = True
    ) -> "SparseControlEncoder":
        """Build an encoder shaped like `image_unet`'s encoder; `copy_weights` copies its image weights.

        The structure comes from the UNet's config (a fresh `UNet2DConditionModel`, so hooks or processors attached
        to `image_unet` are not carried over); the weights from its state dict. A `VideoUNet` is accepted too (its
        image UNet is used).
        """
        from diffusers import UNet2DConditionModel

        image_unet = getattr(image_unet, "image_unet", image_unet)
        unet_config = dict(image_unet.config)
        cls._check_unet(unet_config)
        device = torch.empty(0).device  # the current default device (honours `with torch.device(...)`)
        if copy_weights and device.type != "meta":
            # Build on meta (no init cost), then materialise and copy the image weights.
            with torch.device("meta"):
                skeleton = UNet2DConditionModel.from_config(unet_config)
            parts = {name: getattr(skeleton, name).to_empty(device=device) for name in IMAGE_PARTS}
            for name, part in parts.items():
                part.load_state_dict(getattr(image_unet, name).state_dict(), strict=True)
        else:
            skeleton = UNet2DConditionModel.from_config(unet_config)
            parts = {name: getattr(skeleton, name) for name in IMAGE_PARTS}
        encoder = cls(parts, unet_config, config)
        first = next(image_unet.parameters(), None)
        if first is not None and first.is_floating_point() and device.type != "meta":
            encoder = encoder.to(first.dtype)
        return encoder

    # ------------------------------------------------------------------ properties
    @property
    def has_motion_modules(self) -> bool:
        return any(hasattr(block, "motion_modules") for block in self.down_blocks)

    def motion_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters of the temporal layers (empty for the `temporal=False` ablation)."""
        for block in self.down_blocks:
            if hasattr(block, "motion_modules"):
                yield from block.motion_modules.parameters()

    @property
    def skip_channels(self) -> list[int]:
        return _skip_channels(self.image_unet_config)

    # ------------------------------------------------------------------ temporal hooks
    @contextlib.contextmanager
    def _temporal_layers(self, num_frames: int) -> Iterator[None]:
        """Run each down block's motion modules after its attentions/ResNets for the duration of one call.

        Hooks are registered per call, so the encoder holds no per-call state and copies of it stay independent.
        """
        handles = []
        try:
            for block in self.down_blocks:
                modules = getattr(block, "motion_modules", None)
                if modules is None:
                    continue
                for target, module in zip(_motion_targets(block), modules):
                    handles.append(target.register_forward_hook(_motion_hook(module, num_frames)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        condition: torch.Tensor,
        mask: torch.Tensor | None = None,
        conditioning_scale: float | torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """ControlNet residuals for one denoising step.

        Args:
            sample: the noisy latents `(b, c, f, h, w)`; only their shape, dtype and device are used (zeroed input).
            timestep: a scalar or one per video `(b,)`.
            encoder_hidden_states: text `(b, tokens, dim)` or per frame `(b, f, tokens, dim)`.
            condition: `(1 | b, Cc, f, H, W)`, zero except at keyframes; latents (rgb, `H = h`) or pixels (sketch,
                `H = h * downsample_factor`).
            mask: `(1 | b, 1, f, H, W)`, 1 at keyframes (required when `config.concat_mask`).
            conditioning_scale: multiplier on every residual; None takes `config.conditioning_scale`.

        Returns:
            (down residuals, one per skip feature, each `(b f) c h w`; mid residual `(b f) c h w`).
        """
        if sample.ndim != 5:
            raise InputError(f"SparseControlEncoder expects latents (b, c, f, h, w), got shape {tuple(sample.shape)}")
        batch, _, num_frames, height, width = sample.shape
        if self.has_motion_modules and num_frames > self.config.motion.max_frames:
            raise FrameCountError(
                f"{num_frames} frames given to SparseCtrl, whose positional encoding covers "
                f"{self.config.motion.max_frames}; use context windows of at most that many frames"
            )
        condition = self._prepare_condition(condition, mask, batch, num_frames)
        scale = self.config.conditioning_scale if conditioning_scale is None else conditioning_scale

        # 1. The noisy latent is ignored: zeros through conv_in (official set_noisy_sample_input_to_zero).
        zeros = sample.new_zeros(batch * num_frames, sample.shape[1], height, width, dtype=self.conv_in.weight.dtype)
        hidden = self.conv_in(zeros)
        embedded = self.controlnet_cond_embedding(rearrange(condition, "b c f h w -> (b f) c h w").to(hidden.dtype))
        if embedded.shape[-2:] != hidden.shape[-2:]:
            factor = self.config.downsample_factor
            raise InputError(
                f"SparseCtrl condition of size {tuple(condition.shape[-2:])} embeds to {tuple(embedded.shape[-2:])}, "
                f"but the latents are {(height, width)}; give the {self.config.condition} condition at "
                f"{(height * factor, width * factor)}"
            )
        hidden = hidden + embedded

        # 2. Time embedding per video, repeated per frame; text repeated per frame unless given per frame.
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        time_features = self.time_proj(timesteps).to(self.time_embedding.linear_1.weight.dtype)
        time = repeat(self.time_embedding(time_features), "b d -> (b f) d", f=num_frames)
        if encoder_hidden_states.ndim == 4:
            text = rearrange(encoder_hidden_states, "b f l d -> (b f) l d")
        else:
            text = repeat(encoder_hidden_states, "b l d -> (b f) l d", f=num_frames)

        # 3. Down blocks (with temporal layers) and mid block, collecting the skip features.
        skips = [hidden]
        with self._temporal_layers(num_frames):
            for block in self.down_blocks:
                if getattr(block, "has_cross_attention", False):
                    hidden, outputs = block(hidden_states=hidden, temb=time, encoder_hidden_states=text)
                else:
                    hidden, outputs = block(hidden_states=hidden, temb=time)
                skips.extend(outputs)
        hidden = self.mid_block(hidden, time, encoder_hidden_states=text)

        # 4. Zero convolutions and the conditioning scale.
        down = [conv(skip) * scale for conv, skip in zip(self.controlnet_down_blocks, skips)]
        return down, self.controlnet_mid_block(hidden) * scale

    def _prepare_condition(
        self, condition: torch.Tensor, mask: torch.Tensor | None, batch: int, num_frames: int
    ) -> torch.Tensor:
        """Validate shapes, broadcast a batch-1 condition to the (e.g. CFG-doubled) batch, append the mask."""
        expected = self.config.conditioning_channels
        if condition.ndim != 5 or condition.shape[1] != expected or condition.shape[2] != num_frames:
            raise InputError(
                f"SparseCtrl condition has shape {tuple(condition.shape)}; expected (batch, {expected}, {num_frames}, "
                f"H, W) for a {self.config.condition} encoder and {num_frames} frames (see sampling.keyframes)"
            )
        if self.config.concat_mask:
            if mask is None:
                raise InputError("SparseCtrl mask is missing; pass the keyframe mask from build_condition()")
            if mask.shape[1:] != (1, num_frames, *condition.shape[-2:]):
                raise InputError(
                    f"SparseCtrl mask has shape {tuple(mask.shape)}; expected (batch, 1, {num_frames}, "
                    f"{condition.shape[-2]}, {condition.shape[-1]}) to match the condition"
                )
            condition = torch.cat([condition, mask.to(condition.dtype)], dim=1)
        if condition.shape[0] not in (1, batch):
            raise InputError(f"SparseCtrl condition batch is {condition.shape[0]}; expected 1 or {batch}")
        return condition.expand(batch, *condition.shape[1:])


def _motion_hook(module: MotionModule, num_frames: int):
    """A forward hook applying `module` to a diffusers block's output (tensor or `(tensor, ...)`)."""

    def hook(_target: nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (module(output[0], num_frames), *output[1:])
        if hasattr(output, "sample"):
            output.sample = module(output.sample, num_frames)
            return output
        return module(output, num_frames)

    return hook
