"""LoRA file formats: official MotionLoRA and domain adapter (processor naming), kohya/A1111 and diffusers/peft image
LoRAs. Files are written by the tests with the exact foreign key names (formatted by hand, not through our rename
rules) at tiny widths."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from conftest import make_tiny_motion_modules, make_tiny_unet
from zoetrope.adapters.lora import inject_lora
from zoetrope.errors import CheckpointError, ConfigError
from zoetrope.formats.kohya import load_image_lora, save_kohya_lora
from zoetrope.formats.lora_files import (
    classify_lora_keys,
    load_domain_adapter,
    load_motion_lora,
    save_domain_adapter,
    save_motion_lora,
)
from zoetrope.formats.safe_load import load_state_dict, read_metadata, save_state_dict

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")
# Tiny motion-module layout of conftest: (block, modules, width); widths (32, 64), one layer per block.
MOTION_LAYOUT = (
    ("down_blocks.0", 1, 32),
    ("down_blocks.1", 1, 64),
    ("mid_block", 1, 64),
    ("up_blocks.0", 2, 64),
    ("up_blocks.1", 2, 32),
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def official_motion_lora(rank: int = 4, seed: int = 0, width_factor: int = 1) -> dict[str, torch.Tensor]:
    """A MotionLoRA in the official key naming, with mid-block keys (the released files were trained on v2)."""
    generator = _gen(seed)
    state = {}
    for block, count, width in MOTION_LAYOUT:
        width *= width_factor
        for index in range(count):
            for attention in (0, 1):
                for projection in PROJECTIONS:
                    prefix = (
                        f"{block}.motion_modules.{index}.temporal_transformer.transformer_blocks.0."
                        f"attention_blocks.{attention}.processor.{projection}_lora"
                    )
                    state[f"{prefix}.down.weight"] = torch.randn(rank, width, generator=generator)
                    state[f"{prefix}.up.weight"] = torch.randn(width, rank, generator=generator)
    return state


def write_official_ckpt(state: dict[str, torch.Tensor], path) -> None:
    """The official container: a pickle with a `state_dict` wrapper and a non-tensor `animatediff_config` entry."""
    torch.save({"state_dict": state, "animatediff_config": {"note": "dummy"}}, path)


def domain_adapter_state(unet: nn.Module, rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official domain-adapter naming on every spatial attention of the tiny UNet (attn2 k/v read the text width)."""
    generator = _gen(seed)
    attentions = [
        "down_blocks.0.attentions.0",
        "mid_block.attentions.0",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
    ]
    state = {}
    for attention in attentions:
        for attn in ("attn1", "attn2"):
            for projection in PROJECTIONS:
                suffix = ".0" if projection == "to_out" else ""
                module_name = f"{attention}.transformer_blocks.0.{attn}.{projection}{suffix}"
                module = unet.get_submodule(module_name)
                prefix = f"{attention}.transformer_blocks.0.{attn}.processor.{projection}_lora"
                state[f"{prefix}.down.weight"] = torch.randn(rank, module.in_features, generator=generator)
                state[f"{prefix}.up.weight"] = torch.randn(module.out_features, rank, generator=generator)
    return state


def tiny_text_encoder() -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=100,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


# ---------------------------------------------------------------------------------------------------- MotionLoRA
def test_motion_lora_official_file_merges_as_w_plus_strength_up_down(tmp_path, caplog):
    state = official_motion_lora()
    path = tmp_path / "v2_lora_ZoomIn.ckpt"
    write_official_ckpt(state, path)
    modules = make_tiny_motion_modules()  # v3-like: no mid block
    before = {key: value.clone() for key, value in modules.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="zoetrope.formats.lora_files"):
        network = load_motion_lora(path, modules, strength=0.6)
    assert "skipped 8 LoRA modules" in caplog.text and "mid_block" in caplog.text
    assert len(network) == 4 * 2 * modules.num_modules()
    assert all(layer.alpha is None and layer.multiplier == 1.0 for _, layer in network.named_layers())
    network.merge(modules)
    prefix = "down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.processor"
    for projection, ours in (("to_q", "to_q"), ("to_out", "to_out")):
        down = state[f"{prefix}.{projection}_lora.down.weight"]
        up = state[f"{prefix}.{projection}_lora.up.weight"]
        key = f"down_blocks.1.motion_modules.0.transformer_blocks.0.attentions.1.{ours}.weight"
        torch.testing.assert_close(modules.state_dict()[key], before[key] + 0.6 * up @ down, rtol=1e-5, atol=1e-5)
    # Biases, norms and feed-forwards are untouched.
    for key in before:
        if not key.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.weight")):
            assert torch.equal(modules.state_dict()[key], before[key]), key


def test_motion_lora_mid_block_is_used_when_the_model_has_one(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_state_dict(official_motion_lora(rank=2), path)
    modules = make_tiny_motion_modules(mid_block=True)
    network = load_motion_lora(path, modules)
    assert len(network) == 4 * 2 * modules.num_modules()
    assert "mid_block.motion_modules.0.transformer_blocks.0.attentions.0.to_v" in network.target_names()


def test_motion_lora_on_a_video_unet_attach_detach(tmp_path):
    from zoetrope.models.video_unet import VideoUNet

    path = tmp_path / "lora.ckpt"
    write_official_ckpt(official_motion_lora(rank=2, seed=3), path)
    video_unet = VideoUNet(make_tiny_unet(), make_tiny_motion_modules())
    generator = _gen(1)
    sample = torch.randn(1, 4, 3, 8, 8, generator=generator)
    text = torch.randn(1, 5, 32, generator=generator)
    with torch.no_grad():
        base = video_unet(sample, 10, text)
        network = load_motion_lora(path, video_unet.motion_modules, strength=0.5).attach(video_unet.motion_modules)
        moved = video_unet(sample, 10, text)
        network.detach()
        after = video_unet(sample, 10, text)
    assert (moved - base).abs().max() > 1e-4
    assert torch.equal(after, base)


def test_save_motion_lora_writes_official_names_and_round_trips(tmp_path):
    modules = make_tiny_motion_modules(mid_block=True)
    network = inject_lora(
        modules, r"attentions\.\d+\.to_(q|k|v|out)$", rank=4, alpha=8.0, freeze_base=False, generator=_gen(0)
    )
    with torch.no_grad():
        for _, layer in network.named_layers():
            layer.up.normal_(generator=_gen(1))
    path = save_motion_lora(network, tmp_path / "motion_lora.safetensors", {"trained_on": "shapes"})
    written = load_state_dict(path)
    assert set(written) == set(official_motion_lora())  # exactly the official key set (mid block included)
    metadata = read_metadata(path)
    assert metadata["zoetrope.kind"] == "motion_lora" and metadata["trained_on"] == "shapes"
    loaded = load_motion_lora(path, modules, strength=1.0)
    # alpha/rank = 2 was folded into `up`: the loaded network (multiplier 1) has the same delta.
    copies = dict(loaded.named_layers())
    assert sorted(copies) == sorted(network.target_names())
    for name, original in network.named_layers():
        torch.testing.assert_close(copies[name].delta_weight(), original.delta_weight(), rtol=1e-6, atol=1e-6)


def test_save_motion_lora_refuses_layers_the_format_cannot_hold(tmp_path):
    modules = make_tiny_motion_modules()
    network = inject_lora(modules, r"ff\.proj_in$", rank=2)
    with pytest.raises(ConfigError, match="kohya"):
        save_motion_lora(network, tmp_path / "x.safetensors")


def test_motion_lora_for_other_widths_is_refused(tmp_path):
    path = tmp_path / "wide.ckpt"
    write_official_ckpt(official_motion_lora(width_factor=2), path)
    with pytest.raises(CheckpointError, match=r"wide\.ckpt: LoRA for .* different base model"):
        load_motion_lora(path, make_tiny_motion_modules())


def test_diffusers_converted_motion_lora_loads(tmp_path):
    """diffusers' convert_animatediff_motion_lora_to_diffusers: attn1/attn2 names, `unet.` prefix."""
    state = {}
    generator = _gen(2)
    for diffusers_name in ("attn1", "attn2"):
        prefix = f"unet.up_blocks.1.motion_modules.1.transformer_blocks.0.{diffusers_name}.processor.to_out_lora"
        state[f"{prefix}.down.weight"] = torch.randn(2, 32, generator=generator)
        state[f"{prefix}.up.weight"] = torch.randn(32, 2, generator=generator)
    path = tmp_path / "diffusers_lora.safetensors"
    save_state_dict(state, path)
    network = load_motion_lora(path, make_tiny_motion_modules())
    assert network.target_names() == [
        "up_blocks.1.motion_modules.1.transformer_blocks.0.attentions.0.to_out",
        "up_blocks.1.motion_modules.1.transformer_blocks.0.attentions.1.to_out",
    ]


# ---------------------------------------------------------------------------------------------------- domain adapter
def test_domain_adapter_merges_without_alpha_scaling(tmp_path):
    unet = make_tiny_unet()
    state = domain_adapter_state(unet)
    path = tmp_path / "v3_sd15_adapter.ckpt"
    write_official_ckpt(state, path)
    before = {key: value.clone() for key, value in unet.state_dict().items()}
    network = load_domain_adapter(path, unet, scale=0.75)
    assert len(network) == 4 * 2 * 4
    network.merge(unet)
    prefix = "mid_block.attentions.0.transformer_blocks.0.attn2"
    for projection, module in (("to_k", "to_k"), ("to_out", "to_out.0")):
        down = state[f"{prefix}.processor.{projection}_lora.down.weight"]
        up = state[f"{prefix}.processor.{projection}_lora.up.weight"]
        key = f"{prefix}.{module}.weight"
        torch.testing.assert_close(unet.state_dict()[key], before[key] + 0.75 * up @ down, rtol=1e-5, atol=1e-5)
    assert torch.equal(unet.state_dict()["conv_in.weight"], before["conv_in.weight"])


def test_save_domain_adapter_round_trip(tmp_path):
    unet = make_tiny_unet()
    state = domain_adapter_state(unet, seed=4)
    source = tmp_path / "adapter.ckpt"
    write_official_ckpt(state, source)
    network = load_domain_adapter(source, unet)
    path = save_domain_adapter(network, tmp_path / "adapter.safetensors")
    written = load_state_dict(path)
    assert set(written) == set(state)
    assert all(torch.equal(written[key], state[key]) for key in state)
    assert read_metadata(path)["zoetrope.kind"] == "domain_adapter"


# ---------------------------------------------------------------------------------------------------- kohya
def _kohya_pair(generator, out_features, in_features, rank, kernel=None):
    down_shape = (rank, in_features) if kernel is None else (rank, in_features, *kernel)
    up_shape = (out_features, rank) if kernel is None else (out_features, rank, 1, 1)
    return torch.randn(down_shape, generator=generator) * 0.1, torch.randn(up_shape, generator=generator) * 0.1


def test_kohya_file_maps_onto_unet_and_text_encoder_with_alpha_over_rank(tmp_path):
    unet, text_encoder = make_tiny_unet(), tiny_text_encoder()
    generator = _gen(0)
    # (kohya name, module in the model, kernel, rank, alpha or None, expected multiplier)
    block = "down_blocks.0.attentions.0.transformer_blocks.0"
    spec = [
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", f"{block}.attn1.to_q", None, 4, 2.0,
         0.5),
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0", f"{block}.attn1.to_out.0", None,
         4, None, 1.0),
        ("lora_unet_down_blocks_0_attentions_0_proj_in", "down_blocks.0.attentions.0.proj_in", (1, 1), 4, 8.0, 2.0),
        ("lora_unet_down_blocks_0_resnets_0_conv1", "down_blocks.0.resnets.0.conv1", (3, 3), 4, 4.0, 1.0),
        ("lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_ff_net_2",
         "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.2", None, 2, 1.0, 0.5),
    ]
    te_spec = [
        ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "encoder.layers.0.self_attn.q_proj", None, 2, 1.0,
         0.5),
        ("lora_te_text_model_encoder_layers_1_mlp_fc1", "encoder.layers.1.mlp.fc1", None, 2, None, 1.0),
    ]
    state, expected = {}, {}
    for models, rows in (((unet, "unet"), spec), ((text_encoder, "te"), te_spec)):
        model = models[0]
        for kohya_name, module_name, kernel, rank, alpha, multiplier in rows:
            module = model.get_submodule(module_name)
            out_features = getattr(module, "out_features", None) or module.out_channels
            in_features = getattr(module, "in_features", None) or module.in_channels
            down, up = _kohya_pair(generator, out_features, in_features, rank, kernel)
            state[f"{kohya_name}.lora_down.weight"] = down
            state[f"{kohya_name}.lora_up.weight"] = up
            if alpha is not None:
                state[f"{kohya_name}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
            delta = up.flatten(1) @ down.flatten(1)
            delta = delta.reshape(module.weight.shape)
            expected[(models[1], module_name)] = module.weight.detach() + 0.8 * multiplier * delta
    path = tmp_path / "style.safetensors"
    save_state_dict(state, path)
    image_lora = load_image_lora(path, unet, text_encoder, scale=0.8)
    assert len(image_lora.unet) == len(spec) and len(image_lora.text_encoder) == len(te_spec)
    tokens = torch.tensor([[0, 5, 9, 1]])
    with torch.no_grad():
        image_lora.text_encoder.attach(text_encoder)
        attached = text_encoder(tokens).last_hidden_state
        image_lora.merge(unet, text_encoder)
        merged = text_encoder(tokens).last_hidden_state
    torch.testing.assert_close(attached, merged, rtol=1e-5, atol=1e-5)
    for (which, module_name), weight in expected.items():
        model = unet if which == "unet" else text_encoder
        torch.testing.assert_close(model.get_submodule(module_name).weight, weight, rtol=1e-5, atol=1e-6)


def test_kohya_save_round_trip(tmp_path):
    unet, text_encoder = make_tiny_unet(), tiny_text_encoder()
    unet_network = inject_lora(
        unet, r"(attn1\.to_(q|out\.0)|resnets\.0\.conv1|proj_out)$", rank=3, alpha=1.5, freeze_base=False,
        generator=_gen(0),
    )
    text_network = inject_lora(text_encoder, r"self_attn\.(q|v)_proj$", rank=2, freeze_base=False, generator=_gen(1))
    for network in (unet_network, text_network):
        with torch.no_grad():
            for _, layer in network.named_layers():
                layer.up.normal_(generator=_gen(2))
        network.detach()
    path = save_kohya_lora(tmp_path / "lora.safetensors", unet_network, text_network)
    written = load_state_dict(path)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_down.weight" in written
    assert "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight" in written
    assert float(written["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"]) == 2.0  # alpha None -> rank
    assert float(written["lora_unet_up_blocks_1_attentions_0_proj_out.alpha"]) == 1.5
    assert read_metadata(path)["ss_network_module"] == "networks.lora"
    loaded = load_image_lora(path, unet, text_encoder)
    for original, copy in ((unet_network, loaded.unet), (text_network, loaded.text_encoder)):
        copies = dict(copy.named_layers())
        assert sorted(copies) == sorted(original.target_names())
        for name, a in original.named_layers():
            b = copies[name]
            assert torch.equal(a.down, b.down) and torch.equal(a.up, b.up)
            assert a.multiplier == b.multiplier


def test_kohya_unmatched_keys_name_the_file_and_keys(tmp_path):
    unet = make_tiny_unet()
    down, up = _kohya_pair(_gen(0), 32, 32, 2, (1, 1))
    state = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": down,
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": up,
        "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": down,
        "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": up,
    }
    path = tmp_path / "other_base.safetensors"
    save_state_dict(state, path)
    with pytest.raises(CheckpointError, match=r"other_base\.safetensors: 1 LoRA modules match nothing in the UNet "
                                              r"\(lora_unet_down_blocks_7_attentions_0_proj_in \(1 in all\)\)"):
        load_image_lora(path, unet)
    ldm = {f"lora_unet_input_blocks_1_1_proj_in.lora_{r}.weight": torch.zeros(2, 2) for r in ("down", "up")}
    save_state_dict(ldm, tmp_path / "ldm_named.safetensors")
    with pytest.raises(CheckpointError, match="original LDM UNet names"):
        load_image_lora(tmp_path / "ldm_named.safetensors", unet)
    sdxl_name = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    sdxl = {f"{sdxl_name}.lora_{r}.weight": torch.zeros(2, 2) for r in ("down", "up")}
    save_state_dict(sdxl, tmp_path / "sdxl.safetensors")
    with pytest.raises(CheckpointError, match="SDXL LoRA"):
        load_image_lora(tmp_path / "sdxl.safetensors", unet)


def test_kohya_shape_mismatch_and_unsupported_families(tmp_path):
    unet = make_tiny_unet()
    state = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 768),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(32, 4),
    }
    save_state_dict(state, tmp_path / "sd15_real.safetensors")
    with pytest.raises(CheckpointError, match=r"down \(4, 768\).*different base model"):
        load_image_lora(tmp_path / "sd15_real.safetensors", unet)
    loha = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": torch.zeros(2, 2),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 32),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 2),
    }
    save_state_dict(loha, tmp_path / "loha.safetensors")
    with pytest.raises(CheckpointError, match="LyCORIS LoHa"):
        load_image_lora(tmp_path / "loha.safetensors", unet)
    half = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 32)}
    save_state_dict(half, tmp_path / "half.safetensors")
    with pytest.raises(CheckpointError, match="only one of down/up"):
        load_image_lora(tmp_path / "half.safetensors", unet)


# ---------------------------------------------------------------------------------------------------- peft
def test_peft_and_old_diffusers_layouts(tmp_path):
    unet, text_encoder = make_tiny_unet(), tiny_text_encoder()
    generator = _gen(3)
    block = "down_blocks.0.attentions.0.transformer_blocks.0"
    text = "text_encoder.text_model.encoder.layers.0.self_attn.k_proj"
    state = {
        f"unet.{block}.attn1.to_q.lora_A.weight": torch.randn(2, 32, generator=generator),
        f"unet.{block}.attn1.to_q.lora_B.weight": torch.randn(32, 2, generator=generator),
        f"unet.{block}.attn2.to_k.lora.down.weight": torch.randn(2, 32, generator=generator),
        f"unet.{block}.attn2.to_k.lora.up.weight": torch.randn(32, 2, generator=generator),
        f"unet.{block}.attn1.processor.to_out_lora.down.weight": torch.randn(2, 32, generator=generator),
        f"unet.{block}.attn1.processor.to_out_lora.up.weight": torch.randn(32, 2, generator=generator),
        f"unet.{block}.ff.net.2.lora_A.weight": torch.randn(4, 128, generator=generator),
        f"unet.{block}.ff.net.2.lora_B.weight": torch.randn(32, 4, generator=generator),
        f"unet.{block}.ff.net.2.alpha": torch.tensor(2.0),
        f"{text}.lora_linear_layer.down.weight": torch.randn(2, 32, generator=generator),
        f"{text}.lora_linear_layer.up.weight": torch.randn(32, 2, generator=generator),
    }
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_state_dict(state, path)
    assert classify_lora_keys(state) == "peft"
    image_lora = load_image_lora(path, unet, text_encoder, scale=1.0)
    assert sorted(image_lora.unet.target_names()) == sorted(
        [f"{block}.attn1.to_q", f"{block}.attn2.to_k", f"{block}.attn1.to_out.0", f"{block}.ff.net.2"]
    )
    assert image_lora.text_encoder.target_names() == ["encoder.layers.0.self_attn.k_proj"]
    before = unet.get_submodule(f"{block}.ff.net.2").weight.detach().clone()
    before_q = unet.get_submodule(f"{block}.attn1.to_q").weight.detach().clone()
    image_lora.merge(unet, text_encoder)
    ff_delta = state[f"unet.{block}.ff.net.2.lora_B.weight"] @ state[f"unet.{block}.ff.net.2.lora_A.weight"]
    torch.testing.assert_close(unet.get_submodule(f"{block}.ff.net.2").weight, before + 0.5 * ff_delta)
    q_delta = state[f"unet.{block}.attn1.to_q.lora_B.weight"] @ state[f"unet.{block}.attn1.to_q.lora_A.weight"]
    torch.testing.assert_close(unet.get_submodule(f"{block}.attn1.to_q").weight, before_q + q_delta)


# ---------------------------------------------------------------------------------------------------- wrong files
def test_classify_lora_keys():
    unet = make_tiny_unet()
    assert classify_lora_keys(official_motion_lora(rank=1)) == "motion_lora"
    assert classify_lora_keys(domain_adapter_state(unet, rank=1)) == "domain_adapter"
    assert classify_lora_keys(["lora_unet_conv_in.lora_down.weight", "lora_unet_conv_in.alpha"]) == "kohya"
    assert classify_lora_keys(["unet.conv_in.lora_A.weight", "unet.conv_in.lora_B.weight"]) == "peft"
    assert classify_lora_keys(["unet.x.attn1.processor.to_q_lora.down.weight"]) == "peft"
    assert classify_lora_keys(["down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"]) is None
    assert classify_lora_keys(["conv_in.weight"]) is None


@pytest.fixture
def files(tmp_path):
    from zoetrope.formats.animatediff import ours_to_official

    unet = make_tiny_unet()
    paths = {
        "motion_lora": tmp_path / "v2_lora_PanLeft.ckpt",
        "adapter": tmp_path / "v3_sd15_adapter.ckpt",
        "motion_module": tmp_path / "v3_sd15_mm.safetensors",
        "kohya": tmp_path / "style.safetensors",
        "other": tmp_path / "other.safetensors",
    }
    write_official_ckpt(official_motion_lora(rank=1), paths["motion_lora"])
    write_official_ckpt(domain_adapter_state(unet, rank=1), paths["adapter"])
    modules = make_tiny_motion_modules()
    save_state_dict({ours_to_official(k): v for k, v in modules.state_dict().items()}, paths["motion_module"])
    save_state_dict({"lora_unet_conv_in.lora_down.weight": torch.zeros(1, 4, 3, 3),
                     "lora_unet_conv_in.lora_up.weight": torch.zeros(32, 1, 1, 1)}, paths["kohya"])
    save_state_dict({"conv_in.weight": torch.zeros(1)}, paths["other"])
    return paths, unet, modules


def test_wrong_files_get_clear_errors(files):
    paths, unet, modules = files
    cases = [
        (lambda: load_motion_lora(paths["adapter"], modules),
         "v3_sd15_adapter.ckpt: this is the domain adapter (a LoRA on the image UNet's spatial attention), but a "
         "MotionLoRA (a LoRA on the motion module) was expected here; pass it with --adapter"),
        (lambda: load_domain_adapter(paths["motion_lora"], unet),
         "v2_lora_PanLeft.ckpt: this is a MotionLoRA (a LoRA on the motion module), but the domain adapter"),
        (lambda: load_image_lora(paths["motion_lora"], unet), "pass it with --motion-lora"),
        (lambda: load_image_lora(paths["adapter"], unet), "pass it with --adapter"),
        (lambda: load_motion_lora(paths["motion_module"], modules),
         "v3_sd15_mm.safetensors: this is an AnimateDiff motion module, not a LoRA, but a MotionLoRA"),
        (lambda: load_image_lora(paths["motion_module"], unet), "pass it with --motion-module"),
        (lambda: load_motion_lora(paths["kohya"], modules), "image LoRA (kohya/A1111 layout), but a MotionLoRA"),
        (lambda: load_domain_adapter(paths["kohya"], unet), "pass it with --lora"),
        (lambda: load_motion_lora(paths["other"], modules), "other.safetensors: not a LoRA file"),
    ]
    for call, message in cases:
        with pytest.raises(CheckpointError) as error:
            call()
        assert message in str(error.value)
        assert "\n" not in str(error.value)
