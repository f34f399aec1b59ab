"""The shapes-world renderer: captions, sampling, geometry, anti-aliasing, domains, styles, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from zoetrope.errors import ConfigError, InputError
from zoetrope.world.render import (
    BACKGROUNDS,
    CAMERA_MOTIONS,
    COLOURS,
    MOTIONS,
    SHAPES,
    STYLES,
    ClipSpec,
    Intent,
    WorldConfig,
    apply_watermark,
    caption,
    object_track,
    parse_caption,
    render_clip,
    render_image,
    sample_clip_spec,
    shape_colour,
    spec_for_prompt,
)

CONFIG = WorldConfig()


def _random_specs(count: int, seed: int = 0) -> list[ClipSpec]:
    rng = np.random.default_rng(seed)
    specs = []
    for index in range(count):
        camera = CAMERA_MOTIONS[index % 4] if index % 3 == 0 else None
        style = (None, "pastel", "striped")[index % 3]
        specs.append(sample_clip_spec(rng, CONFIG, camera=camera, style=style))
    return specs


def test_caption_examples() -> None:
    spec = ClipSpec("square", "red", "grey", "left")
    assert caption(spec) == "a red square moving left on a grey background"
    assert caption(dataclasses.replace(spec, motion="grow")) == "a red square growing on a grey background"
    assert caption(dataclasses.replace(spec, motion="rotate")) == "a red square rotating on a grey background"
    assert caption(dataclasses.replace(spec, motion="still")) == "a red square staying still on a grey background"
    camera = dataclasses.replace(spec, motion="still", camera="zoom in", style="pastel")
    assert caption(camera) == "a red square staying still on a grey background, camera zooming in, in zxq style"
    assert caption(camera, video=False) == "a red square on a grey background, in zxq style"


def test_caption_round_trip() -> None:
    for spec in _random_specs(120):
        assert parse_caption(caption(spec)) == spec.intent()
        image_intent = parse_caption(caption(spec, video=False))
        assert image_intent == Intent(spec.shape, spec.colour, spec.background, None, None, spec.style)


def test_parse_caption_is_tolerant_of_case_and_optional_parts() -> None:
    assert parse_caption("  A Blue STAR moving up.  ") == Intent("star", "blue", None, "up")
    assert parse_caption("a green circle on a navy background") == Intent("circle", "green", "navy")
    assert parse_caption("a cyan triangle staying still on a black background camera panning left") == Intent(
        "triangle", "cyan", "black", "still", "pan left"
    )


@pytest.mark.parametrize("text", ["a pink square moving left", "a red hexagon", "", "red square moving left"])
def test_parse_caption_rejects_other_grammar(text: str) -> None:
    with pytest.raises(InputError, match="shapes-world grammar"):
        parse_caption(text)


def test_sampling_and_rendering_are_deterministic_by_seed() -> None:
    first, second, other = _random_specs(10, seed=3), _random_specs(10, seed=3), _random_specs(10, seed=4)
    assert first == second
    assert first != other
    for spec in first[:3]:
        np.testing.assert_array_equal(render_clip(spec, CONFIG), render_clip(spec, CONFIG))


def test_clip_and_image_shapes_follow_config() -> None:
    spec = _random_specs(1)[0]
    clip = render_clip(spec, CONFIG)
    assert clip.shape == (16, 64, 64, 3) and clip.dtype == np.uint8
    small = WorldConfig(size=48, num_frames=8)
    assert render_clip(sample_clip_spec(np.random.default_rng(0), small), small).shape == (8, 48, 48, 3)
    assert render_image(spec, CONFIG).shape == (64, 64, 3)


def test_objects_stay_inside_the_frame_and_above_the_band() -> None:
    band = CONFIG.band_rows()
    for spec in _random_specs(150, seed=1):
        centre_x, centre_y, radius, _ = object_track(spec, CONFIG)
        assert np.all(centre_x - radius >= 1) and np.all(centre_x + radius <= 63)
        assert np.all(centre_y - radius >= 1) and np.all(centre_y + radius <= 64 - band - 1)
        assert np.all(radius >= 0.05 * 64)


def test_every_combination_is_sampled_except_rotating_circles() -> None:
    rng = np.random.default_rng(0)
    specs = [sample_clip_spec(rng, CONFIG) for _ in range(400)]
    assert {spec.shape for spec in specs} == set(SHAPES)
    assert {spec.colour for spec in specs} == set(COLOURS)
    assert {spec.background for spec in specs} == set(BACKGROUNDS)
    assert {spec.motion for spec in specs} == set(MOTIONS)
    assert not any(spec.shape == "circle" and spec.motion == "rotate" for spec in specs)
    assert all(spec.camera is None for spec in specs)


def test_motion_amplitudes_are_measurable_at_64_pixels() -> None:
    rng = np.random.default_rng(2)
    for motion in MOTIONS:
        for _ in range(10):
            spec = sample_clip_spec(rng, CONFIG, motions=(motion,))
            centre_x, centre_y, radius, angle = object_track(spec, CONFIG)
            travel = np.hypot(centre_x[-1] - centre_x[0], centre_y[-1] - centre_y[0])
            if motion in ("left", "right", "up", "down"):
                assert travel >= 16.0
            elif motion in ("grow", "shrink"):
                assert max(radius[-1] / radius[0], radius[0] / radius[-1]) >= 1.5
            elif motion == "rotate":
                assert abs(angle[-1] - angle[0]) >= 100.0
            else:
                assert travel == 0 and radius[0] == radius[-1] and angle[0] == angle[-1]


def test_camera_tracks() -> None:
    base = ClipSpec("circle", "red", "grey", "still", x=0.6, y=0.4, radius=0.1, camera_speed=0.4)
    _, _, radius, _ = object_track(dataclasses.replace(base, camera="zoom in"), CONFIG)
    assert radius[-1] / radius[0] == pytest.approx(1.4)
    _, _, radius, _ = object_track(dataclasses.replace(base, camera="zoom out"), CONFIG)
    assert radius[0] / radius[-1] == pytest.approx(1.4)
    centre_x, _, _, _ = object_track(dataclasses.replace(base, camera="pan left"), CONFIG)
    assert centre_x[-1] - centre_x[0] == pytest.approx(0.4 * 64)  # the camera turns left: content slides right
    centre_x, _, _, _ = object_track(dataclasses.replace(base, camera="pan right"), CONFIG)
    assert centre_x[-1] - centre_x[0] == pytest.approx(-0.4 * 64)


@pytest.mark.parametrize(("shape", "area_per_radius_sq"), [("circle", np.pi), ("square", 2.0)])
def test_shapes_are_antialiased_with_exact_area(shape: str, area_per_radius_sq: float) -> None:
    """Coverage summed over pixels equals the analytic area; edge pixels take intermediate values."""
    flat = WorldConfig(texture_amplitude=0.0, num_frames=2)
    spec = ClipSpec(shape, "yellow", "black", "still", x=0.51, y=0.43, radius=0.2, angle=17.0)
    image = render_image(spec, flat).astype(np.float64)
    background, colour = np.asarray(BACKGROUNDS["black"]), np.asarray(COLOURS["yellow"])
    coverage = (image[..., 0] - background[0]) / (colour[0] - background[0])
    radius = 0.2 * 64
    assert coverage.sum() == pytest.approx(area_per_radius_sq * radius**2, rel=0.01)
    assert ((coverage > 0.1) & (coverage < 0.9)).sum() > 20


def test_video_domain_adds_watermark_and_compression_only() -> None:
    spec = _random_specs(3)[1]
    clean = render_clip(spec, CONFIG, video_domain=False)
    video = render_clip(spec, CONFIG, video_domain=True)
    band = CONFIG.band_rows()
    above = np.abs(clean[:, : 64 - band - 8].astype(int) - video[:, : 64 - band - 8]).mean()
    in_band = np.abs(clean[:, 64 - band :].astype(int) - video[:, 64 - band :]).mean()
    assert 0.0 < above < 5.0  # mild JPEG artefacts
    assert in_band > 20.0  # the watermark band
    watermarked = apply_watermark(clean.astype(np.float64), CONFIG)
    np.testing.assert_array_equal(watermarked[:, : 64 - band], clean[:, : 64 - band])


def test_image_domain_is_the_clean_first_frame_of_a_still_clip() -> None:
    spec = dataclasses.replace(_random_specs(1)[0], motion="still", camera=None)
    np.testing.assert_array_equal(render_image(spec, CONFIG), render_clip(spec, CONFIG, video_domain=False)[0])


@pytest.mark.parametrize("motion, axis, sign", [("left", 1, 1), ("right", 1, -1), ("up", 0, 1), ("down", 0, -1)])
def test_a_moving_still_shows_a_fading_trail_behind_the_object(motion: str, axis: int, sign: int) -> None:
    flat = WorldConfig(texture_amplitude=0.0, trail_alpha=0.25)
    spec = ClipSpec("circle", "red", "black", motion, x=0.5, y=0.4, radius=0.12, speed=0.4)
    image = render_image(spec, flat).astype(np.float64)
    still = render_image(dataclasses.replace(spec, motion="still"), flat).astype(np.float64)
    trail = np.linalg.norm(image - still, axis=-1)  # what the trail adds (the object itself is identical)
    assert trail.max() > 0
    rows, cols = np.nonzero(trail > 1.0)
    centre = (0.4 * 64, 0.5 * 64)
    offsets = (rows + 0.5 - centre[0]) if axis == 0 else (cols + 0.5 - centre[1])
    assert np.all(sign * offsets > 0), "the trail lies on the side the object comes from"
    contrast = np.linalg.norm(np.asarray(COLOURS["red"]) - BACKGROUNDS["black"])
    assert trail.max() <= flat.trail_alpha * contrast + 1.0  # fainter than the metrics' foreground threshold
    assert (sign * offsets).max() > 0.4 * 64 * flat.trail_length  # and reaches back along the whole path
    untrailed = WorldConfig(texture_amplitude=0.0, trail_alpha=0.0)
    np.testing.assert_array_equal(render_image(spec, untrailed), still.astype(np.uint8))


def test_styles_keep_hue_and_change_the_fill() -> None:
    for name, rgb in COLOURS.items():
        np.testing.assert_allclose(shape_colour(name, "pastel"), (np.asarray(rgb) + 255.0) / 2)
    flat = WorldConfig(texture_amplitude=0.0)
    spec = ClipSpec("square", "blue", "black", "still", x=0.5, y=0.4, radius=0.25, style="striped")
    image = render_image(spec, flat)
    inside = image[22:30, 28:36].reshape(-1, 3)
    tones = {tuple(pixel) for pixel in inside}
    assert tuple(COLOURS["blue"]) in tones and tuple(np.rint(shape_colour("blue", "pastel")).astype(int)) in tones
    assert set(STYLES) == {"pastel", "striped"}


def test_spec_for_prompt_matches_the_prompt() -> None:
    rng = np.random.default_rng(0)
    prompt = "a magenta star rotating on a navy background, in vkw style"
    spec = spec_for_prompt(prompt, rng, CONFIG)
    assert caption(spec) == prompt and spec.speed != 0


@pytest.mark.parametrize("low, high", [(0.1, 0.15), (0.55, 0.7)])
def test_speed_range_sets_the_travel_of_translations_only(low: float, high: float) -> None:
    config = WorldConfig(speed_range=(low, high))
    rng = np.random.default_rng(3)
    for motion in ("left", "right", "up", "down"):
        for _ in range(8):
            spec = sample_clip_spec(rng, config, motions=(motion,))
            centre_x, centre_y, _, _ = object_track(spec, config)
            travel = np.hypot(centre_x[-1] - centre_x[0], centre_y[-1] - centre_y[0]) / config.size
            assert low - 1e-9 <= spec.speed <= high and travel == pytest.approx(spec.speed)
    rotating = [sample_clip_spec(rng, config, motions=("rotate",)).speed for _ in range(20)]
    assert all(0.3 <= abs(speed) <= 0.45 for speed in rotating)  # the other motions keep their amplitudes


@pytest.mark.parametrize("low, high", [(0.3, 0.45), (0.8, 1.0)])
def test_camera_speed_range_sets_the_zoom_factor_and_the_pan_travel(low: float, high: float) -> None:
    config = WorldConfig(camera_speed_range=(low, high))
    rng = np.random.default_rng(4)
    for camera in CAMERA_MOTIONS:
        if camera.startswith("pan") and high > 0.7:  # a still object cannot stay in the frame while the camera pans that far
            with pytest.raises(ConfigError, match="no placement.*pan.*smaller WorldConfig.camera_speed_range"):
                sample_clip_spec(rng, config, camera=camera)
            continue
        for _ in range(6):
            spec = sample_clip_spec(rng, config, camera=camera)
            assert low - 1e-9 <= spec.camera_speed <= high
            centre_x, _, radius, _ = object_track(spec, config)
            if camera == "zoom in":  # the object is magnified by the zoom factor, 1 + camera_speed
                assert radius[-1] / radius[0] == pytest.approx(1.0 + spec.camera_speed)
            elif camera == "zoom out":
                assert radius[0] / radius[-1] == pytest.approx(1.0 + spec.camera_speed)
            else:  # a pan moves a still object across the screen by the travel, against the camera
                travel = (centre_x[-1] - centre_x[0]) / config.size
                assert travel == pytest.approx(spec.camera_speed if camera == "pan left" else -spec.camera_speed)
    moving = [sample_clip_spec(rng, config, motions=("left",)).speed for _ in range(10)]
    assert all(0.3 <= speed <= 0.45 for speed in moving)  # object motions keep the speed_range
    for bad in ((0.5, 0.3), (0.0, 0.3), (0.3, 2.0)):
        with pytest.raises(ConfigError, match="WorldConfig.camera_speed_range.*0 < low <= high <= 1.5"):
            WorldConfig(camera_speed_range=bad)
    with pytest.raises(ConfigError, match="WorldConfig.camera_speed_range.*two numbers"):
        WorldConfig(camera_speed_range=None)


def test_angle_range_sets_the_start_orientation_and_rotation_turns_from_it() -> None:
    upright = WorldConfig(angle_range=(0.0, 0.0))
    rng = np.random.default_rng(5)
    specs = [sample_clip_spec(rng, upright) for _ in range(40)]
    assert all(spec.angle == 0.0 for spec in specs)
    rotating = sample_clip_spec(rng, upright, motions=("rotate",))
    angles = object_track(rotating, upright)[3]
    assert angles[0] == 0.0 and abs(angles[-1]) == pytest.approx(360.0 * abs(rotating.speed))
    # an upright triangle points up: its top rows hold fewer object pixels than its bottom rows
    triangle = ClipSpec("triangle", "red", "grey", x=0.5, y=0.5, radius=0.2)
    mask = np.abs(render_image(triangle, upright).astype(float) - render_image(triangle, upright)[0, 0]).sum(-1) > 60
    rows = np.nonzero(mask.any(1))[0]
    assert mask[rows[0] + 2].sum() < mask[rows[-1] - 2].sum()
    narrow = WorldConfig(angle_range=(10.0, 20.0))
    assert all(10.0 <= sample_clip_spec(rng, narrow).angle <= 20.0 for _ in range(20))
    with pytest.raises(ConfigError, match="WorldConfig.angle_range.*low <= high"):
        WorldConfig(angle_range=(90.0, 0.0))
    with pytest.raises(ConfigError, match="WorldConfig.angle_range.*two numbers"):
        WorldConfig(angle_range="up")


def test_config_and_spec_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="WorldConfig.size"):
        WorldConfig(size=16)
    with pytest.raises(ConfigError, match="WorldConfig.shapes"):
        WorldConfig(shapes=("hexagon",))
    with pytest.raises(ConfigError, match="WorldConfig.num_frames"):
        WorldConfig(num_frames=1)
    with pytest.raises(ConfigError, match="WorldConfig.trail_alpha.*segmented"):
        WorldConfig(trail_alpha=0.5)
    with pytest.raises(ConfigError, match="WorldConfig.trail_length"):
        WorldConfig(trail_length=0.0)
    for bad in ((0.5, 0.3), (0.0, 0.3), (0.3, 0.9)):
        with pytest.raises(ConfigError, match="WorldConfig.speed_range.*fit in the frame"):
            WorldConfig(speed_range=bad)
    with pytest.raises(ConfigError, match="WorldConfig.speed_range.*two numbers"):
        WorldConfig(speed_range=0.4)
    with pytest.raises(ConfigError, match="ClipSpec.colour"):
        ClipSpec("square", "pink", "grey")
    with pytest.raises(ConfigError, match="camera"):
        sample_clip_spec(np.random.default_rng(0), CONFIG, camera="dolly zoom")


def test_equal_area_gives_every_shape_the_pixels_of_a_circle() -> None:
    """Rendered at one drawn radius, shapes of equal circumradius differ in area (a star: ~43 % of a circle);
    with `equal_area` each covers the circle's area (the test reads the foreground pixels of a rendered still)."""
    from zoetrope.world.metrics import track_object

    def areas(config: WorldConfig) -> dict[str, float]:
        result = {}
        for shape in SHAPES:
            rng = np.random.default_rng(7)  # the same draws for every shape: one radius, one place
            intent = Intent(shape=shape, colour="red", background="grey", motion="still")
            spec = sample_clip_spec(rng, config, intent=intent)
            result[shape] = float(track_object(render_image(spec, config)[None].astype(np.float64)).area[0])
        return result

    plain, equal = areas(WorldConfig()), areas(WorldConfig(equal_area=True))
    assert plain["star"] / plain["circle"] < 0.5 and plain["triangle"] / plain["circle"] < 0.5
    for shape in SHAPES:  # the geometry is exact; the foreground threshold trims more of a pointed outline's edge
        assert equal[shape] / equal["circle"] == pytest.approx(1.0, abs=0.12), (shape, equal)
    assert equal["circle"] == pytest.approx(plain["circle"], rel=0.02)


def test_fixed_textures_give_each_background_one_texture_and_change_nothing_else() -> None:
    """`fixed_textures`: every clip on one background colour has that colour's texture (and so the same background
    pixels), other colours differ, every other draw is the default world's, and camera motion is still seen."""
    from zoetrope.world.metrics import classify_camera

    fixed = WorldConfig(fixed_textures=True)
    default_rng, fixed_rng = np.random.default_rng(3), np.random.default_rng(3)
    pairs = [(sample_clip_spec(default_rng, CONFIG), sample_clip_spec(fixed_rng, fixed)) for _ in range(40)]
    for plain, textured in pairs:
        assert dataclasses.replace(textured, texture_seed=plain.texture_seed) == plain
    seeds: dict[str, set[int]] = {}
    for _, spec in pairs:
        seeds.setdefault(spec.background, set()).add(spec.texture_seed)
    assert len(seeds) == len(BACKGROUNDS) and all(len(values) == 1 for values in seeds.values())
    assert len({next(iter(values)) for values in seeds.values()}) == len(BACKGROUNDS)
    same = [spec for _, spec in pairs if spec.background == pairs[0][1].background][:2]
    images = [render_image(dataclasses.replace(spec, x=0.2, y=0.2, radius=0.1), fixed) for spec in same]
    assert np.array_equal(images[0][40:, 40:], images[1][40:, 40:])  # the corner away from both shapes
    rng = np.random.default_rng(5)
    for camera in CAMERA_MOTIONS:
        spec = sample_clip_spec(rng, fixed, camera=camera)
        assert classify_camera(render_clip(spec, fixed), fixed) == camera
