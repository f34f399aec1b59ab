"""load_pipeline: the official loading order with LoRAs, strengths and wrong-slot errors."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_image_model, make_tiny_motion_modules
from zoetrope.adapters.lora import inject_lora
from zoetrope.errors import CheckpointError, ConfigError, InputError
from zoetrope.formats.lora_files import save_domain_adapter, save_motion_lora
from zoetrope.formats.motion import save_motion_module
from zoetrope.formats.sd_single_file import save_sd_single_file
from zoetrope.pipelines.load import WeightedFile, load_pipeline
from zoetrope.pipelines.text_to_video import generate

SMALL = dict(num_frames=4, width=32, height=32, steps=2, progress=False, seed=3, return_latents=True, decode=False)


def _randomise(network, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("load")
    image = make_tiny_image_model()
    model = save_sd_single_file(image.unet, image.vae, image.text_encoder, folder / "sd.safetensors")
    modules = make_tiny_motion_modules()
    motion = save_motion_module(modules, folder / "mm.safetensors")
    motion_lora = inject_lora(modules, r"attentions\.\d+\.to_(q|k|v|out)$", rank=2)
    _randomise(motion_lora, 1)
    save_motion_lora(motion_lora, folder / "zoom.safetensors")
    motion_lora.detach()
    adapter = inject_lora(image.unet, r"transformer_blocks\.\d+\.attn[12]\.to_(q|k|v|out\.0)$", rank=2)
    _randomise(adapter, 2)
    save_domain_adapter(adapter, folder / "adapter.safetensors")
    adapter.detach()
    return {"model": model, "motion": motion, "lora": folder / "zoom.safetensors",
            "adapter": folder / "adapter.safetensors"}


def test_weighted_file_parsing() -> None:
    assert WeightedFile.parse("a/b.ckpt:0.5") == WeightedFile(__import__("pathlib").Path("a/b.ckpt"), 0.5)
    assert WeightedFile.parse("C:/x/b.ckpt").strength == 1.0


def test_motion_lora_strength_zero_is_no_lora_and_one_changes_the_video(files) -> None:
    plain = generate(load_pipeline(files["model"], files["motion"]), "a red circle", **SMALL).latents
    zero = generate(
        load_pipeline(files["model"], files["motion"], motion_loras=[f"{files['lora']}:0"]), "a red circle", **SMALL
    ).latents
    full = generate(
        load_pipeline(files["model"], files["motion"], motion_loras=[f"{files['lora']}:1.0"]), "a red circle", **SMALL
    ).latents
    assert torch.allclose(plain, zero, atol=1e-6)
    assert (plain - full).abs().max().item() > 1e-3


def test_domain_adapter_scale(files) -> None:
    plain = generate(load_pipeline(files["model"], files["motion"]), "a red circle", **SMALL).latents
    adapted = generate(
        load_pipeline(files["model"], files["motion"], adapter=f"{files['adapter']}:1.0"), "a red circle", **SMALL
    ).latents
    assert (plain - adapted).abs().max().item() > 1e-3


def test_wrong_slots(files) -> None:
    with pytest.raises(CheckpointError, match="domain adapter.*--adapter"):
        load_pipeline(files["model"], files["motion"], motion_loras=[str(files["adapter"])])
    with pytest.raises(CheckpointError, match="MotionLoRA.*--motion-lora"):
        load_pipeline(files["model"], files["motion"], adapter=str(files["lora"]))
    with pytest.raises(CheckpointError, match="MotionLoRA.*--motion-lora"):
        load_pipeline(files["model"], files["lora"])


def test_parameterization_overrides_reach_the_sampler(files) -> None:
    """An SD1.5 file says nothing about v-prediction; the options say it (ComfyUI's ModelSamplingDiscrete)."""
    plain = load_pipeline(files["model"], files["motion"])
    assert plain.scheduler_config["prediction_type"] == "epsilon" and not plain.scheduler_config["rescale_betas_zero_snr"]
    v = load_pipeline(files["model"], files["motion"], prediction_type="v_prediction")
    assert v.scheduler_config["prediction_type"] == "v_prediction" and v.scheduler_config["timestep_spacing"] == "leading"
    zero = load_pipeline(files["model"], files["motion"], zero_terminal_snr=True)
    assert zero.image_model.parameterization.prediction_type == "v_prediction"  # zero SNR implies v
    assert zero.scheduler_config["rescale_betas_zero_snr"] and zero.scheduler_config["timestep_spacing"] == "trailing"
    first, second = (generate(pipe, "a red circle", **SMALL).latents for pipe in (plain, zero))
    assert torch.isfinite(second).all() and (first - second).abs().max().item() > 1e-3
    with pytest.raises(ConfigError, match="needs prediction_type v_prediction"):
        load_pipeline(files["model"], files["motion"], prediction_type="epsilon", zero_terminal_snr=True)


def test_replacement_vae_changes_only_the_decoding_and_a_foreign_latent_space_is_refused(files, tmp_path) -> None:
    """`--vae`: the same latents decode through the new decoder; a VAE with other latents would silently draw garbage."""
    from conftest import make_tiny_vae
    from zoetrope.formats.vae_file import save_vae_file

    own = load_pipeline(files["model"], files["motion"])
    tuned = make_tiny_vae()
    tuned.load_state_dict(own.image_model.vae.state_dict())
    _randomise(tuned.decoder, 3)
    path = save_vae_file(tuned, tmp_path / "decoder.safetensors")
    swapped = load_pipeline(files["model"], files["motion"], vae=path)
    assert swapped.sources["vae"] == str(path)
    first, second = (generate(pipe, "a red circle", **{**SMALL, "decode": True}) for pipe in (own, swapped))
    assert torch.equal(first.latents, second.latents)  # the UNet and its latents are untouched
    assert (first.frames - second.frames).abs().max().item() > 1e-3  # the decoder is the new one

    tuned.register_to_config(scaling_factor=0.5)
    with pytest.raises(InputError, match="scaling_factor is 0.5"):
        load_pipeline(files["model"], files["motion"], vae=save_vae_file(tuned, tmp_path / "scaled.safetensors"))
    with pytest.raises(InputError, match="no such file"):
        load_pipeline(files["model"], files["motion"], vae=tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="not a VAE written by the `vae` training stage"):
        load_pipeline(files["model"], files["motion"], vae=files["adapter"])
