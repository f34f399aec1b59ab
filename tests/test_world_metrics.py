"""Pixel metrics of the shapes world, checked on rendered ground truth (clean and video-domain renders)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from zoetrope.errors import InputError
from zoetrope.world.metrics import (
    CAMERA_SUITE,
    PROMPT_SUITE,
    UNKNOWN,
    classify_camera,
    classify_background,
    classify_colour,
    frame_changes,
    classify_motion,
    classify_shape,
    classify_style,
    evaluate_clips,
    foreground_masks,
    format_table,
    measure_camera,
    measure_motion,
    motion_accuracy,
    noise_agreement,
    temporal_consistency,
    track_object,
    watermark_leakage,
)
from zoetrope.world.render import (
    BACKGROUNDS,
    CAMERA_MOTIONS,
    COLOURS,
    MOTIONS,
    SHAPES,
    ClipSpec,
    WorldConfig,
    caption,
    parse_caption,
    render_clip,
    sample_clip_spec,
    spec_for_prompt,
)

CONFIG = WorldConfig()
TRAILED = WorldConfig(trail_alpha=0.25)
"""The world with motion trails: the metrics must read it exactly like the plain world."""
WORLDS = pytest.mark.parametrize("config", [CONFIG, TRAILED], ids=["plain", "trail"])


@pytest.mark.parametrize("motion", MOTIONS)
@pytest.mark.parametrize("video_domain", [False, True])
@WORLDS
def test_every_motion_is_classified(config: WorldConfig, motion: str, video_domain: bool) -> None:
    rng = np.random.default_rng(MOTIONS.index(motion))
    for index in range(4):
        spec = sample_clip_spec(rng, config, motions=(motion,), style=(None, "pastel", "striped")[index % 3])
        assert classify_motion(render_clip(spec, config, video_domain), config) == motion, caption(spec)


@pytest.mark.parametrize(("motion", "reverse"), [("left", "right"), ("up", "down"), ("grow", "shrink")])
def test_time_reversal_flips_the_motion(motion: str, reverse: str) -> None:
    spec = sample_clip_spec(np.random.default_rng(7), CONFIG, motions=(motion,))
    clip = render_clip(spec, CONFIG)
    assert classify_motion(clip) == motion
    assert classify_motion(clip[::-1]) == reverse


def test_motion_measurements_match_the_spec() -> None:
    spec = ClipSpec("square", "red", "black", "left", x=0.7, y=0.4, radius=0.12, angle=10.0, speed=0.35)
    measured = measure_motion(render_clip(spec, CONFIG))
    assert measured.dx == pytest.approx(-0.35 * 64, abs=1.0) and abs(measured.dy) < 0.5
    rotating = dataclasses.replace(spec, motion="rotate", x=0.5, speed=-0.4)
    assert measure_motion(render_clip(rotating, CONFIG)).rotation == pytest.approx(-0.4 * 360, abs=6.0)
    growing = dataclasses.replace(spec, motion="grow", x=0.5, radius=0.1, speed=0.8)
    assert measure_motion(render_clip(growing, CONFIG)).log_area == pytest.approx(2 * np.log(1.8), abs=0.1)


def test_spread_tells_a_motion_from_a_cross_fade() -> None:
    """An interpolation that cross-fades two copies puts the centroid on the straight path too; `spread` (rms pixel
    distance from the centroid) exposes it: one moving object keeps its radius, two half-faded copies do not."""
    spec = ClipSpec("circle", "red", "black", "right", x=0.25, y=0.5, radius=0.12, angle=0.0, speed=0.5)
    clip = render_clip(spec, CONFIG)
    track = track_object(clip, CONFIG)
    middle = len(clip) // 2
    fade = (clip[0].astype(np.float32) * 0.5 + clip[-1].astype(np.float32) * 0.5).round().astype(np.uint8)
    faded = track_object(fade[None], CONFIG)
    assert track.valid.all() and faded.valid[0]
    assert track.spread[middle] == pytest.approx(track.spread[0], rel=0.1)
    assert abs(faded.centre_x[0] - track.centre_x[middle]) < 3.0  # the centroid cannot tell them apart
    assert faded.spread[0] > 1.8 * track.spread[0]  # the spread can


@pytest.mark.parametrize("video_domain", [False, True])
def test_colour_shape_and_style_are_read_from_pixels(video_domain: bool) -> None:
    rng = np.random.default_rng(11 + video_domain)
    specs = [sample_clip_spec(rng, CONFIG, style=(None, "pastel", "striped")[i % 3]) for i in range(36)]
    clips = [render_clip(spec, CONFIG, video_domain) for spec in specs]
    colour = np.mean([classify_colour(clip) == spec.colour for clip, spec in zip(clips, specs, strict=True)])
    shape = np.mean([classify_shape(clip) == spec.shape for clip, spec in zip(clips, specs, strict=True)])
    style = np.mean([classify_style(clip) == spec.style for clip, spec in zip(clips, specs, strict=True)])
    assert colour >= 0.95 and shape >= 0.95
    assert style >= 0.85


@WORLDS
def test_every_colour_and_shape_on_every_background(config: WorldConfig) -> None:
    rng = np.random.default_rng(5)
    for background in BACKGROUNDS:
        for index, colour in enumerate(COLOURS):
            shape = SHAPES[(index + list(BACKGROUNDS).index(background)) % len(SHAPES)]
            intent = parse_caption(f"a {colour} {shape} staying still on a {background} background")
            clip = render_clip(sample_clip_spec(rng, config, intent=intent), config)
            assert (classify_colour(clip), classify_shape(clip)) == (colour, shape)
            assert classify_background(clip) == background
            assert classify_background(clip[:1], config) == background


def test_watermark_leakage_separates_domains() -> None:
    rng = np.random.default_rng(3)
    for index in range(8):
        spec = sample_clip_spec(rng, CONFIG, camera=CAMERA_MOTIONS[index % 4] if index % 2 else None)
        assert watermark_leakage(render_clip(spec, CONFIG, video_domain=True)) > 0.85
        assert abs(watermark_leakage(render_clip(spec, CONFIG, video_domain=False))) < 0.15


@pytest.mark.parametrize("camera", CAMERA_MOTIONS)
@WORLDS
def test_camera_motion_is_detected(config: WorldConfig, camera: str) -> None:
    rng = np.random.default_rng(CAMERA_MOTIONS.index(camera))
    for index in range(3):
        spec = sample_clip_spec(rng, config, camera=camera, style=(None, "pastel", "striped")[index])
        assert classify_camera(render_clip(spec, config)) == camera, caption(spec)


@WORLDS
def test_camera_measurement_matches_the_spec_and_ignores_object_motion(config: WorldConfig) -> None:
    base = ClipSpec("star", "cyan", "navy", "still", x=0.5, y=0.45, radius=0.1, camera_speed=0.4)
    zoom = measure_camera(render_clip(dataclasses.replace(base, camera="zoom in"), config))
    assert zoom.log_zoom == pytest.approx(np.log(1.4), rel=0.25) and abs(zoom.pan_x) < 1.0
    pan = measure_camera(render_clip(dataclasses.replace(base, camera="pan left"), config))
    assert pan.pan_x == pytest.approx(0.4 * 64, rel=0.25) and abs(pan.log_zoom) < 0.05
    rng = np.random.default_rng(9)
    for motion in MOTIONS:
        spec = sample_clip_spec(rng, config, motions=(motion,))
        assert classify_camera(render_clip(spec, config)) == "none", caption(spec)


def test_camera_measurement_in_a_region_tells_a_whole_zoom_from_a_zoom_at_the_edges() -> None:
    """`measure_camera(region=...)`: a true zoom reads the same in the frame's middle and near its edges; a clip
    whose edges zoom while its middle holds still reads a zoom only at the edges (bench/probe_zoom_regions.py)."""
    base = ClipSpec("star", "cyan", "navy", "still", x=0.5, y=0.3, radius=0.08, camera_speed=0.4, texture_seed=5)
    zoom = render_clip(dataclasses.replace(base, camera="zoom in"), CONFIG)
    still = render_clip(base, CONFIG)
    axis = np.arange(64) + 0.5 - 32
    centre = np.maximum(np.abs(axis)[:, None], np.abs(axis)[None, :]) < 16
    middle, edges = measure_camera(zoom, region=centre).log_zoom, measure_camera(zoom, region=~centre).log_zoom
    assert middle == pytest.approx(np.log(1.4), rel=0.3) and edges == pytest.approx(np.log(1.4), rel=0.3)
    partial = np.where(centre[None, :, :, None], still, zoom)
    assert measure_camera(partial, region=~centre).log_zoom == pytest.approx(edges, rel=0.1)
    assert abs(measure_camera(partial, region=centre).log_zoom) < 0.05
    with pytest.raises(InputError, match="region of shape"):
        measure_camera(zoom, region=centre[:32])


def test_temporal_consistency_numbers() -> None:
    still = render_clip(ClipSpec("square", "red", "grey", "still", x=0.5, y=0.4, radius=0.15), CONFIG)
    steady = temporal_consistency(still)
    assert steady["mask_iou"] == pytest.approx(1.0) and steady["flicker"] == pytest.approx(0.0)
    flickering = still.astype(np.int64)
    flickering[1::2] += 20  # every other frame 20 levels brighter: |change| is 20 between every pair
    assert temporal_consistency(np.clip(flickering, 0, 255).astype(np.uint8))["flicker"] == pytest.approx(20, abs=0.5)
    moving = render_clip(sample_clip_spec(np.random.default_rng(0), CONFIG, motions=("right",)), CONFIG)
    shuffled = moving[np.random.default_rng(1).permutation(len(moving))]
    assert temporal_consistency(shuffled)["mask_iou"] < temporal_consistency(moving)["mask_iou"] < 1.0


def test_foreground_mask_ignores_the_band_and_texture() -> None:
    spec = ClipSpec("circle", "blue", "grey", "still", x=0.5, y=0.4, radius=0.15)
    mask = foreground_masks(render_clip(spec, CONFIG))
    assert not mask[:, 64 - CONFIG.band_rows() :].any()
    assert mask[0].sum() == pytest.approx(np.pi * (0.15 * 64) ** 2, rel=0.15)


def test_prompt_suites_cover_the_world() -> None:
    intents = [parse_caption(prompt) for prompt in PROMPT_SUITE]
    assert len(PROMPT_SUITE) == 24
    assert {intent.shape for intent in intents} == set(SHAPES)
    assert {intent.colour for intent in intents} == set(COLOURS)
    assert {intent.background for intent in intents} == set(BACKGROUNDS)
    assert {intent.motion for intent in intents} == set(MOTIONS)
    assert not any(intent.shape == "circle" and intent.motion == "rotate" for intent in intents)
    assert {parse_caption(prompt).camera for prompt in CAMERA_SUITE} == set(CAMERA_MOTIONS)


def test_evaluate_clips_on_ground_truth_suites() -> None:
    rng = np.random.default_rng(0)
    prompts = list(PROMPT_SUITE) + list(CAMERA_SUITE)
    clips = [render_clip(spec_for_prompt(prompt, rng, CONFIG), CONFIG) for prompt in prompts]
    results = evaluate_clips(clips, prompts, CONFIG)
    summary = results["summary"]
    assert summary["motion_accuracy"] == 1.0 and summary["motion_scored"] == len(PROMPT_SUITE)
    assert summary["camera_accuracy"] == 1.0 and summary["camera_scored"] == len(CAMERA_SUITE)
    assert summary["prompt_fidelity"] == 1.0 and summary["style_accuracy"] is None
    assert summary["background_accuracy"] == 1.0
    assert summary["background_scored"] == sum(parse_caption(p).background is not None for p in prompts) > 0
    assert summary["watermark_leakage"] > 0.85 and summary["mask_iou"] > 0.6
    assert json.loads(json.dumps(results)) == results
    table = format_table(results)
    assert "motion accuracy" in table and "1.000 (n=24)" in table
    assert all(prompt in table for prompt in prompts)
    assert motion_accuracy(clips, prompts) == 1.0
    assert motion_accuracy(clips[-2:], prompts[-2:]) is None  # camera prompts are not motion-scored
    assert summary["motion_confusion"] == {motion: {motion: 3} for motion in MOTIONS}
    assert "asked left, read" in table


def test_motion_confusion_shows_a_prompt_deaf_module() -> None:
    """Every clip moving left, whatever the prompt: accuracy alone says 1 in 8; the confusion says why."""
    rng = np.random.default_rng(1)
    prompts = ["a red circle moving left on a grey background", "a blue star moving right on a navy background",
               "a green square moving up on a black background"]
    left = render_clip(spec_for_prompt(prompts[0], rng, CONFIG), CONFIG)
    summary = evaluate_clips([left] * 3, prompts, CONFIG)["summary"]
    assert summary["motion_confusion"] == {"left": {"left": 1}, "right": {"left": 1}, "up": {"left": 1}}
    assert "asked right, read" in format_table({"summary": summary})


def test_noise_agreement_tells_noise_from_prompt() -> None:
    def rows(reads: list[tuple[int, str]]) -> list[dict]:
        return [{"seed": seed, "motion": read, "motion_correct": True} for seed, read in reads]

    follows_noise = rows([(0, "left"), (0, "left"), (1, "right"), (1, "right")])
    follows_prompt = rows([(0, "left"), (0, "right"), (1, "left"), (1, "right")])
    assert noise_agreement(follows_noise) == 1.0 and noise_agreement(follows_prompt) == 0.5
    unscored = [{"seed": 0, "motion": "left", "motion_correct": None}] * 2
    assert noise_agreement(rows([(0, "left"), (1, "left")]) + unscored) is None  # no seed with two scored rows
    assert "same-noise agreement" not in format_table(evaluate_clips([], []))


def test_unreadable_input() -> None:
    empty = np.full((4, 64, 64, 3), 90, dtype=np.uint8)
    assert classify_motion(empty) == UNKNOWN and classify_colour(empty) == UNKNOWN
    assert classify_shape(empty) == UNKNOWN and classify_camera(empty) == "none"
    with pytest.raises(InputError, match="expected \\(frames, h, w, 3\\)"):
        classify_colour(np.zeros((64, 64), dtype=np.uint8))
    with pytest.raises(InputError, match="2 clips and 1 prompts"):
        evaluate_clips([empty, empty], ["a red square"])


def test_frame_changes_measure_the_step_between_consecutive_frames() -> None:
    clip = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    clip[2:] = 10  # one step of 10 levels between frames 1 and 2
    clip[3, :4] = 30  # half of frame 3 changes by 20 more
    assert frame_changes(clip).tolist() == [0.0, 10.0, 10.0]
    with pytest.raises(InputError, match="expected"):
        frame_changes(np.zeros((4, 8, 8), dtype=np.uint8))
