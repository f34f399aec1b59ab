"""The live preview (`zoetrope generate --preview`): the sampler's clean estimate, decoded every N steps."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_tiny_image_model
from zoetrope.cli import main
from zoetrope.errors import ConfigError
from zoetrope.media import read_video
from zoetrope.pipelines.preview import PreviewWriter


def _generate(files, tmp_path, *extra: str) -> int:
    """`zoetrope generate` on conftest's tiny single-file model and motion module (`training_files`)."""
    return main([
        "generate", "a red circle moving right", "--model", files["base"], "--motion-module", files["motion"],
        "--frames", "4", "--width", "32", "--height", "32", "--steps", "4", "--seed", "3",
        "-o", str(tmp_path / "out.gif"), *extra,
    ])


def test_preview_every_two_steps_ends_at_the_output(training_files, tmp_path) -> None:
    """DDIM's last step returns its clean estimate (alpha_prev = 1), so the step-4 preview is the output, pixel for
    pixel (both GIFs of the same frames); the step-2 preview is an earlier, different estimate; steps 1 and 3 are skipped."""
    pattern = str(tmp_path / "preview-{step}.gif")
    assert _generate(training_files, tmp_path, "--preview", pattern, "--preview-every", "2") == 0
    written = sorted(path.name for path in tmp_path.glob("preview-*"))
    assert written == ["preview-2.gif", "preview-4.gif"]
    output, _ = read_video(tmp_path / "out.gif")
    last, _ = read_video(tmp_path / "preview-4.gif")
    early, _ = read_video(tmp_path / "preview-2.gif")
    assert last.shape == early.shape == output.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(last, output)
    assert np.abs(early.astype(int) - output.astype(int)).mean() > 1.0


def test_preview_with_dpm_plus_plus_and_one_rewritten_file(training_files, tmp_path) -> None:
    """DPM++ reports no `pred_original_sample`; its converted model output is the estimate. One path without
    `{step}` is rewritten in place: one GIF of the clip's frame count at the end."""
    target = tmp_path / "live.gif"
    assert _generate(training_files, tmp_path, "--scheduler", "dpm++2m-karras", "--preview", str(target)) == 0  # every 5 > 4
    assert not target.exists()
    assert _generate(training_files, tmp_path, "--scheduler", "dpm++2m-karras", "--preview", str(target), "--preview-every", "1") == 0
    frames, _ = read_video(target)
    assert frames.shape == (4, 32, 32, 3)
    assert [path.name for path in tmp_path.glob("*live.gif*")] == ["live.gif"]  # no temporary left beside it


def test_bad_preview_settings_are_one_line_errors(training_files, tmp_path, capsys) -> None:
    assert _generate(training_files, tmp_path, "--preview", str(tmp_path / "p.avi")) == 2
    assert "unknown format '.avi'" in capsys.readouterr().err
    assert _generate(training_files, tmp_path, "--preview", str(tmp_path / "p-{frame}.gif")) == 2
    assert "only the field {step}" in capsys.readouterr().err
    assert _generate(training_files, tmp_path, "--preview", str(tmp_path / "p.gif"), "--preview-every", "0") == 2
    assert "expected a whole number >= 1" in capsys.readouterr().err
    assert _generate(training_files, tmp_path, "--preview", str(tmp_path / "p.gif"), "--keyframes-first") == 2
    assert "runs several" in capsys.readouterr().err


def test_the_preview_is_the_decoded_estimate_not_the_noisy_latents(tmp_path) -> None:
    """Video `video` of the batch's *clean estimate* is what gets decoded (the noisy latents would show noise)."""
    import torch

    from zoetrope.pipelines.components import decode_latents

    vae = make_tiny_image_model().vae
    generator = torch.Generator().manual_seed(0)
    latents, denoised = (torch.randn(2, 4, 3, 4, 4, generator=generator) for _ in range(2))
    writer = PreviewWriter(vae, tmp_path / "step-{step}", every=1, video=1)  # a PNG frames folder: lossless
    writer(0, 999, latents, denoised=denoised)
    assert writer.written == [tmp_path / "step-1"]
    frames, _ = read_video(tmp_path / "step-1")
    with torch.no_grad():
        expected = decode_latents(vae, denoised[1:2])[0]
        noisy = decode_latents(vae, latents[1:2])[0]
    as_uint8 = lambda video: (video.permute(1, 2, 3, 0).numpy() * 255).round()  # noqa: E731
    assert np.abs(frames - as_uint8(expected)).max() == 0
    assert np.abs(frames - as_uint8(noisy)).mean() > 1.0


def test_a_scheduler_without_an_estimate_is_named() -> None:
    writer = PreviewWriter(vae=None, path="p.gif", every=1)
    with pytest.raises(ConfigError, match="reports no clean estimate"):
        writer(0, 999, np.zeros(1), denoised=None)
    writer = PreviewWriter(vae=None, path="p.gif", every=2)
    writer(0, 999, np.zeros(1), denoised=None)  # not a preview step: nothing is asked of the scheduler
    assert writer.written == []
