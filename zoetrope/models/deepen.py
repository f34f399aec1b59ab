"""Make a trained 2D UNet deeper without changing what it computes (net2net-style growth).

Why: the shapes world's image model stops improving its shapes at ~45 % of stills (docs/world-training.md, 25th
session) with one ResNet + one transformer per UNet level. Whether *capacity* is what binds can be asked cheaply by
continuing the trained model with more layers per level instead of training a deeper one from nothing (which would
also have to relearn colours, backgrounds and the text conditioning). The new layers start as identities, so the
grown model draws exactly the pictures the trained one did, and training decides what they add.

How the identities are built (diffusers `UNet2DConditionModel`, blocks with `layers_per_block` L):

- Down blocks get `extra` more ResNets (and transformers, in cross-attention blocks) after their last layer. A
  ResNet whose last convolution is zero returns its input (`input + conv2(...)`); a transformer whose output
  projection is zero does too (`proj_out(...) + residual`). Each new layer also pushes a skip connection, equal to
  the previous layer's output.
- Up blocks consume `extra` more skips. Their first layer stays first (it alone takes the wider input coming from
  the level below); the new ResNets follow it, each reading the current features and one duplicated skip through a
  1x1 shortcut set to pass the features and drop the skip; the old remaining layers follow, reading the skips they
  read before.
"""

from __future__ import annotations

import torch
from torch import nn

from zoetrope.models.motion_module import MotionModules


def _zero_branch_resnet(resnet: nn.Module) -> None:
    """Turn a fresh diffusers `ResnetBlock2D` into an identity on its features (its skip input, if any, dropped)."""
    nn.init.zeros_(resnet.conv2.weight)
    nn.init.zeros_(resnet.conv2.bias)
    shortcut = resnet.conv_shortcut
    if shortcut is not None:
        if tuple(shortcut.kernel_size) != (1, 1):
            kernel = tuple(shortcut.kernel_size)
            raise ValueError(f"a {kernel} ResNet shortcut: deepening needs diffusers' 1x1 shortcuts")
        out_channels = shortcut.weight.shape[0]
        with torch.no_grad():
            shortcut.weight.zero_()
            shortcut.weight[:, :out_channels, 0, 0] = torch.eye(out_channels)
            shortcut.bias.zero_()


def _zero_branch_transformer(transformer: nn.Module) -> None:
    """Turn a fresh diffusers `Transformer2DModel` into an identity (its output projection is zero)."""
    nn.init.zeros_(transformer.proj_out.weight)
    nn.init.zeros_(transformer.proj_out.bias)


def _new_up_index(old_index: int, extra: int) -> int:
    """Where an up-block layer of the trained UNet sits in the grown block: the first stays, the rest move on."""
    return old_index if old_index == 0 else old_index + extra


def deepened_path(path: str, extra: int = 1) -> str:
    """Where a trained UNet's module path (`up_blocks.1.attentions.1.<rest>`) sits in `deepen_unet(unet, extra)`.

    For files keyed by UNet module paths, such as a domain adapter (LoRA on the spatial attentions): down-block
    layers keep their index, up-block layers after the first move `extra` places on.
    """
    parts = path.split(".")
    if len(parts) >= 4 and parts[0] == "up_blocks" and parts[2] in ("resnets", "attentions") and parts[3].isdigit():
        parts[3] = str(_new_up_index(int(parts[3]), extra))
    return ".".join(parts)


def deepen_unet(unet: nn.Module, extra: int = 1) -> nn.Module:
    """A copy of `unet` with `extra` more layers per block that computes the same function until it is trained.

    `unet` is a diffusers `UNet2DConditionModel` with an integer `layers_per_block`; the copy has the same dtype and
    config otherwise. New layers are identities (see the module docstring); every other weight is copied.
    """
    from diffusers import UNet2DConditionModel

    if extra < 1:
        raise ValueError(f"extra={extra}: deepening adds at least one layer per block")
    layers = unet.config.layers_per_block
    if not isinstance(layers, int):
        raise ValueError(
            f"layers_per_block={layers!r}: only a UNet with the same number of layers in every block can be deepened"
        )
    config = {**unet.config, "layers_per_block": layers + extra}
    grown = UNet2DConditionModel.from_config(config)
    dtype = next(unet.parameters()).dtype
    if dtype != grown.dtype:
        grown = grown.to(dtype)
    new_state = grown.state_dict()
    for old, value in unet.state_dict().items():  # every trained weight moves; the new layers keep their init
        key = deepened_path(old, extra)
        if new_state[key].shape != value.shape:  # an invariant of the layout above, not user input
            raise RuntimeError(
                f"deepen_unet: {key} <- {old} has shape {tuple(value.shape)}, expected {tuple(new_state[key].shape)}"
            )
        new_state[key] = value
    grown.load_state_dict(new_state)
    for block in grown.down_blocks:
        for i in range(layers, layers + extra):
            _zero_branch_resnet(block.resnets[i])
            if getattr(block, "attentions", None):
                _zero_branch_transformer(block.attentions[i])
    for block in grown.up_blocks:
        for i in range(1, extra + 1):
            _zero_branch_resnet(block.resnets[i])
            if getattr(block, "attentions", None):
                _zero_branch_transformer(block.attentions[i])
    return grown


def deepen_motion_modules(modules: MotionModules, extra: int = 1) -> MotionModules:
    """Motion modules for a UNet deepened by `deepen_unet(unet, extra)`, computing the same video function.

    One motion module follows each UNet layer, so a grown UNet has `extra` more per block. The trained modules keep
    the layers they followed (down block: the first L; up block: the first, then the last L), and the new ones are
    the config's zero-initialised modules (output projection zero: an identity, as a fresh AnimateDiff module is).
    """
    if extra < 1:
        raise ValueError(f"extra={extra}: deepening adds at least one layer per block")
    config = modules.config
    if not config.zero_init:
        raise ValueError("the motion modules' config has zero_init=False: new modules would not start as identities")
    layers = config.layers_per_block
    grown = MotionModules(config.with_(layers_per_block=layers + extra)).to(next(modules.parameters()).dtype)
    for old_block, new_block in zip(modules.down_blocks, grown.down_blocks, strict=True):
        for i in range(layers):
            new_block.motion_modules[i].load_state_dict(old_block.motion_modules[i].state_dict())
    for old_block, new_block in zip(modules.up_blocks, grown.up_blocks, strict=True):
        for old in range(layers + 1):
            trained = old_block.motion_modules[old].state_dict()
            new_block.motion_modules[_new_up_index(old, extra)].load_state_dict(trained)
    if modules.mid_block is not None:
        grown.mid_block.load_state_dict(modules.mid_block.state_dict())
    return grown
