"""Prompt travel: parsing, per-frame weights (holds, circular or not), lerp/slerp, cond/uncond padding."""

from __future__ import annotations

import math

import pytest
import torch

from zoetrope.errors import InputError
from zoetrope.sampling.prompts import (
    interpolate_embeddings,
    pad_to_same_length,
    parse_prompt_map,
    travel_embeddings,
    travel_weights,
)


def test_parse_prompt_map_forms_agree():
    expected = {0: "a cat", 16: "a dog"}
    assert parse_prompt_map({0: "a cat", 16: "a dog"}, 32) == expected
    assert parse_prompt_map({"16": "a dog", "0": "a cat"}, 32) == expected
    assert parse_prompt_map("0:a cat|16: a dog", 32) == expected
    assert parse_prompt_map(["0: a cat", "16: a dog"], 32) == expected
    assert list(parse_prompt_map({16: "b", 0: "a"}, 32)) == [0, 16]  # sorted by frame


def test_parse_prompt_map_negative_head_tail_and_colons():
    result = parse_prompt_map({0: "a cat", -1: "a dog"}, 24, head="masterpiece", tail="high quality")
    assert result == {0: "masterpiece, a cat, high quality", 23: "masterpiece, a dog, high quality"}
    assert parse_prompt_map("8: ratio 16:9 frame", 10) == {8: "ratio 16:9 frame"}  # split on the first colon only


@pytest.mark.parametrize(
    "prompt_map, message",
    [
        ({32: "x"}, "outside a 32-frame video"),
        ({-33: "x"}, "outside a 32-frame video"),
        ({0: "x", -32: "y"}, "keyed twice"),
        ({"one": "x"}, "expected a frame number"),
        ("a cat", "expected 'frame: prompt'"),
        ({}, "no keyed prompt"),
    ],
)
def test_parse_prompt_map_errors(prompt_map, message):
    with pytest.raises(InputError, match=message):
        parse_prompt_map(prompt_map, 32)


def test_travel_weights_linear_and_endpoints():
    weights = travel_weights([0, 4], 8)
    assert weights[0] == (0, 0, 0.0) and weights[4] == (1, 1, 0.0)
    assert [w for _, _, w in weights[1:4]] == [0.25, 0.5, 0.75]
    assert all(a == 0 and b == 1 for a, b, _ in weights[1:4])
    assert weights[5:] == [(1, 1, 0.0)] * 3  # non-circular tail holds the last prompt


def test_travel_weights_before_first_key_and_single_key():
    assert travel_weights([3, 6], 8)[:3] == [(0, 0, 0.0)] * 3
    assert travel_weights([5], 8) == [(0, 0, 0.0)] * 8
    assert travel_weights([5], 8, circular=True) == [(0, 0, 0.0)] * 8


def test_travel_weights_hold():
    weights = travel_weights([0, 8], 9, hold=0.5)
    assert [w for _, _, w in weights[:5]] == [0.0] * 5  # first half of the segment keeps prompt 0
    assert [w for _, _, w in weights[5:8]] == [0.25, 0.5, 0.75]
    assert weights[8] == (1, 1, 0.0)
    steps = travel_weights([0, 8], 9, hold=1.0)
    assert all(w == 0.0 for _, _, w in steps)  # hold=1: a hard cut at the next key
    assert [a for a, _, _ in steps] == [0] * 8 + [1]


def test_travel_weights_circular():
    weights = travel_weights([2, 6], 10, circular=True)
    # wrap segment from frame 6 to frame 2 (+10) is 6 frames long
    assert weights[7] == (1, 0, pytest.approx(1 / 6))
    assert weights[9] == (1, 0, pytest.approx(3 / 6))
    assert weights[0] == (1, 0, pytest.approx(4 / 6))
    assert weights[1] == (1, 0, pytest.approx(5 / 6))
    assert weights[2] == (0, 0, 0.0)


def test_travel_weights_errors():
    with pytest.raises(InputError, match="ascending"):
        travel_weights([4, 0], 8)
    with pytest.raises(InputError, match="0..7"):
        travel_weights([0, 8], 8)
    with pytest.raises(InputError, match="hold"):
        travel_weights([0, 4], 8, hold=1.5)


@pytest.mark.parametrize("method", ["lerp", "slerp"])
def test_interpolation_endpoints_exact(method):
    torch.manual_seed(0)
    embeddings = torch.randn(3, 5, 8)
    keys = [0, 5, 11]
    frames = travel_embeddings(embeddings, keys, 16, method=method)
    assert frames.shape == (16, 5, 8)
    for index, key in enumerate(keys):
        assert torch.equal(frames[key], embeddings[index])
    assert torch.equal(frames[15], embeddings[2])


def test_lerp_midpoint():
    embeddings = torch.stack([torch.zeros(2, 3), torch.full((2, 3), 4.0)])
    frames = interpolate_embeddings(embeddings, [(0, 1, 0.25)], "lerp")
    assert torch.allclose(frames, torch.ones(1, 2, 3))


def test_slerp_by_hand():
    # orthogonal unit vectors: slerp at w keeps the norm and has angle w*90 degrees
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    frames = interpolate_embeddings(torch.stack([a, b]), [(0, 1, w) for w in (0.25, 0.5)], "slerp")
    assert torch.allclose(frames[0, 0], torch.tensor([math.cos(math.pi / 8), math.sin(math.pi / 8)]), atol=1e-6)
    assert torch.allclose(frames[1, 0], torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)
    assert torch.allclose(frames.norm(dim=-1), torch.ones(2, 1), atol=1e-6)


def test_slerp_per_token_and_parallel_fallback():
    # token 0: orthogonal pair (spherical); token 1: parallel pair of different lengths (falls back to lerp)
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [3.0, 3.0]])
    frames = interpolate_embeddings(torch.stack([a, b]), [(0, 1, 0.5)], "slerp")
    assert torch.allclose(frames[0, 0], torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)
    assert torch.allclose(frames[0, 1], torch.tensor([2.0, 2.0]), atol=1e-6)
    assert torch.isfinite(frames).all()
    # antiparallel: also lerp, no division by sin(pi) ~ 0
    anti = interpolate_embeddings(torch.stack([a[:1], -a[:1]]), [(0, 1, 0.5)], "slerp")
    assert torch.allclose(anti, torch.zeros(1, 1, 2), atol=1e-6)


def test_interpolation_dtype_and_errors():
    embeddings = torch.randn(2, 4, 8, dtype=torch.float16)
    assert interpolate_embeddings(embeddings, [(0, 1, 0.5)], "slerp").dtype == torch.float16
    with pytest.raises(InputError, match="'lerp' or 'slerp'"):
        interpolate_embeddings(embeddings, [(0, 1, 0.5)], "cubic")
    with pytest.raises(InputError, match="outside 0..1"):
        interpolate_embeddings(embeddings, [(0, 2, 0.5)])
    with pytest.raises(InputError, match="2 embeddings for 3 keyed frames"):
        travel_embeddings(embeddings, [0, 4, 8], 10)


def test_pad_to_same_length_repeats_last_token():
    cond = torch.arange(2 * 154 * 4, dtype=torch.float32).view(2, 154, 4)
    uncond = torch.randn(2, 77, 4)
    padded_cond, padded_uncond = pad_to_same_length(cond, uncond)
    assert padded_cond is cond
    assert padded_uncond.shape == (2, 154, 4)
    assert torch.equal(padded_uncond[:, :77], uncond)
    assert torch.equal(padded_uncond[:, 77:], uncond[:, -1:].expand(-1, 77, -1))
    assert torch.cat([padded_uncond, padded_cond]).shape == (4, 154, 4)
    # symmetric: the shorter one is padded whichever side it is on
    short_cond, long_uncond = pad_to_same_length(uncond, cond)
    assert short_cond.shape == long_uncond.shape == (2, 154, 4)
    with pytest.raises(InputError, match="equal dim"):
        pad_to_same_length(torch.zeros(1, 77, 4), torch.zeros(1, 77, 8))
