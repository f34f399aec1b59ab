"""Strict YAML/JSON <-> dataclass mapping: types, nesting, the exact error for every kind of mistake, round trips,
and every example training config in configs/ loading strictly."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import pytest
import yaml

from zoetrope.config import apply_overrides, dump_config, load_config, save_config
from zoetrope.errors import ConfigError
from zoetrope.models.motion_module import PRESETS, MotionModuleConfig
from zoetrope.training.config import TrainConfig, load_train_config
from zoetrope.training.stages import STAGES

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TRAINING_CONFIGS = sorted(CONFIGS.glob("*.yaml")) + sorted((CONFIGS / "world").rglob("*.yaml"))


@dataclass
class Inner:
    rank: int = 4
    alpha: Optional[float] = None


@dataclass
class Outer:
    name: str
    steps: int = 10
    lr: float = 1e-4
    enabled: bool = True
    precision: Literal["no", "fp16", "bf16"] = "no"
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[int, str] = (1, "a")
    prompts: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None
    inner: Inner = field(default_factory=Inner)
    maybe: Optional[Inner] = None
    size: int | tuple[int, int] = 256


def test_full_mapping_with_conversions() -> None:
    values = {
        "name": "run", "steps": 3, "lr": 1, "enabled": False, "precision": "bf16", "sizes": [4, 5, 6],
        "pair": [2, "b"], "prompts": ["a", "b"], "extra": {"k": [1]}, "path": "out/x", "inner": {"rank": 8},
        "maybe": {"alpha": 2}, "size": [64, 32],
    }
    config = load_config(values, Outer)
    assert config == Outer(
        name="run", steps=3, lr=1.0, enabled=False, precision="bf16", sizes=(4, 5, 6), pair=(2, "b"),
        prompts=["a", "b"], extra={"k": [1]}, path=Path("out/x"), inner=Inner(rank=8), maybe=Inner(alpha=2.0),
        size=(64, 32),
    )
    assert isinstance(config.lr, float) and isinstance(config.maybe.alpha, float)
    assert load_config({"name": "x"}, Outer) == Outer(name="x")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"name": "x", "learning_rate": 1}, "key `learning_rate`: unknown key; Outer has "),
        ({"name": "x", "inner": {"rnak": 2}}, "key `inner.rnak`: unknown key; Inner has alpha, rank"),
        ({"name": "x", "steps": "10"}, "key `steps`: expected an integer, found '10' (str)"),
        ({"name": "x", "steps": 1.5}, "key `steps`: expected an integer, found 1.5 (float)"),
        ({"name": "x", "steps": True}, "key `steps`: expected an integer, found True (bool)"),
        ({"name": "x", "lr": "fast"}, "key `lr`: expected a number"),
        ({"name": "x", "enabled": "yes"}, "key `enabled`: expected true or false"),
        ({"name": "x", "precision": "fp8"}, "key `precision`: expected one of 'no', 'fp16', 'bf16', found 'fp8'"),
        ({"name": "x", "sizes": [1, "2"]}, "key `sizes[1]`: expected an integer"),
        ({"name": "x", "sizes": "12"}, "key `sizes`: expected a list"),
        ({"name": "x", "pair": [1]}, "key `pair`: expected 2 items"),
        ({"name": "x", "inner": 3}, "key `inner`: expected a mapping (Inner)"),
        ({"name": "x", "maybe": {"rank": "r"}}, "key `maybe.rank`: expected an integer"),
        ({"name": "x", "size": "big"}, "key `size`: expected int or tuple[int, int]"),
        ({"steps": 2}, "key `name`: required key is missing (str)"),
    ],
)
def test_every_mistake_names_the_key(values, message) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(values, Outer, name="run.yaml")
    assert str(error.value).startswith("run.yaml: ")
    assert message in str(error.value)


def test_yaml_and_json_files_read_alike(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text("name: run\ninner:\n  rank: 2\n")
    (tmp_path / "a.json").write_text(json.dumps({"name": "run", "inner": {"rank": 2}}))
    assert load_config(tmp_path / "a.yaml", Outer) == load_config(tmp_path / "a.json", Outer)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml", Outer)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.yaml", "name: [unclosed\n", r"bad.yaml: not valid YAML"),
        ("list.yaml", "- 1\n- 2\n", "top level must be a mapping"),
        ("typo.yaml", "name: run\ninner:\n  rnak: 2\n", r"typo.yaml: key `inner.rnak`: unknown key"),
        ("c.yaml", "extends: c.yaml\nname: loop\n", r"c.yaml: `extends: c.yaml` makes a cycle"),
        ("m.yaml", "extends: nowhere.yaml\nname: x\n", r"m.yaml: `extends: nowhere.yaml`: no such file"),
        ("l.yaml", "extends: [a.yaml]\nname: x\n", "`extends` must name one config file"),
    ],
)
def test_bad_config_files_name_the_file_and_the_problem(tmp_path, name, text, message) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / name, Outer)


def test_extends_merges_mappings_and_replaces_the_rest(tmp_path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "b.yaml").write_text("name: base\nsteps: 3\nsizes: [1, 2, 3]\ninner:\n  rank: 2\n  alpha: 0.5\n")
    (tmp_path / "a.yaml").write_text("extends: base/b.yaml\nname: child\nsizes: [9]\ninner:\n  rank: 8\n")
    config = load_config(tmp_path / "a.yaml", Outer)
    assert (config.name, config.steps, config.sizes, config.inner) == ("child", 3, (9,), Inner(rank=8, alpha=0.5))


def test_the_self_attention_control_differs_from_its_experiment_in_two_keys() -> None:
    experiments = CONFIGS / "world" / "experiments"
    cross = dump_config(load_train_config(experiments / "motion-cross-bundled.yaml"))
    control = dump_config(load_train_config(experiments / "motion-self-bundled.yaml"))
    assert control["model"]["motion"] == {"attention_block_types": []}
    assert cross["model"]["motion"]["attention_block_types"][-1] == "Temporal_Cross"
    cross["model"]["motion"] = control["model"]["motion"]
    cross["output_dir"] = control["output_dir"]
    assert cross == control


def test_each_curriculum_stage_starts_from_the_previous_stages_module() -> None:
    """The curriculum is a chain of runs: a stage that named the wrong start would silently train something else."""
    stages = sorted((CONFIGS / "world" / "experiments").glob("curriculum-*.yaml"))
    assert len(stages) >= 3
    configs = [load_train_config(path) for path in stages]
    for previous, stage in zip(configs, configs[1:]):
        assert stage.model.motion_module == f"{previous.output_dir}/motion_module.safetensors"
        assert stage.output_dir != previous.output_dir
    assert {config.stage for config in configs} == {"motion"}


def test_no_world_config_trains_from_the_bundle_folder() -> None:
    """The bundle (`zoetrope/assets/world/`) is an *output* of the recipes; a config that started from it would train
    something else whenever the bundle is replaced (it was, in the sixteenth session). Starts name run exports."""
    for path in sorted((CONFIGS / "world").rglob("*.yaml")):
        model = load_train_config(path).model
        starts = [model.image_model, model.motion_module, model.domain_adapter, model.sparse_control, model.vae]
        assert not [start for start in starts if start and "assets/world" in str(start)], path


def test_overrides_are_parsed_as_yaml_and_checked() -> None:
    config = load_config({"name": "x"}, Outer, overrides=["lr=1e-5", "inner.rank=16", "sizes=[3, 4]", "maybe.alpha=0.5"])
    assert (config.lr, config.inner.rank, config.sizes, config.maybe.alpha) == (1e-5, 16, (3, 4), 0.5)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["lr"])
    with pytest.raises(ConfigError, match=r"key `inner.rank`: expected an integer"):
        load_config({"name": "x"}, Outer, overrides=["inner.rank=big"])


def test_dump_round_trip_through_yaml(tmp_path) -> None:
    config = load_config({"name": "x", "path": "p", "maybe": {"rank": 1}, "size": [8, 16]}, Outer)
    dumped = dump_config(config)
    assert dumped["sizes"] == [1, 2] and dumped["path"] == "p" and dumped["size"] == [8, 16]
    save_config(config, tmp_path / "c.yaml")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text()) == dumped
    assert load_config(tmp_path / "c.yaml", Outer) == config


def test_frozen_dataclass_with_its_own_validation() -> None:
    values = PRESETS["v2"].to_dict()
    assert load_config(values, MotionModuleConfig) == PRESETS["v2"]
    with pytest.raises(ConfigError, match=r"motion: key `norm_mode`: expected one of 'per_frame', 'joint'"):
        load_config({**values, "norm_mode": "both"}, MotionModuleConfig, name="motion")
    with pytest.raises(ConfigError, match="do not split into 7 heads"):
        load_config({**values, "num_attention_heads": 7}, MotionModuleConfig)


def test_train_config_checks_values_and_names_the_field() -> None:
    config = load_train_config({"stage": "motion", "output_dir": "out"})
    assert (config.lr, config.batch_size, config.grad_clip, config.caption_dropout) == (1e-4, 4, 1.0, 0.1)
    assert (config.adam_beta1, config.adam_beta2, config.weight_decay, config.adam_eps) == (0.9, 0.999, 1e-2, 1e-8)
    with pytest.raises(ConfigError, match=r"key `stage`: expected one of 'vae', 'image'"):
        load_train_config({"stage": "motions", "output_dir": "out"})
    with pytest.raises(ConfigError, match=r"key `model.motion_modul`: unknown key"):
        load_train_config({"stage": "motion", "output_dir": "out", "model": {"motion_modul": "x"}})
    with pytest.raises(ConfigError, match="grad_accumulation=0; expected an integer >= 1"):
        load_train_config({"stage": "motion", "output_dir": "out", "grad_accumulation": 0})
    with pytest.raises(ConfigError, match=r"caption_dropout=1.5"):
        load_train_config({"stage": "motion", "output_dir": "out"}, overrides=["caption_dropout=1.5"])


def test_example_configs_cover_every_stage_and_load_strictly() -> None:
    stages = set()
    for path in TRAINING_CONFIGS:
        config = load_train_config(path)
        assert isinstance(config, TrainConfig)
        stages.add(config.stage)
    assert stages == set(STAGES)


def test_example_configs_data_sections_map_onto_the_dataset_configs() -> None:
    from zoetrope.training.data import VideoDataConfig
    from zoetrope.training.engine import data_config
    from zoetrope.training.stages import get_stage

    for path in TRAINING_CONFIGS:
        config = load_train_config(path)
        settings = data_config(config, get_stage(config.stage))
        if isinstance(settings, VideoDataConfig):
            assert settings.image_mode == (get_stage(config.stage).data_mode == "image"), path
        assert settings.seed == config.seed


def test_data_section_mistakes_name_the_key() -> None:
    from zoetrope.training.engine import data_config
    from zoetrope.training.stages import get_stage

    config = load_train_config({"stage": "motion", "output_dir": "o", "data": {"csv_path": "v.csv", "frames": 8}})
    with pytest.raises(ConfigError, match=r"data: key `frames`: unknown key; VideoDataConfig has"):
        data_config(config, get_stage("motion"))
    config = load_train_config({"stage": "motion", "output_dir": "o", "data": {"kind": "images", "folder": "x"}})
    with pytest.raises(ConfigError, match="data.kind=images but stage 'motion' trains on clips"):
        data_config(config, get_stage("motion"))


def test_yaml_exponent_without_dot_is_a_float(tmp_path) -> None:
    (tmp_path / "c.yaml").write_text("stage: motion\noutput_dir: out\nlr: 1e-5\n")
    assert load_train_config(tmp_path / "c.yaml").lr == 1e-5
