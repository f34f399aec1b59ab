"""The bundled shapes-world model: present, within budget, loadable, and `zoetrope generate` with no model argument
makes a clip that the world's metrics read back as the prompt."""

from __future__ import annotations

import pytest
import torch

from zoetrope.errors import CheckpointError
from zoetrope.formats.detect import inspect_file
from zoetrope.formats.safe_load import load_state_dict, read_metadata, save_state_dict
from zoetrope.world import bundled
from zoetrope.world.bundled import BUNDLED_FILES, SIZE_LIMIT_BYTES, bundled_files, bundled_paths, install_bundle

FIRST_FRAME_PSNR = 22.0
"""dB. A clip that ignores the keyframe scores ~13-14 dB here (another picture of the same prompt); SparseCtrl's
target on the world is 25 dB at keyframes (issue 5), this test asks for less because it runs 10 steps."""


def test_every_bundled_file_is_present_and_the_bundle_fits_its_budget() -> None:
    files = bundled_files()
    assert set(files) == set(BUNDLED_FILES)
    assert all(path.is_file() for path in files.values())
    assert sum(path.stat().st_size for path in files.values()) <= SIZE_LIMIT_BYTES


def test_each_bundled_file_is_the_kind_its_role_says() -> None:
    files = bundled_files()
    expected = {
        "model": "sd_model",
        "personalized_model": "sd_model",
        "motion_module": "motion_module",
        "domain_adapter": "domain_adapter",
        "motion_lora_zoom_in": "motion_lora",
        "motion_lora_pan_left": "motion_lora",
        "sparsectrl_rgb": "sparsectrl",
        "sparsectrl_sketch": "sparsectrl",
    }
    assert {role: inspect_file(path).kind for role, path in files.items()} == expected
    assert inspect_file(files["sparsectrl_sketch"]).details["condition"].startswith("sketch")
    assert bundled_paths() == (files["model"], files["motion_module"])


def test_a_missing_bundle_is_a_checkpoint_error_naming_the_files(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(bundled, "bundled_folder", lambda: tmp_path)
    (tmp_path / BUNDLED_FILES["model"]).write_bytes(b"")
    with pytest.raises(CheckpointError, match="motion_module.safetensors") as error:
        bundled_paths()
    assert "base.safetensors" not in str(error.value)  # present files are not reported missing
    assert "tools/train_world.sh" in str(error.value)


def test_install_bundle_stores_half_precision_and_keeps_metadata(tmp_path) -> None:
    source = tmp_path / "motion_lora.safetensors"
    weights = {"a": torch.tensor([1.0, 1 / 3, -2.5]), "steps": torch.tensor([7], dtype=torch.int64)}
    save_state_dict(weights, source, {"zoetrope.kind": "motion_lora"})
    written = install_bundle({"motion_lora_zoom_in": source}, tmp_path / "bundle")
    path = written["motion_lora_zoom_in"]
    assert path.name == BUNDLED_FILES["motion_lora_zoom_in"]
    state = load_state_dict(path)
    assert state["a"].dtype == torch.float16 and state["steps"].dtype == torch.int64
    assert torch.equal(state["a"].float(), weights["a"].half().float())  # only float16 rounding
    assert read_metadata(path)["zoetrope.kind"] == "motion_lora"
    with pytest.raises(CheckpointError, match="unknown role"):
        install_bundle({"vae": source}, tmp_path / "bundle")


@pytest.mark.xfail(
    reason="the bundled model misses its fidelity targets (docs/world-training.md): colour 71%, shape 38%, "
    "motion 8% on the base suite (left/right does not reach the motion module)", strict=True
)
def test_generate_with_no_model_argument_makes_the_prompted_clip(tmp_path, monkeypatch) -> None:
    """The README's first command, offline and on the CPU: the clip must show a red circle moving right."""
    from zoetrope.cli import main
    from zoetrope.media import read_video
    from zoetrope.world.metrics import evaluate_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prompt = "a red circle moving right"
    output = tmp_path / "clip_%03d.png"
    status = main(["--quiet", "generate", prompt, "--steps", "10", "--seed", "0", "--device", "cpu", "-o", str(output)])
    assert status == 0
    frames, _ = read_video(output)
    assert frames.shape == (16, 64, 64, 3)
    row = evaluate_clip(frames, prompt)
    assert (row["colour"], row["shape"], row["motion"]) == ("red", "circle", "right")


def test_generate_with_no_model_argument_uses_the_bundle_offline_and_is_seeded(tmp_path, monkeypatch) -> None:
    """No --model: the bundled files load offline, give a 16-frame 64x64 clip, and the same seed gives the same clip."""
    from zoetrope.cli import main
    from zoetrope.media import read_video

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clips = []
    for name in ("a", "b"):
        output = tmp_path / name / "clip_%03d.png"
        argv = ["--quiet", "generate", "a red circle moving right", "--steps", "4", "--seed", "3", "--device", "cpu"]
        assert main(argv + ["-o", str(output)]) == 0
        clips.append(read_video(output)[0])
    assert clips[0].shape == (16, 64, 64, 3)
    assert (clips[0] == clips[1]).all()
    assert clips[0].std(axis=(1, 2)).mean() > 1.0  # a picture, not a constant frame


@pytest.mark.parametrize(
    "replace",
    [
        pytest.param("0", marks=pytest.mark.xfail(
            reason="the bundled RGB SparseCtrl encoder is undertrained (900 steps; its zero convolutions are still "
            "~0.01): frame 0 reaches ~14 dB against the keyframe (docs/world-training.md)", strict=True)),
        "0.7",
    ],
)
def test_generate_with_the_bundled_rgb_encoder_reproduces_the_first_frame(tmp_path, monkeypatch, replace) -> None:
    """Image animation from the CLI: `--control rgb --keyframe 0:IMAGE` with the bundled encoder; frame 0 of the
    clip must reproduce the given picture (a rendered shapes-world frame) to within a few levels. The encoder alone
    does not yet (xfail); with `--keyframe-replace 0.7` it does."""
    import math

    import numpy as np
    from PIL import Image

    from zoetrope.cli import main
    from zoetrope.media import read_video
    from zoetrope.world.render import WorldConfig, render_clip, spec_for_prompt

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prompt = "a yellow square moving right on a navy background"
    config = WorldConfig()
    first = render_clip(spec_for_prompt(prompt, np.random.default_rng(0), config), config)[0]
    Image.fromarray(first).save(tmp_path / "first.png")
    output = tmp_path / "clip_%03d.png"
    argv = ["--quiet", "generate", prompt, "--steps", "10", "--seed", "0", "--device", "cpu", "--control", "rgb",
            "--keyframe", f"0:{tmp_path / 'first.png'}", "--keyframe-replace", replace, "-o", str(output)]
    assert main(argv) == 0
    frames, _ = read_video(output)
    error = float(np.mean((frames[0].astype(np.float64) - first.astype(np.float64)) ** 2))
    assert 10 * math.log10(255.0**2 / error) >= FIRST_FRAME_PSNR
