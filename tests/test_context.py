"""Context windows: coverage, exact lengths, no wrap unless closed loop, dilation, fusion, wrapped predict."""

from __future__ import annotations

import itertools

import pytest
import torch

from zoetrope.errors import ConfigError, FrameCountError
from zoetrope.sampling.context import (
    ContextConfig,
    context_windows,
    describe_windows,
    fuse_windows,
    fusion_weights,
    ordered_halving,
    wrap_predict_with_context,
)

FRAME_COUNTS = [1, 5, 15, 16, 17, 20, 23, 31, 32, 33, 37, 50, 64, 97]
SHAPES = [(16, 4), (16, 0), (16, 8), (16, 15), (8, 2), (8, 3), (5, 1), (4, 3), (3, 0), (1, 0)]
STRIDES = [1, 2, 3, 4]
STEPS = (0, 1, 2, 5)


def all_cases():
    for num_frames, (length, overlap), stride, schedule, closed in itertools.product(
        FRAME_COUNTS, SHAPES, STRIDES, ("uniform", "static"), (False, True)
    ):
        yield num_frames, ContextConfig(length, overlap, stride, schedule, closed)


def _is_wrapped(window: list[int]) -> bool:
    return any(b < a for a, b in zip(window, window[1:]))


def test_invariants_for_many_configs():
    checked = 0
    for num_frames, config in all_cases():
        for step in STEPS:
            windows = context_windows(num_frames, step, config)
            covered = set().union(*map(set, windows))
            assert covered == set(range(num_frames)), (num_frames, config, step)
            for window in windows:
                assert len(set(window)) == len(window)
                assert all(0 <= frame < num_frames for frame in window)
                if num_frames <= config.length:
                    assert window == list(range(num_frames))
                else:
                    assert len(window) == config.length, (num_frames, config, step, window)
                if not config.closed_loop:
                    assert not _is_wrapped(window), (num_frames, config, step, window)
                    differences = {b - a for a, b in zip(window, window[1:])}
                    assert len(differences) <= 1  # evenly spaced: contiguous or one dilation
                    if differences:
                        assert differences.pop() <= config.stride
            checked += 1
    assert checked > 5000


def test_single_window_when_short():
    for closed in (False, True):
        config = ContextConfig(length=16, overlap=4, closed_loop=closed)
        for num_frames in (1, 7, 16):
            assert context_windows(num_frames, 3, config) == [list(range(num_frames))]


def test_static_windows_match_ade_standard_static():
    config = ContextConfig(length=16, overlap=4, schedule="static")
    expected = [list(range(0, 16)), list(range(12, 28)), list(range(16, 32))]
    for step in range(5):
        assert context_windows(32, step, config) == expected


def test_uniform_rotates_and_static_does_not():
    uniform = ContextConfig(length=16, overlap=4, schedule="uniform")
    static = ContextConfig(length=16, overlap=4, schedule="static")
    uniform_steps = {tuple(map(tuple, context_windows(40, step, uniform))) for step in range(8)}
    static_steps = {tuple(map(tuple, context_windows(40, step, static))) for step in range(8)}
    assert len(uniform_steps) > 3
    assert len(static_steps) == 1
    # Seams move: the interior window starts differ between step 0 and step 1.
    starts = [{w[0] for w in context_windows(40, step, uniform)} for step in (0, 1)]
    assert starts[0] != starts[1]


def test_ordered_halving_is_van_der_corput():
    assert [ordered_halving(step) for step in range(8)] == [0, 0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875]


def test_no_wrap_unless_closed_loop():
    open_config = ContextConfig(length=16, overlap=4, schedule="uniform")
    closed_config = ContextConfig(length=16, overlap=4, schedule="uniform", closed_loop=True)
    for step in range(8):
        assert not any(_is_wrapped(w) for w in context_windows(32, step, open_config))
    wrapped = [any(_is_wrapped(w) for w in context_windows(32, step, closed_config)) for step in range(8)]
    assert any(wrapped)
    assert context_windows(32, 0, closed_config)[-1] == list(range(24, 32)) + list(range(0, 8))


def test_last_window_shifted_back_not_truncated():
    # 37 frames is not a multiple of the hop (12) or of the stride: FreeNoise's get_views would miss the tail.
    config = ContextConfig(length=16, overlap=4, stride=1, schedule="static")
    windows = context_windows(37, 0, config)
    assert windows[-1] == list(range(21, 37))
    assert all(len(w) == 16 for w in windows)


def test_dilated_windows_spacing_and_coverage_per_level():
    config = ContextConfig(length=8, overlap=2, stride=4, schedule="static")
    num_frames = 37  # not a multiple of 2 or 4
    windows = context_windows(num_frames, 0, config)
    by_dilation: dict[int, list[list[int]]] = {}
    for window in windows:
        by_dilation.setdefault(window[1] - window[0], []).append(window)
    assert set(by_dilation) == {1, 2, 4}
    for dilation, group in by_dilation.items():
        # each dilation level on its own covers every frame, and frames in a window are `dilation` apart
        assert set().union(*map(set, group)) == set(range(num_frames))
        for window in group:
            assert window == list(range(window[0], window[0] + 8 * dilation, dilation))


def test_dilation_skipped_when_too_few_frames():
    config = ContextConfig(length=16, overlap=4, stride=2, schedule="static")
    # 31 < 16*2: only contiguous windows
    assert all(w[1] - w[0] == 1 for w in context_windows(31, 0, config))
    assert any(w[1] - w[0] == 2 for w in context_windows(32, 0, config))


def test_non_power_of_two_stride_levels():
    config = ContextConfig(length=4, overlap=1, stride=3, schedule="static")
    dilations = {w[1] - w[0] for w in context_windows(40, 0, config)}
    assert dilations == {1, 2, 3}


@pytest.mark.parametrize(
    "fields, field",
    [
        (dict(length=0), "length"),
        (dict(overlap=16), "overlap"),
        (dict(overlap=-1), "overlap"),
        (dict(stride=0), "stride"),
        (dict(schedule="looped"), "schedule"),
        (dict(fuse="gauss"), "fuse"),
    ],
)
def test_bad_config_names_field(fields, field):
    with pytest.raises(ConfigError, match=f"context.{field}"):
        ContextConfig(**fields)


def test_bad_frame_count():
    with pytest.raises(FrameCountError, match="num_frames"):
        context_windows(0, 0, ContextConfig())


# -- fusion -----------------------------------------------------------------------------------------------------


def test_fusion_weights_shapes_and_values():
    assert torch.equal(fusion_weights(16, "flat"), torch.ones(16))
    pyramid = fusion_weights(16, "pyramid")
    assert pyramid.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 8, 7, 6, 5, 4, 3, 2, 1]
    assert fusion_weights(5, "pyramid").tolist() == [1, 2, 3, 2, 1]
    assert fusion_weights(1, "pyramid").tolist() == [1]
    for length in range(1, 20):
        weights = fusion_weights(length, "pyramid")
        assert weights.shape == (length,) and bool((weights > 0).all())
        assert torch.equal(weights, weights.flip(0))
        assert weights.argmax() in (length // 2, (length - 1) // 2)
    ramp = fusion_weights(8, "overlap-linear", overlap=3)
    assert torch.allclose(ramp, torch.tensor([0.25, 0.5, 0.75, 1, 1, 0.75, 0.5, 0.25]))
    open_start = fusion_weights(8, "overlap-linear", overlap=3, ramp_start=False)
    assert torch.allclose(open_start[:5], torch.ones(5))
    assert torch.equal(fusion_weights(8, "overlap-linear", overlap=0), torch.ones(8))
    with pytest.raises(ConfigError, match="fuse"):
        fusion_weights(8, "relative")


@pytest.mark.parametrize("kind", ["flat", "pyramid", "overlap-linear"])
def test_fuse_identical_windows_returns_input(kind):
    torch.manual_seed(0)
    full = torch.randn(2, 3, 37, 4, 5)
    for step in range(4):
        for closed in (False, True):
            config = ContextConfig(length=16, overlap=4, stride=2, closed_loop=closed, fuse=kind)
            windows = context_windows(37, step, config)
            outputs = [full[:, :, w] for w in windows]
            fused = fuse_windows(outputs, windows, 37, kind, overlap=4)
            assert torch.allclose(fused, full, atol=1e-6)


def test_fuse_weighted_average_by_hand():
    # two windows over 3 frames: [0, 1] with weights (1, 1) (flat), [1, 2]; frame 1 is the mean
    a = torch.full((1, 1, 2, 1, 1), 2.0)
    b = torch.full((1, 1, 2, 1, 1), 4.0)
    fused = fuse_windows([a, b], [[0, 1], [1, 2]], 3, "flat")
    assert fused.flatten().tolist() == [2.0, 3.0, 4.0]
    # pyramid on windows of 3: weights (1, 2, 1); frame 2 = (1*A + 2*B)/3 with windows [0,1,2], [1,2,3]... use 4 frames
    a = torch.full((1, 1, 3, 1, 1), 0.0)
    b = torch.full((1, 1, 3, 1, 1), 3.0)
    fused = fuse_windows([a, b], [[0, 1, 2], [1, 2, 3]], 4, "pyramid")
    assert torch.allclose(fused.flatten(), torch.tensor([0.0, 3 * 1 / 3, 3 * 2 / 3, 3.0]))


def test_fuse_keeps_dtype_and_rejects_gaps():
    half = torch.ones(1, 1, 4, 2, 2, dtype=torch.float16)
    assert fuse_windows([half], [[0, 1, 2, 3]], 4).dtype == torch.float16
    with pytest.raises(ConfigError, match=r"frames \[4\]"):
        fuse_windows([half], [[0, 1, 2, 3]], 5)
    with pytest.raises(ConfigError, match="one per window"):
        fuse_windows([half], [[0, 1, 2, 3], [1, 2, 3, 4]], 5)


# -- wrapped predict --------------------------------------------------------------------------------------------


def test_wrapped_predict_equals_plain_when_frame_local():
    torch.manual_seed(1)
    latents = torch.randn(2, 4, 41, 3, 3)
    per_frame_bias = torch.randn(41)

    def predict_frames(x, t, frame_indices):
        # elementwise in x, plus a per-frame input sliced by the window's indices (as prompt travel does)
        return torch.sin(x) * t + per_frame_bias[frame_indices].view(1, 1, -1, 1, 1)

    expected = predict_frames(latents, 0.5, list(range(41)))
    for closed in (False, True):
        for fuse in ("flat", "pyramid", "overlap-linear"):
            for stride in (1, 2):
                config = ContextConfig(length=16, overlap=4, stride=stride, closed_loop=closed, fuse=fuse)
                predict = wrap_predict_with_context(predict_frames, config)
                for step in range(3):
                    assert torch.allclose(predict(latents, 0.5, step), expected, atol=1e-5)


def test_wrapped_predict_sees_windows_and_indices():
    calls = []

    def predict_frames(x, t, frame_indices):
        calls.append(list(frame_indices))
        assert x.shape[2] == len(frame_indices)
        return x

    config = ContextConfig(length=8, overlap=2, schedule="static")
    predict = wrap_predict_with_context(predict_frames, config)
    latents = torch.arange(20.0).view(1, 1, 20, 1, 1)
    out = predict(latents, 10, 0)
    assert calls == context_windows(20, 0, config)
    assert torch.equal(out, latents)
    # one call over all frames when short, or when no context config is given
    calls.clear()
    wrap_predict_with_context(predict_frames, config)(latents[:, :, :8], 10, 0)
    wrap_predict_with_context(predict_frames, None)(latents, 10, 0)
    assert calls == [list(range(8)), list(range(20))]


def test_window_sees_its_own_frames():
    """A non-local predict (frame mean) gives each window's own mean, not the global one."""

    def predict_frames(x, t, frame_indices):
        return x.mean(dim=2, keepdim=True).expand_as(x)

    config = ContextConfig(length=4, overlap=0, schedule="static", fuse="flat")
    latents = torch.arange(8.0).view(1, 1, 8, 1, 1)
    out = wrap_predict_with_context(predict_frames, config)(latents, 0, 0)
    assert out.flatten().tolist() == [1.5] * 4 + [5.5] * 4


def test_describe_windows():
    text = describe_windows(32, 3, ContextConfig(length=16, overlap=4))
    lines = text.splitlines()
    assert "32 frames" in lines[0] and "overlap 4" in lines[0]
    assert lines[1] == "step 0: 3 window(s)"
    assert lines[2] == "  w0   " + "#" * 16 + "." * 16 + "  0-15"
    static = describe_windows(32, 25, ContextConfig(schedule="static"))
    assert "steps 0-24: 3 window(s)" in static
    closed = describe_windows(32, 1, ContextConfig(closed_loop=True))
    assert "24-31,0-7" in closed
    dilated = describe_windows(32, 1, ContextConfig(stride=2, schedule="static"))
    assert "0,2,..,30" in dilated
