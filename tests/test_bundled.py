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
        "motion_lora_fast": "motion_lora",
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
    assert "tools/train_world_vz.sh" in str(error.value)


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


def test_install_bundle_puts_a_decoder_fine_tune_inside_the_image_models_only(tmp_path) -> None:
    """`install_bundle(vae=...)`: the image model's VAE becomes the given one (decoder changed, encoder and UNet
    kept, same LDM keys); other roles are copied as they are; a VAE with other latents is refused by name."""
    from conftest import make_tiny_image_model, make_tiny_vae
    from zoetrope.errors import InputError
    from zoetrope.formats.sd_single_file import load_sd_single_file, save_sd_single_file
    from zoetrope.formats.vae_file import save_vae_file

    image = make_tiny_image_model()
    model = save_sd_single_file(image.unet, image.vae, image.text_encoder, tmp_path / "model.safetensors", {"x": "1"})
    tuned = make_tiny_vae()
    tuned.load_state_dict(image.vae.state_dict())
    with torch.no_grad():
        tuned.decoder.conv_out.bias.add_(0.5)  # a decoder-only change, as `vae_train: decoder` makes
    vae = save_vae_file(tuned, tmp_path / "vae.safetensors")
    lora = tmp_path / "lora.safetensors"
    save_state_dict({"a": torch.ones(2)}, lora, {"zoetrope.kind": "motion_lora"})
    written = install_bundle({"model": model, "motion_lora_zoom_in": lora}, tmp_path / "bundle", vae=vae)
    assert set(load_state_dict(written["model"])) == set(load_state_dict(model))
    assert read_metadata(written["model"])["x"] == "1" and read_metadata(written["model"])["zoetrope.vae_source"] == "vae.safetensors"
    parts = load_sd_single_file(written["model"])
    assert torch.allclose(parts.vae.decoder.conv_out.bias, tuned.decoder.conv_out.bias.half().float())
    assert torch.equal(parts.vae.encoder.conv_in.weight, image.vae.encoder.conv_in.weight.half().float())
    assert torch.equal(parts.unet.conv_in.weight, image.unet.conv_in.weight.half().float())
    assert torch.equal(load_state_dict(written["motion_lora_zoom_in"])["a"], torch.ones(2, dtype=torch.float16))
    foreign = make_tiny_vae()
    foreign.register_to_config(scaling_factor=0.5)
    with pytest.raises(InputError, match="scaling_factor"):
        install_bundle({"model": model}, tmp_path / "bundle2", vae=save_vae_file(foreign, tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="no image model"):
        install_bundle({"motion_lora_zoom_in": lora}, tmp_path / "bundle3", vae=vae)


@pytest.mark.xfail(
    reason="the bundled model misses its shape and motion targets (README): shape 33 %, motion 61.5 % on the suite; "
    "this exact prompt moves right in 5 of 8 seeds at 15 steps, and seed 0 at 10 steps stays still", strict=True
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


def test_the_bundled_zoom_lora_zooms_in_from_noise_that_zooms_and_the_module_alone_does_not(tmp_path) -> None:
    """The README's zoom command: with `--noise zoom_warped` the bundled zoom MotionLoRA makes a clip the camera
    metric reads as a zoom in (measured 31 / 32 on the camera suite); the same noise without the LoRA does not zoom
    (0 / 32), so the zoom is the LoRA's."""
    from zoetrope.cli import main
    from zoetrope.media import read_video
    from zoetrope.world.metrics import measure_camera

    prompt = "a cyan star staying still on a brown background, camera zooming in"
    common = ["--quiet", "generate", prompt, "--steps", "15", "--seed", "1", "--device", "cpu",
              "--noise", "zoom_warped", "--noise-param", "zoom=1.6", "--noise-param", "alpha=2.0"]
    zooms = {}
    for name, extra in (("lora", ["--motion-lora", str(bundled_files()["motion_lora_zoom_in"])]), ("alone", [])):
        output = tmp_path / name / "clip_%03d.png"
        assert main(common + extra + ["-o", str(output)]) == 0
        zooms[name] = measure_camera(read_video(output)[0]).log_zoom
    assert zooms["lora"] > 0.1 > zooms["alone"]  # ZOOM_THRESHOLD; measured 0.142 and 0.037


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


@pytest.mark.parametrize("replace, match", [("0", "0"), ("0.3", "0"), ("0.3", "1")])
def test_generate_with_the_bundled_rgb_encoder_reproduces_the_first_frame(tmp_path, monkeypatch, replace, match) -> None:
    """Image animation from the CLI: `--control rgb --keyframe 0:IMAGE` with the bundled encoder at the setting the
    README gives for zero-terminal-SNR models (guidance 4, control scale 1); frame 0 of the clip must reproduce
    the given picture (a rendered shapes-world frame) to within a few levels, from the encoder alone (replacement 0),
    with `--keyframe-replace 0.3`, and with `--color-match 1` too, which also gives every later frame the picture's
    mean colour. (The first lineage's encoder reached only ~14 dB alone.)"""
    import math

    import numpy as np
    from PIL import Image

    from zoetrope.cli import main
    from zoetrope.media import read_video
    from zoetrope.world.render import WorldConfig, render_clip, spec_for_prompt

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prompt = "a yellow square moving right on a navy background"
    config = WorldConfig()
    # A clean picture (no watermark band), as a user's image is: the module is sampled with the adapter dropped,
    # so a band in the keyframe would not be reproduced and would cost ~6 dB by itself.
    first = render_clip(spec_for_prompt(prompt, np.random.default_rng(0), config), config, video_domain=False)[0]
    Image.fromarray(first).save(tmp_path / "first.png")
    output = tmp_path / "clip_%03d.png"
    argv = ["--quiet", "generate", prompt, "--steps", "10", "--seed", "0", "--device", "cpu", "--control", "rgb",
            "--keyframe", f"0:{tmp_path / 'first.png'}", "--keyframe-replace", replace, "--guidance", "4",
            "--control-scale", "1", "--color-match", match, "-o", str(output)]
    assert main(argv) == 0
    frames, _ = read_video(output)
    error = float(np.mean((frames[0].astype(np.float64) - first.astype(np.float64)) ** 2))
    assert 10 * math.log10(255.0**2 / error) >= FIRST_FRAME_PSNR
    if match == "1":
        assert np.abs(frames.mean(axis=(1, 2)) - first.mean(axis=(0, 1))).max() < 4  # every frame, each channel


def test_keyframes_first_with_the_bundle_moves_through_the_whole_clip(tmp_path, monkeypatch) -> None:
    """`--keyframes-first` with no model argument: the bundled fast-motion LoRA draws the keyframes, they are retimed
    (both recorded in the sidecar) and the bundled RGB encoder fills the clip; a 32-frame "moving right" clip moves
    right in each half."""
    import json

    from zoetrope.cli import main
    from zoetrope.media import read_video
    from zoetrope.world.metrics import measure_motion, motion_of

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    output = tmp_path / "long.mp4"
    argv = ["--quiet", "generate", "a red circle moving right on a grey background", "--frames", "32",
            "--context-length", "16", "--keyframes-first", "--fill-guidance", "4", "--steps", "8", "--seed", "0",
            "--device", "cpu", "-o", str(output)]
    assert main(argv) == 0
    sidecar = json.loads(output.with_name(output.name + ".json").read_text())
    settings = sidecar["keyframes_first"]
    assert settings["motion_lora"] is True and settings["retime"] is True  # the bundled defaults
    placed = settings["keyframes"]  # retimed: 16 keyframes from frame 0 to frame 30, in order
    assert len(placed) == 16 and placed[0] == 0 and placed[-1] == 30 and all(b > a for a, b in zip(placed, placed[1:]))
    frames, _ = read_video(output)
    assert frames.shape[0] == 32
    halves = [measure_motion(frames[:16]), measure_motion(frames[16:])]
    assert [motion_of(half, 64) for half in halves] == ["right", "right"], [round(h.dx, 1) for h in halves]
