"""A spatial position code for the motion modules, trained beside a MotionLoRA (not in the official AnimateDiff).

Why: a motion module's temporal attention and feed-forward act on each latent pixel's frames alone, so what it adds
can depend on where the pixel is only if the features it reads say so. A zoom's flow is v = s (p - c): it points
away from the frame's centre. `bench/probe_position.py` measured how well the bundled world model's features tell a
pixel's position: R^2 0.9 at the 4x4 level, but 0.2-0.4 at 16x16, where the background texture a camera zoom moves
lives, and a LoCon on the image UNet's convolutions did not raise it (docs/world-training.md, twenty-fourth session).

`PositionCode` adds, to the tokens each motion module's `proj_in` makes, a learned linear map of a fixed 2D code
of the pixel's position (x, y in [-1, 1] from the frame's centre, and sin / cos of pi k x, pi k y for k = 1..K).
The maps start at zero, so a fresh code leaves the module exactly as it was; it changes only the module's residual
delta, never the image UNet's own features, so motion strength 0 still gives the image model per frame. Files:
`zoetrope.formats.lora_files.save_position_code` / `load_position_code`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import repeat
from torch import nn

from zoetrope.errors import InputError
from zoetrope.models.motion_module import MotionModule, MotionModules


def position_features(height: int, width: int, frequencies: int) -> torch.Tensor:
    """(h * w, 2 + 4 K) code of each pixel centre, row-major (as `(h w)` flattens): x, y, then sin / cos of pi k x and
    pi k y for k = 1..K. x and y alone give a zoom's flow direction linearly; the harmonics let a few channels
    single out a region (the centre, a border)."""
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width * 2 - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    x, y = grid_x.reshape(-1), grid_y.reshape(-1)
    parts = [x, y]
    for k in range(1, frequencies + 1):
        parts += [torch.sin(math.pi * k * x), torch.cos(math.pi * k * x), torch.sin(math.pi * k * y), torch.cos(math.pi * k * y)]
    return torch.stack(parts, dim=-1)


def _modules(motion_modules: MotionModules) -> list[tuple[str, MotionModule]]:
    """(`down_blocks.0.motion_modules.0`, module) for every motion module, in UNet order (the names its keys use)."""
    return [
        (f"{block_name}.motion_modules.{index}", module)
        for block_name, block in motion_modules.named_blocks()
        for index, module in enumerate(block.motion_modules)
    ]


class PositionCode(nn.Module):
    """One zero-initialised `Linear(2 + 4 K -> channels)` per motion module; `attach` hooks them in (see module doc).

    `strength` scales what the code adds, like a LoRA's multiplier.
    """

    def __init__(self, motion_modules: MotionModules, frequencies: int = 3, strength: float = 1.0) -> None:
        super().__init__()
        if frequencies < 0:
            raise InputError(f"position code: found {frequencies} frequencies, expected >= 0")
        self.frequencies = frequencies
        self.strength = strength
        modules = _modules(motion_modules)
        self.names = [name for name, _ in modules]
        features = 2 + 4 * frequencies
        self.projections = nn.ModuleList(
            nn.Linear(features, module.proj_in.out_features, bias=False) for _, module in modules
        )
        for projection in self.projections:
            nn.init.zeros_(projection.weight)
        self._handles: list[Any] = []

    def attach(self, motion_modules: MotionModules) -> "PositionCode":
        """Hook the code into `motion_modules` (which must be the layout it was built for); returns self."""
        self.detach()
        modules = _modules(motion_modules)
        if [name for name, _ in modules] != self.names:
            raise InputError("position code: built for another motion module layout; load it onto the module it was trained with")
        for (_, module), projection in zip(modules, self.projections, strict=True):
            size: dict[str, Any] = {}

            def remember(_module: nn.Module, args: tuple, size: dict = size) -> None:
                size["hw"] = tuple(args[0].shape[-2:])

            def add(_linear: nn.Module, _args: tuple, tokens: torch.Tensor, size: dict = size, projection: nn.Linear = projection) -> torch.Tensor:
                height, width = size["hw"]
                if size.get("features_hw") != (height, width):  # the code of this size, once, not at every step
                    size["features_hw"] = (height, width)
                    size["features"] = position_features(height, width, self.frequencies)
                # cast here: the code is not a submodule of the pipeline, so `pipeline.to(...)` does not move it
                code = nn.functional.linear(size["features"].to(tokens), projection.weight.to(tokens))
                batch = tokens.shape[0] // (height * width)
                return tokens + self.strength * repeat(code, "(h w) c -> (b h w) 1 c", b=batch, h=height, w=width)

            self._handles.append(module.register_forward_pre_hook(remember))
            self._handles.append(module.proj_in.register_forward_hook(add))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def named_weights(self) -> dict[str, torch.Tensor]:
        """The file's tensors: `<motion module path>.position.weight`."""
        return {f"{name}.position.weight": p.weight for name, p in zip(self.names, self.projections, strict=True)}
