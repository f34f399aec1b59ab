"""Colour matching of frames to keyframe pictures: interpolation weights and the per-channel transfer."""

from __future__ import annotations

import pytest
import torch

from zoetrope.errors import ConfigError, InputError
from zoetrope.sampling.colors import channel_statistics, keyframe_weights, match_colors


def _two_colour_frame(background: list[float], foreground: list[float], column: int, size: int = 16) -> torch.Tensor:
    """(3, size, size): a background with a 4x4 square whose left edge is at `column`."""
    frame = torch.tensor(background).view(3, 1, 1).repeat(1, size, size)
    frame[:, 6:10, column : column + 4] = torch.tensor(foreground).view(3, 1, 1)
    return frame


def test_weights_are_one_hot_at_keyframes_and_linear_between() -> None:
    weights = keyframe_weights([8, 0], 10)  # given out of order: columns follow the given order
    assert torch.allclose(weights.sum(dim=1), torch.ones(10, dtype=torch.float64))
    assert weights[0].tolist() == [0.0, 1.0] and weights[8].tolist() == [1.0, 0.0]
    assert weights[9].tolist() == [1.0, 0.0]  # after the last keyframe: the last keyframe alone
    assert weights[2].tolist() == pytest.approx([0.25, 0.75])
    single = keyframe_weights([3], 5)
    assert single.eq(1.0).all()


def test_weights_refuse_bad_indices() -> None:
    with pytest.raises(InputError, match="distinct"):
        keyframe_weights([0, 0], 4)
    with pytest.raises(InputError, match="distinct"):
        keyframe_weights([5], 4)
    with pytest.raises(InputError, match="at least one"):
        keyframe_weights([], 4)


def test_flat_colours_map_onto_the_reference_colours() -> None:
    """A navy-on-grey failure: the generated frames have the reference's layout in other colours; matching gives
    the reference's colours back wherever the object is (same area), which a global offset alone would not."""
    navy, magenta = [0.0, 0.0, 0.5], [1.0, 0.0, 1.0]
    grey, pink = [0.5, 0.5, 0.5], [0.9, 0.3, 0.8]
    reference = _two_colour_frame(navy, magenta, 2)
    frames = torch.stack([_two_colour_frame(grey, pink, column) for column in (2, 6, 10)], dim=1)  # c f h w
    matched = match_colors(frames, reference[None], [0])
    expected = torch.stack([_two_colour_frame(navy, magenta, column) for column in (2, 6, 10)], dim=1)
    # blue and red keep their contrast sign, so both colours land exactly; green has no contrast in the reference
    assert torch.allclose(matched[[0, 2]], expected[[0, 2]], atol=1e-5)
    assert matched[1].std() < 0.01 and abs(matched[1].mean().item()) < 0.01
    assert torch.equal(match_colors(frames, reference[None], [0], strength=0.0), frames)
    half = match_colors(frames, reference[None], [0], strength=0.5)
    assert torch.allclose(half[[0, 2]], (frames[[0, 2]] + expected[[0, 2]]) / 2, atol=1e-5)  # (green is clamped)


def test_interpolation_fades_between_the_references() -> None:
    first, last = torch.full((3, 8, 8), 0.2), torch.full((3, 8, 8), 0.6)
    first[:, :4], last[:, :4] = 0.4, 0.75  # some contrast in each
    frames = torch.rand(3, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    matched = match_colors(frames, torch.stack([first, last]), [0, 4])
    mean, std = channel_statistics(matched)
    reference_mean, reference_std = channel_statistics(torch.stack([first, last], dim=1))
    assert torch.allclose(mean[:, 0], reference_mean[:, 0], atol=1e-5)
    assert torch.allclose(mean[:, 4], reference_mean[:, 1], atol=1e-5)
    assert torch.allclose(mean[:, 2], reference_mean.mean(dim=1), atol=1e-5)  # the middle frame: half of each
    assert torch.allclose(std[:, 2], reference_std.mean(dim=1), atol=1e-5)
    assert matched.dtype == frames.dtype and matched.min() >= 0 and matched.max() <= 1


def test_flat_frames_are_not_stretched_into_noise() -> None:
    reference = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    flat = torch.full((3, 2, 8, 8), 0.5)
    flat[:, :, 0, 0] += 1e-4  # almost no contrast: the gain is capped, not 1e3
    matched = match_colors(flat, reference, [0])
    assert (matched - matched.mean(dim=(2, 3), keepdim=True)).abs().max() < 1e-3


def test_bad_arguments_are_named() -> None:
    frames = torch.rand(3, 4, 8, 8)
    with pytest.raises(ConfigError, match="strength"):
        match_colors(frames, torch.rand(1, 3, 8, 8), [0], strength=1.5)
    with pytest.raises(InputError, match="references"):
        match_colors(frames, torch.rand(2, 3, 8, 8), [0])
