"""make_world writes the shapes world in WebVid / imagefolder layouts that real loaders read back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from zoetrope.errors import InputError
from zoetrope.media import read_video
from zoetrope.world.make import FIRST_VIDEO_ID, PRESETS, make_preset, make_world, read_clip_specs
from zoetrope.world.metrics import classify_camera, classify_motion
from zoetrope.world.render import WorldConfig, caption, parse_caption, render_clip

CONFIG = WorldConfig(num_frames=8)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    make_world(root, CONFIG, num_clips=6, num_images=4, seed=7, progress=False)
    return root


def test_webvid_csv_layout(world: Path) -> None:
    with open(world / "videos.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["videoid", "name", "page_dir"]
        rows = list(reader)
    assert [row["videoid"] for row in rows] == [str(FIRST_VIDEO_ID + index) for index in range(6)]
    for row in rows:
        path = world / "videos" / f"{row['videoid']}.mp4"  # how the official WebVid10M dataset finds a clip
        assert path.is_file()
        parse_caption(row["name"])
    assert sorted(p.name for p in (world / "videos").iterdir()) == [f"{row['videoid']}.mp4" for row in rows]


def test_jsonl_matches_csv_and_decoded_videos(world: Path) -> None:
    with open(world / "videos.csv", newline="", encoding="utf-8") as handle:
        names = [row["name"] for row in csv.DictReader(handle)]
    rows = read_clip_specs(world / "videos.jsonl")
    assert [text for _, text, _ in rows] == names
    for (path, text, spec), line in zip(rows, (world / "videos.jsonl").read_text().splitlines(), strict=True):
        assert caption(spec) == text and json.loads(line)["num_frames"] == 8
        with av.open(str(world / path)) as container:
            stream = container.streams.video[0]
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
            assert stream.codec_context.name == "h264"
        assert len(frames) == 8 and frames[0].shape == (64, 64, 3)
        # the pixels still say what the caption says after H.264
        assert classify_motion(np.stack(frames), CONFIG) == spec.motion, text


def test_image_folder_layout(world: Path) -> None:
    lines = (world / "images" / "metadata.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [row["file_name"] for row in rows] == [f"{index:06d}.png" for index in range(4)]
    for row in rows:
        with Image.open(world / "images" / row["file_name"]) as image:
            assert image.size == (64, 64) and image.mode == "RGB"
        intent = parse_caption(row["text"])
        assert intent.motion is None and intent.camera is None and intent.shape == row["shape"]
    manifest = json.loads((world / "world.json").read_text())
    assert manifest["seed"] == 7 and manifest["num_clips"] == 6 and manifest["config"]["num_frames"] == 8


def test_same_seed_same_world(world: Path, tmp_path: Path) -> None:
    again = make_world(tmp_path / "again", CONFIG, num_clips=6, num_images=4, seed=7, progress=False)
    assert again.videos_csv.read_text() == (world / "videos.csv").read_text()
    assert again.videos_jsonl.read_text() == (world / "videos.jsonl").read_text()
    np.testing.assert_array_equal(
        np.asarray(Image.open(again.root / "images" / "000001.png")),
        np.asarray(Image.open(world / "images" / "000001.png")),
    )
    other = make_world(tmp_path / "other", CONFIG, num_clips=6, num_images=0, seed=8, progress=False)
    assert other.videos_jsonl.read_text() != (world / "videos.jsonl").read_text()
    assert not (tmp_path / "other" / "images").exists()


def test_camera_and_style_sets(tmp_path: Path) -> None:
    files = make_world(tmp_path / "zoom", CONFIG, num_clips=2, num_images=0, camera="zoom in", progress=False)
    for path, text, spec in read_clip_specs(files.videos_jsonl):
        assert text.endswith(", camera zooming in") and spec.motion == "still"
        assert classify_camera(read_video(files.root / path)[0], CONFIG) == "zoom in"
    styled = make_preset("pastel", tmp_path / "pastel", CONFIG, progress=False, scale=0.01)
    rows = [json.loads(line) for line in styled.images_metadata.read_text().splitlines()]
    assert len(rows) == 2 and all(row["text"].endswith(", in zxq style") for row in rows)
    assert set(PRESETS) >= {"base", "zoom-in", "zoom-out", "pan-left", "pan-right", "pastel", "striped"}


def test_images_of_moving_things_carry_motion_captions(tmp_path: Path) -> None:
    files = make_world(tmp_path / "m", CONFIG, num_clips=0, num_images=24, seed=3, progress=False, image_motion_fraction=0.5)
    rows = read_clip_specs(files.images_metadata)
    moving = [(text, spec) for _, text, spec in rows if parse_caption(text).motion is not None]
    assert 4 <= len(moving) <= 20 and len(moving) < len(rows)
    for text, spec in moving:  # the caption names the spec's motion; the picture is that clip's first frame
        assert parse_caption(text).motion == spec.motion and text == caption(spec)
    for text, spec in ((t, s) for _, t, s in rows if parse_caption(t).motion is None):
        assert spec.motion == "still" and text == caption(spec, video=False)
    name, _, spec = next(row for row in rows if row[2].motion != "still")
    first = render_clip(spec, CONFIG, video_domain=False)[0]
    assert np.array_equal(np.asarray(Image.open(files.root / "images" / name).convert("RGB")), first)
    assert PRESETS["base"].image_motion_fraction > 0 and PRESETS["zoom-in"].num_images == 0
    with pytest.raises(InputError, match="image_motion_fraction"):
        make_world(tmp_path / "bad", CONFIG, num_images=1, num_clips=0, progress=False, image_motion_fraction=2.0)


def test_user_errors(world: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="already holds a shapes world"):
        make_world(world, CONFIG, num_clips=1, num_images=0, progress=False)
    with pytest.raises(InputError, match="num_clips=0, num_images=0"):
        make_world(tmp_path / "empty", CONFIG, num_clips=0, num_images=0, progress=False)
    with pytest.raises(InputError, match="unknown; expected one of base"):
        make_preset("sepia", tmp_path / "sepia")
