"""Context windows: sample videos longer than the motion module's positional encoding.

A motion module trained on 16 frames only sees 16-frame clips well. For longer videos the denoiser runs on
overlapping *windows* of frames and the overlapping predictions are averaged with per-frame weights
(AnimateDiff-CLI by neggles, ComfyUI-AnimateDiff-Evolved, FreeNoise (Qiu et al. 2023, arXiv 2310.15169)).

Differences from the community `uniform` scheduler (see `shared/reference/community-tools.md` §1), on purpose:
- windows never wrap from the last frame back to the first unless `closed_loop=True` (the wrap is the source of the
  "unwanted loop" complaints); a window that would run past the end is shifted back to end on the last frame;
- every window has exactly `length` frames and every frame is covered at every step, whatever the frame count
  (FreeNoise's `get_views` leaves the tail uncovered when `(F - 16) % 4 != 0`);
- predictions are always averaged with weights (never "last window wins").

Callable protocol (the k-diffusion way: wrappers around a function, no pipeline state)
-----------------------------------------------------------------------------------
The pipeline builds a *frame-indexed* predict::

    predict_frames(latents, t, frame_indices) -> noise
        latents        (b, c, len(frame_indices), h, w): the frames of one window, in `frame_indices` order
        t              the timestep, as the scheduler gives it
        frame_indices  list[int]: which frames of the full video these are, so per-frame inputs
                       (prompt-travel embeddings, SparseCtrl conditions and masks, motion-scale lists) are sliced
                       with the same indices: `cond_per_frame[frame_indices]`

`wrap_predict_with_context(predict_frames, config)` returns the *loop* predict::

    predict(latents, t, step) -> noise      latents (b, c, f, h, w), step = index into the scheduler's timesteps

which `zoetrope.sampling.loop.denoise` calls (it passes `step` because the uniform schedule moves the windows from
step to step). With `config=None`, or a video no longer than one window, `predict_frames` is called once on all
frames with `frame_indices = [0, 1, ..., f - 1]`, so one frame-indexed predict serves both cases.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from einops import rearrange

from zoetrope.errors import ConfigError, FrameCountError

logger = logging.getLogger(__name__)

FramePredict = Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor]
StepPredict = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]

SCHEDULES = ("uniform", "static")
FUSE_KINDS = ("pyramid", "flat", "overlap-linear")


@dataclass
class ContextConfig:
    """How to cut a long video into windows.

    length:      frames per window (the motion module's training length; 16 for v1/v2/v3).
    overlap:     frames shared by neighbouring windows of the same dilation (0 <= overlap < length).
    stride:      the largest *dilation*: a window of dilation s holds frames i, i+s, i+2s, ... . Windows are made
                 at dilations 1, 2, 4, ... up to `stride` (and `stride` itself), so stride=1 means contiguous
                 windows only. Dilated windows give the motion module long-range context; the contiguous ones
                 keep neighbouring frames together. Community `context_stride=k` (a count of power-of-two levels)
                 corresponds to `stride=2**(k-1)` here. (diffusers FreeNoise calls the hop between windows
                 "stride"; that is `length - overlap` here.) A dilation is used only when `num_frames >=
                 length * dilation`, so that every window still has exactly `length` frames.
    schedule:    "uniform" shifts the window grid at every denoising step (by the van der Corput sequence 0, 1/2,
                 1/4, 3/4, ... of a hop), so seams fall in different places on each step; "static" keeps the
                 same windows at every step.
    closed_loop: let windows wrap from the last frame to the first (for looping videos).
    fuse:        per-frame weights for averaging overlapping predictions (see `fusion_weights`).
    """

    length: int = 16
    overlap: int = 4
    stride: int = 1
    schedule: str = "uniform"
    closed_loop: bool = False
    fuse: str = "pyramid"

    def __post_init__(self) -> None:
        if not isinstance(self.length, int) or self.length < 1:
            raise ConfigError(f"context.length={self.length!r}: must be a positive integer; try 16")
        if not isinstance(self.overlap, int) or not 0 <= self.overlap < self.length:
            raise ConfigError(
                f"context.overlap={self.overlap!r}: must be an integer in [0, length={self.length}); "
                f"try {self.length // 4}"
            )
        if not isinstance(self.stride, int) or self.stride < 1:
            raise ConfigError(f"context.stride={self.stride!r}: must be a positive integer (the dilation); try 1")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"context.schedule={self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.fuse not in FUSE_KINDS:
            raise ConfigError(f"context.fuse={self.fuse!r}: expected one of {', '.join(FUSE_KINDS)}")


def ordered_halving(step: int) -> float:
    """Van der Corput sequence in base 2: 0, 1/2, 1/4, 3/4, 1/8, ... (bit-reversed step / 2**64).

    Successive steps get offsets that are spread as evenly as possible over [0, 1), so window seams never sit on
    the same frames for long (the rotation idea of neggles' `uniform` schedule).
    """
    reversed_bits = int(f"{step:064b}"[::-1], 2)
    return reversed_bits / (1 << 64)


def _dilations(num_frames: int, config: ContextConfig) -> list[int]:
    levels = []
    dilation = 1
    while dilation < config.stride:
        levels.append(dilation)
        dilation *= 2
    levels.append(config.stride)
    usable = [d for d in levels if d == 1 or num_frames >= config.length * d]
    if len(usable) < len(levels):
        logger.debug("context: dilations %s skipped for %d frames (need length*dilation frames)",
                     [d for d in levels if d not in usable], num_frames)
    return usable


def _windows_1d(count: int, length: int, overlap: int, offset_fraction: float, closed_loop: bool) -> list[list[int]]:
    """Windows of exactly `length` positions over positions 0..count-1 (count > length) covering all of them.

    The grid of starts is offset + k*hop (hop = length - overlap). Open videos: each window is clamped into
    [0, count - length] (the last one is shifted back, never truncated or wrapped); closed loops wrap modulo count.
    """
    hop = length - overlap
    offset = int(offset_fraction * hop)
    if closed_loop:
        starts = [(offset + k * hop) % count for k in range(math.ceil(count / hop))]
        windows = [[(start + j) % count for j in range(length)] for start in starts]
    else:
        first_k = -math.ceil((offset + length) / hop)
        last_k = math.ceil((count - offset) / hop)
        starts = []
        for k in range(first_k, last_k + 1):
            start = offset + k * hop
            if start + length <= 0 or start >= count:
                continue  # the window would hold no frame of the video
            starts.append(min(max(start, 0), count - length))
        windows = [list(range(start, start + length)) for start in starts]
    unique: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    for window in windows:
        key = tuple(window)
        if key not in seen:
            seen.add(key)
            unique.append(window)
    return unique


def context_windows(num_frames: int, step: int, config: ContextConfig) -> list[list[int]]:
    """The windows (lists of frame indices) to run at denoising step `step`.

    Invariants (tested): every frame is in at least one window; every window has exactly `config.length` frames
    (or all frames, when `num_frames <= length`); a window never goes from the last frame to the first unless
    `closed_loop`; frames inside a dilation-s window are s apart; "static" gives the same list at every step.
    """
    if not isinstance(num_frames, int) or num_frames < 1:
        raise FrameCountError(f"num_frames={num_frames!r}: must be a positive integer")
    if num_frames <= config.length:
        return [list(range(num_frames))]
    fraction = ordered_halving(step) if config.schedule == "uniform" else 0.0
    windows: list[list[int]] = []
    for dilation in _dilations(num_frames, config):
        for residue in range(dilation):
            positions = list(range(residue, num_frames, dilation))  # one dilation class, >= length members
            if len(positions) <= config.length:
                windows.append(positions)
                continue
            for window in _windows_1d(len(positions), config.length, config.overlap, fraction, config.closed_loop):
                windows.append([positions[index] for index in window])
    return windows


def fusion_weights(
    window_length: int,
    kind: str = "pyramid",
    *,
    overlap: int = 0,
    ramp_start: bool = True,
    ramp_end: bool = True,
) -> torch.Tensor:
    """Per-frame weights `(window_length,)` for averaging overlapping window predictions.

    flat:           all ones (neggles / animatediff-cli averaging).
    pyramid:        1, 2, ..., L/2, L/2, ..., 1: a triangle peaking in the middle, positive at both ends, so a
                    frame trusts the window where it sits near the centre (FreeNoise, Qiu et al. 2023, window fusion;
                    ADE `create_weights_pyramid`).
    overlap-linear: 1 in the middle, linear ramps (1/(O+1), ..., O/(O+1)) over the first and last `overlap`
                    frames; `ramp_start/ramp_end=False` keep weight 1 at a clip end, where no other window
                    overlaps (ADE, after kijai's WanVideoWrapper). The ramps never reach 0, so no frame can end up
                    with zero total weight.
    """
    if window_length < 1:
        raise ConfigError(f"window_length={window_length}: must be >= 1")
    if kind == "flat":
        return torch.ones(window_length)
    if kind == "pyramid":
        half = (window_length + 1) // 2
        rising = torch.arange(1, half + 1, dtype=torch.float32)
        falling = rising.flip(0)[window_length % 2:]  # odd lengths have one peak frame, not two
        return torch.cat([rising, falling])
    if kind == "overlap-linear":
        weights = torch.ones(window_length)
        ramp_length = min(overlap, window_length // 2)
        if ramp_length > 0:
            ramp = torch.arange(1, ramp_length + 1, dtype=torch.float32) / (ramp_length + 1)
            if ramp_start:
                weights[:ramp_length] = ramp
            if ramp_end:
                weights[window_length - ramp_length:] = ramp.flip(0)
        return weights
    raise ConfigError(f"context.fuse={kind!r}: expected one of {', '.join(FUSE_KINDS)}")


def window_weights(windows: Sequence[Sequence[int]], num_frames: int, config: ContextConfig) -> list[torch.Tensor]:
    """The fusion weights of each window (overlap-linear keeps weight 1 at the clip ends)."""
    return [_window_weights(window, num_frames, config.fuse, config.overlap) for window in windows]


def _window_weights(window: Sequence[int], num_frames: int, kind: str, overlap: int) -> torch.Tensor:
    if kind != "overlap-linear" or len(window) < 2:
        return fusion_weights(len(window), kind, overlap=overlap)
    dilation = min(abs(b - a) for a, b in zip(window, window[1:]))  # the wrap step of a closed loop is larger
    return fusion_weights(
        len(window), kind, overlap=overlap,
        ramp_start=window[0] - dilation >= 0, ramp_end=window[-1] + dilation < num_frames,
    )


def fuse_windows(
    outputs: Sequence[torch.Tensor],
    windows: Sequence[Sequence[int]],
    num_frames: int,
    kind: str = "pyramid",
    *,
    overlap: int = 0,
) -> torch.Tensor:
    """Weighted average of per-window predictions `(b, c, len, h, w)` into one `(b, c, num_frames, h, w)`.

    out[frame] = sum_w weight_w(frame) * output_w(frame) / sum_w weight_w(frame) over the windows holding the frame.
    Accumulates in float32 (fp16 sums of many windows lose precision) and returns the outputs' dtype.
    """
    if len(outputs) != len(windows) or not outputs:
        raise ConfigError(f"fuse_windows: {len(outputs)} outputs for {len(windows)} windows; give one per window")
    first = outputs[0]
    batch, channels, _, height, width = first.shape
    total = torch.zeros(batch, channels, num_frames, height, width, device=first.device, dtype=torch.float32)
    weight_sum = torch.zeros(num_frames, device=first.device, dtype=torch.float32)
    for output, window in zip(outputs, windows):
        if output.shape[2] != len(window):
            raise ConfigError(f"fuse_windows: an output has {output.shape[2]} frames for a window of {len(window)}")
        weights = _window_weights(window, num_frames, kind, overlap).to(first.device)
        index = torch.as_tensor(list(window), device=first.device, dtype=torch.long)
        total.index_add_(2, index, output.float() * rearrange(weights, "f -> 1 1 f 1 1"))
        weight_sum.index_add_(0, index, weights)
    if bool((weight_sum == 0).any()):
        missing = torch.nonzero(weight_sum == 0).flatten().tolist()
        raise ConfigError(f"fuse_windows: frames {missing} are in no window; windows must cover every frame")
    return (total / rearrange(weight_sum, "f -> 1 1 f 1 1")).to(first.dtype)


def wrap_predict_with_context(predict: FramePredict, config: ContextConfig | None) -> StepPredict:
    """Turn a frame-indexed `predict(latents, t, frame_indices)` into the loop's `predict(latents, t, step)`.

    Each window's frames go through `predict` with their indices, and the results are fused with
    `config.fuse` weights. With `config=None` or a video of at most `config.length` frames, `predict` runs once
    on all frames. See the module docstring for the protocol.
    """

    def predict_with_context(latents: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        num_frames = latents.shape[2]
        if config is None or num_frames <= config.length:
            return predict(latents, t, list(range(num_frames)))
        windows = context_windows(num_frames, step, config)
        outputs = [predict(latents[:, :, window], t, window) for window in windows]
        return fuse_windows(outputs, windows, num_frames, config.fuse, overlap=config.overlap)

    return predict_with_context


def _frame_ranges(window: Sequence[int]) -> str:
    """'0-15', '24-31,0-7' or '0,2,..,30' for a window's frames."""
    steps = {b - a for a, b in zip(window, window[1:])}
    if len(steps) == 1 and next(iter(steps)) > 1:
        return f"{window[0]},{window[1]},..,{window[-1]}"
    runs, start = [], window[0]
    for previous, current in zip(window, window[1:]):
        if current != previous + 1:
            runs.append((start, previous))
            start = current
    runs.append((start, window[-1]))
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)


def describe_windows(num_frames: int, steps: int, config: ContextConfig) -> str:
    """A text table of the windows at each denoising step (for `zoetrope generate --show-windows`).

    One row per window: '#' marks the frames it holds. Consecutive steps with identical windows are merged.
    """
    header = (
        f"context windows: {num_frames} frames, length {config.length}, overlap {config.overlap}, "
        f"stride {config.stride}, schedule {config.schedule}, closed_loop {config.closed_loop}, fuse {config.fuse}"
    )
    lines = [header]
    groups: list[tuple[int, int, list[list[int]]]] = []
    for step in range(max(steps, 1)):
        windows = context_windows(num_frames, step, config)
        if groups and groups[-1][2] == windows:
            groups[-1] = (groups[-1][0], step, windows)
        else:
            groups.append((step, step, windows))
    for first, last, windows in groups:
        label = f"step {first}" if first == last else f"steps {first}-{last}"
        lines.append(f"{label}: {len(windows)} window(s)")
        for number, window in enumerate(windows):
            members = set(window)
            bar = "".join("#" if frame in members else "." for frame in range(num_frames))
            lines.append(f"  w{number:<3d} {bar}  {_frame_ranges(window)}")
    return "\n".join(lines)
