"""SparseCtrl in the pipeline: keyframe conditions reach the UNet; zero-init encoder changes nothing."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_pipeline, tiny_motion_config
from zoetrope.errors import InputError
from zoetrope.models.sparse_control import SparseControlConfig, SparseControlEncoder
from zoetrope.pipelines.image_to_video import parse_keyframe, prepare_control
from zoetrope.pipelines.text_to_video import generate

SMALL = dict(num_frames=4, width=32, height=32, steps=2, progress=False, seed=3, return_latents=True, decode=False)


def _encoder(pipeline, condition: str, randomise: bool) -> SparseControlEncoder:
    motion = tiny_motion_config(attentions_per_block=1, mid_block=False)
    config = SparseControlConfig(condition=condition, motion=motion, embedding_channels=(8, 16, 16, 32))
    encoder = SparseControlEncoder.from_unet(pipeline.video_unet.image_unet, config).eval()
    if randomise:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in encoder.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return encoder


@pytest.fixture(scope="module")
def pipeline():
    return make_tiny_pipeline()


@pytest.mark.parametrize("condition", ["rgb", "sketch"])
def test_control_reaches_the_unet(pipeline, condition) -> None:
    image = torch.rand(3, 32, 32)
    plain = generate(pipeline, "a red circle", **SMALL).latents
    zero = prepare_control(pipeline, _encoder(pipeline, condition, False), [(0, image)], 4, 32, 32)
    assert torch.allclose(generate(pipeline, "a red circle", control=zero, **SMALL).latents, plain, atol=1e-6)
    live = prepare_control(pipeline, _encoder(pipeline, condition, True), [(0, image), (-1, image)], 4, 32, 32)
    assert live.mask[0, 0, :, 0, 0].tolist() == [1.0, 0.0, 0.0, 1.0]
    controlled = generate(pipeline, "a red circle", control=live, **SMALL)
    assert (controlled.latents - plain).abs().max().item() > 1e-3
    assert controlled.settings.extras["keyframes"] == [0, 3]


def test_keyframe_parsing_and_errors(pipeline) -> None:
    assert parse_keyframe("-1:last.png")[0] == -1
    with pytest.raises(InputError, match="INDEX:IMAGE"):
        parse_keyframe("last.png")
    with pytest.raises(InputError):
        prepare_control(pipeline, _encoder(pipeline, "rgb", False), [(9, torch.rand(3, 32, 32))], 4, 32, 32)


def test_keyframe_replacement_anchors_the_keyframe(pipeline) -> None:
    """`replace=1.0` pastes the re-noised keyframe latent in at every step, so the result's keyframe is (nearly) the
    keyframe's own latent; without it the tiny random model ends far from it. Other frames stay free."""
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    encoder = _encoder(pipeline, "rgb", False)
    steps = dict(SMALL, steps=6)
    plain = prepare_control(pipeline, encoder, [(0, image)], 4, 32, 32)
    anchored = prepare_control(pipeline, encoder, [(0, image)], 4, 32, 32, replace=1.0)
    target = anchored.condition[:, :, 0]
    free = generate(pipeline, "a red circle", control=plain, **steps)
    pasted = generate(pipeline, "a red circle", control=anchored, **steps)
    far = (free.latents[:, :, 0] - target).abs().mean().item()
    near = (pasted.latents[:, :, 0] - target).abs().mean().item()
    assert near < 0.1 * far, (near, far)
    assert pasted.settings.extras["keyframe_replace"] == 1.0 and "keyframe_replace" not in free.settings.extras
    assert (pasted.latents[:, :, 1:] - free.latents[:, :, 1:]).abs().max().item() > 1e-4  # neighbours follow it


def test_keyframe_replacement_errors(pipeline) -> None:
    image = torch.rand(3, 32, 32)
    with pytest.raises(InputError, match="RGB SparseCtrl encoder"):
        prepare_control(pipeline, _encoder(pipeline, "sketch", False), [(0, image)], 4, 32, 32, replace=0.5)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        prepare_control(pipeline, _encoder(pipeline, "rgb", False), [(0, image)], 4, 32, 32, replace=1.5)


def test_encoder_in_another_dtype_is_refused_by_name(pipeline) -> None:
    """A float16 file loaded beside a float32 pipeline: a clear error with the fix, not a matmul dtype error."""
    encoder = _encoder(pipeline, "rgb", False).to(torch.float16)
    with pytest.raises(InputError, match=r"encoder.to\(device=pipeline.device, dtype=pipeline.dtype\)"):
        prepare_control(pipeline, encoder, [(0, torch.rand(3, 32, 32))], 4, 32, 32)
    assert prepare_control(pipeline, encoder.float(), [(0, torch.rand(3, 32, 32))], 4, 32, 32).mask[0, 0, :, 0, 0].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_color_match_moves_frames_to_the_keyframe_colours(pipeline) -> None:
    """RGB keyframes keep their pictures; `color_match=1` gives each decoded frame the keyframes' channel means
    (interpolated between first and last), and is refused by name where there are no pictures to match."""
    first = torch.full((3, 32, 32), 0.2)
    first[0, 8:16, 8:16] = 0.6
    last = torch.full((3, 32, 32), 0.5)
    last[2, 16:24, 8:16] = 0.8
    encoder = _encoder(pipeline, "rgb", True)
    control = prepare_control(pipeline, encoder, [(0, first), (-1, last)], 4, 32, 32)
    assert control.picture_indices == (0, 3) and torch.equal(control.pictures[1], last)
    video = dict(SMALL, return_latents=False, decode=True)
    plain = generate(pipeline, "a red circle", control=control, **video)
    matched = generate(pipeline, "a red circle", control=control, color_match=1.0, **video)
    means = matched.frames[0].mean(dim=(2, 3))  # c f
    assert torch.allclose(means[:, 0], first.mean(dim=(1, 2)), atol=2e-3)
    assert torch.allclose(means[:, 3], last.mean(dim=(1, 2)), atol=2e-3)
    assert (plain.frames[0].mean(dim=(2, 3))[:, 0] - first.mean(dim=(1, 2))).abs().max() > 0.02  # it did something
    assert matched.settings.extras["color_match"] == 1.0 and "color_match" not in plain.settings.extras
    with pytest.raises(InputError, match="RGB SparseCtrl keyframes"):
        generate(pipeline, "a red circle", color_match=1.0, **video)
    sketch = prepare_control(pipeline, _encoder(pipeline, "sketch", False), [(0, first)], 4, 32, 32)
    assert sketch.pictures is None
    with pytest.raises(InputError, match="RGB SparseCtrl keyframes"):
        generate(pipeline, "a red circle", control=sketch, color_match=1.0, **video)


def test_load_control_for_puts_a_float16_file_on_the_pipeline(pipeline, tmp_path) -> None:
    """The bundled encoders are float16 files; `load_control_for` returns one ready for the pipeline (its dtype,
    eval mode), which `prepare_control` accepts, where the raw loader's result would be refused."""
    from zoetrope.formats.sparsectrl import load_sparse_control, save_sparse_control
    from zoetrope.pipelines.image_to_video import load_control_for

    path = save_sparse_control(_encoder(pipeline, "rgb", True).half(), tmp_path / "encoder.safetensors")
    assert next(load_sparse_control(path, pipeline.video_unet.image_unet).parameters()).dtype == torch.float16
    encoder = load_control_for(pipeline, path)
    assert next(encoder.parameters()).dtype == pipeline.dtype and not encoder.training
    control = prepare_control(pipeline, encoder, [(0, torch.rand(3, 32, 32))], 4, 32, 32)
    assert control.mask[0, 0, :, 0, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
