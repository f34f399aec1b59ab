"""A live preview for command-line sampling: the sampler's clean estimate, decoded and written every few steps.

Why: ComfyUI and A1111 show the estimate of the finished picture while the sampler runs, which is how users stop a
bad seed early and see *when* a layout is settled (in the shapes world: between t ~ 800 and ~ 450, twenty-ninth
session). A command-line run has no window, so the preview is a file that is rewritten in place (atomically, so a
viewer that reloads it never reads half a GIF), or one file per step when the path holds `{step}`.
It is a step callback of `zoetrope.sampling.loop.denoise` with the `denoised` keyword, so it works with every
sampler (`clean_estimate` knows where each keeps its x0) and costs one VAE decode of one video per written step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zoetrope.errors import ConfigError
from zoetrope.media import VIDEO_SUFFIXES, save_video
from zoetrope.pipelines.components import decode_latents


@dataclass
class PreviewWriter:
    """Step callback: every `every` steps decode video `video` of the batch's clean estimate and save it to `path`.

    `path` is any `save_video` target (.gif / .mp4 / .webp / a PNG frames folder); with `{step}` in it (e.g.
    `preview/step-{step:03d}.gif`) each preview is kept, named by its 1-based step, instead of overwriting one file.
    `written` lists the paths written, in order.
    """

    vae: Any
    path: str | Path
    every: int = 5
    fps: float = 8
    video: int = 0
    decode_chunk_size: int = 16
    written: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError(f"preview every {self.every} steps: expected a whole number >= 1 (e.g. 5)")
        if self.video < 0:
            raise ConfigError(f"preview video {self.video}: expected the index of a video in the batch (0 = the first)")
        suffix = Path(str(self.path)).suffix.lower()
        if suffix and suffix not in VIDEO_SUFFIXES and suffix != ".png":
            raise ConfigError(
                f"preview path {self.path}: unknown format {suffix!r}; use one of {', '.join(VIDEO_SUFFIXES)}, or a "
                "folder for PNG frames"
            )
        try:
            self.target(1)
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigError(
                f"preview path {self.path}: only the field {{step}} may be formatted in it (e.g. step-{{step:03d}}.gif)"
            ) from error

    def target(self, step: int) -> Path:
        """Where the preview of (1-based) `step` goes."""
        text = str(self.path)
        return Path(text.format(step=step) if "{" in text else text)

    def __call__(self, step: int, t: Any, latents: torch.Tensor, denoised: torch.Tensor | None = None) -> None:
        if (step + 1) % self.every:
            return
        if denoised is None:
            raise ConfigError(
                "this scheduler reports no clean estimate, so there is nothing to preview; use one of the samplers "
                "`--scheduler` offers (ddim, euler, euler_a, dpm++2m-karras, lcm) or drop --preview"
            )
        if self.video >= denoised.shape[0]:
            raise ConfigError(f"preview video {self.video}: the batch has {denoised.shape[0]} videos")
        with torch.no_grad():
            frames = decode_latents(self.vae, denoised[self.video : self.video + 1], chunk_size=self.decode_chunk_size)
        self.written.append(save_video(frames[0], self.target(step + 1), fps=self.fps))
