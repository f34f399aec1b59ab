"""Noise priors for video latents `(b, c, f, h, w)` and the FreeInit frequency filter.

Every prior keeps each frame's marginal N(0, I) and differs in how frames are correlated along f (`zoom_warped`
also repeats pixels within a magnified frame).

Reproducibility ("per frame"): noise is drawn frame by frame, in frame order, from the generator(s), one
`(c, h, w)` tensor per frame and video. Frame k therefore depends only on the generator state and the frames
before it, never on the total frame count: a 32-frame `independent` video starts with the same 16 frames as the
16-frame video from the same seed. `generator` may be a single `torch.Generator` (frames outer, videos inner: one
`(b, c, h, w)` draw per frame) or one generator per video (video i is then the same whatever the batch size,
which is what the pipelines use: one seed per video). Noise is drawn on the generator's device in float32 and
moved to `device`/`dtype` afterwards; use CPU generators for noise that is identical on every machine.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from einops import rearrange

from zoetrope.errors import ConfigError

Generators = torch.Generator | Sequence[torch.Generator]

# -- drawing -----------------------------------------------------------------------------------------------------


def _generator_list(generator: Generators, batch: int) -> list[torch.Generator] | None:
    if isinstance(generator, torch.Generator):
        return None
    generators = list(generator)
    if len(generators) != batch:
        raise ConfigError(f"generator: {len(generators)} generators for a batch of {batch}; give one or one per video")
    return generators


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int, int, int]:
    if len(shape) != 5 or any(int(size) < 1 for size in shape):
        raise ConfigError(f"noise shape {tuple(shape)}: expected 5 positive sizes (b, c, f, h, w)")
    batch, channels, frames, height, width = (int(size) for size in shape)
    return batch, channels, frames, height, width


class _FrameSource:
    """Draws `(b, c, h, w)` standard normal tensors and permutations in a fixed order from the generator(s)."""

    def __init__(self, shape: tuple[int, int, int, int, int], generator: Generators) -> None:
        self.batch, self.channels, _, self.height, self.width = shape
        self.generators = _generator_list(generator, self.batch)
        self.generator = generator if self.generators is None else None

    def frame(self) -> torch.Tensor:
        size = (self.channels, self.height, self.width)
        if self.generators is None:
            return torch.randn((self.batch, *size), generator=self.generator, device=self.generator.device)
        return torch.stack(
            [torch.randn(size, generator=g, device=g.device).to(self.generators[0].device) for g in self.generators]
        )

    def permutations(self, count: int) -> list[torch.Tensor]:
        """One permutation per video (the same one for all videos when a single generator is given)."""
        if self.generators is None:
            return [torch.randperm(count, generator=self.generator, device=self.generator.device).cpu()] * self.batch
        return [torch.randperm(count, generator=g, device=g.device).cpu() for g in self.generators]


def _stack_frames(frames: list[torch.Tensor]) -> torch.Tensor:
    return rearrange(torch.stack(frames), "f b c h w -> b c f h w")


# -- priors ------------------------------------------------------------------------------------------------------


def independent(shape: Sequence[int], generator: Generators) -> torch.Tensor:
    """i.i.d. N(0, I) for every frame: the prior the image model and AnimateDiff were trained with."""
    dims = _check_shape(shape)
    source = _FrameSource(dims, generator)
    return _stack_frames([source.frame() for _ in range(dims[2])])


def constant(shape: Sequence[int], generator: Generators) -> torch.Tensor:
    """The same noise for every frame (ADE "constant"): correlation 1 between all frames; strongly damps motion."""
    dims = _check_shape(shape)
    first = _FrameSource(dims, generator).frame()
    return _stack_frames([first] * dims[2])


def repeated_window(shape: Sequence[int], generator: Generators, window: int = 16) -> torch.Tensor:
    """Frame k gets the noise of frame k mod `window` (ADE "repeated_context"; diffusers "repeat_context").

    Long videos then start every window from the same noise, which keeps content consistent across windows.
    """
    if window < 1:
        raise ConfigError(f"noise window={window}: must be >= 1; try 16 (the context length)")
    dims = _check_shape(shape)
    source = _FrameSource(dims, generator)
    base = [source.frame() for _ in range(min(window, dims[2]))]
    return _stack_frames([base[k % window] for k in range(dims[2])])


def freenoise_shuffle(shape: Sequence[int], generator: Generators, window: int = 16, stride: int = 4) -> torch.Tensor:
    """FreeNoise noise rescheduling (Qiu et al. 2023, "FreeNoise", arXiv 2310.15169, "noise rescheduling").

    The first `window` frames are independent; then for i = window, window+stride, ... the frames [i, i+stride)
    receive a random permutation of the (already rescheduled) frames [i-window, i-window+stride). The whole video
    reuses the first window's noises, locally shuffled, so every context window sees the same noise statistics
    as the first one while frames still differ. A last, partial chunk takes the first frames of its permutation.
    Same draws as LongerCrafter's `inference_freenoise.py` (window_size=16, window_stride=4); diffusers calls this
    noise_type="shuffle_context".
    """
    if window < 1 or not 1 <= stride <= window:
        raise ConfigError(f"freenoise window={window}, stride={stride}: need 1 <= stride <= window; try 16 and 4")
    dims = _check_shape(shape)
    frames_total = dims[2]
    source = _FrameSource(dims, generator)
    frames = [source.frame() for _ in range(min(window, frames_total))]
    for start in range(window, frames_total, stride):
        permutations = source.permutations(stride)
        chunk = min(stride, frames_total - start)
        for offset in range(chunk):
            picks = [frames[start - window + int(perm[offset])][video] for video, perm in enumerate(permutations)]
            frames.append(torch.stack(picks))
    return _stack_frames(frames)


def pyoco_mixed(shape: Sequence[int], generator: Generators, alpha: float = 1.0) -> torch.Tensor:
    """PYoCo mixed noise (Ge et al. 2023, "Preserve Your Own Correlation", arXiv 2305.10474, the "mixed noise model").

    eps_i = sqrt(a^2/(1+a^2)) * eps_shared + sqrt(1/(1+a^2)) * eps_ind_i: unit variance per frame and correlation
    a^2/(1+a^2) between any two frames. Equals VideoFusion's decomposed noise with lambda = a^2/(1+a^2).
    PYoCo trains with this noise; using it only as the initial noise of an i.i.d.-trained model is a weaker method.
    """
    if alpha < 0:
        raise ConfigError(f"pyoco alpha={alpha}: must be >= 0; try 1.0")
    dims = _check_shape(shape)
    source = _FrameSource(dims, generator)
    shared = source.frame()
    shared_scale = math.sqrt(alpha**2 / (1 + alpha**2))
    own_scale = math.sqrt(1 / (1 + alpha**2))
    return _stack_frames([shared_scale * shared + own_scale * source.frame() for _ in range(dims[2])])


def pyoco_progressive(shape: Sequence[int], generator: Generators, alpha: float = 2.0) -> torch.Tensor:
    """PYoCo progressive noise (Ge et al. 2023, arXiv 2305.10474, "progressive noise model"): AR(1) along frames.

    eps_0 = eps_ind_0, eps_i = a/sqrt(1+a^2) * eps_{i-1} + 1/sqrt(1+a^2) * eps_ind_i: unit variance per frame and
    corr(i, j) = (a/sqrt(1+a^2))^|i-j|.
    """
    if alpha < 0:
        raise ConfigError(f"pyoco alpha={alpha}: must be >= 0; try 2.0")
    dims = _check_shape(shape)
    source = _FrameSource(dims, generator)
    keep = alpha / math.sqrt(1 + alpha**2)
    fresh = 1 / math.sqrt(1 + alpha**2)
    frames = [source.frame()]
    for _ in range(1, dims[2]):
        frames.append(keep * frames[-1] + fresh * source.frame())
    return _stack_frames(frames)


def zoom_warped(shape: Sequence[int], generator: Generators, zoom: float = 1.4, alpha: float = 2.0) -> torch.Tensor:
    """Noise that zooms: a shared field magnified about the frame's centre over the clip, mixed with fresh noise.

    Frame k reads a shared standard normal field B at (p - c) / zoom^(k / 15) + c (nearest pixel; zoom > 1 magnifies,
    a camera zooming in; < 1 a zoom out, whose frame edges repeat B's border pixels): `zoom` is the factor from frame 0
    to frame 15, the whole of a 16-frame clip, and longer clips keep the rate (so frame k does not depend on the
    clip's length). The structure the sampler lays out at pure noise thus already flows outward. Then
    eps_k = sqrt(a^2/(1+a^2)) * warp_k(B) + sqrt(1/(1+a^2)) * eps_ind_k, as in `pyoco_mixed`. Each pixel copies one
    pixel of B, so every frame keeps its N(0, 1) marginals; a magnified frame repeats pixels of B, which the fresh
    part (weight 1/(1+a^2) in variance) breaks up. Why: with zero terminal SNR the layout of a clip
    follows its initial noise (docs/world-training.md, sixth session), and a MotionLoRA that has not learned a zoom's
    direction at high noise (twenty-fourth session) may still keep one it is given. The idea of warping noise along
    an intended flow is Go-with-the-Flow's (Burgert et al. 2025), which warps with a distribution-preserving
    method for training; this is the nearest-pixel version for sampling only.
    """
    if zoom <= 0 or alpha < 0:
        raise ConfigError(f"zoom_warped zoom={zoom}, alpha={alpha}: expected zoom > 0 (1.4 zooms in by 1.4x) and alpha >= 0")
    dims = _check_shape(shape)
    _, _, frames, height, width = dims
    source = _FrameSource(dims, generator)
    shared = source.frame()
    shared_scale = math.sqrt(alpha**2 / (1 + alpha**2))
    own_scale = math.sqrt(1 / (1 + alpha**2))
    rows = torch.arange(height, dtype=torch.float64) + 0.5 - height / 2
    cols = torch.arange(width, dtype=torch.float64) + 0.5 - width / 2
    result = []
    for index in range(frames):
        scale = zoom ** (index / 15)
        source_rows = (rows / scale + height / 2 - 0.5).round().clamp(0, height - 1).long()
        source_cols = (cols / scale + width / 2 - 0.5).round().clamp(0, width - 1).long()
        warped = shared[:, :, source_rows][:, :, :, source_cols]
        result.append(shared_scale * warped + own_scale * source.frame())
    return _stack_frames(result)


NOISE_PRIORS: dict[str, Callable[..., torch.Tensor]] = {
    "independent": independent,
    "freenoise_shuffle": freenoise_shuffle,
    "repeated_window": repeated_window,
    "constant": constant,
    "pyoco_mixed": pyoco_mixed,
    "pyoco_progressive": pyoco_progressive,
    "zoom_warped": zoom_warped,
}

_PARAMETERS = {
    "independent": set(),
    "freenoise_shuffle": {"window", "stride"},
    "repeated_window": {"window"},
    "constant": set(),
    "pyoco_mixed": {"alpha"},
    "pyoco_progressive": {"alpha"},
    "zoom_warped": {"zoom", "alpha"},
}


def make_noise(
    kind: str,
    shape: Sequence[int],
    generator: Generators,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **params: float,
) -> torch.Tensor:
    """Noise `(b, c, f, h, w)` from the prior named `kind` (see NOISE_PRIORS), moved to `device`/`dtype`."""
    if kind not in NOISE_PRIORS:
        raise ConfigError(f"noise={kind!r}: unknown noise prior; expected one of {', '.join(NOISE_PRIORS)}")
    unknown = set(params) - _PARAMETERS[kind]
    if unknown:
        allowed = ", ".join(sorted(_PARAMETERS[kind])) or "none"
        raise ConfigError(f"noise={kind!r}: unknown parameter(s) {', '.join(sorted(unknown))}; allowed: {allowed}")
    noise = NOISE_PRIORS[kind](shape, generator, **params)
    return noise.to(device=device if device is not None else noise.device, dtype=dtype or noise.dtype)


# -- FreeInit ------------------------------------------------------------------------------------------------------

FREEINIT_FILTERS = ("gaussian", "butterworth", "ideal", "box")


def freeinit_filter(
    shape: Sequence[int],
    kind: str = "butterworth",
    d_s: float = 0.25,
    d_t: float = 0.25,
    order: int = 4,
    *,
    legacy_ideal: bool = False,
) -> torch.Tensor:
    """FreeInit low-pass mask `(f, h, w)` in the 3-D frequency domain (Wu et al. 2023, arXiv 2312.07537).

    Frequencies are normalised to [-1, 1) per axis (torch.fft.fftfreq * 2) and laid out in `torch.fft.fftn`'s own
    order (DC at index [0, 0, 0], no fftshift), with the squared distance
    d^2 = ((d_s/d_t) * f_t)^2 + f_h^2 + f_w^2 (the temporal axis is rescaled so its cut-off is d_t):
      gaussian    exp(-d^2 / (2 d_s^2))
      butterworth 1 / (1 + (d^2 / d_s^2)^order)
      ideal       1 where d^2 <= d_s^2. The reference code (FreeInit `freeinit_utils.py` and diffusers
                  `FreeInitMixin`) tests `d^2 <= d_s*2`, a bug that passes ~18.5% of frequencies at d_s=0.25
                  instead of ~0.75%; `legacy_ideal=True` reproduces it for comparisons.
      box         1 where |f_t| <= d_t and |f_h|, |f_w| <= d_s (the reference's centred cube, but symmetric and
                  always containing DC; the reference's integer half-sizes round to an empty box on small latents).
    For even sizes the grid equals the reference's `2*i/N - 1` grid after fftshift; for odd sizes ours is exactly
    centred on DC.
    """
    if kind not in FREEINIT_FILTERS:
        raise ConfigError(f"freeinit filter={kind!r}: expected one of {', '.join(FREEINIT_FILTERS)}")
    if len(shape) != 3:
        raise ConfigError(f"freeinit filter shape {tuple(shape)}: expected (frames, height, width)")
    if d_s <= 0 or d_t <= 0:
        raise ConfigError(f"freeinit d_s={d_s}, d_t={d_t}: both must be > 0; try 0.25")
    frames, height, width = (int(size) for size in shape)
    freq_t, freq_h, freq_w = torch.meshgrid(
        torch.fft.fftfreq(frames) * 2, torch.fft.fftfreq(height) * 2, torch.fft.fftfreq(width) * 2, indexing="ij"
    )
    distance_sq = ((d_s / d_t) * freq_t) ** 2 + freq_h**2 + freq_w**2
    if kind == "gaussian":
        return torch.exp(-distance_sq / (2 * d_s**2))
    if kind == "butterworth":
        return 1 / (1 + (distance_sq / d_s**2) ** order)
    if kind == "ideal":
        threshold = d_s * 2 if legacy_ideal else d_s**2
        return (distance_sq <= threshold).float()
    inside = (freq_t.abs() <= d_t) & (freq_h.abs() <= d_s) & (freq_w.abs() <= d_s)
    return inside.float()


def freeinit_mix(latents: torch.Tensor, fresh_noise: torch.Tensor, lowpass: torch.Tensor) -> torch.Tensor:
    """FreeInit noise reinitialisation (Wu et al. 2023, arXiv 2312.07537): low frequencies of the re-noised
    latents, high frequencies of fresh noise.

    z = IFFT3( FFT3(latents) * lowpass + FFT3(fresh_noise) * (1 - lowpass) ), FFT over (f, h, w) = dims (2, 3, 4).
    `latents` is the previous iteration's clean result noised back to the first timestep (with the first
    iteration's initial noise); `lowpass` is a mask from `freeinit_filter` (same (f, h, w), fftn order).
    Computed in float32 (no half-precision FFT on CPU); returns the latents' dtype.
    """
    if latents.shape != fresh_noise.shape:
        raise ConfigError(f"freeinit: latents {tuple(latents.shape)} and noise {tuple(fresh_noise.shape)} differ")
    if tuple(lowpass.shape) != tuple(latents.shape[2:]):
        raise ConfigError(
            f"freeinit: filter shape {tuple(lowpass.shape)} does not match latents (f, h, w) {tuple(latents.shape[2:])}"
        )
    dims = (2, 3, 4)
    mask = lowpass.to(device=latents.device, dtype=torch.float32)
    low = torch.fft.fftn(latents.float(), dim=dims) * mask
    high = torch.fft.fftn(fresh_noise.float(), dim=dims) * (1 - mask)
    return torch.fft.ifftn(low + high, dim=dims).real.to(latents.dtype)
