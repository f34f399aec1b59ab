"""media.py: every format round-trips frames, frame rate and metadata; bad paths and files raise MediaError."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from zoetrope.errors import InputError, MediaError
from zoetrope.media import frames_to_uint8, make_grid, psnr, read_image, read_metadata, read_video, save_video

METADATA = {"prompt": "a red square, naïve café", "seed": 1234, "settings": {"steps": 25, "guidance_scale": 7.5}}



def moving_square(frames: int = 8, height: int = 64, width: int = 64, flat: bool = False) -> np.ndarray:
    """uint8 (f, h, w, 3): a square moving 4 px a frame over a soft gradient (or a flat colour, <= 256 colours).

    The first two frames are identical on purpose: GIF and WebP encoders merge them, the readers must split them.
    """
    rows, columns = np.mgrid[0:height, 0:width]
    background = np.stack([60 + rows, 90 + columns // 2, 160 - rows // 2], axis=-1)
    if flat:
        background = np.broadcast_to(np.array([30, 60, 200]), (height, width, 3))
    clip = np.repeat(background[None], frames, axis=0).astype(np.uint8).copy()
    for index in range(frames):
        left = 4 + 4 * max(index - 1, 0)
        clip[index, 16:36, left : left + 20] = (200, 120, 90)
    return clip


@pytest.mark.parametrize("suffix", [".gif", ".mp4", ".webp", "", ".png"])
def test_round_trip_frames_fps_metadata(tmp_path, suffix):
    flat = suffix == ".gif"  # a GIF is exact only with few colours
    clip = moving_square(flat=flat)
    target = tmp_path / ("frames_%03d.png" if suffix == ".png" else f"clip{suffix}")
    written = save_video(clip, target, fps=8, metadata=METADATA)
    assert written == target
    frames, fps = read_video(written)
    assert frames.dtype == np.uint8 and frames.shape == clip.shape
    assert fps == pytest.approx(8.0)
    if suffix in (".gif", "", ".png"):
        np.testing.assert_array_equal(frames, clip)
    else:
        assert psnr(frames, clip) > 30
    assert read_metadata(written) == METADATA
    sidecar = tmp_path / "metadata.json" if suffix in ("", ".png") else tmp_path / f"clip{suffix}.json"
    if suffix == "":
        sidecar = target / "metadata.json"
    assert json.loads(sidecar.read_text(encoding="utf-8")) == METADATA
    assert not [item for item in tmp_path.rglob("*.tmp")]  # atomic writes leave no temporaries


def test_metadata_is_embedded_not_only_in_sidecar(tmp_path):
    clip = moving_square(flat=True)
    for name in ("a.gif", "a.mp4", "a.webp"):
        save_video(clip, tmp_path / name, metadata=METADATA)
        (tmp_path / f"{name}.json").unlink()
        assert read_metadata(tmp_path / name) == METADATA, name
    save_video(clip, tmp_path / "folder", metadata=METADATA)
    (tmp_path / "folder" / "metadata.json").unlink()
    assert read_metadata(tmp_path / "folder") == METADATA
    assert Image.open(tmp_path / "folder" / "frame_00000.png").text["zoetrope"]


def test_no_metadata_gives_empty_dict_and_no_sidecar(tmp_path):
    save_video(moving_square(), tmp_path / "a.mp4")
    assert read_metadata(tmp_path / "a.mp4") == {}
    assert not (tmp_path / "a.mp4.json").exists()


def test_float_tensor_input_is_clamped_and_rounded(tmp_path):
    tensor = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5]).reshape(1, 1, 1, 5).expand(3, 2, 4, 5)  # (c, f, h, w)
    frames = frames_to_uint8(tensor)
    assert frames.shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(frames[0, 0, :, 0], [0, 0, 128, 255, 255])
    save_video(tensor, tmp_path / "t")
    np.testing.assert_array_equal(read_video(tmp_path / "t")[0], frames)


def test_pil_list_and_uint8_tensor_inputs_agree(tmp_path):
    clip = moving_square(frames=3)
    from_pil = frames_to_uint8([Image.fromarray(frame) for frame in clip])
    from_tensor = frames_to_uint8(torch.from_numpy(clip))
    np.testing.assert_array_equal(from_pil, clip)
    np.testing.assert_array_equal(from_tensor, clip)


def test_odd_size_mp4_is_padded_with_edge_pixels(tmp_path):
    clip = moving_square(frames=4, height=33, width=47)
    frames, _ = read_video(save_video(clip, tmp_path / "odd.mp4"))
    assert frames.shape == (4, 34, 48, 3)
    assert psnr(frames[:, :33, :47], clip) > 30


@pytest.mark.parametrize("fps", [12, 24, 7.5])
def test_gif_rate_is_exact_on_average(tmp_path, fps):
    clip = moving_square(frames=12, flat=True)
    frames, read_fps = read_video(save_video(clip, tmp_path / "a.gif", fps=fps))
    assert len(frames) == 12
    assert read_fps == pytest.approx(fps, rel=0.05)  # 10 ms ticks: 12 frames at 24 fps last 500 ms, not 500.0


def test_max_frames(tmp_path):
    clip = moving_square()
    for name in ("a.mp4", "a.gif", "a.webp", "folder"):
        frames, _ = read_video(save_video(clip, tmp_path / name), max_frames=3)
        assert frames.shape[0] == 3, name


def test_folder_resave_removes_stale_frames_and_sorts_naturally(tmp_path):
    save_video(moving_square(frames=12), tmp_path / "out")
    save_video(moving_square(frames=5), tmp_path / "out")
    assert len(read_video(tmp_path / "out")[0]) == 5
    folder = tmp_path / "loose"
    folder.mkdir()
    for index in (10, 2, 1):
        Image.fromarray(np.full((4, 4, 3), index, np.uint8)).save(folder / f"img{index}.png")
    frames, fps = read_video(folder)
    assert frames[:, 0, 0, 0].tolist() == [1, 2, 10]
    assert fps == 8.0


def test_single_image_and_read_image(tmp_path):
    image = moving_square(frames=1, height=40, width=80)[0]
    written = save_video(image[None], tmp_path / "one.png", metadata={"seed": 1})
    frames, _ = read_video(written)
    np.testing.assert_array_equal(frames[0], image)
    assert read_metadata(written) == {"seed": 1}
    np.testing.assert_array_equal(read_image(written), image)
    cropped = read_image(written, size=20)  # 40x80 -> 20x40 -> centre 20x20
    assert cropped.shape == (20, 20, 3)
    expected = np.asarray(Image.fromarray(image).resize((40, 20), Image.Resampling.BICUBIC))[:, 10:30]
    np.testing.assert_array_equal(cropped, expected)
    assert read_image(written, size=(10, 30)).shape == (10, 30, 3)


def test_make_grid_places_videos_row_major():
    videos = [torch.full((3, 2, 4, 6), float(index)) for index in range(5)]
    grid = make_grid(videos, columns=2)
    assert grid.shape == (3, 2, 12, 12)
    for index in range(5):
        row, column = divmod(index, 2)
        assert torch.all(grid[:, :, row * 4 : (row + 1) * 4, column * 6 : (column + 1) * 6] == index)
    assert torch.all(grid[:, :, 8:, 6:] == 0)  # the empty sixth cell is black
    with pytest.raises(InputError, match="shapes"):
        make_grid([videos[0], torch.zeros(3, 3, 4, 6)], columns=2)


def test_unknown_suffix_names_it_and_the_supported_ones(tmp_path):
    with pytest.raises(MediaError, match=r"'\.avi'.*\.gif, \.mp4, \.webp"):
        save_video(moving_square(), tmp_path / "clip.avi")


def test_many_frames_to_plain_png_is_refused(tmp_path):
    with pytest.raises(MediaError, match="pattern like"):
        save_video(moving_square(), tmp_path / "clip.png")


def test_bad_frames_raise_input_error():
    with pytest.raises(InputError, match="shape"):
        frames_to_uint8(torch.zeros(3, 8, 8))
    with pytest.raises(InputError, match="channels"):
        frames_to_uint8(np.zeros((2, 8, 8, 5), np.uint8))
    with pytest.raises(InputError, match="dtype"):
        frames_to_uint8(np.zeros((2, 8, 8, 3), np.int64))


def test_unreadable_missing_and_empty_files_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    bad_gif = tmp_path / "bad.gif"
    bad_gif.write_bytes(b"GIF89a not really")
    for path in (corrupt, empty, bad_gif, tmp_path / "missing.mp4", tmp_path / "no_folder"):
        with pytest.raises(MediaError, match=path.name):
            read_video(path)
    with pytest.raises(MediaError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(MediaError, match="no image frames"):
        read_video(tmp_path / "empty_folder")


def test_bfloat16_tensor_and_stale_sidecar(tmp_path):
    clip = torch.rand(3, 2, 8, 8).to(torch.bfloat16)
    expected = np.round(rearrange_to_uint8(clip.float()))
    np.testing.assert_array_equal(frames_to_uint8(clip), expected)
    save_video(clip, tmp_path / "a.gif", metadata={"seed": 1})
    save_video(clip, tmp_path / "a.gif")  # re-save without metadata: the old sidecar no longer describes the file
    assert not (tmp_path / "a.gif.json").exists()
    assert read_metadata(tmp_path / "a.gif") == {}


def rearrange_to_uint8(clip: torch.Tensor) -> np.ndarray:
    return (clip.clamp(0, 1) * 255).permute(1, 2, 3, 0).numpy()
