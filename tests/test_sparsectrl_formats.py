"""SparseCtrl checkpoints: official and diffusers key names both ways, tiny files that load and run, strictness."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import make_tiny_unet, tiny_motion_config

from zoetrope.errors import CheckpointError
from zoetrope.formats.detect import inspect_file
from zoetrope.formats.safe_load import load_state_dict, read_metadata, save_state_dict
from zoetrope.formats.sparsectrl import (
    CONFIG_METADATA_KEY,
    detect_layout,
    load_sparse_control,
    save_sparse_control,
    to_ours,
    to_theirs,
)
from zoetrope.models.sparse_control import SPARSECTRL_PRESETS, SparseControlConfig, SparseControlEncoder

SD15_UNET = dict(cross_attention_dim=768)  # diffusers' UNet2DConditionModel defaults are the SD1.5 layout

#: The per-module suffixes of an official SparseCtrl motion module: ONE "Temporal_Self" attention.
OFFICIAL_MOTION_SUFFIXES = [
    "norm.weight", "norm.bias", "proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias",
    "transformer_blocks.0.attention_blocks.0.to_q.weight",
    "transformer_blocks.0.attention_blocks.0.to_k.weight",
    "transformer_blocks.0.attention_blocks.0.to_v.weight",
    "transformer_blocks.0.attention_blocks.0.to_out.0.weight",
    "transformer_blocks.0.attention_blocks.0.to_out.0.bias",
    "transformer_blocks.0.attention_blocks.0.pos_encoder.pe",
    "transformer_blocks.0.norms.0.weight", "transformer_blocks.0.norms.0.bias",
    "transformer_blocks.0.ff.net.0.proj.weight", "transformer_blocks.0.ff.net.0.proj.bias",
    "transformer_blocks.0.ff.net.2.weight", "transformer_blocks.0.ff.net.2.bias",
    "transformer_blocks.0.ff_norm.weight", "transformer_blocks.0.ff_norm.bias",
]


def official_manifest(unet, condition: str, embedding_steps: int = 3, layers: int = 2, blocks: int = 4) -> set[str]:
    """The official key list, written from the official code's structure, independently of our module names."""
    keys = {
        k for k in unet.state_dict()
        if k.startswith(("conv_in.", "time_embedding.", "down_blocks.", "mid_block."))
    }
    for block in range(blocks):
        for module in range(layers):
            prefix = f"down_blocks.{block}.motion_modules.{module}.temporal_transformer."
            keys |= {prefix + suffix for suffix in OFFICIAL_MOTION_SUFFIXES}
    if condition == "rgb":
        keys |= {"controlnet_cond_embedding.weight", "controlnet_cond_embedding.bias"}
    else:
        names = ["conv_in", "conv_out"] + [f"blocks.{n}" for n in range(2 * embedding_steps)]
        keys |= {f"controlnet_cond_embedding.{name}.{p}" for name in names for p in ("weight", "bias")}
    skips = 1 + blocks * layers + (blocks - 1)
    keys |= {f"controlnet_down_blocks.{k}.{p}" for k in range(skips) for p in ("weight", "bias")}
    keys |= {"controlnet_mid_block.weight", "controlnet_mid_block.bias"}
    return keys


@pytest.fixture(scope="module")
def meta_sd15():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
        encoders = {name: SparseControlEncoder.from_unet(unet, preset) for name, preset in SPARSECTRL_PRESETS.items()}
    return unet, encoders


@pytest.mark.parametrize("condition", ["rgb", "sketch"])
def test_full_size_official_manifest_maps_both_ways(meta_sd15, condition):
    unet, encoders = meta_sd15
    ours = encoders[condition].state_dict()
    official = to_theirs(ours, "official")
    expected = official_manifest(unet, condition)
    assert set(official) == expected
    assert sum(1 for k in official if k.startswith("controlnet_down_blocks.") and k.endswith(".weight")) == 12
    assert to_ours(official, "official").keys() == ours.keys()
    assert detect_layout(official) == "official"
    # Shapes of the released files.
    prefix = "down_blocks.3.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.0."
    pe = official[prefix + "pos_encoder.pe"]
    assert tuple(pe.shape) == (1, 32, 1280)
    assert tuple(official["controlnet_mid_block.weight"].shape) == (1280, 1280, 1, 1)
    if condition == "rgb":
        assert tuple(official["controlnet_cond_embedding.weight"].shape) == (320, 5, 3, 3)
    else:
        assert tuple(official["controlnet_cond_embedding.conv_in.weight"].shape) == (16, 4, 3, 3)
        assert tuple(official["controlnet_cond_embedding.blocks.5.weight"].shape) == (256, 96, 3, 3)
        assert tuple(official["controlnet_cond_embedding.conv_out.weight"].shape) == (320, 256, 3, 3)


@pytest.mark.parametrize("condition", ["rgb", "sketch"])
def test_full_size_diffusers_manifest_maps_both_ways(meta_sd15, condition):
    from diffusers import SparseControlNetModel

    _, encoders = meta_sd15
    ours = encoders[condition].state_dict()
    sketch = condition == "sketch"
    with torch.device("meta"):
        reference = SparseControlNetModel(
            conditioning_channels=3 if sketch else 4, use_simplified_condition_embedding=not sketch
        )
    theirs = reference.state_dict()
    mapped = to_theirs(ours, "diffusers")
    assert set(mapped) == set(theirs)
    assert all(tuple(mapped[k].shape) == tuple(theirs[k].shape) for k in theirs)
    assert to_ours(theirs, "diffusers").keys() == ours.keys()
    assert detect_layout(theirs) == "diffusers"


def image_layer_keys_are_untouched(ours: dict) -> None:
    for key in ours:
        if ".motion_modules." not in key:
            assert to_theirs({key: 0}, "official") == {key: 0}


def random_encoder(condition: str = "rgb", seed: int = 0, **overrides) -> SparseControlEncoder:
    """A tiny encoder with random weights everywhere (zero convs and motion proj_out included)."""
    unet = make_tiny_unet()
    widths = dict(embedding_channels=(8, 16)) if condition == "sketch" else {}
    # Official head count (8) and 32 GroupNorm groups: what a loader infers for a file without metadata.
    motion = tiny_motion_config(attentions_per_block=1, num_attention_heads=8, norm_num_groups=32)
    config = SparseControlConfig(condition=condition, motion=motion, **{**widths, **overrides})
    encoder = SparseControlEncoder.from_unet(unet, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return encoder.eval()


def run(encoder: SparseControlEncoder, seed: int = 5):
    generator = torch.Generator().manual_seed(seed)
    frames, size = 3, 8
    factor = encoder.config.downsample_factor
    channels = encoder.config.conditioning_channels
    condition = torch.zeros(1, channels, frames, size * factor, size * factor)
    condition[:, :, 0] = torch.randn(1, channels, size * factor, size * factor, generator=generator)
    mask = torch.zeros(1, 1, frames, size * factor, size * factor)
    mask[:, :, 0] = 1
    sample = torch.randn(1, 4, frames, size, size, generator=generator)
    text = torch.randn(1, 7, 32, generator=generator)
    with torch.no_grad():
        return encoder(sample, 10, text, condition, mask)


def assert_same_outputs(first, second, atol: float = 0.0) -> None:
    (down_a, mid_a), (down_b, mid_b) = first, second
    assert len(down_a) == len(down_b)
    for a, b in zip(down_a, down_b):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)
    torch.testing.assert_close(mid_a, mid_b, atol=atol, rtol=0)


@pytest.mark.parametrize("condition", ["rgb", "sketch"])
@pytest.mark.parametrize("container", ["wrapped_ckpt", "flat_safetensors_without_pe"])
def test_official_file_written_by_hand_loads_and_runs(tmp_path, condition, container):
    encoder = random_encoder(condition)
    official = to_theirs(encoder.state_dict(), "official")
    steps = len(encoder.config.embedding_channels) - 1
    assert set(official) == official_manifest(make_tiny_unet(), condition, embedding_steps=steps, layers=1, blocks=2)
    image_layer_keys_are_untouched(encoder.state_dict())
    if container == "wrapped_ckpt":
        path = tmp_path / "v3_sd15_sparsectrl.ckpt"
        torch.save({"controlnet": official, "animatediff_config": {"note": "skipped"}}, path)
    else:
        path = tmp_path / "sparsectrl.safetensors"
        save_state_dict({k: v for k, v in official.items() if not k.endswith("pos_encoder.pe")}, path)
    loaded = load_sparse_control(path, make_tiny_unet(seed=7)).eval()
    assert loaded.config.condition == condition
    assert loaded.config.temporal and loaded.config.motion.attentions_per_block == 1
    assert_same_outputs(run(loaded), run(encoder), atol=1e-5)  # same weights; kernels may differ by alignment


def test_diffusers_folder_matches_diffusers_outputs(tmp_path):
    """A real diffusers SparseControlNetModel folder loads; with diffusers' joint GroupNorm the outputs agree."""
    from diffusers import SparseControlNetModel

    torch.manual_seed(0)
    reference = SparseControlNetModel(
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        layers_per_block=1, cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
        motion_num_attention_heads=4, conditioning_channels=3, use_simplified_condition_embedding=False,
        conditioning_embedding_out_channels=(8, 16),
    ).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    reference.save_pretrained(tmp_path / "sparsectrl")
    encoder = load_sparse_control(tmp_path / "sparsectrl", make_tiny_unet(), norm_mode="joint").eval()
    assert encoder.config.condition == "sketch" and encoder.config.embedding_channels == (8, 16)
    frames = 3
    condition = torch.zeros(1, 3, frames, 16, 16)
    condition[:, :, 1] = torch.rand(3, 16, 16)
    mask = torch.zeros(1, 1, frames, 16, 16)
    mask[:, :, 1] = 1
    sample, text = torch.randn(1, 4, frames, 8, 8), torch.randn(1, 7, 32)
    with torch.no_grad():
        down, mid = reference(
            sample, 10, text.repeat_interleave(frames, 0), condition, conditioning_mask=mask, return_dict=False
        )
        ours = encoder(sample, 10, text, condition, mask)
    assert_same_outputs(ours, (list(down), mid), atol=1e-5)
    # The official (per-frame) GroupNorm is the default, and it does differ from diffusers'.
    per_frame = load_sparse_control(tmp_path / "sparsectrl", make_tiny_unet()).eval()
    assert per_frame.config.motion.norm_mode == "per_frame"
    with torch.no_grad():
        assert not torch.allclose(per_frame(sample, 10, text, condition, mask)[1], mid, atol=1e-4)


@pytest.mark.parametrize("condition", ["rgb", "sketch"])
def test_save_load_round_trip_is_exact(tmp_path, condition):
    encoder = random_encoder(condition, temporal=True)
    path = save_sparse_control(encoder, tmp_path / "control.safetensors")
    metadata = read_metadata(path)
    assert metadata["zoetrope.kind"] == "sparsectrl"
    assert SparseControlConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY])) == encoder.config
    assert inspect_file(path).kind == "sparsectrl"
    loaded = load_sparse_control(path, make_tiny_unet())
    assert loaded.config == encoder.config
    for key, value in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_frame_by_frame_ablation_round_trip(tmp_path):
    encoder = random_encoder("rgb", temporal=False)
    path = save_sparse_control(encoder, tmp_path / "ablation.safetensors")
    assert not any(".motion_modules." in key for key in load_state_dict(path))
    loaded = load_sparse_control(path, make_tiny_unet())
    assert not loaded.config.temporal and not loaded.has_motion_modules
    assert_same_outputs(run(loaded), run(encoder), atol=1e-5)  # same weights; kernels may differ by alignment


def test_missing_and_unexpected_keys_name_the_file(tmp_path):
    official = to_theirs(random_encoder("rgb").state_dict(), "official")
    missing_key = "down_blocks.0.motion_modules.0.temporal_transformer.proj_out.weight"
    broken = {k: v for k, v in official.items() if k != missing_key}
    path = tmp_path / "missing.safetensors"
    save_state_dict(broken, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*missing.*proj_out.weight"):
        load_sparse_control(path, make_tiny_unet())
    extra = dict(official, **{"down_blocks.0.motion_modules.0.temporal_transformer.extra.weight": torch.zeros(1)})
    path = tmp_path / "extra.safetensors"
    save_state_dict(extra, path)
    with pytest.raises(CheckpointError, match="unexpected.*extra.weight"):
        load_sparse_control(path, make_tiny_unet())


def test_wrong_base_model_and_wrong_kind_are_refused(tmp_path):
    path = save_sparse_control(random_encoder("rgb"), tmp_path / "control.safetensors")
    wider = make_tiny_unet(block_out_channels=(64, 128))
    with pytest.raises(CheckpointError, match="shape.*different base model"):
        load_sparse_control(path, wider)
    from zoetrope.formats.motion import save_motion_module
    from zoetrope.models.motion_module import MotionModules

    motion_path = save_motion_module(MotionModules(tiny_motion_config()), tmp_path / "motion.safetensors")
    with pytest.raises(CheckpointError, match="motion module.*SparseCtrl.*--motion-module"):
        load_sparse_control(motion_path, make_tiny_unet())
    with pytest.raises(CheckpointError, match=r"\.safetensors"):
        save_sparse_control(random_encoder("rgb"), tmp_path / "control.ckpt")
