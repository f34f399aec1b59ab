"""The motion modules' position code (`zoetrope.adapters.position`, `lora.position_code`): a zero start that changes
nothing, a code that makes a module's output depend on where a pixel is, files that round-trip or are refused."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_motion_modules as _modules, make_tiny_unet
from zoetrope.adapters.position import PositionCode, position_features
from zoetrope.formats.lora_files import load_position_code, save_position_code
from zoetrope.errors import InputError
from zoetrope.models.video_unet import VideoUNet

FRAMES = 4


def _randomise(code: PositionCode, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in code.named_weights().values():
            weight.copy_(torch.randn(weight.shape, generator=generator))


def _forward(unet: VideoUNet, strength: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(1, 4, FRAMES, 8, 8, generator=generator)
    text = torch.randn(1, 77, 32, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([500]), text, motion_strength=strength)


def test_position_features_are_row_major_pixel_centres_and_their_harmonics() -> None:
    features = position_features(2, 4, frequencies=2)
    assert features.shape == (8, 2 + 4 * 2)
    torch.testing.assert_close(features[:4, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))  # x along the first row
    torch.testing.assert_close(features[::4, 1], torch.tensor([-0.5, 0.5]))  # y down the first column
    torch.testing.assert_close(features[:, 2], torch.sin(torch.pi * features[:, 0]))
    torch.testing.assert_close(features[:, 7], torch.cos(torch.pi * features[:, 1]))
    torch.testing.assert_close(features[:, 9], torch.cos(2 * torch.pi * features[:, 1]))


def test_a_fresh_code_changes_nothing_and_a_trained_one_only_the_motion_delta() -> None:
    modules = _modules()
    unet = VideoUNet(make_tiny_unet(), modules).eval()
    before, image_only = _forward(unet), _forward(unet, strength=0.0)
    code = PositionCode(modules).attach(modules)
    assert torch.equal(_forward(unet), before)  # zero-initialised maps: the same module
    _randomise(code)
    assert not torch.allclose(_forward(unet), before, atol=1e-4)
    assert torch.equal(_forward(unet, strength=0.0), image_only)  # the image UNet's own features are untouched
    code.detach()
    assert torch.equal(_forward(unet), before)


def test_the_code_makes_a_module_see_where_a_pixel_is() -> None:
    """The same features at every pixel: without the code a motion module's output is the same everywhere (it acts
    on each pixel's frames alone); with it, the output differs between pixels."""
    modules = _modules()
    module = modules.down_blocks[0].motion_modules[0]
    channels = module.proj_in.in_features
    hidden = torch.randn(FRAMES, channels, 1, 1).expand(-1, -1, 6, 6).contiguous()
    with torch.no_grad():
        plain = module(hidden, FRAMES)
        assert torch.allclose(plain, plain[..., :1, :1].expand_as(plain), atol=1e-5)
        _randomise(PositionCode(modules).attach(modules))
        coded = module(hidden, FRAMES)
    spread = (coded - coded.mean(dim=(-2, -1), keepdim=True)).abs().amax()
    assert spread > 1e-2


def test_files_round_trip_and_a_wrong_file_is_refused(tmp_path) -> None:
    modules = _modules()
    code = PositionCode(modules, frequencies=2).attach(modules)
    _randomise(code)
    unet = VideoUNet(make_tiny_unet(), modules).eval()
    expected = _forward(unet, strength=0.5)
    path = save_position_code(code, tmp_path / "position_code.safetensors", {"stage": "motion-lora"})
    code.detach()
    fresh = _modules()
    loaded = load_position_code(path, fresh)
    assert loaded.frequencies == 2
    torch.testing.assert_close(_forward(VideoUNet(make_tiny_unet(), fresh).eval(), strength=0.5), expected)
    half = load_position_code(path, _modules(), strength=0.5)
    assert half.strength == 0.5
    wider = _modules(block_out_channels=(32, 64, 64))
    with pytest.raises(InputError, match="does not fit this motion module|has shape"):
        load_position_code(path, wider)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InputError, match="is not a position code"):
        load_position_code(tmp_path / "other.safetensors", fresh)
    with pytest.raises(InputError, match="no such file"):
        load_position_code(tmp_path / "missing.safetensors", fresh)
