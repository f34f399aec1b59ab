"""VideoUNet: a diffusers `UNet2DConditionModel` plus motion modules at the official insertion points.

Why hooks and not a forked UNet (DESIGN principle 1): the image model stays a diffusers model with its own
parameter names, so any SD1.5-family checkpoint (base, DreamBooth, merged, LoRA'd) works unchanged, and removing
the motion modules (`VideoUNet.detach`) gives the image model back bit for bit. The motion modules run as forward
hooks on the existing diffusers modules:

- after every spatial attention (`Transformer2DModel`) in blocks that have attention (official
  `CrossAttnDownBlock3D`/`CrossAttnUpBlock3D`: resnet -> attention -> motion module; the skip connection is taken
  after the motion module, which a hook on the attention's output gives for free);
- after every ResNet in blocks without attention (`DownBlock3D`/`UpBlock3D`);
- after the mid block's attention, before its second ResNet (v2 only).

For AnimateDiff v1 (`unet_norm_mode="joint"`) the ResNet GroupNorms and `conv_norm_out` pool statistics over all
frames, as the official `use_inflated_groupnorm: false` does: a pre-hook folds frames into the height axis and a
hook unfolds them, so GroupNorm sees `b c (f h) w` — no extra computation.

Frames travel as `(b f) c h w` inside the UNet; the frame count and motion strength of the current call live in a
`FrameContext` owned by this VideoUNet for the duration of one call (never a module-level global).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from zoetrope.errors import CheckpointError, FrameCountError, InputError
from zoetrope.models.motion_module import FrameContext, MotionModule, MotionModules, MotionWindows


def _insertion_targets(image_unet: nn.Module, block_name: str) -> list[nn.Module]:
    """The modules whose outputs feed a block's motion modules, in call order."""
    block = image_unet.get_submodule(block_name)
    attentions = getattr(block, "attentions", None)
    if attentions is not None and len(attentions) > 0:
        return list(attentions)
    return list(block.resnets)


def _target_channels(module: nn.Module) -> int | None:
    for attribute in ("out_channels", "in_channels"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value
    return None


def check_compatible(image_unet: nn.Module, motion_modules: MotionModules) -> None:
    """Raise a clear CheckpointError when the motion modules do not fit this image UNet's layout."""
    config = motion_modules.config
    unet_widths = tuple(image_unet.config.block_out_channels)
    if unet_widths != config.block_out_channels:
        if len(unet_widths) == len(config.block_out_channels):
            raise CheckpointError(
                f"motion module ({config.version}) has block widths {config.block_out_channels}, but the image model's "
                f"UNet has widths {unet_widths} (same layout, other widths): use a motion module trained on this base model"
            )
        family = {3: "an SDXL-layout", 4: "an SD1.5-layout"}.get(len(config.block_out_channels), "a")
        unet_family = {3: "SDXL", 4: "SD1.5"}.get(len(unet_widths), "this")
        raise CheckpointError(
            f"motion module ({config.version}) is {family} module with block widths {config.block_out_channels}, but "
            f"the image model is {unet_family} with widths {unet_widths}: use a motion module made for this base model"
        )
    for block_name, block in motion_modules.named_blocks():
        targets = _insertion_targets(image_unet, block_name)
        if len(targets) != len(block.motion_modules):
            raise CheckpointError(
                f"motion module has {len(block.motion_modules)} modules in {block_name} but the image UNet has "
                f"{len(targets)} insertion points there: layers_per_block differs; use a matching motion module"
            )


class VideoUNet(nn.Module):
    """An image UNet inflated to video: `sample (b, c, f, h, w) -> noise prediction (b, c, f, h, w)`.

    `encoder_hidden_states` is one text embedding per video `(b, tokens, dim)`, or one per frame
    `(b, f, tokens, dim)` (prompt travel). It is repeated per frame only inside this call.
    """

    def __init__(self, image_unet: nn.Module, motion_modules: MotionModules | None = None) -> None:
        super().__init__()
        self.image_unet = image_unet
        self.motion_modules = motion_modules
        self.gradient_checkpointing = False
        self._context: FrameContext | None = None
        self._last_context: FrameContext | None = None
        self._handles: list[Any] = []
        if motion_modules is not None:
            check_compatible(image_unet, motion_modules)
            self._attach()

    # ------------------------------------------------------------------ attaching
    def _attach(self) -> None:
        assert self.motion_modules is not None
        for block_name, block in self.motion_modules.named_blocks():
            targets = _insertion_targets(self.image_unet, block_name)
            for target, module in zip(targets, block.motion_modules):
                self._handles.append(target.register_forward_hook(self._motion_hook(module)))
        if self.motion_modules.config.unet_norm_mode == "joint":
            for name, module in self.image_unet.named_modules():
                is_resnet_norm = name.endswith((".norm1", ".norm2")) and ".resnets." in name
                if isinstance(module, nn.GroupNorm) and (is_resnet_norm or name == "conv_norm_out"):
                    self._handles.append(module.register_forward_pre_hook(self._fold_frames))
                    self._handles.append(module.register_forward_hook(self._unfold_frames))

    def detach(self) -> nn.Module:
        """Remove every hook and return the untouched image UNet (the motion modules stay on `self`)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return self.image_unet

    def _active_context(self) -> FrameContext | None:
        """The current call's context; during backward, the last call's (diffusers' gradient checkpointing
        recomputes UNet blocks after the call has returned, and the recomputation must see the same frames)."""
        if self._context is not None:
            return self._context
        if torch._C._current_graph_task_id() >= 0:
            return self._last_context
        return None

    def _motion_hook(self, module: MotionModule):
        def hook(_target: nn.Module, _args: Any, output: Any) -> Any:
            context = self._active_context()
            if context is None:  # the image UNet is being called directly: behave as the image model
                return output
            hidden = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                hidden = checkpoint(
                    module, hidden, context.num_frames, context.strength, context.key_scale, context.windows,
                    context.text, use_reentrant=False,
                )
            else:
                hidden = module(
                    hidden, context.num_frames, context.strength, context.key_scale, context.windows, context.text
                )
            if isinstance(output, tuple):
                return (hidden, *output[1:])
            if hasattr(output, "sample"):
                output.sample = hidden
                return output
            return hidden

        return hook

    def _fold_frames(self, _module: nn.Module, args: tuple) -> tuple | None:
        context = self._active_context()
        if context is None:
            return None
        return (rearrange(args[0], "(b f) c h w -> b c (f h) w", f=context.num_frames), *args[1:])

    def _unfold_frames(self, _module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        context = self._active_context()
        if context is None:
            return None
        return rearrange(output, "b c (f h) w -> (b f) c h w", f=context.num_frames)

    @contextlib.contextmanager
    def frame_context(
        self,
        num_frames: int,
        strength: float | torch.Tensor = 1.0,
        key_scale: torch.Tensor | None = None,
        windows: MotionWindows | None = None,
        text: torch.Tensor | None = None,
    ) -> Iterator[FrameContext]:
        """Scope in which the image UNet's calls are treated as `num_frames`-frame videos.

        `text` (the per-video or per-frame prompt embedding) is what `Temporal_Cross` motion modules read.
        """
        previous = self._context
        self._context = FrameContext(
            num_frames=num_frames, strength=strength, key_scale=key_scale, windows=windows, text=text
        )
        self._last_context = self._context
        try:
            yield self._context
        finally:
            self._context = previous

    # ------------------------------------------------------------------ properties
    @property
    def max_frames(self) -> int | None:
        return None if self.motion_modules is None else self.motion_modules.config.max_frames

    @property
    def config(self) -> Any:
        return self.image_unet.config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.image_unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.image_unet.parameters()).device

    def check_frames(self, num_frames: int) -> None:
        """Raise FrameCountError when the positional encoding cannot cover `num_frames` frames."""
        if num_frames < 1:
            raise FrameCountError(f"frame count must be >= 1, got {num_frames}")
        limit = self.max_frames
        if limit is not None and num_frames > limit:
            raise FrameCountError(
                f"{num_frames} frames requested but this motion module's positional encoding covers {limit} "
                f"(version {self.motion_modules.config.version}); use at most {limit} frames, or generate longer "
                f"videos with context windows (--context-length {min(16, limit)})"
            )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        motion_strength: float | torch.Tensor = 1.0,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        motion_scale: torch.Tensor | float | None = None,
        motion_windows: MotionWindows | None = None,
    ) -> torch.Tensor:
        """Noise prediction for a batch of videos.

        Args:
            sample: latents `(b, c, f, h, w)`.
            timestep: a scalar or one timestep per video `(b,)`.
            encoder_hidden_states: `(b, tokens, dim)` or per frame `(b, f, tokens, dim)`.
            down_block_additional_residuals / mid_block_additional_residual: ControlNet/SparseCtrl residuals in
                the image UNet's `(b f) c h w` layout.
            motion_strength: multiplier on every motion module's output (1 = as trained, 0 = image model per
                frame); a `(f,)` tensor gives one value per frame.
            added_cond_kwargs: SDXL's per-video `text_embeds`/`time_ids`; repeated per frame here.
            motion_scale: multiplier on the temporal attention keys (a float or a `(f,)` tensor).
            motion_windows: run the motion modules on overlapping frame windows (long videos, FreeNoise views);
                the positional-encoding limit then applies to the window length, not to the whole video.
        """
        if sample.ndim != 5:
            raise InputError(f"VideoUNet expects latents (batch, channels, frames, height, width), got shape {tuple(sample.shape)}")
        batch, _, num_frames = sample.shape[:3]
        self.check_frames(max(map(len, motion_windows.windows)) if motion_windows is not None else num_frames)
        if motion_scale is not None:
            motion_scale = torch.as_tensor(motion_scale, dtype=torch.float32, device=sample.device).expand(num_frames)
        frames = rearrange(sample, "b c f h w -> (b f) c h w")
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        timestep = repeat(timestep, "b -> (b f)", f=num_frames)
        if encoder_hidden_states.ndim == 4:
            text = rearrange(encoder_hidden_states, "b f l d -> (b f) l d")
        else:
            text = repeat(encoder_hidden_states, "b l d -> (b f) l d", f=num_frames)
        if added_cond_kwargs is not None:
            added_cond_kwargs = {
                key: value.repeat_interleave(num_frames, dim=0) for key, value in added_cond_kwargs.items()
            }
        with self.frame_context(num_frames, motion_strength, motion_scale, motion_windows, encoder_hidden_states):
            prediction = self.image_unet(
                frames,
                timestep,
                encoder_hidden_states=text,
                down_block_additional_residuals=down_block_additional_residuals,
                mid_block_additional_residual=mid_block_additional_residual,
                added_cond_kwargs=added_cond_kwargs,
                return_dict=False,
            )[0]
        return rearrange(prediction, "(b f) c h w -> b c f h w", f=num_frames)
