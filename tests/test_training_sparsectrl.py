"""The `sparsectrl` training stage on tiny real components: only the encoder trains, the loss falls, the export
loads back with the same residuals, the no-temporal ablation exports without motion modules, sketch conditions are
edge maps, keyframe patterns follow their mixture, and resume is exact."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Dataset

from conftest import all_tensors, make_tiny_image_model, merge_config_values
from zoetrope.errors import ConfigError, InputError
from zoetrope.formats.safe_load import load_state_dict
from zoetrope.formats.sparsectrl import load_sparse_control
from zoetrope.training.checkpoint import list_checkpoints
from zoetrope.training.conditions import clip_condition, edge_map, keyframe_pattern
from zoetrope.training.config import load_train_config
from zoetrope.training.engine import Trainer, collate
from zoetrope.training.stages import ControlledDenoiser

SIZE, FRAMES = 16, 4
SKETCH_WIDTHS = [4, 8, 8, 16]  # 3 stride-2 steps: the tiny VAE's factor 8


class TensorClips(Dataset):
    """Fixed random clips `(f, c, h, w)` in [-1, 1] with distinct captions."""

    def __init__(self, count: int = 4, seed: int = 0) -> None:
        self.clips = torch.rand(count, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.clips[index], "text": f"a red circle number {index}"}


def make_config(training_files, tmp_path, **changes):
    values = {
        "stage": "sparsectrl",
        "output_dir": str(tmp_path / "sparsectrl"),
        "model": {"image_model": training_files["base"], "motion_module": training_files["motion"]},
        "sparsectrl": {"motion": {"num_attention_heads": 4, "norm_num_groups": 8}, "embedding_channels": SKETCH_WIDTHS},
        "steps": 4, "batch_size": 1, "lr": 1e-3, "log_every": 1, "checkpoint_every": 0, "caption_dropout": 0.0,
    }
    return load_train_config(merge_config_values(values, changes))


def residuals(encoder, condition_channels: int, condition_size: int, seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, FRAMES, 2, 2, generator=generator)
    text = torch.randn(1, 77, 32, generator=generator)
    condition = torch.zeros(1, condition_channels, FRAMES, condition_size, condition_size)
    mask = torch.zeros(1, 1, FRAMES, condition_size, condition_size)
    keys = torch.randn(1, condition_channels, 2, condition_size, condition_size, generator=generator)
    condition[:, :, [0, FRAMES - 1]] = keys
    mask[:, :, [0, FRAMES - 1]] = 1
    with torch.no_grad():
        down, mid = encoder.eval()(sample, torch.tensor([500]), text, condition, mask)
    return down + [mid]


# ---------------------------------------------------------------------------------------------------- conditions
def test_edge_map_by_hand() -> None:
    frames = torch.zeros(2, 3, 8, 8)
    frames[0, :, :, 4:] = 1.0  # a vertical step edge between columns 3 and 4
    edges = edge_map(frames)
    assert edges.shape == (2, 3, 8, 8)
    assert edges.min() >= 0 and edges.max() <= 1
    assert torch.equal(edges[0, 0], edges[0, 1]) and torch.equal(edges[0, 0], edges[0, 2])  # grey, 3 channels
    # Sobel x of a unit step is 4 in the two columns beside it (1 + 2 + 1), 0 elsewhere; max-normalised to 1.
    expected = torch.zeros(8, 8)
    expected[:, 3:5] = 1.0
    assert torch.allclose(edges[0, 0], expected)
    assert torch.equal(edges[1], torch.zeros(3, 8, 8))  # a flat frame has no edges (no division by zero)
    with pytest.raises(InputError, match="RGB frames"):
        edge_map(torch.zeros(3, 8, 8))


def test_keyframe_pattern_follows_its_mixture() -> None:
    generator = torch.Generator().manual_seed(0)
    patterns = [keyframe_pattern(16, generator, 4, 0.1, 0.5, 0.2) for _ in range(4000)]
    rate = lambda wanted: sum(pattern == wanted for pattern in patterns) / len(patterns)  # noqa: E731
    assert abs(rate([]) - 0.1) < 0.02
    assert abs(rate([0]) - 0.5 - 0.3 / 16 / 4) < 0.03  # plus the random branch drawing frame 0 alone
    assert abs(rate([0, 15]) - 0.2) < 0.03
    assert all(pattern == sorted(set(pattern)) and len(pattern) <= 4 for pattern in patterns)
    assert all(0 <= frame < 16 for pattern in patterns for frame in pattern)
    counts = {len(pattern) for pattern in patterns}
    assert counts == {0, 1, 2, 3, 4}
    again = torch.Generator().manual_seed(0)
    assert [keyframe_pattern(16, again, 4, 0.1, 0.5, 0.2) for _ in range(50)] == patterns[:50]
    with pytest.raises(InputError, match="sum to at most 1"):
        keyframe_pattern(16, generator, 4, 0.5, 0.5, 0.5)


def test_clip_condition_places_keyframes(training_files) -> None:
    clip = torch.rand(FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    condition, mask = clip_condition(clip, [1, 3], "sketch")
    assert condition.shape == (1, 3, FRAMES, SIZE, SIZE) and mask.shape == (1, 1, FRAMES, SIZE, SIZE)
    # The edge map of frame 1 alone, up to float rounding (a 2-frame conv may take another kernel path than a 1-frame
    # one: this session's machine differed by 2e-7); frames without a keyframe stay exactly zero.
    torch.testing.assert_close(condition[0, :, 1], edge_map(clip[1:2])[0], rtol=0, atol=1e-5)
    assert condition[0, :, [0, 2]].abs().sum() == 0
    assert mask[0, 0, :, 0, 0].tolist() == [0, 1, 0, 1]
    vae = make_tiny_image_model().vae
    latents, mask = clip_condition(clip, [], "rgb", vae)
    assert latents.shape == (1, 4, FRAMES, 2, 2) and latents.abs().sum() == 0 and mask.sum() == 0


# ---------------------------------------------------------------------------------------------------- what trains
@pytest.mark.parametrize("temporal", [True, False])
def test_only_the_encoder_requires_grad_and_changes(training_files, tmp_path, temporal) -> None:
    trainer = Trainer(make_config(training_files, tmp_path, sparsectrl={"temporal": temporal}), dataset=TensorClips())
    assert isinstance(trainer.module, ControlledDenoiser)
    assert trainer.model.control.has_motion_modules == temporal
    before = all_tensors(trainer)
    requiring = {
        f"{part}.{name}" for part, module in trainer.model.modules().items()
        for name, parameter in module.named_parameters() if parameter.requires_grad
    }
    assert requiring == {name for name in before if name.startswith("sparse_control.")}
    assert any(".motion_modules." in name for name in requiring) == temporal
    assert sum(p.numel() for p in trainer.trainable.values()) == sum(before[name].numel() for name in requiring)
    for _ in range(2):
        trainer.accumulate([collate([trainer.dataset[0]])])
        trainer.optimizer_step()
    changed = {name for name, value in all_tensors(trainer).items() if not torch.equal(before[name], value)}
    assert changed and changed <= requiring
    assert any("controlnet_down_blocks" in name for name in changed)  # the zero convolutions left zero


def test_missing_motion_module_and_bad_sketch_widths_are_config_errors(training_files, tmp_path) -> None:
    config = make_config(training_files, tmp_path)
    config.model.motion_module = None
    with pytest.raises(ConfigError, match="model.motion_module"):
        Trainer(config, dataset=TensorClips())
    with pytest.raises(ConfigError, match="embedding_channels"):
        Trainer(make_config(training_files, tmp_path, sparsectrl={"condition": "sketch", "embedding_channels": [4, 8]}),
                dataset=TensorClips())
    with pytest.raises(ConfigError, match="p_zero_keyframes"):
        make_config(training_files, tmp_path, sparsectrl={"p_zero_keyframes": 0.9, "p_first_keyframe": 0.5})


# ---------------------------------------------------------------------------------------------------- learning
def test_loss_falls_when_overfitting_one_batch(training_files, tmp_path) -> None:
    steps = 15
    always_first = {"p_zero_keyframes": 0.0, "p_first_keyframe": 1.0, "p_first_last_keyframes": 0.0}
    config = make_config(training_files, tmp_path, steps=steps, lr=3e-3, sparsectrl=always_first)
    trainer = Trainer(config, dataset=TensorClips(count=1))
    batch = collate([trainer.dataset[0]])
    start = trainer.generator.get_state()
    losses = []
    for _ in range(steps):
        trainer.generator.set_state(start)  # same latents, timestep, noise and keyframes every step
        losses.append(trainer.accumulate([batch]))
        trainer.optimizer_step()
    assert losses[-1] < 0.7 * losses[0], losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 0.8 * (steps - 1), losses


def test_gradient_accumulation_equals_one_bigger_batch(training_files, tmp_path) -> None:
    """Keyframe patterns are drawn per sample in batch order, so micro-batches of 1 see what a batch of 2 sees."""
    data = TensorClips(count=2)
    changes = dict(sparsectrl={"p_zero_keyframes": 0.0, "p_first_keyframe": 0.0, "p_first_last_keyframes": 0.0})
    big = Trainer(make_config(training_files, tmp_path / "a", batch_size=2, **changes), dataset=data)
    small = Trainer(make_config(training_files, tmp_path / "b", batch_size=1, grad_accumulation=2, **changes), dataset=data)
    for trainer in (big, small):  # non-zero zero-convs so every encoder parameter gets a gradient
        with torch.no_grad():
            for name, parameter in trainer.trainable.items():
                if "controlnet" in name or "proj_out" in name:
                    noise = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(len(name)))
                    parameter.copy_(noise * 0.05)
    loss_big = big.accumulate([collate([data[0], data[1]])])
    loss_small = small.accumulate([collate([data[0]]), collate([data[1]])])
    assert math.isclose(loss_big, loss_small, rel_tol=1e-5)
    for name, parameter in big.trainable.items():
        assert torch.allclose(parameter.grad, small.trainable[name].grad, atol=1e-6, rtol=1e-5), name


# ---------------------------------------------------------------------------------------------------- exports
@pytest.mark.parametrize("condition", ["rgb", "sketch"])
def test_export_loads_back_with_the_same_residuals(training_files, tmp_path, condition) -> None:
    config = make_config(training_files, tmp_path, steps=2, lr=1e-2, sparsectrl={"condition": condition})
    trainer = Trainer(config, dataset=TensorClips())
    exported = trainer.fit()
    assert exported.name == "sparse_control.safetensors"
    channels, size = (4, 2) if condition == "rgb" else (3, SIZE)
    expected = residuals(trainer.model.control, channels, size)
    assert any(r.abs().max() > 0 for r in expected)  # training moved the zero convolutions
    loaded = load_sparse_control(exported, trainer.model.image_model.unet)
    assert loaded.config.condition == condition and loaded.has_motion_modules
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(residuals(loaded, channels, size), expected))
    keys = load_state_dict(exported)
    assert "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight" in keys  # official layout


def test_ablation_exports_without_motion_modules(training_files, tmp_path) -> None:
    trainer = Trainer(make_config(training_files, tmp_path, steps=1, sparsectrl={"temporal": False}), dataset=TensorClips())
    exported = trainer.fit()
    assert not any("motion_modules" in key for key in load_state_dict(exported))
    loaded = load_sparse_control(exported, trainer.model.image_model.unet)
    assert not loaded.has_motion_modules and not loaded.config.temporal
    expected = residuals(trainer.model.control, 4, 2)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(residuals(loaded, 4, 2), expected))


def test_ablation_from_a_temporal_encoder_keeps_its_spatial_weights(training_files, tmp_path) -> None:
    """`temporal: false` on a saved temporal encoder drops the temporal layers and keeps every other weight."""
    temporal = Trainer(make_config(training_files, tmp_path / "temporal", steps=1, lr=1e-2), dataset=TensorClips())
    exported = temporal.fit()
    config = make_config(
        training_files, tmp_path / "ablation", steps=1, model={"sparse_control": str(exported)}, sparsectrl={"temporal": False}
    )
    ablation = Trainer(config, dataset=TensorClips())
    assert temporal.model.control.has_motion_modules and not ablation.model.control.has_motion_modules
    kept = ablation.model.control.state_dict()
    source = temporal.model.control.state_dict()
    assert set(kept) == {key for key in source if ".motion_modules." not in key}
    assert all(torch.equal(kept[key], source[key]) for key in kept)


def test_resume_is_exact(training_files, tmp_path) -> None:
    changes = dict(steps=4, lr_schedule="cosine", warmup_steps=1, caption_dropout=0.5, checkpoint_every=2, lr=1e-2)
    straight = Trainer(make_config(training_files, tmp_path / "straight", **changes), dataset=TensorClips())
    straight.fit()
    config = make_config(training_files, tmp_path / "split", **changes)
    assert Trainer(config, dataset=TensorClips()).fit(until=3) is None
    resumed = Trainer(config, resume=True, dataset=TensorClips())
    assert resumed.step == 3
    resumed.fit()
    for name, parameter in straight.trainable.items():
        assert torch.equal(parameter, resumed.trainable[name]), name
    exported = load_state_dict(config.output_path / "sparse_control.safetensors")
    reference = load_state_dict(tmp_path / "straight" / "sparsectrl" / "sparse_control.safetensors")
    assert exported.keys() == reference.keys() and all(torch.equal(exported[k], reference[k]) for k in reference)
    assert [step for step, _ in list_checkpoints(config.output_dir)] == [3, 4]


def test_continue_training_from_a_saved_encoder(training_files, tmp_path) -> None:
    first = Trainer(make_config(training_files, tmp_path / "one", steps=1, lr=1e-2), dataset=TensorClips())
    exported = first.fit()
    config = make_config(training_files, tmp_path / "two", steps=1, model={"sparse_control": str(exported)})
    second = Trainer(config, dataset=TensorClips())
    for name, parameter in first.model.control.state_dict().items():
        assert torch.equal(second.model.control.state_dict()[name], parameter), name
