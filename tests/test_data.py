"""training/data.py: official clip sampling, transforms, index formats, reproducibility and bad-file handling.

The clips encode their frame index in their brightness (frame i is grey 20 + 10 i) with a black band on the left,
so from a loaded item we can read back which frames were sampled and whether it was flipped.
"""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from zoetrope.errors import ConfigError, MediaError
from zoetrope.media import save_video
from zoetrope.training.data import (
    ImageDataConfig,
    ImageFolderDataset,
    VideoDataConfig,
    VideoDataset,
    sample_frame_indices,
    video_transform,
)

FRAMES, HEIGHT, WIDTH = 20, 48, 64
SIZE = 24  # 48x64 -> 24x32 -> centre crop 24x24 (columns 4..27)


def make_clip(path, frames: int = FRAMES) -> None:
    clip = np.empty((frames, HEIGHT, WIDTH, 3), np.uint8)
    for index in range(frames):
        clip[index] = 20 + 10 * index
    clip[:, :, :16] = 0  # left marker band
    save_video(clip, path, fps=8)


def frame_indices(pixel_values: torch.Tensor) -> list[int]:
    """Read each frame's index back from the brightness of its unmarked side."""
    pixels = (pixel_values + 1) / 2 * 255  # (f, c, h, w); the band covers output columns 0..3 (20..23 flipped)
    side = pixels[..., :8] if is_flipped(pixel_values) else pixels[..., 16:]
    return [round((float(value) - 20) / 10) for value in side.mean(dim=(-3, -2, -1))]


def is_flipped(pixel_values: torch.Tensor) -> bool:
    """The black band is on the left unless the clip was flipped."""
    return bool(pixel_values[..., :2].mean() > pixel_values[..., -2:].mean())


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    for name in ("clip0", "clip1"):
        make_clip(folder / f"{name}.mp4")
    make_clip(folder / "short.mp4", frames=3)
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return folder


def webvid_csv(folder, rows, name="index.csv"):
    path = folder / name
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["videoid", "name", "page_dir"])
        for videoid in rows:
            writer.writerow([videoid, f"caption of {videoid}", "000001_000050"])
    return path


def test_webvid_items_have_shapes_range_and_caption(clips):
    dataset = VideoDataset(VideoDataConfig(csv_path=str(webvid_csv(clips, ["clip0", "clip1"])), video_folder=str(clips),
                                           num_frames=4, sample_stride=4, size=SIZE))
    assert len(dataset) == 2
    item = dataset[1]
    assert item["text"] == "caption of clip1"
    assert item["pixel_values"].shape == (4, 3, SIZE, SIZE) and item["pixel_values"].dtype == torch.float32
    assert item["pixel_values"].min() >= -1 and item["pixel_values"].max() <= 1
    assert item["pixel_values"].min() < -0.95  # the black band survives: values really span [-1, 1]


def test_sampled_indices_follow_the_official_linspace_rule(clips):
    config = VideoDataConfig(csv_path=str(webvid_csv(clips, ["clip0"])), video_folder=str(clips), num_frames=4,
                             sample_stride=4, size=SIZE, random_flip=False)
    dataset = VideoDataset(config)
    starts = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        indices = frame_indices(dataset[0]["pixel_values"])
        start = indices[0]
        assert indices == [start, start + 4, start + 8, start + 12]  # clip_len = min(20, 3*4+1) = 13
        assert 0 <= start <= FRAMES - 13
        assert indices == sample_frame_indices(FRAMES, 4, 4, dataset.item_generator(0))  # same generator draws
        starts.add(start)
    assert len(starts) > 1  # the start is random per epoch

    # A span longer than the clip is squeezed: clip_len = min(20, 7*4+1) = 20, linspace(0, 19, 8) truncated.
    long = VideoDataset(VideoDataConfig(**{**config.__dict__, "num_frames": 8}))
    assert frame_indices(long[0]["pixel_values"]) == [0, 2, 5, 8, 10, 13, 16, 19]


def test_sample_frame_indices_matches_numpy_reference():
    generator = torch.Generator().manual_seed(0)
    for available, frames, stride in [(100, 16, 4), (30, 16, 4), (16, 16, 1), (5, 1, 4)]:
        indices = sample_frame_indices(available, frames, stride, generator)
        clip_length = min(available, (frames - 1) * stride + 1)
        start = indices[0]
        assert 0 <= start <= available - clip_length
        np.testing.assert_array_equal(indices, np.linspace(start, start + clip_length - 1, frames, dtype=int))


def test_flip_is_random_and_exact(clips):
    base = dict(csv_path=str(webvid_csv(clips, ["clip0"])), video_folder=str(clips), num_frames=4, size=SIZE)
    flipping = VideoDataset(VideoDataConfig(**base, random_flip=True))
    fixed = VideoDataset(VideoDataConfig(**base, random_flip=False))
    seen = set()
    for epoch in range(8):
        flipping.set_epoch(epoch)
        fixed.set_epoch(epoch)
        plain, maybe_flipped = fixed[0]["pixel_values"], flipping[0]["pixel_values"]
        assert not is_flipped(plain)
        seen.add(is_flipped(maybe_flipped))
        # Same seed, same draws: the flipping dataset gives the plain item or exactly its mirror image.
        expected = plain.flip(-1) if is_flipped(maybe_flipped) else plain
        assert torch.allclose(maybe_flipped, expected, atol=1e-5)
    assert seen == {True, False}


def test_image_mode_gives_one_frame(clips):
    dataset = VideoDataset(VideoDataConfig(csv_path=str(webvid_csv(clips, ["clip0"])), video_folder=str(clips),
                                           size=SIZE, image_mode=True, random_flip=False))
    picked = set()
    for epoch in range(5):
        dataset.set_epoch(epoch)
        pixel_values = dataset[0]["pixel_values"]
        assert pixel_values.shape == (3, SIZE, SIZE)
        (index,) = frame_indices(pixel_values[None])
        assert 0 <= index < FRAMES
        picked.add(index)
    assert len(picked) > 1


def test_plain_jsonl_paths_relative_to_the_index_and_non_square_size(clips):
    index = clips / "plain.jsonl"
    index.write_text("\n".join(json.dumps({"path": f"{name}.mp4", "caption": name}) for name in ("clip0", "clip1")))
    dataset = VideoDataset(VideoDataConfig(jsonl_path=str(index), num_frames=2, size=(16, 32)))
    assert [dataset[i]["text"] for i in range(2)] == ["clip0", "clip1"]
    assert dataset[0]["pixel_values"].shape == (2, 3, 16, 32)  # 48x64 -> 24x32 (width decides) -> crop rows 4..19
    assert not dataset.skipped

    # Paths under video_folder win; paths relative to the index folder still resolve when video_folder is set.
    nested = clips.parent / "nested.csv"  # the index sits one folder above the clips
    nested.write_text(f"path,caption\n{clips.name}/clip0.mp4,from index dir\nclip1.mp4,from video folder\n")
    dataset = VideoDataset(VideoDataConfig(csv_path=str(nested), video_folder=str(clips), num_frames=2, size=SIZE))
    assert [dataset[i]["text"] for i in range(2)] == ["from index dir", "from video folder"]
    assert not dataset.skipped


def test_video_transform_resize_and_crop_by_hand():
    frame = torch.arange(4 * 6, dtype=torch.uint8).reshape(1, 4, 6, 1).expand(1, 4, 6, 3) * 10  # (f, h, w, c)
    out = video_transform(frame, (4, 4), flip=False)  # no resize (short side already 4), crop columns 1..4
    expected = (frame[0, :, 1:5, 0].float() / 255 - 0.5) / 0.5
    assert torch.equal(out[0, 0], expected)
    flipped = video_transform(frame, (4, 4), flip=True)  # flip first, then crop columns 1..4 of the mirror
    assert torch.equal(flipped[0, 0], ((frame[0, :, :, 0].flip(-1)[:, 1:5].float() / 255) - 0.5) / 0.5)


def test_reproducible_per_seed_epoch_and_rank(clips):
    config = VideoDataConfig(csv_path=str(webvid_csv(clips, ["clip0", "clip1"])), video_folder=str(clips),
                             num_frames=2, sample_stride=1, size=SIZE)

    def draws(dataset):
        return [frame_indices(dataset[i]["pixel_values"]) + [is_flipped(dataset[i]["pixel_values"])] for i in range(2)]

    first, again = VideoDataset(config), VideoDataset(config)
    assert draws(first) == draws(again)
    epochs = [draws(first)]
    for epoch in range(1, 4):
        first.set_epoch(epoch)
        epochs.append(draws(first))
    assert len({str(value) for value in epochs}) > 1
    first.set_epoch(0)
    assert any(draws(VideoDataset(config, rank=rank)) != draws(first) for rank in (1, 2, 3))


def test_bad_files_are_skipped_counted_and_warned_once(clips, caplog):
    index = webvid_csv(clips, ["clip0", "corrupt", "short", "missing"], name="mixed.csv")
    dataset = VideoDataset(VideoDataConfig(csv_path=str(index), video_folder=str(clips), num_frames=4, size=SIZE))
    with caplog.at_level(logging.WARNING, logger="zoetrope.training.data"):
        for epoch in range(2):
            dataset.set_epoch(epoch)
            for position in range(len(dataset)):
                item = dataset[position]  # never raises
                assert item["text"] == "caption of clip0"
                assert item["pixel_values"].shape == (4, 3, SIZE, SIZE)
    assert set(dataset.skipped) == {"unreadable", "too_short", "missing"}
    assert all(count >= 2 for count in dataset.skipped.values())  # each bad item was asked for in both epochs
    warned = [record.getMessage() for record in caplog.records]
    for name in ("corrupt.mp4", "short.mp4", "missing.mp4"):
        assert sum(name in message for message in warned) == 1


def test_only_bad_files_raise_a_clear_media_error(clips):
    index = webvid_csv(clips, ["corrupt", "short", "missing"], name="bad.csv")
    dataset = VideoDataset(VideoDataConfig(csv_path=str(index), video_folder=str(clips), num_frames=4,
                                           max_consecutive_failures=6))
    with pytest.raises(MediaError, match=r"bad\.csv: 6 items in a row failed.*unusable"):
        dataset[0]
    assert sum(dataset.skipped.values()) == 6


def test_index_errors_name_the_file_and_columns(tmp_path):
    index = tmp_path / "wrong.csv"
    index.write_text("video,text\na.mp4,hello\n")
    with pytest.raises(ConfigError, match=r"wrong\.csv: columns found \['text', 'video'\]"):
        VideoDataset(VideoDataConfig(csv_path=str(index)))
    jsonl = tmp_path / "partial.jsonl"
    jsonl.write_text('{"path": "a.mp4", "caption": "x"}\n{"path": "b.mp4"}\n')
    with pytest.raises(ConfigError, match=r"partial\.jsonl: row 2 lacks \['caption'\]"):
        VideoDataset(VideoDataConfig(jsonl_path=str(jsonl)))
    with pytest.raises(ConfigError, match="exactly one"):
        VideoDataConfig()
    with pytest.raises(ConfigError, match="no such file"):
        VideoDataset(VideoDataConfig(csv_path=str(tmp_path / "absent.csv")))
    with pytest.raises(ConfigError, match="num_frames"):
        VideoDataConfig(csv_path="x.csv", num_frames=0)


def test_dataloader_batches(clips):
    dataset = VideoDataset(VideoDataConfig(csv_path=str(webvid_csv(clips, ["clip0", "clip1"])),
                                           video_folder=str(clips), num_frames=3, size=SIZE))
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch["pixel_values"].shape == (2, 3, 3, SIZE, SIZE)
    assert batch["text"] == ["caption of clip0", "caption of clip1"]


def test_image_folder_with_txt_captions_and_jsonl(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index, value in enumerate((50, 200)):
        Image.fromarray(np.full((20, 30, 3), value, np.uint8)).save(folder / f"img{index}.png")
        (folder / f"img{index}.txt").write_text(f"a grey image {index}\n")
    (folder / "broken.png").write_bytes(b"not a png")
    dataset = ImageFolderDataset(ImageDataConfig(folder=str(folder), size=16))
    assert len(dataset) == 3
    items = [dataset[i] for i in range(3)]
    assert all(item["pixel_values"].shape == (3, 16, 16) for item in items)
    assert dataset.skipped["unreadable"] >= 1 and set(dataset.skipped) == {"unreadable"}
    assert items[1]["text"] == "a grey image 0"
    assert torch.allclose(items[1]["pixel_values"], torch.full((3, 16, 16), 50 / 255 * 2 - 1), atol=1e-6)

    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "img1.png", "text": "from jsonl"}) + "\n")
    indexed = ImageFolderDataset(ImageDataConfig(folder=str(folder), size=(8, 12)))
    assert len(indexed) == 1 and indexed[0]["text"] == "from jsonl"
    assert indexed[0]["pixel_values"].shape == (3, 8, 12)

    (folder / "metadata.jsonl").write_text(json.dumps({"image": "img1.png"}) + "\n")
    with pytest.raises(ConfigError, match=r"metadata\.jsonl:1: keys found \['image'\]"):
        ImageFolderDataset(ImageDataConfig(folder=str(folder)))
    with pytest.raises(ConfigError, match="no such folder"):
        ImageFolderDataset(ImageDataConfig(folder=str(tmp_path / "nope")))
