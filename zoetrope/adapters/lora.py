"""LoRA for any `nn.Linear` / `nn.Conv2d`, attached by module name without touching the base model.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3) adds a low-rank update to a
frozen weight: `W' = W + ΔW`, `ΔW = strength · multiplier · up @ down`, with `down: (rank, in)` and `up: (out, rank)`.
Two conventions exist for `multiplier`, and the file format decides which one applies:

- kohya / A1111 / peft: `multiplier = alpha / rank` (alpha stored per module in the file; missing alpha means
  alpha = rank, i.e. 1). Hu et al. §4.1 introduce this `α/r` factor so that the learning rate need not be retuned
  when the rank changes.
- official AnimateDiff (MotionLoRA, domain adapter; `load_diffusers_lora` in guoyww/AnimateDiff):
  `multiplier = 1`, and `strength` (their `alpha`) is the only knob.

A `LoRALayer` stores `alpha=None` for the second convention. `strength` is the network's `scale`.

Why forward hooks instead of wrapping or replacing modules: the base model keeps its own parameter names and
objects (DESIGN principle 1), so `detach()` gives back the base model bit for bit, any number of networks stack on
one model (each hook adds its own term to the module output), and the same code serves the image UNet (image
LoRA, domain adapter), the text encoder and our motion modules (MotionLoRA). `merge()` folds a network into the
weights for speed (no per-call overhead); `unmerge()` subtracts it again (exact up to floating-point rounding).

Convolutions (LoCon, as kohya's "conv LoRA"): `down` is a convolution with the base layer's kernel, stride,
padding and dilation and `rank` output channels; `up` is a 1x1 convolution back to the base layer's output
channels, so `up(down(x))` equals a convolution with the merged kernel `einsum("o r, r i h w -> o i h w")`.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn
from torch.utils.hooks import RemovableHandle

from zoetrope.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

#: Module names contain dots, which `nn.ModuleDict` keys may not; a dot becomes this separator in our own keys.
KEY_SEPARATOR = "__"

Target = Callable[[str, nn.Module], bool] | str
Init = Literal["zeros-up", "gaussian"]


def name_to_key(name: str) -> str:
    """Module name (`a.b.to_q`) -> key in the network's ModuleDict/state dict (`a__b__to_q`)."""
    if KEY_SEPARATOR in name:
        raise ConfigError(f"module name {name!r} contains {KEY_SEPARATOR!r}; LoRA cannot address it by name")
    return name.replace(".", KEY_SEPARATOR)


def key_to_name(key: str) -> str:
    return key.replace(KEY_SEPARATOR, ".")


class LoRALayer(nn.Module):
    """The low-rank pair for one base module; `forward(x)` returns `multiplier · up(down(x))` (no strength).

    Shapes: Linear `down (rank, in)`, `up (out, rank)`; Conv2d `down (rank, in, kh, kw)`, `up (out, rank, 1, 1)`.
    `alpha=None` means multiplier 1 (official AnimateDiff semantics); otherwise `alpha / rank` (kohya/peft).
    """

    def __init__(
        self,
        down: torch.Tensor,
        up: torch.Tensor,
        alpha: float | None = None,
        *,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] | str = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if down.ndim != up.ndim or down.ndim not in (2, 4) or up.shape[1] != down.shape[0]:
            raise ConfigError(
                f"LoRA down {tuple(down.shape)} / up {tuple(up.shape)} do not form a low-rank pair; expected "
                "down (rank, in[, kh, kw]) and up (out, rank[, 1, 1])"
            )
        if down.ndim == 4 and tuple(up.shape[2:]) != (1, 1):
            raise ConfigError(f"conv LoRA up weight must be 1x1, got {tuple(up.shape)}")
        self.down = nn.Parameter(down)
        self.up = nn.Parameter(up)
        self.alpha = None if alpha is None else float(alpha)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.padding_mode = padding_mode

    @classmethod
    def for_module(
        cls,
        module: nn.Module,
        rank: int,
        alpha: float | None = None,
        dtype: torch.dtype | None = None,
    ) -> "LoRALayer":
        """A zero pair shaped for `module` (an nn.Linear or an ungrouped nn.Conv2d), on its device."""
        weight = module.weight
        dtype = dtype or weight.dtype
        if isinstance(module, nn.Linear):
            down = torch.zeros(rank, module.in_features, device=weight.device, dtype=dtype)
            up = torch.zeros(module.out_features, rank, device=weight.device, dtype=dtype)
            return cls(down, up, alpha)
        if isinstance(module, nn.Conv2d):
            if module.groups != 1:
                raise ConfigError(f"conv LoRA needs an ungrouped Conv2d, got groups={module.groups}")
            kernel = tuple(module.kernel_size)
            down = torch.zeros(rank, module.in_channels, *kernel, device=weight.device, dtype=dtype)
            up = torch.zeros(module.out_channels, rank, 1, 1, device=weight.device, dtype=dtype)
            return cls(
                down,
                up,
                alpha,
                stride=tuple(module.stride),
                padding=module.padding if isinstance(module.padding, str) else tuple(module.padding),
                dilation=tuple(module.dilation),
                padding_mode=module.padding_mode,
            )
        raise ConfigError(f"LoRA supports nn.Linear and nn.Conv2d, got {type(module).__name__}")

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def is_conv(self) -> bool:
        return self.down.ndim == 4

    @property
    def multiplier(self) -> float:
        """alpha/rank (kohya, A1111, peft) or 1 when alpha is None (official AnimateDiff)."""
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def delta_weight(self) -> torch.Tensor:
        """`multiplier · up @ down` in the base weight's shape, computed in float32 (Hu et al. eq. 3)."""
        down, up = self.down.float(), self.up.float()
        if self.is_conv:
            delta = einsum(up[:, :, 0, 0], down, "o r, r i h w -> o i h w")
        else:
            delta = up @ down
        return delta * self.multiplier

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.to(self.down.dtype)
        if not self.is_conv:
            hidden = F.linear(F.linear(inputs, self.down), self.up)
        else:
            padding = self.padding
            if self.padding_mode != "zeros":
                # Mirror nn.Conv2d: non-zero padding modes pad explicitly, then convolve without padding.
                pad = [p for p in reversed(padding) for _ in range(2)]  # type: ignore[arg-type]
                inputs = F.pad(inputs, pad, mode=self.padding_mode)
                padding = (0, 0)
            hidden = F.conv2d(inputs, self.down, stride=self.stride, padding=padding, dilation=self.dilation)
            hidden = F.conv2d(hidden, self.up)
        multiplier = self.multiplier
        return hidden if multiplier == 1.0 else hidden * multiplier

    def extra_repr(self) -> str:
        kind = "conv" if self.is_conv else "linear"
        return f"{kind}, rank={self.rank}, alpha={self.alpha}"


class LoRANetwork(nn.Module):
    """A set of LoRA layers for one model, keyed by the target modules' names.

    `scale` is the network's strength (A1111's `<lora:name:scale>`, official AnimateDiff's `alpha`). Each layer
    carries its own rank and alpha (files may mix ranks); `rank`/`alpha` here are the defaults for new layers.
    The network is never a submodule of the model it modifies: move it with the model (`network.to(device)`).
    """

    def __init__(self, rank: int = 4, alpha: float | None = None, scale: float = 1.0) -> None:
        super().__init__()
        self.rank = rank
        self.alpha = alpha
        self.scale = float(scale)
        self.layers = nn.ModuleDict()
        self._handles: list[RemovableHandle] = []
        self._merged_scale: float | None = None

    # ------------------------------------------------------------------ contents
    def add_layer(self, name: str, layer: LoRALayer) -> None:
        key = name_to_key(name)
        if key in self.layers:
            raise ConfigError(f"LoRA network already has a layer for {name!r}")
        self.layers[key] = layer

    def named_layers(self) -> Iterator[tuple[str, LoRALayer]]:
        """(target module name, layer) pairs."""
        for key, layer in self.layers.items():
            yield key_to_name(key), layer  # type: ignore[misc]

    def target_names(self) -> list[str]:
        return [name for name, _ in self.named_layers()]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def is_attached(self) -> bool:
        return bool(self._handles)

    @property
    def is_merged(self) -> bool:
        return self._merged_scale is not None

    # ------------------------------------------------------------------ checking
    def _resolve(self, model: nn.Module) -> list[tuple[str, nn.Module, LoRALayer]]:
        """The target modules in `model`, with a clear error for missing names or mismatched shapes."""
        resolved = []
        for name, layer in self.named_layers():
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise CheckpointError(
                    f"LoRA targets module {name!r}, which {type(model).__name__} does not have: the LoRA was made "
                    "for a different model; use one made for this base model"
                ) from None
            expected = _expected_shapes(module, layer.rank)
            found = (tuple(layer.down.shape), tuple(layer.up.shape))
            if expected is None or expected != found:
                wanted = "an nn.Linear or nn.Conv2d" if expected is None else f"down {expected[0]} / up {expected[1]}"
                raise CheckpointError(
                    f"LoRA for {name!r} has down {found[0]} / up {found[1]} but the module needs {wanted} "
                    f"({type(module).__name__}): the LoRA was made for a different base model"
                )
            resolved.append((name, module, layer))
        return resolved

    def check(self, model: nn.Module) -> None:
        """Raise CheckpointError unless every layer fits a module of `model` (name and shape)."""
        self._resolve(model)

    # ------------------------------------------------------------------ hooks
    def attach(self, model: nn.Module) -> "LoRANetwork":
        """Add `scale · layer(x)` to every target module's output through forward hooks; weights stay untouched."""
        if self._handles:
            raise ConfigError("this LoRA network is already attached; call detach() first")
        if self._merged_scale is not None:
            raise ConfigError("this LoRA network is merged into a model; call unmerge(model) before attaching it")
        for _, module, layer in self._resolve(model):
            self._handles.append(module.register_forward_hook(self._hook(layer), with_kwargs=True))
        return self

    def _hook(self, layer: LoRALayer) -> Callable[[nn.Module, tuple, dict, torch.Tensor], torch.Tensor | None]:
        def hook(_module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor | None:
            scale = self.scale
            if scale == 0.0:
                return None
            inputs = args[0] if args else kwargs["input"]
            return output + (scale * layer(inputs)).to(output.dtype)

        return hook

    def detach(self) -> None:
        """Remove the hooks: the model computes exactly what it did before `attach`."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # ------------------------------------------------------------------ merging
    @torch.no_grad()
    def merge(self, model: nn.Module) -> None:
        """`W += scale · multiplier · up @ down` in place for every target (hooks removed first)."""
        if self._merged_scale is not None:
            raise ConfigError("this LoRA network is already merged; call unmerge(model) first")
        self.detach()
        for _, module, layer in self._resolve(model):
            module.weight.add_((self.scale * layer.delta_weight()).to(module.weight))
        self._merged_scale = self.scale

    @torch.no_grad()
    def unmerge(self, model: nn.Module) -> None:
        """Subtract what `merge` added (with the scale used then); exact up to floating-point rounding."""
        if self._merged_scale is None:
            raise ConfigError("this LoRA network is not merged into a model; nothing to unmerge")
        for _, module, layer in self._resolve(model):
            module.weight.sub_((self._merged_scale * layer.delta_weight()).to(module.weight))
        self._merged_scale = None

    def extra_repr(self) -> str:
        return f"layers={len(self.layers)}, scale={self.scale}"


def _expected_shapes(module: nn.Module, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    if isinstance(module, nn.Linear):
        return (rank, module.in_features), (module.out_features, rank)
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        return (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)
    return None


def fit_to_module(tensor: torch.Tensor, module: nn.Module, which: Literal["down", "up"]) -> torch.Tensor:
    """Reshape a file's weight between the 2-D and 1x1-conv forms to match `module`.

    Files written against one projection type (SD1.5's 1x1-conv `proj_in`, SD2's Linear `proj_in`) are often
    applied to the other; the maths is identical, only the shape differs.
    """
    if isinstance(module, nn.Conv2d) and tensor.ndim == 2 and (which == "up" or tuple(module.kernel_size) == (1, 1)):
        return rearrange(tensor, "o i -> o i 1 1")
    if isinstance(module, nn.Linear) and tensor.ndim == 4 and tuple(tensor.shape[2:]) == (1, 1):
        return rearrange(tensor, "o i 1 1 -> o i")
    return tensor


def _matcher(target: Target) -> Callable[[str, nn.Module], bool]:
    if callable(target):
        return target
    pattern = re.compile(target)
    return lambda name, _module: pattern.search(name) is not None


def inject_lora(
    model: nn.Module,
    target: Target,
    rank: int,
    alpha: float | None = None,
    init: Init = "zeros-up",
    *,
    scale: float = 1.0,
    freeze_base: bool = True,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> LoRANetwork:
    """Create, attach and return a trainable LoRA on every nn.Linear / nn.Conv2d of `model` that `target` selects.

    `target` is a predicate `(name, module) -> bool` or a regular expression searched in the module name
    (e.g. `r"attentions\\.\\d+\\.to_(q|k|v|out)$"` for MotionLoRA). `up` starts at zero, so the network starts as
    the identity (Hu et al. §4.1); `down` is Kaiming-uniform (`init="zeros-up"`, as in the LoRA reference code and
    kohya) or Gaussian with std 1/rank (`init="gaussian"`, peft's option). With `freeze_base`, every parameter of
    `model` stops requiring grad, so only the LoRA parameters train.
    """
    if rank < 1:
        raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
    if init not in ("zeros-up", "gaussian"):
        raise ConfigError(f"LoRA init={init!r}; expected 'zeros-up' or 'gaussian'")
    matches = _matcher(target)
    network = LoRANetwork(rank=rank, alpha=alpha, scale=scale)
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or not matches(name, module):
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            logger.info("LoRA: skipping grouped convolution %s", name)
            continue
        layer = LoRALayer.for_module(module, rank, alpha, dtype=dtype)
        with torch.no_grad():
            if init == "gaussian":
                nn.init.normal_(layer.down, std=1.0 / rank, generator=generator)
            else:
                nn.init.kaiming_uniform_(layer.down, a=math.sqrt(5), generator=generator)
        network.add_layer(name, layer)
    if not len(network):
        raise ConfigError(
            f"LoRA target {target!r} matched no nn.Linear/nn.Conv2d in {type(model).__name__}; check the name pattern"
        )
    if freeze_base:
        model.requires_grad_(False)
    logger.info("LoRA: injected rank %d into %d modules", rank, len(network))
    return network.attach(model)
