"""Pixel metrics for the shapes world: what a generated clip shows, measured against what its prompt asked for.

Everything is read from uint8 pixels (frames, h, w, 3) and the prompt alone (`parse_caption`), so the same numbers
score the training data, a generated clip and a clip decoded from disk. The measurements are deliberately simple
and geometric, so they can be trusted on 64-pixel clips:

- foreground = pixels far (in RGB) from the background colour, estimated per frame as the median of the frame
  border; the watermark band rows are never foreground;
- shape = the dominant angular harmonic of the foreground around its centroid (3 triangle, 4 square, 5 star, none
  circle), a rotation-invariant silhouette descriptor (Fourier descriptors, Zahn & Roskies 1972); its phase / k is
  the orientation modulo the shape's symmetry, which is how rotation is measured;
- colour = the hue of the median core pixel, nearest of the six palette hues (styles keep the hue);
- motion = the largest of centroid travel, log-area change and rotation over the clip (least-squares slopes over
  time), each relative to a threshold well below the amplitudes the renderer uses;
- camera = a global translation + zoom flow fitted to the *background* texture by least squares on the brightness
  constancy equation (Lucas & Kanade 1981), with the object masked out so its own motion does not count;
- temporal consistency = foreground-mask IoU and background-brightness flicker between consecutive frames;
- watermark leakage = the least-squares projection of the band rows' deviation from the background onto the
  deviation the real watermark would cause on that background (1 = the full watermark, 0 = none).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from zoetrope.errors import InputError
from zoetrope.world.render import (
    BACKGROUNDS,
    COLOURS,
    WorldConfig,
    caption,
    parse_caption,
    watermark_layers,
)

logger = logging.getLogger(__name__)

MIN_CONTRAST = 40.0
"""Lowest RGB distance from the background that can count as foreground (the background texture peaks at ~28)."""

TRAIL_CONTRAST = 30.0
"""RGB distance from the background above which a pixel is not trusted as background by the camera estimate (the
background texture peaks at ~28; the object's motion trail is fainter than the foreground threshold but above
this)."""

FOREGROUND_FRACTION = 0.3
"""Foreground threshold as a fraction of the object's contrast: low enough to keep the pale stripes of a striped
shape on a brown background (~0.45 of the contrast of its saturated stripes)."""

MIN_AREA = 6
"""Frames whose foreground has fewer pixels than this are treated as 'object not found'."""

MOVE_THRESHOLD = 0.12
"""Centroid travel over the clip, as a fraction of the image size, that counts as moving (renderer: >= 0.3)."""

SCALE_THRESHOLD = 0.45
"""|log area change| over the clip that counts as grow/shrink (~1.25x radius; renderer: >= 1.6x)."""

ROTATION_THRESHOLD = 40.0
"""Degrees of rotation over the clip that count as rotating (renderer: >= 108)."""

SYMMETRY_THRESHOLD = 0.12
"""Smallest normalised harmonic magnitude for a silhouette to count as a polygon (a circle measures ~0)."""

ZOOM_THRESHOLD = 0.1
"""|log zoom| over the clip that counts as a camera zoom (renderer: log 1.3 = 0.26 or more)."""

PAN_THRESHOLD = 0.1
"""Background travel over the clip, as a fraction of the image size, that counts as a pan (renderer: >= 0.3)."""

PASTEL_SATURATION = 0.55
"""Pixels less saturated than this look pastel (palette ~0.73-0.83; pastel ~0.33-0.40)."""

HARMONICS = (3, 4, 5)
_SHAPE_OF_HARMONIC = {3: "triangle", 4: "square", 5: "star"}

UNKNOWN = "unknown"
"""What a classifier returns when it cannot find an object in the clip."""

PROMPT_SUITE: tuple[str, ...] = (
    "a red circle moving left on a grey background",
    "a blue star moving left on a brown background",
    "a yellow triangle moving left on a navy background",
    "a green square moving right on a black background",
    "a magenta circle moving right on a grey background",
    "a cyan star moving right on a navy background",
    "a blue triangle moving up on a grey background",
    "a red square moving up on a brown background",
    "a green star moving up on a black background",
    "a yellow circle moving down on a brown background",
    "a cyan square moving down on a black background",
    "a magenta triangle moving down on a navy background",
    "a magenta star growing on a grey background",
    "a green triangle growing on a brown background",
    "a red circle growing on a navy background",
    "a cyan circle shrinking on a black background",
    "a yellow square shrinking on a grey background",
    "a blue star shrinking on a navy background",
    "a red square rotating on a black background",
    "a yellow star rotating on a brown background",
    "a cyan triangle rotating on a grey background",
    "a green circle staying still on a navy background",
    "a magenta square staying still on a brown background",
    "a blue triangle staying still on a black background",
)
"""The fixed evaluation prompts: every shape, colour, background and motion at least once (three prompts per
motion), and no rotating circle (its rotation is invisible)."""

CAMERA_SUITE: tuple[str, ...] = (
    "a red square staying still on a grey background, camera zooming in",
    "a cyan star staying still on a brown background, camera zooming in",
    "a yellow triangle staying still on a navy background, camera zooming out",
    "a green circle staying still on a black background, camera zooming out",
    "a blue square staying still on a brown background, camera panning left",
    "a magenta circle staying still on a grey background, camera panning left",
    "a red triangle staying still on a black background, camera panning right",
    "a yellow star staying still on a navy background, camera panning right",
)
"""The fixed camera-motion prompts for MotionLoRAs: each camera motion twice."""


def prompts_with_motions(prompts: Sequence[str], motions: str, suite_name: str = "base") -> list[str]:
    """The prompts whose object or camera motion is one of `motions` (comma-separated, e.g. "left,right").

    For judging a module on some motions only (`zoetrope eval --motions`, the SparseCtrl bench's interpolations);
    a motion no prompt has is refused by name with the ones there are."""
    wanted = {name.strip() for name in motions.split(",") if name.strip()}
    asked = {}
    for prompt in prompts:
        intent = parse_caption(prompt)
        asked[prompt] = {intent.motion, intent.camera} - {None}
    known = sorted(set().union(*asked.values()))
    if not wanted <= set(known):
        raise InputError(
            f"--motions {motions!r}: {sorted(wanted - set(known))} not in the {suite_name} suite; "
            f"choose from {', '.join(known)}"
        )
    return [prompt for prompt in prompts if asked[prompt] & wanted]


# --------------------------------------------------------------------------------------------------------------
# segmentation and per-frame measurements


def _as_clip(clip: np.ndarray) -> np.ndarray:
    """Float (frames, h, w, 3) from a uint8 clip or a single (h, w, 3) image."""
    array = np.asarray(clip)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] < 1:
        raise InputError(f"clip: found shape {tuple(np.shape(clip))}, expected (frames, h, w, 3) or (h, w, 3) RGB")
    return array.astype(np.float64)


def _band(height: int, config: WorldConfig | None) -> int:
    """Rows at the bottom excluded from segmentation: the watermark band plus one row of compression bleed."""
    return (config or WorldConfig()).band_rows(height) + 1


def _luminance(clip: np.ndarray) -> np.ndarray:
    return clip @ np.array([0.299, 0.587, 0.114])


def background_colour(clip: np.ndarray, config: WorldConfig | None = None) -> np.ndarray:
    """Per-frame background RGB (frames, 3): the median of the frame border above the watermark band.

    The renderer keeps objects off most of the border, so the median ignores them.
    """
    frames = _as_clip(clip)
    top = frames.shape[1] - _band(frames.shape[1], config)
    border = np.concatenate(
        [frames[:, 0, :, :], frames[:, top - 1, :, :], frames[:, 1 : top - 1, 0, :], frames[:, 1 : top - 1, -1, :]],
        axis=1,
    )
    return np.median(border, axis=1)


@dataclass
class _Segmentation:
    mask: np.ndarray  # (frames, h, w) bool
    distance: np.ndarray  # (frames, h, w) RGB distance from the background colour
    contrast: float  # typical distance of the object's core from the background


def _segment(frames: np.ndarray, config: WorldConfig | None) -> _Segmentation:
    background = background_colour(frames, config)
    distance = np.linalg.norm(frames - background[:, None, None, :], axis=-1)
    top = frames.shape[1] - _band(frames.shape[1], config)
    distance[:, top:, :] = 0.0
    contrast = float(np.median(distance.reshape(distance.shape[0], -1).max(axis=1)))
    threshold = max(MIN_CONTRAST, FOREGROUND_FRACTION * contrast)
    return _Segmentation(distance > threshold, distance, contrast)


def foreground_masks(clip: np.ndarray, config: WorldConfig | None = None) -> np.ndarray:
    """Boolean foreground masks (frames, h, w): RGB distance from the background above `FOREGROUND_FRACTION` of
    the object contrast (and above `MIN_CONTRAST`); the watermark band rows are always background."""
    return _segment(_as_clip(clip), config).mask


@dataclass
class Track:
    """Per-frame measurements of the foreground (all arrays have one entry per frame).

    `harmonics[:, j]` is the complex normalised angular harmonic of order `HARMONICS[j]`,
    sum(r^2 exp(i k theta)) / sum(r^2) over foreground pixels around the centroid. `spread` is the root mean square
    distance (px) of the foreground pixels from their centroid: one object keeps it near its radius, while two
    half-faded copies (a cross-fade instead of a motion) put their common centroid between them and double it.
    """

    area: np.ndarray
    centre_x: np.ndarray
    centre_y: np.ndarray
    harmonics: np.ndarray
    valid: np.ndarray
    spread: np.ndarray


def track_object(clip: np.ndarray, config: WorldConfig | None = None) -> Track:
    """Segment every frame and measure area, centroid and silhouette harmonics."""
    frames = _as_clip(clip)
    mask = _segment(frames, config).mask
    count = mask.shape[0]
    frame_index, row, col = np.nonzero(mask)
    pixel_x, pixel_y = col + 0.5, row + 0.5
    area = np.bincount(frame_index, minlength=count).astype(np.float64)
    safe = np.maximum(area, 1.0)
    centre_x = np.bincount(frame_index, weights=pixel_x, minlength=count) / safe
    centre_y = np.bincount(frame_index, weights=pixel_y, minlength=count) / safe
    offset = (pixel_x - centre_x[frame_index]) + 1j * (pixel_y - centre_y[frame_index])
    radius_sq = np.abs(offset) ** 2
    direction = offset / np.maximum(np.abs(offset), 1e-9)
    second_moment = np.bincount(frame_index, weights=radius_sq, minlength=count)
    norm = np.maximum(second_moment, 1e-9)
    harmonics = np.stack(
        [
            (
                np.bincount(frame_index, weights=radius_sq * (direction**order).real, minlength=count)
                + 1j * np.bincount(frame_index, weights=radius_sq * (direction**order).imag, minlength=count)
            )
            / norm
            for order in HARMONICS
        ],
        axis=-1,
    )
    spread = np.sqrt(second_moment / safe)
    return Track(area, centre_x, centre_y, harmonics, area >= MIN_AREA, spread)


# --------------------------------------------------------------------------------------------------------------
# prompt fidelity


def _shape_from_track(track: Track) -> tuple[str, float]:
    """(shape, symmetry strength): area-weighted mean harmonic magnitudes, the strongest order wins."""
    if not track.valid.any():
        return UNKNOWN, 0.0
    weight = track.area * track.valid
    magnitude = (np.abs(track.harmonics) * weight[:, None]).sum(axis=0) / weight.sum()
    best = int(np.argmax(magnitude))
    if magnitude[best] < SYMMETRY_THRESHOLD:
        return "circle", float(magnitude[best])
    return _SHAPE_OF_HARMONIC[HARMONICS[best]], float(magnitude[best])


def classify_shape(clip: np.ndarray, config: WorldConfig | None = None) -> str:
    """Which of circle/square/triangle/star the foreground is (or `UNKNOWN` if there is none)."""
    return _shape_from_track(track_object(clip, config))[0]


def _hue(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees of RGB values (..., 3)."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    span = np.maximum(high - low, 1e-9)
    hue = np.where(
        high == red,
        (green - blue) / span,
        np.where(high == green, 2.0 + (blue - red) / span, 4.0 + (red - green) / span),
    )
    return (hue * 60.0) % 360.0


def _saturation(rgb: np.ndarray) -> np.ndarray:
    high = rgb.max(axis=-1)
    return (high - rgb.min(axis=-1)) / np.maximum(high, 1e-9)


_PALETTE_HUES = {name: float(_hue(np.asarray(rgb, dtype=np.float64))) for name, rgb in COLOURS.items()}


def _core_pixels(frames: np.ndarray, config: WorldConfig | None) -> np.ndarray:
    """RGB (n, 3) of the object's core: foreground pixels at >= 75% of the object contrast (edges excluded)."""
    segmentation = _segment(frames, config)
    core = segmentation.mask & (segmentation.distance >= 0.75 * segmentation.contrast)
    return frames[core]


def classify_colour(clip: np.ndarray, config: WorldConfig | None = None) -> str:
    """Which palette colour the object is: the palette hue nearest (circularly) to the median core pixel's hue."""
    core = _core_pixels(_as_clip(clip), config)
    if len(core) < 3:
        return UNKNOWN
    hue = float(_hue(np.median(core, axis=0)))
    return min(_PALETTE_HUES, key=lambda name: abs((hue - _PALETTE_HUES[name] + 180.0) % 360.0 - 180.0))


def classify_background(clip: np.ndarray, config: WorldConfig | None = None) -> str:
    """Which background the clip has: the base colour nearest (RGB) to the median border colour over the frames.

    The texture averages out in the median, and every pair of backgrounds is >= 40 levels apart.
    """
    colour = np.median(background_colour(_as_clip(clip), config), axis=0)
    return min(BACKGROUNDS, key=lambda name: float(np.linalg.norm(np.asarray(BACKGROUNDS[name]) - colour)))


def classify_style(clip: np.ndarray, config: WorldConfig | None = None) -> str | None:
    """The object's style from the saturation of its interior pixels (foreground eroded by one pixel, so the
    anti-aliased edge does not count): "pastel" (mostly pale), "striped" (a mix), or None (saturated)."""
    frames = _as_clip(clip)
    mask = _segment(frames, config).mask
    interior = mask & ~_dilate(~mask, 1)
    pixels = frames[interior] if interior.sum() >= 3 else frames[mask]
    if len(pixels) < 3:
        return None
    pale = float((_saturation(pixels) < PASTEL_SATURATION).mean())
    if pale > 0.75:
        return "pastel"
    if pale > 0.2:
        return "striped"
    return None


# --------------------------------------------------------------------------------------------------------------
# motion


def _total_change(values: np.ndarray, valid: np.ndarray) -> float:
    """Least-squares slope of values over normalised time [0, 1], i.e. the fitted change over the whole clip."""
    time = np.linspace(0.0, 1.0, len(values))[valid]
    values = values[valid]
    if len(values) < 2:
        return 0.0
    time_centred = time - time.mean()
    return float((time_centred * (values - values.mean())).sum() / (time_centred**2).sum())


@dataclass
class MotionMeasurement:
    """What the object did over the clip: travel (px, y down), log area change, rotation (degrees), shape."""

    dx: float
    dy: float
    log_area: float
    rotation: float
    shape: str
    found: bool


def measure_motion(clip: np.ndarray, config: WorldConfig | None = None) -> MotionMeasurement:
    """Fit centroid, log area and orientation against time and report their change over the whole clip.

    The orientation is phase(M_k) / k for the shape's dominant harmonic k, unwrapped over frames: it is defined
    modulo the shape's symmetry (360/k degrees), so per-frame rotation must stay below 180/k degrees.
    """
    track = track_object(clip, config)
    valid = track.valid
    if valid.sum() < 2:
        return MotionMeasurement(0.0, 0.0, 0.0, 0.0, UNKNOWN, False)
    shape, _ = _shape_from_track(track)
    rotation = 0.0
    if shape in ("triangle", "square", "star"):
        order = {"triangle": 3, "square": 4, "star": 5}[shape]
        phase = np.unwrap(np.angle(track.harmonics[valid, HARMONICS.index(order)]))
        orientation = np.zeros(len(valid))
        orientation[valid] = np.rad2deg(phase) / order
        rotation = _total_change(orientation, valid)
    return MotionMeasurement(
        dx=_total_change(track.centre_x, valid),
        dy=_total_change(track.centre_y, valid),
        log_area=_total_change(np.log(np.maximum(track.area, 1.0)), valid),
        rotation=rotation,
        shape=shape,
        found=True,
    )


def classify_motion(clip: np.ndarray, config: WorldConfig | None = None) -> str:
    """Which of the eight object motions the clip shows (or `UNKNOWN` if no object is found).

    Travel, size change and rotation are each divided by their threshold; the largest wins if it exceeds 1,
    otherwise the object is "still". Translation direction is the dominant axis (image y points down).
    """
    frames = _as_clip(clip)
    return motion_of(measure_motion(frames, config), max(frames.shape[1], frames.shape[2]))


def motion_of(measurement: MotionMeasurement, size: int) -> str:
    """`classify_motion` of a clip already measured (`size`: its larger side in px), for callers that also report
    the measurement and need not track the object twice."""
    if not measurement.found:
        return UNKNOWN
    scores = {
        "move": float(np.hypot(measurement.dx, measurement.dy)) / (MOVE_THRESHOLD * size),
        "scale": abs(measurement.log_area) / SCALE_THRESHOLD,
        "rotate": abs(measurement.rotation) / ROTATION_THRESHOLD,
    }
    kind = max(scores, key=scores.__getitem__)
    if scores[kind] < 1.0:
        return "still"
    if kind == "scale":
        return "grow" if measurement.log_area > 0 else "shrink"
    if kind == "rotate":
        return "rotate"
    if abs(measurement.dx) >= abs(measurement.dy):
        return "right" if measurement.dx > 0 else "left"
    return "down" if measurement.dy > 0 else "up"


def motion_accuracy(
    clips: Sequence[np.ndarray], prompts: Sequence[Any], config: WorldConfig | None = None
) -> float | None:
    """Fraction of clips whose `classify_motion` matches the prompt's motion.

    `prompts` are captions or objects with `.motion`/`.shape`/`.camera` (a `ClipSpec` or `Intent`). Clips with a
    camera motion, no stated motion, or a rotating circle (invisible) are not scored; None if none is scored.
    """
    _check_lengths(clips, prompts)
    correct = scored = 0
    for clip, prompt in zip(clips, prompts, strict=True):
        intent = parse_caption(prompt) if isinstance(prompt, str) else prompt
        if not _motion_scorable(intent):
            continue
        scored += 1
        correct += classify_motion(clip, config) == intent.motion
    return correct / scored if scored else None


def _motion_scorable(intent: Any) -> bool:
    return (
        intent.motion is not None
        and intent.camera is None
        and not (intent.motion == "rotate" and intent.shape == "circle")
    )


def _check_lengths(clips: Sequence[np.ndarray], prompts: Sequence[Any]) -> None:
    if len(clips) != len(prompts):
        raise InputError(f"clips/prompts: found {len(clips)} clips and {len(prompts)} prompts, expected one each")


# --------------------------------------------------------------------------------------------------------------
# temporal consistency and watermark


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of (..., h, w) masks by a (2 radius + 1)^2 square."""
    result = mask.copy()
    height, width = mask.shape[-2:]
    padded = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(radius, radius), (radius, radius)])
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            result |= padded[..., dy : dy + height, dx : dx + width]
    return result


def frame_changes(clip: np.ndarray) -> np.ndarray:
    """Mean absolute change between consecutive frames, `(f - 1,)`, in 8-bit levels for a uint8 clip.

    The seam metrics divide the change across a window boundary or a keyframe by the clip's median change, so a
    seam is "a step larger than the clip's own motion makes" whatever the clip's speed.
    """
    frames = _as_clip(clip)
    return np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))


def temporal_consistency(clip: np.ndarray, config: WorldConfig | None = None) -> dict[str, float]:
    """Frame-to-frame stability: {"mask_iou": mean IoU of consecutive foreground masks (1 = rock steady),
    "flicker": mean |change| of the mean background brightness between consecutive frames, in 8-bit levels}.

    Frame pairs where both masks are empty are skipped for the IoU; the background is the pixels that are
    background in both frames of a pair, above the watermark band.
    """
    frames = _as_clip(clip)
    if frames.shape[0] < 2:
        raise InputError(f"clip: found {frames.shape[0]} frame, expected >= 2 for temporal consistency")
    mask = _segment(frames, config).mask
    intersection = (mask[1:] & mask[:-1]).sum(axis=(1, 2))
    union = (mask[1:] | mask[:-1]).sum(axis=(1, 2))
    iou = float(np.mean(intersection[union > 0] / union[union > 0])) if (union > 0).any() else 0.0
    luminance = _luminance(frames)
    top = frames.shape[1] - _band(frames.shape[1], config)
    background = ~(mask[1:] | mask[:-1])
    background[:, top:, :] = False
    count = np.maximum(background.sum(axis=(1, 2)), 1)
    mean_next = (luminance[1:] * background).sum(axis=(1, 2)) / count
    mean_prev = (luminance[:-1] * background).sum(axis=(1, 2)) / count
    return {"mask_iou": iou, "flicker": float(np.mean(np.abs(mean_next - mean_prev)))}


def watermark_leakage(clip: np.ndarray, config: WorldConfig | None = None) -> float:
    """How much of the training watermark a clip shows: 1 = the full watermark, ~0 = none.

    Least-squares coefficient of the observed band deviation O onto the expected deviation E,
    sum(O E) / sum(E E), where E is what the watermark layers would do to a flat frame of this frame's background
    colour and O is the band rows' luminance minus that background's luminance (both per frame, band rows only).
    """
    config = config or WorldConfig()
    frames = _as_clip(clip)
    count, height, width, _ = frames.shape
    band = config.band_rows(height)
    background = background_colour(frames, config)
    flat = np.broadcast_to(background[:, None, None, :], (count, band, width, 3)).copy()
    expected = flat
    for alpha, rgb in watermark_layers(config, height, width):
        alpha_band = alpha[height - band :, :, None]
        expected = expected * (1.0 - alpha_band) + rgb * alpha_band
    expected_delta = _luminance(expected) - _luminance(flat)
    observed_delta = _luminance(frames[:, height - band :, :, :]) - _luminance(flat)
    energy = float((expected_delta**2).sum())
    return float((observed_delta * expected_delta).sum() / energy) if energy > 0 else 0.0


# --------------------------------------------------------------------------------------------------------------
# camera


def _gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the last two axes with edge padding."""
    radius = max(1, int(np.ceil(3 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    height, width = images.shape[-2:]
    padded = np.pad(images, [(0, 0)] * (images.ndim - 2) + [(radius, radius), (0, 0)], mode="edge")
    rows = sum(weight * padded[..., index : index + height, :] for index, weight in enumerate(kernel))
    padded = np.pad(rows, [(0, 0)] * (images.ndim - 2) + [(0, 0), (radius, radius)], mode="edge")
    return sum(weight * padded[..., :, index : index + width] for index, weight in enumerate(kernel))


@dataclass
class CameraMeasurement:
    """Global background motion over the clip: horizontal and vertical travel in pixels, log zoom."""

    pan_x: float
    pan_y: float
    log_zoom: float


def measure_camera(
    clip: np.ndarray, config: WorldConfig | None = None, region: np.ndarray | None = None
) -> CameraMeasurement:
    """Fit a translation + zoom flow u = a + s (x - cx), v = b + s (y - cy) to every consecutive frame pair.

    Brightness constancy I_x u + I_y v + I_t = 0 (Lucas & Kanade 1981) is solved by least squares over background
    pixels only (foreground dilated by 2 px, the watermark band and the frame border excluded) on lightly blurred
    luminance; a, b and s summed over the pairs give the clip's pan (px) and log zoom. Content sliding right
    (a > 0) is a camera panning left. `region` (h, w bool) restricts the fit to those pixels, with the same centre:
    a true zoom reads the same in the frame's middle and near its edges, which is how a model that expands only
    part of the frame is told apart (docs/world-training.md, twenty-second session).
    """
    frames = _as_clip(clip)
    count, height, width, _ = frames.shape
    if count < 2:
        return CameraMeasurement(0.0, 0.0, 0.0)
    luminance = _gaussian_blur(_luminance(frames), 1.0)
    segmentation = _segment(frames, config)
    # Exclude everything the object touches in any frame, and any pixel clearly off the background: the object's
    # motion trail (below the foreground threshold) moves with the object and must not read as a camera move.
    swept = np.broadcast_to(segmentation.mask.any(axis=0), segmentation.mask.shape)
    excluded = _dilate(swept | (segmentation.distance > TRAIL_CONTRAST), 2)
    margin = 3
    top = height - _band(height, config) - margin
    inside = np.zeros((height, width), dtype=bool)
    inside[margin:top, margin : width - margin] = True
    if region is not None:
        region = np.asarray(region, dtype=bool)
        if region.shape != (height, width):
            raise InputError(f"measure_camera: region of shape {region.shape}, expected the frame's {(height, width)}")
        inside &= region
    region = inside
    grid_y, grid_x = np.meshgrid(
        np.arange(height) + 0.5 - height / 2, np.arange(width) + 0.5 - width / 2, indexing="ij"
    )
    pan_x = pan_y = log_zoom = 0.0
    for index in range(count - 1):
        mean = 0.5 * (luminance[index] + luminance[index + 1])
        grad_y, grad_x = np.gradient(mean)
        change = luminance[index + 1] - luminance[index]
        use = region & ~excluded[index] & ~excluded[index + 1]
        if use.sum() < 16:
            continue
        design = np.stack([grad_x[use], grad_y[use], grad_x[use] * grid_x[use] + grad_y[use] * grid_y[use]], axis=1)
        normal = design.T @ design
        if np.trace(normal) < 1e-3 * len(design):
            continue  # a textureless background says nothing about the camera
        normal += 1e-6 * np.trace(normal) * np.eye(3)
        solution = np.linalg.solve(normal, -design.T @ change[use])
        pan_x += float(solution[0])
        pan_y += float(solution[1])
        log_zoom += float(solution[2])
    return CameraMeasurement(pan_x, pan_y, log_zoom)


def classify_camera(clip: np.ndarray, config: WorldConfig | None = None) -> str:
    """The camera motion: "zoom in", "zoom out", "pan left", "pan right" or "none" (`measure_camera` + thresholds)."""
    frames = _as_clip(clip)
    measurement = measure_camera(frames, config)
    zoom_score = abs(measurement.log_zoom) / ZOOM_THRESHOLD
    pan_score = abs(measurement.pan_x) / (PAN_THRESHOLD * frames.shape[2])
    if max(zoom_score, pan_score) < 1.0:
        return "none"
    if zoom_score >= pan_score:
        return "zoom in" if measurement.log_zoom > 0 else "zoom out"
    return "pan left" if measurement.pan_x > 0 else "pan right"


# --------------------------------------------------------------------------------------------------------------
# aggregation


def evaluate_clip(clip: np.ndarray, prompt: str, config: WorldConfig | None = None) -> dict[str, Any]:
    """All metrics of one clip against its prompt, as a JSON-friendly dict."""
    intent = parse_caption(prompt)
    frames = _as_clip(clip)
    row: dict[str, Any] = {
        "prompt": caption(intent),
        "colour": classify_colour(frames, config),
        "shape": classify_shape(frames, config),
        "background": classify_background(frames, config),
        "motion": classify_motion(frames, config) if frames.shape[0] > 1 else None,
        "camera": classify_camera(frames, config) if frames.shape[0] > 1 else None,
        "style": classify_style(frames, config),
        "watermark_leakage": watermark_leakage(frames, config),
    }
    row["colour_correct"] = row["colour"] == intent.colour
    row["shape_correct"] = row["shape"] == intent.shape
    row["background_correct"] = (row["background"] == intent.background) if intent.background is not None else None
    row["motion_correct"] = (row["motion"] == intent.motion) if _motion_scorable(intent) else None
    row["camera_correct"] = (row["camera"] == intent.camera) if intent.camera is not None else None
    row["style_correct"] = (row["style"] == intent.style) if intent.style is not None else None
    if frames.shape[0] > 1:
        row.update(temporal_consistency(frames, config))
    return row


def _mean(values: list[Any]) -> float | None:
    kept = [float(value) for value in values if value is not None]
    return float(np.mean(kept)) if kept else None


def evaluate_clips(
    clips: Sequence[np.ndarray], prompts: Sequence[str], config: WorldConfig | None = None
) -> dict[str, Any]:
    """Score generated clips against their prompts. Returns {"summary": {...}, "clips": [per-clip rows]}.

    Summary: colour/shape accuracy, prompt fidelity (both right), motion accuracy (object-motion prompts, see
    `motion_accuracy`), camera accuracy (camera prompts), style accuracy (styled prompts), mean mask IoU, mean
    flicker, mean watermark leakage, and how many clips each accuracy was scored on. JSON-serialisable.
    """
    _check_lengths(clips, prompts)
    rows = [evaluate_clip(clip, prompt, config) for clip, prompt in zip(clips, prompts, strict=True)]
    summary: dict[str, Any] = {"num_clips": len(rows)}
    summary["colour_accuracy"] = _mean([row["colour_correct"] for row in rows])
    summary["shape_accuracy"] = _mean([row["shape_correct"] for row in rows])
    summary["prompt_fidelity"] = _mean([row["colour_correct"] and row["shape_correct"] for row in rows])
    for name in ("background", "motion", "camera", "style"):
        values = [row[f"{name}_correct"] for row in rows]
        summary[f"{name}_accuracy"] = _mean(values)
        summary[f"{name}_scored"] = sum(value is not None for value in values)
    summary["mask_iou"] = _mean([row.get("mask_iou") for row in rows])
    summary["flicker"] = _mean([row.get("flicker") for row in rows])
    summary["watermark_leakage"] = _mean([row["watermark_leakage"] for row in rows])
    summary["motion_confusion"] = motion_confusion(rows)
    return {"summary": summary, "clips": rows}


def noise_agreement(rows: Sequence[dict[str, Any]]) -> float | None:
    """How far the motion read follows the starting noise rather than the prompt, from rows with a `seed`.

    For each seed shared by several motion-scored rows (prompts asking for different motions from the same noise,
    `zoetrope eval --same-noise`), the fraction of them that read the seed's most common motion; the mean over
    seeds. 1.0: the noise decides the motion whatever the prompt says; 1 / (motions asked) for a module that
    follows the prompt perfectly. None when no seed has two scored rows.
    """
    by_seed: dict[int, list[str]] = {}
    for row in rows:
        if row.get("motion_correct") is not None and row.get("seed") is not None:
            by_seed.setdefault(int(row["seed"]), []).append(str(row["motion"]))
    shares = [Counter(read).most_common(1)[0][1] / len(read) for read in by_seed.values() if len(read) > 1]
    return float(np.mean(shares)) if shares else None


def motion_confusion(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """For each motion the prompts ask for, how often each motion was read from the clips.

    Why: an accuracy alone cannot tell a module that ignores the prompt (every clip moves left, or none moves)
    from one that confuses two motions; the confusion counts can. Only motion-scored rows count.
    """
    counts: dict[str, Counter] = {}
    for row in rows:
        if row.get("motion_correct") is not None:
            counts.setdefault(str(parse_caption(row["prompt"]).motion), Counter())[str(row["motion"])] += 1
    return {asked: dict(read) for asked, read in counts.items()}


_SUMMARY_LABELS = (
    ("prompt_fidelity", "prompt fidelity (colour and shape)", None),
    ("colour_accuracy", "colour accuracy", None),
    ("shape_accuracy", "shape accuracy", None),
    ("background_accuracy", "background accuracy", "background_scored"),
    ("motion_accuracy", "motion accuracy", "motion_scored"),
    ("camera_accuracy", "camera-motion accuracy", "camera_scored"),
    ("style_accuracy", "style accuracy", "style_scored"),
    ("mask_iou", "temporal consistency (mask IoU)", None),
    ("flicker", "flicker (8-bit levels)", None),
    ("watermark_leakage", "watermark leakage", None),
    ("noise_agreement", "same-noise agreement", None),
)


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of `evaluate_clips` results: the summary, then one line per clip."""
    summary = results["summary"]
    lines = [f"{'metric':<36}value", "-" * 48]
    for key, label, scored_key in _SUMMARY_LABELS:
        if key not in summary:
            continue
        value = summary[key]
        text = "n/a" if value is None else f"{value:.3f}"
        if scored_key is not None and value is not None:
            text += f" (n={summary[scored_key]})"
        lines.append(f"{label:<36}{text}")
    lines.append(f"{'clips':<36}{summary['num_clips']}")
    for asked, read in summary.get("motion_confusion", {}).items():
        counts = ", ".join(f"{name} {count}" for name, count in sorted(read.items(), key=lambda item: -item[1]))
        lines.append(f"{'  asked ' + asked + ', read':<36}{counts}")
    rows = results.get("clips", [])
    if rows:
        width = max(len(row["prompt"]) for row in rows)
        lines += ["", f"{'prompt':<{width}}  {'colour':<8} {'shape':<9} {'motion':<8} {'camera':<10} {'leak':>6}"]
        for row in rows:
            marks = {
                name: ("" if row[f"{name}_correct"] in (None, True) else "!") + str(row[name])
                for name in ("colour", "shape", "motion", "camera")
            }
            lines.append(
                f"{row['prompt']:<{width}}  {marks['colour']:<8} {marks['shape']:<9} {marks['motion']:<8} "
                f"{marks['camera']:<10} {row['watermark_leakage']:>6.2f}"
            )
    return "\n".join(lines)


__all__ = [
    "CAMERA_SUITE",
    "PROMPT_SUITE",
    "UNKNOWN",
    "Track",
    "background_colour",
    "classify_camera",
    "classify_background",
    "classify_colour",
    "classify_motion",
    "classify_shape",
    "classify_style",
    "evaluate_clip",
    "evaluate_clips",
    "foreground_masks",
    "format_table",
    "measure_camera",
    "measure_motion",
    "motion_accuracy",
    "motion_confusion",
    "noise_agreement",
    "temporal_consistency",
    "track_object",
    "watermark_leakage",
]
