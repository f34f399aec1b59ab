"""Noise priors (statistics, reproducibility, FreeNoise structure) and FreeInit filters/mixing."""

from __future__ import annotations

import math

import pytest
import torch

from zoetrope.errors import ConfigError
from zoetrope.sampling.noise import (
    NOISE_PRIORS,
    freeinit_filter,
    freeinit_mix,
    freenoise_shuffle,
    make_noise,
)

LARGE = (4, 4, 6, 32, 32)  # 16384 values per frame: std/corr within ~0.03


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def frame_correlation(noise: torch.Tensor, i: int, j: int) -> float:
    a, b = noise[:, :, i].flatten(), noise[:, :, j].flatten()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@pytest.mark.parametrize("kind", sorted(NOISE_PRIORS))
def test_unit_variance_per_frame(kind):
    noise = make_noise(kind, LARGE, gen(1))
    assert noise.shape == LARGE and noise.dtype == torch.float32
    for frame in range(LARGE[2]):
        values = noise[:, :, frame]
        assert abs(float(values.mean())) < 0.03
        assert abs(float(values.std()) - 1.0) < 0.03


def test_independent_frames_uncorrelated():
    noise = make_noise("independent", LARGE, gen(2))
    for i in range(LARGE[2]):
        for j in range(i + 1, LARGE[2]):
            assert abs(frame_correlation(noise, i, j)) < 0.04


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_pyoco_mixed_correlation(alpha):
    noise = make_noise("pyoco_mixed", LARGE, gen(3), alpha=alpha)
    expected = alpha**2 / (1 + alpha**2)
    for i, j in [(0, 1), (0, 5), (2, 4)]:
        assert abs(frame_correlation(noise, i, j) - expected) < 0.04


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_pyoco_progressive_correlation(alpha):
    noise = make_noise("pyoco_progressive", LARGE, gen(4), alpha=alpha)
    neighbour = alpha / math.sqrt(1 + alpha**2)
    for i in range(LARGE[2] - 1):
        assert abs(frame_correlation(noise, i, i + 1) - neighbour) < 0.04
    assert abs(frame_correlation(noise, 0, 3) - neighbour**3) < 0.05


def test_constant_is_one_frame_repeated():
    noise = make_noise("constant", (2, 4, 5, 8, 8), gen(5))
    for frame in range(1, 5):
        assert torch.equal(noise[:, :, frame], noise[:, :, 0])


def test_repeated_window():
    noise = make_noise("repeated_window", (1, 4, 11, 8, 8), gen(6), window=4)
    for frame in range(11):
        assert torch.equal(noise[:, :, frame], noise[:, :, frame % 4])
    assert not torch.equal(noise[:, :, 0], noise[:, :, 1])


def test_freenoise_shuffle_structure():
    window, stride, frames = 16, 4, 37  # the last chunk (36) is partial
    noise = make_noise("freenoise_shuffle", (2, 4, frames, 8, 8), gen(7), window=window, stride=stride)
    independent = make_noise("independent", (2, 4, window, 8, 8), gen(7))
    assert torch.equal(noise[:, :, :window], independent)  # the first window is plain noise
    for start in range(window, frames, stride):
        chunk = min(stride, frames - start)
        sources = list(range(start - window, start - window + stride))
        matched = []
        for frame in range(start, start + chunk):
            hits = [s for s in sources if torch.equal(noise[:, :, frame], noise[:, :, s])]
            assert len(hits) == 1
            matched.append(hits[0])
        assert len(set(matched)) == chunk  # a permutation of the source frames, no repeats
    # every frame is a copy of one of the first-window frames
    for frame in range(frames):
        assert any(torch.equal(noise[:, :, frame], noise[:, :, s]) for s in range(window))
    # shuffles actually happen somewhere
    assert not all(torch.equal(noise[:, :, f], noise[:, :, f - window]) for f in range(window, frames))


def test_freenoise_per_video_generators_shuffle_independently():
    generators = [gen(10), gen(11)]
    noise = freenoise_shuffle((2, 1, 64, 2, 2), generators, window=16, stride=4)
    first, second = [torch.Generator().manual_seed(s) for s in (10, 11)]
    assert torch.equal(noise[0:1], freenoise_shuffle((1, 1, 64, 2, 2), first))
    assert torch.equal(noise[1:2], freenoise_shuffle((1, 1, 64, 2, 2), second))


@pytest.mark.parametrize("kind", sorted(NOISE_PRIORS))
def test_same_seed_same_noise_and_prefix_stable(kind):
    shape_short, shape_long = (2, 4, 20, 8, 8), (2, 4, 45, 8, 8)
    a = make_noise(kind, shape_short, gen(12))
    b = make_noise(kind, shape_short, gen(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, make_noise(kind, shape_short, gen(13)))
    # frame k does not depend on the total length (all lengths above the 16-frame window)
    longer = make_noise(kind, shape_long, gen(12))
    assert torch.equal(longer[:, :, :20], a)


def test_independent_per_frame_reproducible_for_any_length():
    reference = make_noise("independent", (1, 4, 24, 8, 8), gen(14))
    for frames in (1, 3, 16, 17, 24):
        assert torch.equal(make_noise("independent", (1, 4, frames, 8, 8), gen(14)), reference[:, :, :frames])


def test_generator_list_gives_batch_size_independent_videos():
    together = make_noise("pyoco_progressive", (3, 4, 6, 8, 8), [gen(20), gen(21), gen(22)])
    alone = make_noise("pyoco_progressive", (1, 4, 6, 8, 8), [gen(21)])
    assert torch.equal(together[1:2], alone)
    with pytest.raises(ConfigError, match="2 generators for a batch of 3"):
        make_noise("independent", (3, 4, 6, 8, 8), [gen(1), gen(2)])


def test_make_noise_device_dtype_and_errors():
    noise = make_noise("independent", (1, 4, 2, 8, 8), gen(0), dtype=torch.float16)
    assert noise.dtype == torch.float16
    with pytest.raises(ConfigError, match="unknown noise prior"):
        make_noise("pink", (1, 4, 2, 8, 8), gen(0))
    with pytest.raises(ConfigError, match="unknown parameter"):
        make_noise("independent", (1, 4, 2, 8, 8), gen(0), alpha=1.0)
    with pytest.raises(ConfigError, match="expected 5 positive sizes"):
        make_noise("independent", (4, 2, 8, 8), gen(0))
    with pytest.raises(ConfigError, match="stride"):
        make_noise("freenoise_shuffle", (1, 4, 2, 8, 8), gen(0), window=4, stride=8)


# -- FreeInit -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gaussian", "butterworth", "ideal", "box"])
@pytest.mark.parametrize("shape", [(16, 8, 8), (7, 9, 5), (1, 8, 8)])
def test_freeinit_filter_passes_low_band(kind, shape):
    mask = freeinit_filter(shape, kind)
    assert mask.shape == shape
    assert float(mask[0, 0, 0]) == 1.0  # DC passes untouched
    assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
    frames, height, width = shape
    # the highest spatial frequency (Nyquist) is cut
    assert float(mask[0, height // 2, width // 2]) < 1e-3
    if frames > 1:
        assert float(mask[frames // 2, height // 2, width // 2]) < 1e-3
    # symmetric under frequency negation, so mixing real tensors stays real
    flip_t, flip_h, flip_w = ((-torch.arange(size)) % size for size in shape)
    negated = mask[flip_t][:, flip_h][:, :, flip_w]
    assert torch.equal(mask, negated)


def test_freeinit_filter_matches_reference_grid_for_even_sizes():
    frames, height, width, d_s, d_t, order = 8, 16, 12, 0.25, 0.5, 4
    t = (2 * torch.arange(frames) / frames - 1).view(-1, 1, 1)
    h = (2 * torch.arange(height) / height - 1).view(1, -1, 1)
    w = (2 * torch.arange(width) / width - 1).view(1, 1, -1)
    distance_sq = ((d_s / d_t) * t) ** 2 + h**2 + w**2  # the reference's fftshifted grid
    reference = torch.fft.ifftshift(1 / (1 + (distance_sq / d_s**2) ** order))
    ours = freeinit_filter((frames, height, width), "butterworth", d_s, d_t, order)
    assert torch.allclose(ours, reference, atol=1e-6)
    gaussian = torch.fft.ifftshift(torch.exp(-distance_sq / (2 * d_s**2)))
    assert torch.allclose(freeinit_filter((frames, height, width), "gaussian", d_s, d_t), gaussian, atol=1e-6)


def test_freeinit_ideal_uses_ds_squared_not_the_legacy_bug():
    shape = (16, 64, 64)
    correct = float(freeinit_filter(shape, "ideal").mean())
    legacy = float(freeinit_filter(shape, "ideal", legacy_ideal=True).mean())
    sphere = lambda radius: 4 / 3 * math.pi * radius**3 / 8  # fraction of the [-1, 1)^3 cube
    assert abs(correct - sphere(0.25)) < 0.003  # ~0.8 %
    assert abs(legacy - sphere(math.sqrt(0.5))) < 0.01  # ~18.5 %, the reference code's d_s*2


def test_freeinit_filter_errors():
    with pytest.raises(ConfigError, match="filter='sharp'"):
        freeinit_filter((4, 8, 8), "sharp")
    with pytest.raises(ConfigError, match="expected \\(frames, height, width\\)"):
        freeinit_filter((8, 8), "gaussian")


def test_freeinit_mix_endpoints_and_dc():
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 6, 8, 8)
    fresh = torch.randn(2, 4, 6, 8, 8)
    assert torch.allclose(freeinit_mix(latents, fresh, torch.ones(6, 8, 8)), latents, atol=1e-5)
    assert torch.allclose(freeinit_mix(latents, fresh, torch.zeros(6, 8, 8)), fresh, atol=1e-5)
    dc_only = torch.zeros(6, 8, 8)
    dc_only[0, 0, 0] = 1
    mixed = freeinit_mix(latents, fresh, dc_only)
    dims = (2, 3, 4)
    expected = latents.mean(dims, keepdim=True) + fresh - fresh.mean(dims, keepdim=True)
    assert torch.allclose(mixed, expected, atol=1e-5)
    half = freeinit_mix(latents.half(), fresh.half(), freeinit_filter((6, 8, 8)))
    assert half.dtype == torch.float16
    with pytest.raises(ConfigError, match="does not match"):
        freeinit_mix(latents, fresh, torch.ones(6, 8, 9))


def test_zoom_warped_magnifies_a_shared_field_about_the_centre():
    """With the fresh part switched off (alpha huge) frame k is frame 0 magnified by zoom^(k/15) about the centre
    (nearest pixel); with alpha = 2 frames correlate at 4/5 where they read the same pixel of the shared field."""
    shape = (1, 2, 16, 16, 16)
    pure = make_noise("zoom_warped", shape, gen(5), zoom=2.0, alpha=1e6)
    first, last = pure[0, :, 0], pure[0, :, 15]
    # pixel centres at offset d from the frame's centre read frame 0 at d / 2: the centre 2x2 block of the last
    # frame repeats frame 0's centre pixels, and its corner reads frame 0 half way out
    torch.testing.assert_close(last[:, 7:9, 7:9], first[:, 7:9, 7:9], atol=1e-5, rtol=0)
    torch.testing.assert_close(last[:, 0, 0], first[:, 4, 4], atol=1e-5, rtol=0)
    torch.testing.assert_close(last[:, 15, 15], first[:, 11, 11], atol=1e-5, rtol=0)
    assert not torch.allclose(last, first)
    unwarped = make_noise("zoom_warped", LARGE, gen(6), zoom=1.0, alpha=2.0)
    assert abs(frame_correlation(unwarped, 0, 5) - 0.8) < 0.04  # zoom 1 is pyoco_mixed's correlation
    out = make_noise("zoom_warped", shape, gen(7), zoom=0.5, alpha=1e6)  # a zoom out: frame 0 magnified from the end
    torch.testing.assert_close(out[0, :, 0, 0, 0], out[0, :, 15, 4, 4], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="zoom_warped zoom=0"):
        make_noise("zoom_warped", shape, gen(0), zoom=0.0)
