"""The shapes world: procedurally rendered, captioned clips and images of coloured shapes that move.

Why a synthetic world: every AnimateDiff stage (image finetune / domain adapter, motion module, MotionLoRA,
personalised image model) can then be trained from scratch on a CPU, and the quality of what a model generates can
be *measured from pixels* (`zoetrope.world.metrics`) instead of judged by eye (DESIGN.md, principle 6).

The world mirrors the structure of the real data the AnimateDiff paper (Guo et al., 2023, arXiv 2307.04725) trains
on:
- the *image* domain (LAION stand-in, `render_image`) is clean;
- the *video* domain (WebVid-10M stand-in, `render_clip(video_domain=True)`) carries a fixed semi-transparent
  watermark band with "text" and mild JPEG compression artefacts, the defects the domain adapter is meant to absorb;
- camera motions (zoom in/out, pan left/right) are held out of the base motion data, for MotionLoRA;
- a personalised *style* (`"pastel"` palette, `"striped"` texture) with a trigger word stands in for a DreamBooth
  model.

Geometry is resolution independent: positions and radii in a `ClipSpec` are fractions of the image size, so one spec
renders at any `WorldConfig.size`. Rendering is deterministic given the spec (the background texture is seeded by
`ClipSpec.texture_seed`); all randomness comes from the `numpy.random.Generator` handed to `sample_clip_spec`.
Shapes are anti-aliased analytically from signed distance functions (coverage = clamp(0.5 - d, 0, 1), d in pixels).

Every background carries a faint low-frequency texture. A flat background carries no signal about the camera, so
without it "zoom in" and "pan left" could not be told apart from pixels; the texture is kept far below the shape
contrast so that foreground segmentation stays a simple distance-to-background threshold.

Camera convention: the camera moves, the world is still. "pan left" turns the camera to the left, so the scene
content slides to the *right* on screen; "zoom in" magnifies the content about the image centre.
"""

from __future__ import annotations

import io
import math
import re
import zlib
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from zoetrope.errors import ConfigError, InputError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
"""Shape names, as they appear in captions."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (240, 70, 60),
    "yellow": (235, 215, 40),
    "green": (50, 200, 70),
    "cyan": (40, 210, 220),
    "blue": (70, 120, 255),
    "magenta": (220, 60, 220),
}
"""Base palette: six hues about 60 degrees apart, so colour is read back from the hue alone (the pastel and striped
styles keep the hue and change lightness). Every colour has luminance >= 110 (red and blue are lightened for it)."""

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (64, 64, 64),
    "black": (20, 20, 20),
    "navy": (24, 32, 90),
    "brown": (90, 55, 30),
}
"""Background base colours, all of luminance <= 63, so every shape differs from its background in *luminance* by
>= 55 levels and in RGB by >= 150. Luminance contrast matters: video codecs (JPEG, H.264 yuv420p) halve the chroma
resolution, so a shape that differs from its background mainly in hue (red or green on mid grey, pastel yellow on
white) loses its corners in the video domain and its shape can no longer be read from pixels."""

MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "grow", "shrink", "rotate", "still")
"""Object motions. A circle's rotation is invisible, so circles are never sampled with "rotate"."""

BASE_MOTIONS: tuple[str, ...] = MOTIONS
"""The motions of the base motion-module data (all object motions, no camera)."""

CAMERA_MOTIONS: tuple[str, ...] = ("zoom in", "zoom out", "pan left", "pan right")
"""Camera motions, held out of the base data and used to train MotionLoRAs."""

STYLES: dict[str, str] = {"pastel": "zxq", "striped": "vkw"}
"""Personalised styles and their trigger words; a styled caption ends with ", in <trigger> style"."""

MOTION_PHRASES: dict[str, str] = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "grow": "growing",
    "shrink": "shrinking",
    "rotate": "rotating",
    "still": "staying still",
}

CAMERA_PHRASES: dict[str, str] = {
    "zoom in": "zooming in",
    "zoom out": "zooming out",
    "pan left": "panning left",
    "pan right": "panning right",
}

PASTEL_MIX = 0.5
"""Pastel style: fraction of white mixed into every palette colour (hue unchanged)."""

STRIPE_WIDTH = 0.35
"""Striped style: stripe width as a fraction of the object's circumradius; stripes alternate the base colour and its
pastel (light) version, which keeps the hue and stays far from every background."""

STAR_INNER_RATIO = 0.45
"""Inner/outer radius ratio of the five-pointed star."""

EQUAL_AREA_SCALE: dict[str, float] = {
    "circle": 1.0,
    "square": math.sqrt(math.pi / 2.0),  # a square of circumradius r covers 2 r^2
    "triangle": math.sqrt(math.pi / (3.0 * math.sqrt(3.0) / 4.0)),  # equilateral: (3 sqrt 3 / 4) r^2
    "star": math.sqrt(math.pi / (5.0 * STAR_INNER_RATIO * math.sin(math.pi / 5.0))),  # 5 kites: 5 R r sin 36 deg
}
"""Circumradius multiplier that gives each shape the area of the circle of the drawn radius
(`WorldConfig.equal_area`)."""

_WATERMARK_BAND = ((215.0, 215.0, 215.0), 0.4)
_WATERMARK_TEXT = ((60.0, 60.0, 60.0), 0.6)
_GLYPHS: dict[str, tuple[str, ...]] = {
    "Z": ("###", "..#", ".#.", "#..", "###"),
    "O": ("###", "#.#", "#.#", "#.#", "###"),
    "E": ("###", "#..", "##.", "#..", "###"),
    "T": ("###", ".#.", ".#.", ".#.", ".#."),
    "R": ("##.", "#.#", "##.", "#.#", "#.#"),
    "P": ("##.", "#.#", "##.", "#..", "#.."),
}
_WATERMARK_WORD = "ZOETROPE"


def _number_pair(name: str, value: Any, example: str) -> tuple[float, float]:
    """A WorldConfig (low, high) field as two floats (YAML and the CLI give lists), or a ConfigError naming it."""
    try:
        pair = tuple(float(item) for item in value)
    except (TypeError, ValueError):
        raise ConfigError(f"WorldConfig.{name}: found {value!r}, expected two numbers (low, high), e.g. {example}") from None
    return pair  # type: ignore[return-value]


@dataclass
class WorldConfig:
    """What the world contains and how it is rendered.

    `size` is the frame side in pixels and `num_frames` the clip length; positions in `ClipSpec` are fractions of
    `size`, so changing it rescales everything. `watermark_fraction` of the rows at the bottom of a video-domain
    frame hold the watermark band (objects are always placed above it, so metrics can ignore those rows);
    `jpeg_quality` sets the video-domain compression artefacts; `texture_amplitude` (8-bit levels) is the peak of
    the faint background texture that makes camera motion visible.

    `trail_alpha` and `trail_length` draw a fading motion trail behind anything that moves on screen: ghost copies
    of the object at its positions over the last `trail_length` of the clip (a fraction of the clip's duration,
    extrapolated backwards before the first frame), with opacity falling from `trail_alpha` to 0. Why: a still
    picture of a shape moving left and one moving right are otherwise the same picture, so the image model has no
    reason to attend to the direction words and the motion module (which has no text input of its own) cannot
    learn the direction. Real photos carry such cues (motion blur, which way a car faces); the trail is the world's.
    Opacity stays below the metrics' foreground threshold (0.3 of the object's contrast), so segmentation ignores
    it. Off by default (`trail_alpha=0`): the bundled model was trained without trails, and a short fine-tune on
    trailed stills did not yet make the image model draw the trail the prompt asks for (docs/world-training.md).

    `speed_range` is the (low, high) travel of a left/right/up/down clip over its whole length, in image sizes,
    drawn uniformly per clip. The default (0.3, 0.45) is what every shipped model was trained on. Why a knob: a
    64-frame clip sampled in 16-frame windows needs both slower motion per window (an object that stays in frame
    moves at most ~0.2 image sizes per 16 frames) and faster motion per dilated window (every 4th frame: ~0.75)
    than that range shows (issue 6, docs/world-training.md). A draw that does not fit is redrawn, so near 0.7 the
    vertical motions (which must also clear the watermark band) come out slower than the horizontal ones.

    `angle_range` is the (low, high) start orientation in degrees, drawn uniformly per clip and image; a rotating
    clip turns from there. The default (0, 360) is what every shipped model saw; (0, 0) draws every shape upright.
    Why a knob: the world's small image models draw triangles and stars as round dots the size of the shape's core,
    what all its orientations share, which suggested the orientation was what they could not learn; measured, an
    upright world did not make them draw shapes sooner (docs/world-training.md, twenty-second session), but a world
    of upright shapes is a fair, simpler distribution to train and test on.

    `camera_speed_range` is the (low, high) camera motion of a camera clip, drawn uniformly per clip: the zoom factor
    minus one over the whole clip for zooms, the travel in image sizes for pans. The default (0.3, 0.45) is what the
    shipped pan LoRA saw; the shipped zoom LoRA saw (0.8, 1.0) (twenty-fourth session). Why a knob: a zoom by
    1.3-1.45 moves the frame's edge by 10-14 px (2.4-3.6 latent px) and its centre by almost nothing, half of what
    a pan of the same number moves everywhere; a MotionLoRA's training clips may need a stronger zoom to show it
    (issue 3, docs/world-training.md, twenty-fourth session).
    A draw whose object leaves the frame is redrawn, so a strong zoom keeps its object near the centre.

    `equal_area` draws every shape with the area of the circle of the same drawn radius (`EQUAL_AREA_SCALE`: the
    circumradius of a square x1.25, of a triangle or star x1.55). Off by default: every shipped model saw shapes of
    equal *circumradius*, where a triangle or star covers 43 % of a circle's pixels (~110 px at 64 x 64, under three
    latent pixels across at the VAE's 4x downsampling) and its corners and points are finer than a latent pixel.
    Why a knob: to ask whether that resolution is what holds the image model's shape fidelity (twenty-sixth session).

    `fixed_textures` gives every background colour one texture (seeded by the colour's name) instead of a new one per
    clip. Off by default: every shipped model saw a new texture per clip. Why a knob: the per-clip texture is three
    fifths of the image stage's loss and, flat, the same UNet draws ten points more shapes (thirtieth session), but
    a flat background shows no camera motion; a texture fixed per background still moves with the camera (it lives
    in world coordinates) while being one pattern per colour for the model to learn instead of new noise per still.
    Measured: the loss falls to the flat world's, the shapes drawn do not rise (32.6 % of 288 stills against 31.9 %):
    a texture in the outlines' band costs shapes whether random or not (docs/world-training.md).
    """

    size: int = 64
    num_frames: int = 16
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    motions: tuple[str, ...] = BASE_MOTIONS
    texture_amplitude: float = 16.0
    watermark_fraction: float = 0.125
    jpeg_quality: int = 40
    fps: int = 8
    trail_alpha: float = 0.0
    trail_length: float = 0.5
    speed_range: tuple[float, float] = (0.3, 0.45)
    angle_range: tuple[float, float] = (0.0, 360.0)
    camera_speed_range: tuple[float, float] = (0.3, 0.45)
    equal_area: bool = False
    fixed_textures: bool = False

    def __post_init__(self) -> None:
        self.shapes, self.colours = tuple(self.shapes), tuple(self.colours)
        self.speed_range = _number_pair("speed_range", self.speed_range, "(0.3, 0.45)")
        self.angle_range = _number_pair("angle_range", self.angle_range, "(0, 360) in degrees")
        self.camera_speed_range = _number_pair("camera_speed_range", self.camera_speed_range, "(0.3, 0.45)")
        if len(self.camera_speed_range) != 2 or not 0.0 < self.camera_speed_range[0] <= self.camera_speed_range[1] <= 1.5:
            raise ConfigError(
                f"WorldConfig.camera_speed_range: found {self.camera_speed_range}, expected (low, high) with "
                "0 < low <= high <= 1.5 (zoom factor minus one, or pan travel in image sizes, over the clip; a "
                "stronger camera motion leaves no object in the frame)"
            )
        if len(self.angle_range) != 2 or not self.angle_range[0] <= self.angle_range[1]:
            raise ConfigError(
                f"WorldConfig.angle_range: found {self.angle_range}, expected (low, high) in degrees with low <= high, "
                "e.g. (0, 360) for every orientation or (0, 0) for upright shapes"
            )
        self.backgrounds, self.motions = tuple(self.backgrounds), tuple(self.motions)
        if self.size < 32:
            raise ConfigError(f"WorldConfig.size: found {self.size}, expected >= 32 pixels; use a larger size")
        if self.num_frames < 2:
            raise ConfigError(f"WorldConfig.num_frames: found {self.num_frames}, expected >= 2; use more frames")
        for name, values, known in (
            ("shapes", self.shapes, SHAPES),
            ("colours", self.colours, tuple(COLOURS)),
            ("backgrounds", self.backgrounds, tuple(BACKGROUNDS)),
            ("motions", self.motions, MOTIONS),
        ):
            _check_names(f"WorldConfig.{name}", values, known)
        if not 0.0 <= self.texture_amplitude <= 64.0:
            raise ConfigError(
                f"WorldConfig.texture_amplitude: found {self.texture_amplitude}, expected 0-64 (8-bit levels; 16 is what "
                "the shipped models saw, 0 = flat backgrounds, on which camera motion cannot be seen)"
            )
        if not 0.0 < self.watermark_fraction < 0.5:
            raise ConfigError(
                f"WorldConfig.watermark_fraction: found {self.watermark_fraction}, expected a value in (0, 0.5)"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"WorldConfig.jpeg_quality: found {self.jpeg_quality}, expected 1..100")
        if not 0.0 <= self.trail_alpha < 0.3:
            raise ConfigError(
                f"WorldConfig.trail_alpha: found {self.trail_alpha}, expected a value in [0, 0.3) (a stronger trail "
                "would be segmented as part of the object by the metrics)"
            )
        if not 0.0 < self.trail_length <= 1.0:
            raise ConfigError(
                f"WorldConfig.trail_length: found {self.trail_length}, expected a fraction of the clip in (0, 1]"
            )
        if len(self.speed_range) != 2 or not 0.0 < self.speed_range[0] <= self.speed_range[1] <= 0.7:
            raise ConfigError(
                f"WorldConfig.speed_range: found {self.speed_range}, expected (low, high) with 0 < low <= high <= 0.7 "
                "image sizes per clip (a faster object does not fit in the frame)"
            )

    def band_rows(self, height: int | None = None) -> int:
        """Number of watermark rows at the bottom of a frame of `height` pixels (default: `size`)."""
        return max(2, int(round((self.size if height is None else height) * self.watermark_fraction)))


@dataclass(frozen=True)
class Intent:
    """What a caption says: the fields a prompt carries (no positions). `None` means "not stated"."""

    shape: str
    colour: str
    background: str | None = None
    motion: str | None = None
    camera: str | None = None
    style: str | None = None


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip, deterministically.

    `x`, `y` (start centre) and `radius` (start circumradius) are fractions of the image size; `angle` is the start
    orientation in degrees. `speed` is the motion over the whole clip: travel in image sizes for left/right/up/down;
    relative size change for grow (radius x (1 + speed)) and shrink (radius / (1 + speed)); signed turns for rotate;
    ignored for still. `camera_speed` is the zoom factor minus one for zooms and the travel in image sizes for pans.
    `texture_seed` seeds the background texture.
    """

    shape: str
    colour: str
    background: str
    motion: str = "still"
    x: float = 0.5
    y: float = 0.45
    radius: float = 0.14
    angle: float = 0.0
    speed: float = 0.0
    camera: str | None = None
    camera_speed: float = 0.0
    style: str | None = None
    texture_seed: int = 0

    def __post_init__(self) -> None:
        _check_names("ClipSpec.shape", (self.shape,), SHAPES)
        _check_names("ClipSpec.colour", (self.colour,), tuple(COLOURS))
        _check_names("ClipSpec.background", (self.background,), tuple(BACKGROUNDS))
        _check_names("ClipSpec.motion", (self.motion,), MOTIONS)
        if self.camera is not None:
            _check_names("ClipSpec.camera", (self.camera,), CAMERA_MOTIONS)
        if self.style is not None:
            _check_names("ClipSpec.style", (self.style,), tuple(STYLES))

    def intent(self) -> Intent:
        """The caption-level fields of this spec."""
        return Intent(self.shape, self.colour, self.background, self.motion, self.camera, self.style)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (written next to every clip so evaluation can read the ground truth)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipSpec:
        """Inverse of `to_dict`; unknown keys are ignored so a JSONL row with extra columns can be passed in."""
        names = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


def _check_names(where: str, values: tuple[str, ...], known: tuple[str, ...]) -> None:
    for value in values:
        if value not in known:
            raise ConfigError(f"{where}: found {value!r}, expected one of {', '.join(map(repr, known))}")


# --------------------------------------------------------------------------------------------------------------
# captions


def caption(spec: ClipSpec | Intent, video: bool = True) -> str:
    """The caption of a clip (`video=True`) or of an image (`video=False`: motion and camera are dropped).

    "a red square moving left on a grey background", "..., camera zooming in", "..., in zxq style".
    """
    text = f"a {spec.colour} {spec.shape}"
    if video and spec.motion is not None:
        text += f" {MOTION_PHRASES[spec.motion]}"
    if spec.background is not None:
        text += f" on a {spec.background} background"
    if video and spec.camera is not None:
        text += f", camera {CAMERA_PHRASES[spec.camera]}"
    if spec.style is not None:
        text += f", in {STYLES[spec.style]} style"
    return text


def _alternatives(options: dict[str, str] | tuple[str, ...]) -> str:
    return "|".join(re.escape(option) for option in sorted(options, key=len, reverse=True))


_CAPTION_PATTERN = re.compile(
    rf"^an? (?P<colour>{_alternatives(tuple(COLOURS))}) (?P<shape>{_alternatives(SHAPES)})"
    rf"(?: (?P<motion>{_alternatives(tuple(MOTION_PHRASES.values()))}))?"
    rf"(?: on an? (?P<background>{_alternatives(tuple(BACKGROUNDS))}) background)?"
    rf"(?:,? camera (?P<camera>{_alternatives(tuple(CAMERA_PHRASES.values()))}))?"
    rf"(?:,? in (?P<trigger>{_alternatives(tuple(STYLES.values()))}) style)?$"
)


def parse_caption(text: str) -> Intent:
    """Read a caption written by `caption` (or a prompt in the same grammar) back into an `Intent`.

    Case and surrounding whitespace are ignored; background, motion, camera and style are optional. This is what
    lets `zoetrope eval` score a generated clip from its prompt alone.
    """
    normalised = " ".join(text.strip().lower().rstrip(".").split())
    match = _CAPTION_PATTERN.match(normalised)
    if match is None:
        raise InputError(
            f"caption {text!r}: not in the shapes-world grammar; expected e.g. "
            "'a red square moving left on a grey background[, camera zooming in][, in zxq style]'"
        )
    motion_of = {phrase: motion for motion, phrase in MOTION_PHRASES.items()}
    camera_of = {phrase: camera for camera, phrase in CAMERA_PHRASES.items()}
    style_of = {trigger: style for style, trigger in STYLES.items()}
    groups = match.groupdict()
    return Intent(
        shape=groups["shape"],
        colour=groups["colour"],
        background=groups["background"],
        motion=motion_of.get(groups["motion"] or ""),
        camera=camera_of.get(groups["camera"] or ""),
        style=style_of.get(groups["trigger"] or ""),
    )


# --------------------------------------------------------------------------------------------------------------
# sampling


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def sample_clip_spec(
    rng: np.random.Generator,
    config: WorldConfig,
    motions: tuple[str, ...] | None = None,
    camera: str | tuple[str, ...] | None = None,
    style: str | None = None,
    intent: Intent | None = None,
) -> ClipSpec:
    """Draw one random clip spec whose whole trajectory stays inside the frame and above the watermark band.

    `motions` defaults to `config.motions`; `camera` is None (no camera motion), one camera motion, or a tuple to
    draw from. Camera clips keep the object still in the world unless `motions` says otherwise. `intent` pins the
    caption-level fields (e.g. from `parse_caption(prompt)`) and only positions, sizes and speeds are drawn.
    Circles are never drawn with "rotate" (invisible), unless `intent` asks for it.
    """
    cameras: tuple[str | None, ...] = (None,) if camera is None else ((camera,) if isinstance(camera, str) else camera)
    if motions is None:
        motions = ("still",) if camera is not None else config.motions
    _check_names("sample_clip_spec motions", tuple(motions), MOTIONS)
    for name in cameras:
        if name is not None:
            _check_names("sample_clip_spec camera", (name,), CAMERA_MOTIONS)
    if style is not None:
        _check_names("sample_clip_spec style", (style,), tuple(STYLES))
    if intent is None:
        chosen_camera = cameras[int(rng.integers(len(cameras)))]
        motion = str(rng.choice(motions))
        visible = [name for name in config.shapes if not (motion == "rotate" and name == "circle")]
        shape = str(rng.choice(visible or config.shapes))
        colour = str(rng.choice(config.colours))
        background = str(rng.choice(config.backgrounds))
    else:
        chosen_camera, style = intent.camera, intent.style
        motion = intent.motion or "still"
        shape, colour = intent.shape, intent.colour
        background = intent.background or str(rng.choice(config.backgrounds))

    base = dict(shape=shape, colour=colour, background=background, motion=motion, camera=chosen_camera, style=style)
    for _ in range(1000):
        speed, radius = 0.0, _uniform(rng, 0.11, 0.16)
        if motion in ("left", "right", "up", "down"):
            speed = _uniform(rng, *config.speed_range)
        elif motion == "grow":
            speed, radius = _uniform(rng, 0.6, 0.9), _uniform(rng, 0.08, 0.11)
        elif motion == "shrink":
            speed, radius = _uniform(rng, 0.6, 0.9), _uniform(rng, 0.16, 0.21)
        elif motion == "rotate":
            speed = _uniform(rng, 0.3, 0.45) * (1.0 if rng.random() < 0.5 else -1.0)
        camera_speed = 0.0
        if chosen_camera in ("zoom in", "zoom out"):
            camera_speed = _uniform(rng, *config.camera_speed_range)
            radius = _uniform(rng, 0.08, 0.11) if chosen_camera == "zoom in" else _uniform(rng, 0.14, 0.19)
        elif chosen_camera in ("pan left", "pan right"):
            camera_speed = _uniform(rng, *config.camera_speed_range)
        if config.equal_area:
            radius *= EQUAL_AREA_SCALE[shape]
        spec = ClipSpec(
            **base,
            x=_uniform(rng, radius, 1 - radius),
            y=_uniform(rng, radius, 1 - radius),
            radius=radius,
            angle=_uniform(rng, *config.angle_range),
            speed=speed,
            camera_speed=camera_speed,
            texture_seed=_texture_seed(rng, background, config),
        )
        if _fits(spec, config):
            return spec
    fix = "a smaller WorldConfig.camera_speed_range (pans above ~0.7 image sizes cannot keep the object), " if chosen_camera else ""
    raise ConfigError(
        f"sample_clip_spec: no placement of a {motion!r} clip (camera {chosen_camera!r}) fits a {config.size}px "
        f"frame above the watermark band; use {fix}a larger WorldConfig.size or a smaller watermark_fraction"
    )


def _texture_seed(rng: np.random.Generator, background: str, config: WorldConfig) -> int:
    """A clip's texture seed: a fresh draw, or (`fixed_textures`) the background's own, after the same draw so that
    every other random choice of the world stays what it is without the knob."""
    drawn = int(rng.integers(2**31))
    return zlib.crc32(background.encode("utf-8")) & 0x7FFFFFFF if config.fixed_textures else drawn


def spec_for_prompt(prompt: str, rng: np.random.Generator, config: WorldConfig) -> ClipSpec:
    """A random clip spec that matches a caption-grammar prompt: the ground-truth clip for that prompt."""
    return sample_clip_spec(rng, config, intent=parse_caption(prompt))


def _fits(spec: ClipSpec, config: WorldConfig) -> bool:
    """Whether the object stays inside the frame, above the band, and at least ~3 px in radius, in every frame."""
    centre_x, centre_y, radius, _ = object_track(spec, config)
    size, margin = config.size, 1.0
    bottom = size - config.band_rows() - margin
    return bool(
        np.all(centre_x - radius >= margin)
        and np.all(centre_x + radius <= size - margin)
        and np.all(centre_y - radius >= margin)
        and np.all(centre_y + radius <= bottom)
        and np.all(radius >= 0.05 * size)
    )


# --------------------------------------------------------------------------------------------------------------
# geometry


def _clip_time(config: WorldConfig) -> np.ndarray:
    """Frame times as fractions of the clip: 0 at the first frame, 1 at the last."""
    return np.linspace(0.0, 1.0, config.num_frames)


def _camera_track(
    spec: ClipSpec, config: WorldConfig, time: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Camera zoom factor and horizontal camera offset (pixels; negative = camera moved left) at each `time`
    (fractions of the clip; default: every frame)."""
    time = _clip_time(config) if time is None else time
    zoom, offset = np.ones_like(time), np.zeros_like(time)
    if spec.camera == "zoom in":
        zoom = (1.0 + spec.camera_speed) ** time
    elif spec.camera == "zoom out":
        zoom = (1.0 + spec.camera_speed) ** -time
    elif spec.camera == "pan left":
        offset = -spec.camera_speed * config.size * time
    elif spec.camera == "pan right":
        offset = spec.camera_speed * config.size * time
    return zoom, offset


def _to_screen(world_x: np.ndarray, world_y: np.ndarray, zoom: np.ndarray, offset: np.ndarray, size: int):
    centre = size / 2.0
    return centre + zoom * (world_x - centre - offset), centre + zoom * (world_y - centre)


def object_track(
    spec: ClipSpec, config: WorldConfig, time: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """On-screen centre x, centre y, circumradius (pixels) and angle (degrees) of the object at each `time`.

    `time` is in fractions of the clip (default: every frame, 0..1); negative times extrapolate the motion to
    before the first frame (the motion trail uses them). Object motion is linear in time for translations and
    rotation and exponential for grow/shrink (so log-size is linear, the way a constant zoom looks); the camera is
    applied on top.
    """
    time = _clip_time(config) if time is None else np.asarray(time, dtype=np.float64)
    size = config.size
    world_x = np.full_like(time, spec.x * size)
    world_y = np.full_like(time, spec.y * size)
    radius = np.full_like(time, spec.radius * size)
    angle = np.full_like(time, spec.angle)
    travel = spec.speed * size * time
    if spec.motion == "left":
        world_x = world_x - travel
    elif spec.motion == "right":
        world_x = world_x + travel
    elif spec.motion == "up":
        world_y = world_y - travel
    elif spec.motion == "down":
        world_y = world_y + travel
    elif spec.motion == "grow":
        radius = radius * (1.0 + spec.speed) ** time
    elif spec.motion == "shrink":
        radius = radius * (1.0 + spec.speed) ** -time
    elif spec.motion == "rotate":
        angle = angle + 360.0 * spec.speed * time
    zoom, offset = _camera_track(spec, config, time)
    screen_x, screen_y = _to_screen(world_x, world_y, zoom, offset, size)
    return screen_x, screen_y, radius * zoom, angle


def _shape_vertices(shape: str, angle: np.ndarray) -> np.ndarray:
    """Unit-circumradius polygon vertices (frames, n, 2), angle 0 = a vertex (or edge for the square) pointing up."""
    if shape == "square":
        base = np.deg2rad(45.0 + 90.0 * np.arange(4))
        radii = np.ones(4)
    elif shape == "triangle":
        base = np.deg2rad(-90.0 + 120.0 * np.arange(3))
        radii = np.ones(3)
    elif shape == "star":
        base = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER_RATIO)
    else:
        raise ConfigError(f"shape {shape!r}: no polygon; expected one of square, triangle, star")
    theta = base[None, :] + np.deg2rad(angle)[:, None]
    return np.stack([radii * np.cos(theta), radii * np.sin(theta)], axis=-1)


def _polygon_sdf(points: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) from points (frames, p, 2) to one polygon per frame (frames, n, 2).

    Distance = min over edges of the point-segment distance; sign from the even-odd crossing rule. Returns
    (frames, p).
    """
    start = vertices[:, None, :, :]
    end = np.roll(vertices, -1, axis=1)[:, None, :, :]
    edge = end - start
    offset = points[:, :, None, :] - start
    along = np.clip((offset * edge).sum(-1) / (edge * edge).sum(-1), 0.0, 1.0)
    gap = offset - edge * along[..., None]
    distance = np.sqrt((gap * gap).sum(-1).min(axis=-1))
    point_x, point_y = points[:, :, None, 0], points[:, :, None, 1]
    start_y, end_y = start[..., 1], end[..., 1]
    straddles = (start_y > point_y) != (end_y > point_y)
    safe_dy = np.where(end_y == start_y, 1.0, end_y - start_y)
    crossing_x = start[..., 0] + (point_y - start_y) * edge[..., 0] / safe_dy
    inside = (straddles & (point_x < crossing_x)).sum(-1) % 2 == 1
    return np.where(inside, -distance, distance)


def _coverage(
    shape: str, centre_x: np.ndarray, centre_y: np.ndarray, radius: np.ndarray, angle: np.ndarray, size: int
) -> np.ndarray:
    """Anti-aliased coverage (frames, size, size) in [0, 1] of the shape, clamp(0.5 - signed distance, 0, 1).

    The distance is evaluated only in a square crop around the object in each frame (the shape covers a few
    percent of the frame), then scattered into a padded canvas.
    """
    frames = centre_x.shape[0]
    half = int(np.ceil(radius.max())) + 2
    crop = 2 * half + 1
    offsets = np.arange(crop)
    cols = np.floor(centre_x).astype(np.int64)[:, None] - half + offsets
    rows = np.floor(centre_y).astype(np.int64)[:, None] - half + offsets
    point_x = np.broadcast_to(cols[:, None, :] + 0.5, (frames, crop, crop))
    point_y = np.broadcast_to(rows[:, :, None] + 0.5, (frames, crop, crop))
    if shape == "circle":
        distance = np.hypot(point_x - centre_x[:, None, None], point_y - centre_y[:, None, None])
        distance = distance - radius[:, None, None]
    else:
        points = np.stack([point_x, point_y], axis=-1).reshape(frames, crop * crop, 2)
        vertices = _shape_vertices(shape, angle) * radius[:, None, None]
        vertices = vertices + np.stack([centre_x, centre_y], axis=-1)[:, None, :]
        distance = _polygon_sdf(points, vertices).reshape(frames, crop, crop)
    # Pad the canvas so that crops of objects partly or wholly off screen (trail ghosts) still land inside it.
    pad = crop + int(max(0, -rows.min(), -cols.min(), rows.max() - size + 1, cols.max() - size + 1))
    canvas = np.zeros((frames, size + 2 * pad, size + 2 * pad))
    frame_index = np.arange(frames)[:, None, None]
    canvas[frame_index, rows[:, :, None] + pad, cols[:, None, :] + pad] = np.clip(0.5 - distance, 0.0, 1.0)
    return canvas[:, pad : pad + size, pad : pad + size]


def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.arange(size, dtype=np.float64) + 0.5
    grid_y, grid_x = np.meshgrid(coords, coords, indexing="ij")
    return grid_x, grid_y


def shape_colour(colour: str, style: str | None) -> np.ndarray:
    """RGB float (3,) of a palette colour under a style (pastel mixes in white; stripes are drawn separately)."""
    rgb = np.asarray(COLOURS[colour], dtype=np.float64)
    if style == "pastel":
        rgb = (1.0 - PASTEL_MIX) * rgb + PASTEL_MIX * 255.0
    return rgb


def _background(spec: ClipSpec, config: WorldConfig, zoom: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Background (frames, h, w, 3): base colour plus a faint sum-of-cosines texture fixed in world coordinates."""
    texture_rng = np.random.default_rng(spec.texture_seed)
    count = 4
    direction = texture_rng.uniform(0.0, np.pi, count)
    wavelength = texture_rng.uniform(0.16, 0.3, count) * config.size
    phase = texture_rng.uniform(0.0, 2 * np.pi, count)
    grid_x, grid_y = _pixel_centres(config.size)
    centre = config.size / 2.0
    moving = spec.camera is not None
    frames = config.num_frames if moving else 1
    zoom_f = zoom[:frames, None, None]
    world_x = centre + offset[:frames, None, None] + (grid_x[None] - centre) / zoom_f
    world_y = centre + (grid_y[None] - centre) / zoom_f
    wave = np.zeros((frames, config.size, config.size))
    for index in range(count):
        along = world_x * np.cos(direction[index]) + world_y * np.sin(direction[index])
        wave += np.cos(2 * np.pi * along / wavelength[index] + phase[index])
    texture = config.texture_amplitude * wave / count
    base = np.asarray(BACKGROUNDS[spec.background], dtype=np.float64)
    background = base[None, None, None, :] + texture[..., None]
    return np.broadcast_to(background, (config.num_frames, config.size, config.size, 3))


TRAIL_GHOSTS = 8
"""Number of ghost copies a motion trail is drawn from (enough for a continuous smear at 64 px)."""


def _trail_opacity(spec: ClipSpec, config: WorldConfig) -> np.ndarray:
    """Opacity (frames, h, w) of the motion trail: the max over ghosts of ghost coverage x fading opacity.

    Ghost k (1..TRAIL_GHOSTS) sits where the object was `k / TRAIL_GHOSTS * trail_length` of the clip earlier,
    with opacity `trail_alpha * (1 - (k - 1) / TRAIL_GHOSTS)`: the near ghosts are mostly hidden under the object,
    so the visible part of the trail must not have faded much already. The max (not a sum) keeps overlapping
    ghosts below `trail_alpha`. All ghosts of all frames are rasterised in one `_coverage` call. Zero when nothing
    moves on screen.
    """
    size, frames = config.size, config.num_frames
    if config.trail_alpha == 0.0 or (spec.motion == "still" and spec.camera is None):
        return np.zeros((frames, size, size))
    ghost = np.arange(1, TRAIL_GHOSTS + 1)
    lags = config.trail_length * ghost / TRAIL_GHOSTS
    times = (_clip_time(config)[None, :] - lags[:, None]).reshape(-1)  # (ghosts * frames,), ghost-major
    coverage = _coverage(spec.shape, *object_track(spec, config, times), size)
    fading = config.trail_alpha * (1.0 - (ghost - 1) / TRAIL_GHOSTS)
    return (coverage.reshape(TRAIL_GHOSTS, frames, size, size) * fading[:, None, None, None]).max(axis=0)


def _render_frames(spec: ClipSpec, config: WorldConfig) -> np.ndarray:
    """Clean float frames (frames, h, w, 3) in 0..255: textured background + motion trail + anti-aliased (styled)
    shape. The trail is the object's colour at reduced opacity, under the object (max of the two opacities)."""
    size = config.size
    zoom, offset = _camera_track(spec, config)
    centre_x, centre_y, radius, angle = object_track(spec, config)
    coverage = _coverage(spec.shape, centre_x, centre_y, radius, angle, size)
    coverage = np.maximum(coverage, _trail_opacity(spec, config))[..., None]
    colour = np.broadcast_to(shape_colour(spec.colour, spec.style), (config.num_frames, size, size, 3))
    if spec.style == "striped":
        grid_x, grid_y = _pixel_centres(size)
        theta = np.deg2rad(angle + 45.0)[:, None, None]
        across = (grid_x[None] - centre_x[:, None, None]) * np.cos(theta)
        across = (across + (grid_y[None] - centre_y[:, None, None]) * np.sin(theta)) / radius[:, None, None]
        light = (np.floor(across / STRIPE_WIDTH) % 2 == 1)[..., None]
        colour = np.where(light, shape_colour(spec.colour, "pastel"), colour)
    background = _background(spec, config, zoom, offset)
    return background * (1.0 - coverage) + colour * coverage


def watermark_layers(config: WorldConfig, height: int | None = None, width: int | None = None):
    """The fixed watermark as two (alpha (h, w), rgb (3,)) layers: a light band and dark block-letter "text".

    Composite in order: frame = frame * (1 - alpha) + rgb * alpha. Metrics use the same layers to predict what the
    watermark would add to a given background.
    """
    height = config.size if height is None else height
    width = config.size if width is None else width
    band = config.band_rows(height)
    band_alpha = np.zeros((height, width))
    band_alpha[height - band :, :] = _WATERMARK_BAND[1]
    glyph_rows = ["".join(_GLYPHS[letter][row] + "." for letter in _WATERMARK_WORD)[:-1] for row in range(5)]
    bitmap = np.array([[char == "#" for char in row] for row in glyph_rows])
    text_top, text_bottom = height - band + 1, height - 1
    text_left, text_right = int(round(width * 0.06)), int(round(width * 0.94))
    rows = np.arange(text_top, text_bottom)
    cols = np.arange(text_left, text_right)
    row_index = ((rows - text_top) * bitmap.shape[0] // max(1, text_bottom - text_top)).clip(0, bitmap.shape[0] - 1)
    col_index = ((cols - text_left) * bitmap.shape[1] // max(1, text_right - text_left)).clip(0, bitmap.shape[1] - 1)
    text_alpha = np.zeros((height, width))
    text_alpha[np.ix_(rows, cols)] = bitmap[np.ix_(row_index, col_index)] * _WATERMARK_TEXT[1]
    return [
        (band_alpha, np.asarray(_WATERMARK_BAND[0])),
        (text_alpha, np.asarray(_WATERMARK_TEXT[0])),
    ]


def apply_watermark(frames: np.ndarray, config: WorldConfig) -> np.ndarray:
    """Composite the fixed watermark onto float frames (..., h, w, 3); returns a new float array."""
    height, width = frames.shape[-3], frames.shape[-2]
    result = np.asarray(frames, dtype=np.float64)
    for alpha, rgb in watermark_layers(config, height, width):
        result = result * (1.0 - alpha[..., None]) + rgb * alpha[..., None]
    return result


def jpeg_roundtrip(frames: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode every uint8 frame (f, h, w, 3) as JPEG: the blocking and chroma bleeding of web video."""
    out = np.empty_like(frames)
    for index, frame in enumerate(frames):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        out[index] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def render_clip(spec: ClipSpec, config: WorldConfig, video_domain: bool = True) -> np.ndarray:
    """Render a clip as uint8 (frames, h, w, 3).

    `video_domain=True` adds the WebVid-like defects (watermark band, then JPEG at `config.jpeg_quality`);
    `video_domain=False` gives clean frames, the way the image domain looks.
    """
    frames = _render_frames(spec, config)
    if not video_domain:
        return _to_uint8(frames)
    return jpeg_roundtrip(_to_uint8(apply_watermark(frames, config)), config.jpeg_quality)


def render_image(spec: ClipSpec, config: WorldConfig) -> np.ndarray:
    """Render the clean image-domain picture (h, w, 3) uint8 of a spec: its first frame, no camera, no defects.

    A moving spec keeps its motion trail (`WorldConfig.trail_alpha`): the still of something moving shows which
    way it moves, the way a photo of a moving thing does.
    """
    no_camera = ClipSpec.from_dict({**spec.to_dict(), "camera": None, "camera_speed": 0.0})
    single = WorldConfig(**{**_config_dict(config), "num_frames": 2})
    return _to_uint8(_render_frames(no_camera, single)[0])


def _config_dict(config: WorldConfig) -> dict[str, Any]:
    return {item.name: getattr(config, item.name) for item in fields(config)}


__all__ = [
    "BACKGROUNDS",
    "BASE_MOTIONS",
    "CAMERA_MOTIONS",
    "COLOURS",
    "ClipSpec",
    "Intent",
    "MOTIONS",
    "SHAPES",
    "STYLES",
    "WorldConfig",
    "apply_watermark",
    "caption",
    "jpeg_roundtrip",
    "object_track",
    "parse_caption",
    "render_clip",
    "render_image",
    "sample_clip_spec",
    "shape_colour",
    "spec_for_prompt",
    "watermark_layers",
]
