"""Motion-module files: official and diffusers layouts, version detection, wrappers, strictness, bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

from conftest import make_tiny_motion_modules, make_tiny_unet
from zoetrope.errors import CheckpointError
from zoetrope.formats.animatediff import OFFICIAL, official_module_to_ours
from zoetrope.formats.detect import inspect_file
from zoetrope.formats.motion import load_motion_module, save_motion_module
from zoetrope.models.motion_module import PRESETS, MotionModules, sinusoidal_encoding


def official_manifest(widths, layers: int, mid: bool, pe: int) -> dict[str, tuple[int, ...]]:
    """The official key names and shapes, written out independently from the reference description."""
    prefixes = [(f"down_blocks.{i}.motion_modules.{j}", c) for i, c in enumerate(widths) for j in range(layers)]
    if mid:
        prefixes.append(("mid_block.motion_modules.0", widths[-1]))
    prefixes += [
        (f"up_blocks.{i}.motion_modules.{j}", c) for i, c in enumerate(reversed(widths)) for j in range(layers + 1)
    ]
    keys: dict[str, tuple[int, ...]] = {}
    for prefix, c in prefixes:
        p = f"{prefix}.temporal_transformer"
        t = f"{p}.transformer_blocks.0"
        keys.update({f"{p}.norm.weight": (c,), f"{p}.norm.bias": (c,)})
        keys.update({f"{p}.proj_in.weight": (c, c), f"{p}.proj_in.bias": (c,)})
        keys.update({f"{p}.proj_out.weight": (c, c), f"{p}.proj_out.bias": (c,)})
        for a in (0, 1):
            b = f"{t}.attention_blocks.{a}"
            keys.update({f"{b}.to_q.weight": (c, c), f"{b}.to_k.weight": (c, c), f"{b}.to_v.weight": (c, c)})
            keys.update({f"{b}.to_out.0.weight": (c, c), f"{b}.to_out.0.bias": (c,), f"{b}.pos_encoder.pe": (1, pe, c)})
            keys.update({f"{t}.norms.{a}.weight": (c,), f"{t}.norms.{a}.bias": (c,)})
        keys.update({f"{t}.ff.net.0.proj.weight": (8 * c, c), f"{t}.ff.net.0.proj.bias": (8 * c,)})
        keys.update({f"{t}.ff.net.2.weight": (c, 4 * c), f"{t}.ff.net.2.bias": (c,)})
        keys.update({f"{t}.ff_norm.weight": (c,), f"{t}.ff_norm.bias": (c,)})
    return keys


@pytest.mark.parametrize("version,count", [("v1", 560), ("v2", 588), ("v3", 560)])
def test_full_sd15_manifest_maps_every_key(version: str, count: int) -> None:
    config = PRESETS[version]
    with torch.device("meta"):
        modules = MotionModules(config)
    ours = modules.state_dict()
    official = {OFFICIAL.to_theirs(k): tuple(v.shape) for k, v in ours.items()}
    expected = official_manifest(config.block_out_channels, 2, config.mid_block, config.max_frames)
    assert len(official) == count
    assert official == expected
    assert {OFFICIAL.to_ours(k) for k in official} == set(ours)


def test_sdxl_manifest_has_three_blocks_and_joint_norm() -> None:
    with torch.device("meta"):
        modules = MotionModules(PRESETS["sdxl"])
    assert len(modules.down_blocks) == 3 and modules.mid_block is None
    assert PRESETS["sdxl"].norm_mode == "joint"


def test_positional_encoding_is_the_official_sinusoid() -> None:
    pe = sinusoidal_encoding(24, 8)
    position, channel = 5, 2
    assert pe[0, position, channel].item() == pytest.approx(torch.sin(torch.tensor(position / 10000 ** (channel / 8))).item())
    assert pe[0, position, channel + 1].item() == pytest.approx(torch.cos(torch.tensor(position / 10000 ** (channel / 8))).item())


def _official_tensors(modules: MotionModules) -> dict[str, torch.Tensor]:
    return {OFFICIAL.to_theirs(k): v.clone() for k, v in modules.state_dict().items()}


def _assert_same(a: MotionModules, b: MotionModules) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize(
    "overrides,version",
    [
        (dict(max_frames=24), "v1"),
        (dict(mid_block=True), "v2"),
        (dict(), "v3"),
        (dict(block_out_channels=(32, 64, 64)), "sdxl"),
    ],
)
def test_official_ckpt_variants_load_with_detected_version(tmp_path, overrides, version) -> None:
    modules = make_tiny_motion_modules(**overrides)
    tensors = _official_tensors(modules)
    # the wrappers real files have: state_dict wrapper, a non-tensor config entry, a DDP prefix
    wrapped = {"state_dict": {f"module.{k}": v for k, v in tensors.items()}, "animatediff_config": {"a": 1}}
    path = tmp_path / "mm.ckpt"
    torch.save(wrapped, path)
    loaded = load_motion_module(path)
    assert loaded.config.version == version
    assert loaded.config.max_frames == overrides.get("max_frames", 32)
    assert loaded.config.unet_norm_mode == ("joint" if version == "v1" else "per_frame")
    assert loaded.config.norm_mode == ("joint" if version == "sdxl" else "per_frame")
    assert loaded.config.block_out_channels == overrides.get("block_out_channels", (32, 64))
    s_loaded, s_orig = loaded.state_dict(), modules.state_dict()
    assert all(torch.equal(s_loaded[k], s_orig[k]) for k in s_orig)


def test_missing_positional_encodings_are_rebuilt(tmp_path) -> None:
    modules = make_tiny_motion_modules()
    tensors = {k: v for k, v in _official_tensors(modules).items() if not k.endswith("pos_encoder.pe")}
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "mm.safetensors"))
    loaded = load_motion_module(tmp_path / "mm.safetensors")
    pe = loaded.down_blocks[0].motion_modules[0].transformer_blocks[0].attentions[1].pos_encoding
    assert torch.equal(pe, sinusoidal_encoding(32, 32))


def test_round_trip_ours_official_diffusers_is_bit_identical(tmp_path) -> None:
    modules = make_tiny_motion_modules(mid_block=True)
    official = save_motion_module(modules, tmp_path / "official.safetensors")
    folder = save_motion_module(load_motion_module(official), tmp_path / "adapter", layout="diffusers")
    back = load_motion_module(folder)
    _assert_same(modules, back)
    assert back.config == modules.config


def test_loads_a_folder_written_by_diffusers_itself(tmp_path) -> None:
    from diffusers import MotionAdapter

    adapter = MotionAdapter(
        block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=4,
        motion_norm_num_groups=8, use_motion_mid_block=True,
    )
    adapter.save_pretrained(tmp_path / "adapter")
    loaded = load_motion_module(tmp_path / "adapter")
    assert loaded.config.mid_block and loaded.config.num_attention_heads == 4
    ours = loaded.state_dict()
    theirs = adapter.state_dict()
    key = "down_blocks.1.motion_modules.0.transformer_blocks.0.attn2.to_v.weight"
    assert torch.equal(ours["down_blocks.1.motion_modules.0.transformer_blocks.0.attentions.1.to_v.weight"], theirs[key])


def test_inspect_reports_version_and_pe(tmp_path) -> None:
    path = save_motion_module(make_tiny_motion_modules(max_frames=24, version="v1"), tmp_path / "v1.safetensors")
    info = inspect_file(path)
    assert info.kind == "motion_module" and info.details["version"] == "v1" and info.details["PE length"] == 24
    assert "motion module" in info.describe()


def test_official_module_path_mapping_for_lora_targets() -> None:
    path = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_out.0"
    assert official_module_to_ours(path) == "down_blocks.0.motion_modules.0.transformer_blocks.0.attentions.1.to_out"


# ----------------------------------------------------------------------------- bad input
def test_image_lora_passed_as_motion_module(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file(
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
         "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4)},
        str(tmp_path / "style.safetensors"),
    )
    with pytest.raises(CheckpointError, match=r"style.safetensors: this is an image LoRA.*--lora"):
        load_motion_module(tmp_path / "style.safetensors")


def test_domain_adapter_passed_as_motion_module(tmp_path) -> None:
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora"
    torch.save({f"{key}.down.weight": torch.zeros(4, 32), f"{key}.up.weight": torch.zeros(32, 4)}, tmp_path / "a.ckpt")
    with pytest.raises(CheckpointError, match="domain adapter.*--adapter"):
        load_motion_module(tmp_path / "a.ckpt")


def test_truncated_file(tmp_path) -> None:
    path = save_motion_module(make_tiny_motion_modules(), tmp_path / "mm.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors.*truncated"):
        load_motion_module(tmp_path / "cut.safetensors")
    torch.save(_official_tensors(make_tiny_motion_modules()), tmp_path / "mm.ckpt")
    data = (tmp_path / "mm.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.ckpt"):
        load_motion_module(tmp_path / "cut.ckpt")


def test_not_a_checkpoint(tmp_path) -> None:
    (tmp_path / "notes.ckpt").write_text("hello, I am a text file")
    with pytest.raises(CheckpointError, match="notes.ckpt.*not a readable checkpoint"):
        load_motion_module(tmp_path / "notes.ckpt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_motion_module(tmp_path / "absent.ckpt")


def test_pickled_code_never_runs(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_motion_module(tmp_path / "evil.ckpt")


def test_sdxl_module_on_sd15_model(tmp_path) -> None:
    from zoetrope.models.video_unet import VideoUNet

    path = save_motion_module(make_tiny_motion_modules(block_out_channels=(32, 64, 64)), tmp_path / "xl.safetensors")
    with pytest.raises(CheckpointError, match="SDXL-layout"):
        VideoUNet(make_tiny_unet(), load_motion_module(path))


def test_wrong_shapes_are_named(tmp_path) -> None:
    tensors = _official_tensors(make_tiny_motion_modules())
    key = next(k for k in tensors if k.endswith("ff.net.2.weight"))
    tensors[key] = torch.zeros(3, 3)
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "odd.safetensors"))
    with pytest.raises(CheckpointError, match="ff.proj_out.weight has shape"):
        load_motion_module(tmp_path / "odd.safetensors")


def test_every_preset_pair_differs_somewhere() -> None:
    for a, b in itertools.combinations(PRESETS, 2):
        assert PRESETS[a] != PRESETS[b]
