"""LDM single-file SD checkpoints: our name table against diffusers' converter, round trips, strict loading, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from conftest import make_tiny_motion_modules, make_tiny_text_encoder, make_tiny_unet, make_tiny_vae
from zoetrope.errors import CheckpointError
from zoetrope.formats.safe_load import read_metadata, save_state_dict
from zoetrope.formats.sd_single_file import (
    CONFIGS_METADATA_KEY,
    FACTORIES,
    PARTS,
    load_sd_single_file,
    load_sd_unet,
    model_config,
    save_sd_single_file,
    sd15_config,
    sd_state_dict,
)


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_unet(), make_tiny_vae(), make_tiny_text_encoder()


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("sd") / "tiny.safetensors"
    save_sd_single_file(*tiny, path, metadata={"note": "test"})
    return path


def tiny_configs(tiny) -> dict:
    return {part: model_config(model) for part, model in zip(PARTS, tiny)}


def assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    reference, loaded = expected.state_dict(), actual.state_dict()
    assert reference.keys() == loaded.keys()
    for key, value in reference.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key


def forward_all(unet, vae, text_encoder) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 5, 32, generator=generator)
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407]])
    with torch.no_grad():
        return (
            unet(sample, 10, encoder_hidden_states=context).sample,
            vae.decode(sample).sample,
            vae.encode(torch.rand(1, 3, 64, 64, generator=generator)).latent_dist.mean,
            text_encoder(ids).last_hidden_state,
        )


# ------------------------------------------------------------------------------------- the name table


def test_full_size_sd15_names_match_diffusers_converter():
    """Every parameter of the bundled SD1.5 configs gets the real LDM name; diffusers' converter maps it back."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    configs = {part: sd15_config(part) for part in PARTS}
    with torch.device("meta"):
        unet, vae, text_encoder = (FACTORIES[part](configs[part]) for part in PARTS)
    state = sd_state_dict(unet, vae, text_encoder)
    # Key counts of the released v1-5-pruned-emaonly file (1131 keys with CLIP's stored position_ids).
    assert sum(key.startswith("model.diffusion_model.") for key in state) == 686
    assert sum(key.startswith("first_stage_model.") for key in state) == 248
    assert sum(key.startswith("cond_stage_model.transformer.text_model.") for key in state) == 196
    for known in (
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.middle_block.2.emb_layers.1.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.output_blocks.3.0.skip_connection.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
        "first_stage_model.encoder.mid.attn_1.proj_out.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight",
    ):
        assert known in state, known
    assert state["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)  # 1x1 conv in LDM

    unet_back = convert_ldm_unet_checkpoint(state, configs["unet"])
    assert unet_back.keys() == unet.state_dict().keys()
    vae_back = convert_ldm_vae_checkpoint(state, configs["vae"])
    assert vae_back.keys() == vae.state_dict().keys()
    for key, value in vae.state_dict().items():
        assert vae_back[key].shape == value.shape, key


def test_tiny_names_match_diffusers_converter_tensor_for_tensor(tiny):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    unet, vae, text_encoder = tiny
    state = sd_state_dict(unet, vae, text_encoder)
    for model, converted in (
        (unet, convert_ldm_unet_checkpoint(state, model_config(unet))),
        (vae, convert_ldm_vae_checkpoint(state, model_config(vae))),
        (text_encoder, {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(state).items()}),
    ):
        reference = model.state_dict()
        assert converted.keys() == reference.keys()
        for key, value in reference.items():
            assert torch.equal(converted[key], value), key


# ------------------------------------------------------------------------------------- round trips


def test_safetensors_round_trip_is_bit_identical(tiny, saved):
    metadata = read_metadata(saved)
    assert metadata["note"] == "test" and metadata["zoetrope.kind"] == "sd_model"
    assert set(json.loads(metadata[CONFIGS_METADATA_KEY])) == set(PARTS)
    loaded = load_sd_single_file(saved)
    for expected, actual in zip(tiny, (loaded.unet, loaded.vae, loaded.text_encoder)):
        assert_same_weights(expected, actual)
        assert not actual.training
    for expected, actual in zip(forward_all(*tiny), forward_all(loaded.unet, loaded.vae, loaded.text_encoder)):
        assert torch.equal(expected, actual)


def test_ckpt_with_wrapper_and_extra_entries_loads(tiny, tmp_path):
    state = sd_state_dict(*tiny)
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["alphas_cumprod"] = torch.linspace(1, 0, 1000)  # LDM schedule buffers live outside the three parts
    state["model_ema.decay"] = torch.tensor(0.9999)
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": state, "global_step": 1234}, path)
    loaded = load_sd_single_file(path, configs=tiny_configs(tiny))  # a pickle has no metadata: configs given
    for expected, actual in zip(tiny, (loaded.unet, loaded.vae, loaded.text_encoder)):
        assert_same_weights(expected, actual)


def test_clip_names_without_text_model_level_load(tiny, tmp_path):
    state = {
        key.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): value
        for key, value in sd_state_dict(*tiny).items()
    }
    path = tmp_path / "old.safetensors"
    save_state_dict(state, path, {CONFIGS_METADATA_KEY: json.dumps(tiny_configs(tiny))})
    assert_same_weights(tiny[2], load_sd_single_file(path, parts=("text_encoder",)).text_encoder)


def test_dtype_is_applied(saved):
    loaded = load_sd_single_file(saved, dtype=torch.float16, parts=("unet", "vae"))
    assert {p.dtype for p in loaded.unet.parameters()} == {torch.float16}
    assert {p.dtype for p in loaded.vae.parameters()} == {torch.float16}
    assert loaded.text_encoder is None


def test_unet_only_file(tiny, tmp_path):
    path = save_sd_single_file(tiny[0], None, None, tmp_path / "unet.safetensors")
    assert read_metadata(path)["zoetrope.kind"] == "sd_unet"
    assert_same_weights(tiny[0], load_sd_unet(path))
    with pytest.raises(CheckpointError, match="only a UNet"):
        load_sd_single_file(path)


def test_unet_from_full_file(tiny, saved):
    assert_same_weights(tiny[0], load_sd_unet(saved))


def test_explicit_config_overrides_metadata(tiny, saved):
    other = dict(model_config(tiny[0]), cross_attention_dim=16)
    with pytest.raises(CheckpointError, match="has shape"):
        load_sd_unet(saved, config=other)


# ------------------------------------------------------------------------------------- errors


def test_missing_and_unexpected_keys_are_named(tiny, tmp_path):
    state = sd_state_dict(*tiny)
    dropped = "model.diffusion_model.out.2.weight"
    del state[dropped]
    state["first_stage_model.encoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_state_dict(state, path, {CONFIGS_METADATA_KEY: json.dumps(tiny_configs(tiny))})
    with pytest.raises(CheckpointError, match=r"UNet weights .*missing model\.diffusion_model\.out\.2\.weight"):
        load_sd_single_file(path)
    vae_message = r"broken\.safetensors: the VAE .*unexpected first_stage_model\.encoder\.extra"
    with pytest.raises(CheckpointError, match=vae_message):
        load_sd_single_file(path, parts=("vae",))


def test_tiny_file_without_configs_is_refused_against_sd15_shapes(tiny, tmp_path):
    path = tmp_path / "bare.safetensors"
    save_state_dict(sd_state_dict(*tiny), path)
    with pytest.raises(CheckpointError, match="bare.safetensors: the UNet weights do not match"):
        load_sd_single_file(path)


def test_truncated_file(saved, tmp_path):
    path = tmp_path / "cut.safetensors"
    data = saved.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_sd_single_file(path)


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("these are not weights")
    with pytest.raises(CheckpointError, match="notes.safetensors"):
        load_sd_single_file(text)
    other = tmp_path / "other.safetensors"
    save_state_dict({"encoder.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(CheckpointError, match="not a file zoetrope recognises"):
        load_sd_single_file(other)
    with pytest.raises(CheckpointError, match="no such file"):
        load_sd_single_file(tmp_path / "absent.safetensors")


def test_motion_module_passed_as_sd_model(tmp_path):
    from zoetrope.formats.motion import save_motion_module

    path = save_motion_module(make_tiny_motion_modules(), tmp_path / "mm.safetensors")
    with pytest.raises(CheckpointError, match=r"mm\.safetensors: this is an AnimateDiff motion module.*--motion-module"):
        load_sd_single_file(path)


def test_pooled_caption_unet_round_trips_under_if_names(tiny, tmp_path):
    """A UNet with the caption pooled into its timestep embedding (`addition_embed_type: text`, the shapes world's
    thirty-first session) is written under DeepFloyd IF's `encoder_pooling.{0..3}` names and reads back exactly."""
    unet = make_tiny_unet(addition_embed_type="text", addition_embed_type_num_heads=4)
    path = save_sd_single_file(unet, tiny[1], tiny[2], tmp_path / "pooled.safetensors")
    with safe_open(str(path), "pt") as handle:
        pooled = sorted(key for key in handle.keys() if ".encoder_pooling." in key)
    assert pooled == sorted(
        f"model.diffusion_model.encoder_pooling.{name}"
        for name in ("0.weight", "0.bias", "1.positional_embedding", "1.k_proj.weight", "1.k_proj.bias",
                     "1.q_proj.weight", "1.q_proj.bias", "1.v_proj.weight", "1.v_proj.bias", "2.weight", "2.bias",
                     "3.weight", "3.bias")
    )
    loaded = load_sd_single_file(path)
    assert loaded.unet.config.addition_embed_type == "text"
    assert_same_weights(unet, loaded.unet)
    expected, actual = forward_all(unet, *tiny[1:])[0], forward_all(loaded.unet, *tiny[1:])[0]
    assert torch.equal(expected, actual)
    # the pooled path is live: zeroing its projection changes the prediction
    with torch.no_grad():
        loaded.unet.add_embedding.proj.weight.zero_()
    assert not torch.allclose(forward_all(loaded.unet, *tiny[1:])[0], expected)


def test_writer_refuses_non_safetensors_and_foreign_parameters(tiny, tmp_path):
    with pytest.raises(CheckpointError, match=r"\.safetensors"):
        save_sd_single_file(*tiny, tmp_path / "model.ckpt")
    sdxl_like = make_tiny_unet(addition_embed_type="text_time", addition_time_embed_dim=8,
                               projection_class_embeddings_input_dim=48)
    with pytest.raises(CheckpointError, match="no name in the SD1.5 LDM layout"):
        save_sd_single_file(sdxl_like, None, None, tmp_path / "x.safetensors")
