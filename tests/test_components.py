"""Pipeline components: offline image-model loading, prompt encoding, chunked VAE coding, schedulers by name."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from conftest import make_tiny_text_encoder, make_tiny_unet, make_tiny_vae
from zoetrope.errors import CheckpointError, ConfigError, InputError
from zoetrope.formats.sd_single_file import save_sd_single_file
from zoetrope.sampling.loop import denoise
from zoetrope.pipelines.components import (
    SCHEDULERS,
    ImageModel,
    Parameterization,
    bundled_tokenizer,
    decode_latents,
    default_scheduler_config,
    encode_frames,
    encode_prompts,
    load_image_model,
    make_scheduler,
)


@pytest.fixture(scope="module")
def tokenizer():
    return bundled_tokenizer()


@pytest.fixture(scope="module")
def text_encoder():
    return make_tiny_text_encoder()


@pytest.fixture(scope="module")
def vae():
    return make_tiny_vae()


def assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    reference, loaded = expected.state_dict(), actual.state_dict()
    assert reference.keys() == loaded.keys()
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), key


# ------------------------------------------------------------------------------------- loading


def test_load_image_model_from_single_file_is_frozen(tmp_path, text_encoder, vae):
    unet = make_tiny_unet()
    path = save_sd_single_file(unet, vae, text_encoder, tmp_path / "tiny.safetensors")
    model = load_image_model(path)
    assert isinstance(model, ImageModel) and len(model.tokenizer) == 49408
    for expected, actual in ((unet, model.unet), (vae, model.vae), (text_encoder, model.text_encoder)):
        assert_same_weights(expected, actual)
        assert not actual.training and not any(p.requires_grad for p in actual.parameters())


def _write_diffusers_folder(root, unet, vae, text_encoder, tokenizer=None):
    root.mkdir()
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text_encoder.save_pretrained(root / "text_encoder")
    if tokenizer is not None:
        tokenizer.save_pretrained(root / "tokenizer")
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"]}
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def test_load_image_model_from_diffusers_folder(tmp_path, tokenizer, text_encoder, vae):
    unet = make_tiny_unet()
    with_tokenizer = _write_diffusers_folder(tmp_path / "a", unet, vae, text_encoder, tokenizer)
    without_tokenizer = _write_diffusers_folder(tmp_path / "b", unet, vae, text_encoder)
    for folder in (with_tokenizer, without_tokenizer):
        model = load_image_model(folder, dtype=torch.float16)
        assert model.unet.dtype == torch.float16 and model.text_encoder.dtype == torch.float16
        assert torch.equal(model.unet.conv_in.weight, unet.conv_in.weight.half())
        assert model.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_load_image_model_errors(tmp_path, text_encoder, vae):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_image_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: not a diffusers Stable Diffusion folder \(no model_index.json\)"):
        load_image_model(tmp_path / "empty")
    folder = _write_diffusers_folder(tmp_path / "partial", make_tiny_unet(), vae, text_encoder)
    (folder / "vae" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no vae/config.json"):
        load_image_model(folder)
    unet_only = save_sd_single_file(make_tiny_unet(), None, None, tmp_path / "unet.safetensors")
    with pytest.raises(CheckpointError, match="only a UNet"):
        load_image_model(unet_only)
    other_unet = make_tiny_unet(cross_attention_dim=16)
    mismatched = save_sd_single_file(other_unet, vae, text_encoder, tmp_path / "mix.safetensors")
    with pytest.raises(CheckpointError, match="attends to 16-wide text embeddings but the text encoder gives 32"):
        load_image_model(mismatched)


# ------------------------------------------------------------------------------------- prompts


def test_encode_prompts_matches_text_encoder_on_padded_ids(tokenizer, text_encoder):
    prompts = ["a photo of a cat", ""]
    with torch.no_grad():
        embeddings = encode_prompts(tokenizer, text_encoder, prompts)
        ids = torch.full((2, 77), 49407)
        ids[0, :7] = torch.tensor([49406, 320, 1125, 539, 320, 2368, 49407])
        ids[1, 0] = 49406
        expected = text_encoder(ids).last_hidden_state
    assert embeddings.shape == (2, 77, 32)
    assert torch.equal(embeddings, expected)


def test_encode_prompts_truncates_and_warns(tokenizer, text_encoder, caplog):
    long_prompt = " ".join(["cat"] * 80) + " zebra"
    with caplog.at_level(logging.WARNING, logger="zoetrope.pipelines.components"), torch.no_grad():
        long_embedding = encode_prompts(tokenizer, text_encoder, [long_prompt])
        cut_embedding = encode_prompts(tokenizer, text_encoder, [" ".join(["cat"] * 75)])
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cat cat" in warnings[0] and "zebra" in warnings[0] and "83 tokens" in warnings[0]
    assert torch.equal(long_embedding, cut_embedding)  # what is kept: start + the first 75 words + end token


def test_encode_prompts_rejects_bad_input(tokenizer, text_encoder):
    for bad in ([], "a cat", [None]):
        with pytest.raises(InputError, match="non-empty list of strings"):
            encode_prompts(tokenizer, text_encoder, bad)


# ------------------------------------------------------------------------------------- pixels <-> latents


def test_decode_latents_shapes_order_and_chunking(vae):
    latents = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        frames = decode_latents(vae, latents, chunk_size=16)
        assert frames.shape == (2, 3, 3, 32, 32) and frames.dtype == torch.float32
        assert frames.min() >= 0 and frames.max() <= 1
        for chunk_size in (1, 4):
            torch.testing.assert_close(decode_latents(vae, latents, chunk_size=chunk_size), frames, atol=1e-5, rtol=0)
        # Frame (batch 1, frame 2) is the VAE decode of exactly that latent, divided by the scaling factor.
        single = vae.decode(latents[1, :, 2][None] / 0.18215).sample[0]
    torch.testing.assert_close(frames[1, :, 2], (single / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)


def test_encode_frames_shapes_mode_and_sampling(vae):
    frames = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mode = encode_frames(vae, frames, sample=False)
        assert mode.shape == (1, 4, 5, 4, 4)
        reference = vae.encode(frames[0, :, 3][None] * 2 - 1).latent_dist.mode()[0] * vae.config.scaling_factor
        torch.testing.assert_close(mode[0, :, 3], reference, atol=1e-5, rtol=0)
        torch.testing.assert_close(encode_frames(vae, frames, chunk_size=2, sample=False), mode, atol=1e-5, rtol=0)
        first = encode_frames(vae, frames, chunk_size=2, generator=torch.Generator().manual_seed(7))
        second = encode_frames(vae, frames, chunk_size=2, generator=torch.Generator().manual_seed(7))
        other = encode_frames(vae, frames, chunk_size=2, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, second) and not torch.equal(first, other) and not torch.equal(first, mode)


def test_video_shape_errors(vae):
    with pytest.raises(InputError, match="latents must be a"):
        decode_latents(vae, torch.zeros(1, 4, 8, 8))
    with pytest.raises(InputError, match="chunk_size"):
        encode_frames(vae, torch.zeros(1, 3, 1, 32, 32), chunk_size=0)


# ------------------------------------------------------------------------------------- schedulers


def test_default_scheduler_is_animatediff_ddim():
    config = default_scheduler_config()
    assert config["beta_schedule"] == "linear" and (config["beta_start"], config["beta_end"]) == (0.00085, 0.012)
    config["beta_end"] = 1.0
    assert default_scheduler_config()["beta_end"] == 0.012  # a fresh dict every call
    scheduler = make_scheduler("ddim", default_scheduler_config())
    scheduler.set_timesteps(25)
    assert scheduler.timesteps[0] == 961 and scheduler.timesteps[-1] == 1  # official AnimateDiff: 961, 921, ..., 1
    betas = torch.linspace(0.00085, 0.012, 1000, dtype=torch.float32)
    torch.testing.assert_close(scheduler.betas, betas)
    assert scheduler.config.clip_sample is False and scheduler.config.set_alpha_to_one is True


@pytest.mark.parametrize(
    "name, class_name",
    [("ddim", "DDIMScheduler"), ("euler", "EulerDiscreteScheduler"), ("euler_a", "EulerAncestralDiscreteScheduler"),
     ("dpm++2m-karras", "DPMSolverMultistepScheduler"), ("lcm", "LCMScheduler"), ("DDIM", "DDIMScheduler")],
)
def test_schedulers_by_name_share_the_training_schedule(name, class_name):
    scheduler = make_scheduler(name, default_scheduler_config())
    assert type(scheduler).__name__ == class_name
    assert scheduler.config.beta_schedule == "linear" and scheduler.config.beta_end == 0.012
    assert scheduler.config.num_train_timesteps == 1000


def test_dpm_karras_settings_and_fresh_objects():
    scheduler = make_scheduler("dpm++2m-karras")
    assert scheduler.config.use_karras_sigmas and scheduler.config.algorithm_type == "dpmsolver++"
    assert scheduler.config.solver_order == 2
    assert make_scheduler("ddim") is not make_scheduler("ddim")


def test_unknown_scheduler_lists_names():
    names = ", ".join(SCHEDULERS).replace("+", r"\+")
    with pytest.raises(ConfigError, match=f"'heun' is unknown; expected one of {names}$"):
        make_scheduler("heun", default_scheduler_config())


# ------------------------------------------------------------------------------------- parameterization


def test_parameterization_schedule_and_metadata_round_trip():
    plain, vz = Parameterization(), Parameterization("v_prediction", True)
    assert plain.apply(default_scheduler_config()) == {**default_scheduler_config(), "prediction_type": "epsilon", "rescale_betas_zero_snr": False}
    schedule = vz.apply(default_scheduler_config())
    assert schedule["timestep_spacing"] == "trailing" and schedule["beta_schedule"] == "linear"
    scheduler = make_scheduler("ddim", schedule)
    scheduler.set_timesteps(10)
    assert scheduler.timesteps[0] == 999 and scheduler.alphas_cumprod[999] == 0  # starts from pure noise
    for value in (plain, vz, Parameterization("v_prediction", False)):
        assert Parameterization.from_metadata(value.metadata()) == value
    assert Parameterization.from_metadata({}) == plain
    assert Parameterization.from_metadata({"ss_v_parameterization": "True", "ss_zero_terminal_snr": "True"}) == vz
    assert Parameterization.from_metadata({"modelspec.prediction_type": "v"}) == Parameterization("v_prediction")
    with pytest.raises(ConfigError, match="needs prediction_type v_prediction"):
        Parameterization("epsilon", True)
    with pytest.raises(ConfigError, match="prediction_type='sample'"):
        Parameterization("sample")


@pytest.mark.parametrize("name", ["ddim", "euler", "dpm++2m-karras"])
def test_every_scheduler_samples_a_v_prediction_zero_snr_model(name):
    """An oracle v-prediction model of a one-point data set, sampled from pure noise at t = T (trailing spacing),
    lands on the point with every solver."""
    target = torch.linspace(-1, 1, 2 * 4 * 3 * 3).reshape(2, 4, 1, 3, 3)
    truth = make_scheduler("ddim", Parameterization("v_prediction", True).apply(default_scheduler_config()))

    def oracle(latents, t):
        alpha_bar = truth.alphas_cumprod[int(round(float(t)))].clamp(min=2**-24)
        noise = (latents - alpha_bar.sqrt() * target) / (1 - alpha_bar).sqrt()
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * target

    scheduler = make_scheduler(name, Parameterization("v_prediction", True).apply(default_scheduler_config()))
    scheduler.set_timesteps(12)
    assert round(float(scheduler.timesteps[0])) == 999
    start = torch.randn(target.shape, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    torch.testing.assert_close(denoise(oracle, start, scheduler, progress=False), target, atol=2e-3, rtol=0)


def test_diffusers_folder_scheduler_config_sets_the_parameterization(tmp_path, text_encoder, vae):
    folder = _write_diffusers_folder(tmp_path / "v", make_tiny_unet(), vae, text_encoder)
    (folder / "scheduler").mkdir()
    config = {**default_scheduler_config(), "prediction_type": "v_prediction", "rescale_betas_zero_snr": True}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    assert load_image_model(folder).parameterization == Parameterization("v_prediction", True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "prediction_type": "sample"}))
    with pytest.raises(CheckpointError, match="predicts 'sample'"):
        load_image_model(folder)
    single = save_sd_single_file(make_tiny_unet(), vae, text_encoder, tmp_path / "v.safetensors", Parameterization("v_prediction").metadata())
    assert load_image_model(single).parameterization == Parameterization("v_prediction", False)
