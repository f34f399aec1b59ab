"""Training engine on tiny real components: only the stage's parameters train, exports round-trip, the loss falls,
resume is exact, gradient accumulation equals a bigger batch, caption dropout has its rate."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Dataset

from conftest import TINY_UNET, all_tensors, drawn_inputs, merge_config_values
from zoetrope.errors import CheckpointError, ConfigError
from zoetrope.formats.motion import load_motion_module
from zoetrope.formats.safe_load import load_state_dict
from zoetrope.models.video_unet import VideoUNet
from zoetrope.training.checkpoint import latest_checkpoint, list_checkpoints, load_training_state
from zoetrope.training.config import load_train_config
from zoetrope.training.engine import (
    Trainer, collate, drop_captions, drop_phrases, lr_factor, min_snr_weights, sample_timesteps, tokenize, train,
)
from zoetrope.training.stages import STAGES

SIZE, FRAMES = 16, 4


class TensorClips(Dataset):
    """Fixed random clips `(f, c, h, w)` in [-1, 1] (or their first frame in image mode) with distinct captions."""

    def __init__(self, count: int = 4, image: bool = False, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.clips = torch.rand(count, FRAMES, 3, SIZE, SIZE, generator=generator) * 2 - 1
        self.image = image

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        pixels = self.clips[index, 0] if self.image else self.clips[index]
        return {"pixel_values": pixels, "text": f"a red circle number {index}"}


def make_config(training_files, tmp_path, stage: str, **changes):
    values = {
        "stage": stage,
        "output_dir": str(tmp_path / stage),
        "model": {"image_model": training_files["base"], "motion": {"num_attention_heads": 4, "norm_num_groups": 8}},
        "steps": 4,
        "batch_size": 1,
        "lr": 1e-3,
        "log_every": 1,
        "checkpoint_every": 0,
        "caption_dropout": 0.0,
        "lora": {"rank": 2},
    }
    if stage == "motion-lora":
        values["model"]["motion_module"] = training_files["motion"]
    if stage == "personalize":
        values["method"] = "lora"
    return load_train_config(merge_config_values(values, changes))


def is_image(stage: str) -> bool:
    return STAGES[stage].data_mode == "image"


# ---------------------------------------------------------------------------------------------------- pure parts
def test_caption_dropout_rate_and_extremes() -> None:
    generator = torch.Generator().manual_seed(0)
    texts = ["a caption"] * 20000
    dropped = drop_captions(texts, 0.1, generator)
    rate = dropped.count("") / len(texts)
    assert abs(rate - 0.1) < 0.01  # binomial std is 0.002
    assert all(text in ("", "a caption") for text in dropped)
    assert drop_captions(texts[:100], 0.0, generator) == texts[:100]
    assert drop_captions(texts[:100], 1.0, generator) == [""] * 100
    again = drop_captions(texts[:50], 0.5, torch.Generator().manual_seed(7))
    assert again == drop_captions(texts[:50], 0.5, torch.Generator().manual_seed(7))


BACKGROUND = " on an? \\w+ background"


def test_phrase_dropout_cuts_the_phrase_at_its_rate_and_leaves_what_a_user_types() -> None:
    texts = ["a red circle moving right on a grey background", "a cyan star rotating on an orange background"]
    assert drop_phrases(texts, 1.0, BACKGROUND, torch.Generator()) == ["a red circle moving right", "a cyan star rotating"]
    assert drop_phrases(texts, 0.0, BACKGROUND, torch.Generator()) == texts
    assert drop_phrases(["a red circle", "a  blue square on a white background now"], 1.0, BACKGROUND, torch.Generator()) == [
        "a red circle", "a blue square now"]  # no match: unchanged but for whitespace; a cut mid-caption closes up
    many = drop_phrases(texts[:1] * 20000, 0.3, BACKGROUND, torch.Generator().manual_seed(0))
    assert abs(many.count("a red circle moving right") / len(many) - 0.3) < 0.01  # binomial std 0.003


def test_phrase_dropout_config_errors_name_the_fix() -> None:
    base = {"stage": "motion", "output_dir": "out"}
    with pytest.raises(ConfigError, match=r"caption_phrase_dropout=0.5 needs caption_phrase_pattern"):
        load_train_config({**base, "caption_phrase_dropout": 0.5})
    with pytest.raises(ConfigError, match=r"caption_phrase_dropout=2.0; expected a probability"):
        load_train_config({**base, "caption_phrase_dropout": 2.0, "caption_phrase_pattern": "x"})
    with pytest.raises(ConfigError, match=r"is not a regular expression"):
        load_train_config({**base, "caption_phrase_dropout": 0.5, "caption_phrase_pattern": "on a (grey"})
    with pytest.raises(ConfigError, match=r"matches the empty string"):
        load_train_config({**base, "caption_phrase_dropout": 0.5, "caption_phrase_pattern": "( on a \\w+ background)?"})


def test_phrase_dropout_reaches_the_token_ids_and_draws_nothing_when_off(training_files, tmp_path) -> None:
    class Captioned(TensorClips):
        def __getitem__(self, index: int) -> dict:
            return {**super().__getitem__(index), "text": "a red circle moving right on a grey background"}

    def inputs(**changes):
        trainer = Trainer(make_config(training_files, tmp_path, "image", batch_size=2, **changes), dataset=Captioned(image=True))
        batch = collate([trainer.dataset[index] for index in range(2)])
        return trainer, trainer.diffusion_inputs(batch)

    trainer, cut = inputs(caption_phrase_dropout=1.0, caption_phrase_pattern=BACKGROUND)
    encoder = trainer.model.image_model.text_encoder
    expected = tokenize(trainer.model.image_model.tokenizer, ["a red circle moving right"] * 2,
                        int(encoder.config.max_position_embeddings))
    assert torch.equal(cut["input_ids"], expected)
    _, off = inputs(caption_phrase_pattern=BACKGROUND)  # pattern set, rate 0: the run's draws are the old ones
    _, plain = inputs()
    assert not torch.equal(off["input_ids"], expected)
    for name in ("latents", "noise", "timesteps", "input_ids"):
        assert torch.equal(off[name], plain[name])


def test_lr_schedule_by_hand() -> None:
    assert [lr_factor(step, 10, 4, "constant") for step in (0, 1, 3, 4, 9)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert lr_factor(4, 10, 4, "cosine") == 1.0
    assert math.isclose(lr_factor(7, 10, 4, "cosine"), 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert math.isclose(lr_factor(10, 10, 4, "cosine"), 0.0, abs_tol=1e-12)


def test_collate_stacks_pixels_and_keeps_texts() -> None:
    batch = collate([TensorClips()[0], TensorClips()[1]])
    assert batch["pixel_values"].shape == (2, FRAMES, 3, SIZE, SIZE)
    assert batch["text"] == ["a red circle number 0", "a red circle number 1"]


# ---------------------------------------------------------------------------------------------------- what trains
EXPECTED_TRAINED = {
    "motion": ("motion_modules.",),
    "motion-lora": ("lora_motion.",),
    "domain-adapter": ("lora_unet.",),
    "personalize": ("lora_unet.",),
    "image": ("unet.",),
}


@pytest.mark.parametrize("stage", list(EXPECTED_TRAINED))
def test_only_the_stage_parameters_require_grad_and_change(training_files, tmp_path, stage) -> None:
    trainer = Trainer(make_config(training_files, tmp_path, stage), dataset=TensorClips(image=is_image(stage)))
    before = all_tensors(trainer)
    requiring = {
        f"{part}.{name}"
        for part, module in trainer.model.modules().items()
        for name, parameter in module.named_parameters()
        if parameter.requires_grad
    }
    assert requiring and all(name.startswith(EXPECTED_TRAINED[stage]) for name in requiring)
    assert sum(p.numel() for p in trainer.trainable.values()) == sum(before[name].numel() for name in requiring)
    for _ in range(2):
        trainer.accumulate([collate([trainer.dataset[0]])])
        trainer.optimizer_step()
    after = all_tensors(trainer)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and changed <= requiring
    if stage == "domain-adapter":
        targets = trainer.model.networks["unet"].target_names()
        assert all(".attn1." in name or ".attn2." in name for name in targets)
        assert {name.rsplit(".", 1)[-1] for name in targets} == {"to_q", "to_k", "to_v", "0"}


def test_missing_motion_module_for_motion_lora_is_a_config_error(training_files, tmp_path) -> None:
    config = make_config(training_files, tmp_path, "motion")
    config.stage = "motion-lora"
    with pytest.raises(ConfigError, match="model.motion_module"):
        Trainer(config, dataset=TensorClips())


def test_batch_smaller_than_data_share_is_a_config_error(training_files, tmp_path) -> None:
    with pytest.raises(ConfigError, match="batch_size=8"):
        Trainer(make_config(training_files, tmp_path, "motion", batch_size=8), dataset=TensorClips(count=4))


# ---------------------------------------------------------------------------------------------------- exports
def _video_forward(unet: VideoUNet) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(1, 4, FRAMES, 2, 2, generator=generator)
    text = torch.randn(1, 77, 32, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([500]), text)


def test_motion_export_round_trips_through_load_motion_module(training_files, tmp_path) -> None:
    config = make_config(training_files, tmp_path, "motion", steps=2)
    trainer = Trainer(config, dataset=TensorClips())
    exported = trainer.fit()
    assert exported.name == "motion_module.safetensors"
    trained = trainer.model.video_unet
    trained.eval()
    expected = _video_forward(trained)
    loaded = load_motion_module(exported)
    assert loaded.config.block_out_channels == (32, 64)
    assert not torch.equal(loaded.up_blocks[0].motion_modules[0].proj_out.weight, torch.zeros(64, 64))
    rebuilt = VideoUNet(trainer.model.image_model.unet, loaded)
    trained.detach()
    assert torch.equal(_video_forward(rebuilt.eval()), expected)
    # the checkpoint folder holds the same export and a weights_only-loadable state
    folder = latest_checkpoint(config.output_dir)
    assert (folder / "motion_module.safetensors").is_file()
    assert load_training_state(folder / "training_state.pt")["step"] == 2
    assert (config.output_path / "metrics.csv").read_text().count("\n") == 3  # header + 2 steps


def test_motion_stage_extends_a_trained_module_with_text_cross_attention(training_files, tmp_path) -> None:
    """`model.motion.attention_block_types` appends a Temporal_Cross attention to a loaded module: it starts as a
    no-op, trains, and the export loads as a text-reading module."""
    types = ["Temporal_Self", "Temporal_Self", "Temporal_Cross"]
    config = make_config(
        training_files, tmp_path, "motion", steps=2, lr=1e-2,
        model={"motion_module": training_files["motion"], "motion": {"attention_block_types": types}},
    )
    trainer = Trainer(config, dataset=TensorClips())
    start = trainer.model.video_unet.motion_modules
    assert start.config.attention_types == tuple(types) and start.config.cross_attention_dim == TINY_UNET["cross_attention_dim"]
    assert torch.count_nonzero(start.down_blocks[0].motion_modules[0].transformer_blocks[0].attentions[2].to_out.weight) == 0
    loaded = load_motion_module(trainer.fit())
    assert loaded.config.reads_text
    assert torch.count_nonzero(loaded.down_blocks[0].motion_modules[0].transformer_blocks[0].attentions[2].to_out.weight) > 0
    with pytest.raises(ConfigError, match="only add attentions in the `motion` stage"):
        Trainer(
            make_config(training_files, tmp_path, "motion-lora", model={"motion": {"attention_block_types": types}}),
            dataset=TensorClips(),
        )


def test_motion_lora_with_a_position_code_trains_it_and_its_files_reproduce_the_output(training_files, tmp_path) -> None:
    """`lora.position_code`: the code starts at zero, trains beside the MotionLoRA, and the two exports loaded onto a
    fresh motion module (and through `load_pipeline`'s loader) reproduce the trained video UNet."""
    from zoetrope.formats.lora_files import load_motion_lora, load_position_code

    config = make_config(training_files, tmp_path, "motion-lora", steps=2, lr=1e-2, lora={"rank": 2, "position_code": True})
    trainer = Trainer(config, dataset=TensorClips())
    code = trainer.model.networks["position"]
    assert all(torch.count_nonzero(weight) == 0 for weight in code.named_weights().values())
    assert any(name.startswith("networks.position.") for name in trainer.trainable)
    exported = trainer.fit()
    assert any(torch.count_nonzero(weight) > 0 for weight in code.named_weights().values())
    expected = _video_forward(trainer.model.video_unet.eval())
    code.detach()
    assert not torch.allclose(_video_forward(trainer.model.video_unet), expected, atol=1e-6)  # the code acts
    base = load_motion_module(training_files["motion"])
    load_motion_lora(exported, base).attach(base)
    load_position_code(exported.with_name("position_code.safetensors"), base)
    torch.testing.assert_close(_video_forward(VideoUNet(trainer.model.image_model.unet, base).eval()), expected, atol=1e-5, rtol=0)
    assert (latest_checkpoint(config.output_dir) / "position_code.safetensors").is_file()
    with pytest.raises(ConfigError, match="lora.position_code trains beside a MotionLoRA"):
        make_config(training_files, tmp_path, "motion", lora={"rank": 2, "position_code": True})


def test_lora_exports_round_trip(training_files, tmp_path) -> None:
    from zoetrope.formats.lora_files import load_domain_adapter, load_motion_lora

    # MotionLoRA: loading the export onto a fresh copy of the base motion module reproduces the trained output.
    trainer = Trainer(make_config(training_files, tmp_path, "motion-lora", steps=2, lr=1e-2), dataset=TensorClips())
    exported = trainer.fit()
    trained_unet = trainer.model.video_unet.eval()
    expected = _video_forward(trained_unet)
    trainer.model.networks["motion"].detach()
    assert not torch.allclose(_video_forward(trained_unet), expected, atol=1e-6)  # the LoRA did something
    base = load_motion_module(training_files["motion"])
    load_motion_lora(exported, base).attach(base)
    trained_unet.detach()
    assert torch.allclose(_video_forward(VideoUNet(trainer.model.image_model.unet, base).eval()), expected, atol=1e-6)

    # MotionLoRA + spatial LoRA (lora.spatial_target): the two files, loaded onto fresh copies, reproduce the output.
    from zoetrope.formats.kohya import load_image_lora
    from zoetrope.formats.sd_single_file import load_sd_unet

    spatial = r"up_blocks\.\d+\.resnets\.\d+\.conv[12]$"
    config = make_config(training_files, tmp_path, "motion-lora", steps=2, lr=1e-2, lora={"rank": 2, "spatial_target": spatial})
    trainer = Trainer(config, dataset=TensorClips())
    exported = trainer.fit()
    assert any("conv1" in name and "up_blocks" in name for name in trainer.trainable), list(trainer.trainable)  # a LoCon trained
    expected = _video_forward(trainer.model.video_unet.eval())
    trainer.model.networks["unet"].detach()
    assert not torch.allclose(_video_forward(trainer.model.video_unet), expected, atol=1e-6)  # the spatial part acts
    fresh = load_sd_unet(training_files["base"])
    load_image_lora(exported.with_name("spatial_lora.safetensors"), fresh).merge(fresh)
    base = load_motion_module(training_files["motion"])
    load_motion_lora(exported, base).attach(base)
    torch.testing.assert_close(_video_forward(VideoUNet(fresh, base).eval()), expected, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="lora.spatial_target trains an image-UNet LoRA beside a MotionLoRA"):
        make_config(training_files, tmp_path, "motion", lora={"rank": 2, "spatial_target": spatial})

    # Domain adapter: same through load_domain_adapter on the image UNet.
    trainer = Trainer(make_config(training_files, tmp_path, "domain-adapter", steps=2, lr=1e-2), dataset=TensorClips(image=True))
    exported = trainer.fit()
    unet = trainer.model.image_model.unet.eval()
    sample, text = torch.randn(2, 4, 2, 2), torch.randn(2, 77, 32)
    with torch.no_grad():
        expected = unet(sample, 10, encoder_hidden_states=text).sample
        trainer.model.networks["unet"].detach()
        plain = unet(sample, 10, encoder_hidden_states=text).sample
        load_domain_adapter(exported, unet).attach(unet)
        assert not torch.allclose(plain, expected, atol=1e-6)
        assert torch.allclose(unet(sample, 10, encoder_hidden_states=text).sample, expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("stage", ["motion", "motion-lora"])
def test_loss_falls_when_overfitting_one_batch(training_files, tmp_path, stage) -> None:
    steps, lr = (12, 3e-3) if stage == "motion" else (15, 5e-2)
    trainer = Trainer(make_config(training_files, tmp_path, stage, steps=steps, lr=lr), dataset=TensorClips(count=1))
    batch = collate([trainer.dataset[0]])
    start = trainer.generator.get_state()
    losses = []
    for _ in range(steps):
        trainer.generator.set_state(start)  # same latents, timestep and noise every step: a fixed regression target
        losses.append(trainer.accumulate([batch]))
        trainer.optimizer_step()
    assert losses[-1] < 0.7 * losses[0], losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 0.8 * (steps - 1)  # falls (almost) every step


def test_gradient_accumulation_equals_one_bigger_batch(training_files, tmp_path) -> None:
    data = TensorClips(count=2)
    big = Trainer(make_config(training_files, tmp_path / "a", "motion", batch_size=2, grad_accumulation=1), dataset=data)
    small = Trainer(make_config(training_files, tmp_path / "b", "motion", batch_size=1, grad_accumulation=2), dataset=data)
    for trainer in (big, small):  # non-zero output projections, so every motion parameter gets a gradient
        with torch.no_grad():
            for name, parameter in trainer.trainable.items():
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    loss_big = big.accumulate([collate([data[0], data[1]])])
    loss_small = small.accumulate([collate([data[0]]), collate([data[1]])])
    assert math.isclose(loss_big, loss_small, rel_tol=1e-5)
    for name, parameter in big.trainable.items():
        other = small.trainable[name].grad
        assert parameter.grad is not None and other is not None
        assert torch.allclose(parameter.grad, other, atol=1e-6, rtol=1e-5), name
    assert any(parameter.grad.abs().max() > 0 for parameter in big.trainable.values())


def test_compile_trains_the_same_model_under_the_same_names(training_files, tmp_path, monkeypatch) -> None:
    """`compile: true` (in place): the same loss and gradients as eager up to float rounding, and an export with
    the same keys and (after two steps) nearly the same values; the parameters keep their names. The graph goes
    through Dynamo and AOTAutograd as in a real run, but to the `aot_eager` backend: Inductor's C++ code generation
    would take minutes of the suite for the same wiring (its speed is measured in the docs, not here)."""
    from torch._dynamo import lookup_backend

    graphs = []

    def counting_aot_eager(graph, example_inputs):
        graphs.append(graph)
        return lookup_backend("aot_eager")(graph, example_inputs)

    compile_in_place = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda module, **_: compile_in_place(module, backend=counting_aot_eager))
    data = TensorClips(count=2, image=True)
    trainers = [
        Trainer(make_config(training_files, tmp_path / name, "image", steps=2, **changes), dataset=data)
        for name, changes in (("eager", {}), ("compiled", {"compile": True}))
    ]
    eager, compiled = trainers
    assert list(compiled.trainable) == list(eager.trainable)
    batch = collate([data[0]])
    losses = [trainer.accumulate([batch]) for trainer in trainers]
    assert graphs  # the compiled trainer's step went through the compiler (the eager one cannot add any)
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    for name, parameter in eager.trainable.items():
        torch.testing.assert_close(compiled.trainable[name].grad, parameter.grad, atol=1e-5, rtol=1e-3)
    exports = []
    for trainer in trainers:
        trainer.optimizer.zero_grad(set_to_none=True)
        exports.append(load_state_dict(trainer.fit()))
    assert exports[1].keys() == exports[0].keys()
    for key, value in exports[0].items():
        torch.testing.assert_close(exports[1][key], value, atol=1e-4, rtol=1e-3)


def test_resume_is_exact(training_files, tmp_path) -> None:
    changes = dict(steps=6, lr_schedule="cosine", warmup_steps=2, caption_dropout=0.5, checkpoint_every=2,
                   keep_checkpoints=2)
    straight = Trainer(
        make_config(training_files, tmp_path / "straight", "motion", validate_every=3, validation_prompts=["a red circle"],
                    validation_frames=FRAMES, validation_steps=2, validation_size=SIZE, **changes),
        dataset=TensorClips(count=4),
    )
    straight.fit()
    assert (tmp_path / "straight" / "motion" / "samples" / "step-0000006.gif").is_file()

    config = make_config(training_files, tmp_path / "split", "motion", **changes)
    first = Trainer(config, dataset=TensorClips(count=4))
    assert first.fit(until=3) is None  # stopped early: a checkpoint, no final export
    assert [step for step, _ in list_checkpoints(config.output_dir)] == [2, 3]
    (config.output_path / "checkpoints" / "step-0000009.tmp").mkdir()  # an interrupted write is never resumed from
    resumed = Trainer(config, resume=True, dataset=TensorClips(count=4))
    assert (resumed.step, resumed.epoch, resumed.position) == (3, 0, 3)
    resumed.fit()
    for name, parameter in straight.trainable.items():
        assert torch.equal(parameter, resumed.trainable[name]), name
    exported = load_state_dict(config.output_path / "motion_module.safetensors")
    reference = load_state_dict(tmp_path / "straight" / "motion" / "motion_module.safetensors")
    assert all(torch.equal(exported[key], reference[key]) for key in reference)
    assert [step for step, _ in list_checkpoints(config.output_dir)] == [4, 6]
    rows = (config.output_path / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_ema_exports_the_moving_average_by_hand_and_resume_is_exact(training_files, tmp_path) -> None:
    """`ema_decay`: the export holds the average (first update copies, then decay min(d, (1 + s) / (10 + s))),
    the raw weights keep training untouched (exporting leaves them as they were), and a resumed run
    ends on the same average as a straight one."""
    changes = dict(steps=4, lr=1e-2, ema_decay=0.25, checkpoint_every=2, keep_checkpoints=4)
    config = make_config(training_files, tmp_path / "split", "motion", **changes)
    trainer = Trainer(config, dataset=TensorClips())
    raw = [{name: parameter.detach().clone() for name, parameter in trainer.trainable.items()}]
    for step in (1, 2):
        trainer.fit(until=step)
        raw.append({name: parameter.detach().clone() for name, parameter in trainer.trainable.items()})
    resumed = Trainer(config, resume=True, dataset=TensorClips())
    exported = load_motion_module(resumed.fit())
    straight = Trainer(make_config(training_files, tmp_path / "straight", "motion", **changes), dataset=TensorClips())
    steps = [{name: parameter.detach().clone() for name, parameter in straight.trainable.items()}]
    for step in range(1, 5):
        straight.fit(until=step)
        steps.append({name: parameter.detach().clone() for name, parameter in straight.trainable.items()})
    for name in raw[1]:  # the split run's raw weights are the straight run's
        assert torch.equal(raw[1][name], steps[1][name]) and torch.equal(raw[2][name], steps[2][name]), name
    decays = [0.0, min(0.25, 2 / 11), min(0.25, 3 / 12), min(0.25, 4 / 13)]
    average = {name: steps[0][name].clone() for name in steps[0]}
    for decay, after in zip(decays, steps[1:]):
        for name in average:
            average[name] = decay * average[name] + (1 - decay) * after[name]
    loaded = dict(exported.named_parameters())
    prefix = "unet.motion_modules."
    assert all(name.startswith(prefix) for name in average)
    for name, value in average.items():
        assert torch.allclose(loaded[name[len(prefix):]], value, atol=1e-6), name
        assert torch.equal(resumed.trainable[name], steps[4][name]), name  # exporting left the raw weights in place
    assert any(not torch.allclose(value, steps[4][name], atol=1e-4) for name, value in average.items())
    state = load_training_state(latest_checkpoint(config.output_dir) / "training_state.pt")
    assert state["ema"]["optimization_step"] == 4 and len(state["ema"]["shadow_params"]) == len(average)

    no_average = make_config(training_files, tmp_path / "split", "motion", **(changes | {"ema_decay": 0.0, "steps": 6}))
    assert Trainer(no_average, resume=True, dataset=TensorClips()).ema is None  # dropped with a warning
    plain = make_config(training_files, tmp_path / "plain", "motion", steps=1)
    train(plain, dataset=TensorClips())
    plain.ema_decay, plain.steps = 0.9, 2
    with pytest.raises(CheckpointError, match="no moving average to continue"):
        Trainer(plain, resume=True, dataset=TensorClips())
    with pytest.raises(ConfigError, match="ema_decay=1.0"):
        make_config(training_files, tmp_path, "motion", ema_decay=1.0)


def test_resume_with_another_config_is_refused(training_files, tmp_path) -> None:
    config = make_config(training_files, tmp_path, "motion-lora", steps=1)
    train(config, dataset=TensorClips())
    config.lora.rank = 3
    with pytest.raises(CheckpointError, match="do not match"):
        Trainer(config, resume=True, dataset=TensorClips())


def test_from_scratch_vae_then_image_model_round_trip(tmp_path) -> None:
    """A VAE, then an image model (UNet with a pooled caption + text encoder) from scratch on it; both exports
    load back bit for bit."""
    from zoetrope.pipelines.components import load_image_model
    from zoetrope.formats.vae_file import load_vae_file

    vae_arguments = dict(
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 16, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=SIZE,
    )
    common = dict(steps=2, batch_size=2, lr=1e-3, log_every=1, checkpoint_every=0)
    vae_trainer = Trainer(
        load_train_config({"stage": "vae", "output_dir": str(tmp_path / "vae"),
                           "model": {"architecture": {"vae": vae_arguments}}, **common}),
        dataset=TensorClips(image=True),
    )
    before = {name: p.detach().clone() for name, p in vae_trainer.model.image_model.vae.named_parameters()}
    vae_path = vae_trainer.fit()
    loaded_vae = load_vae_file(vae_path)
    trained_vae = vae_trainer.model.image_model.vae.state_dict()
    assert all(torch.equal(value, trained_vae[key]) for key, value in loaded_vae.state_dict().items())
    assert any(not torch.equal(before[name], trained_vae[name]) for name in before)

    text_encoder = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                        pad_token_id=49407)
    config = load_train_config({
        "stage": "image", "output_dir": str(tmp_path / "image"), "caption_dropout": 0.0,
        # the caption also pooled into the timestep embedding (thirty-first session), exported under IF's names
        "model": {"vae": str(vae_path), "architecture": {
            "unet": {**TINY_UNET, "addition_embed_type": "text", "addition_embed_type_num_heads": 4},
            "text_encoder": text_encoder}},
        **common,
    })
    trainer = Trainer(config, dataset=TensorClips(image=True))
    assert any(name.startswith("text_encoder.") for name in trainer.trainable)  # trained jointly from scratch
    assert any(".add_embedding.pool." in name for name in trainer.trainable)
    assert not any(name.startswith("vae.") for name in trainer.trainable)
    exported = trainer.fit()
    model = load_image_model(exported)
    for part in ("unet", "vae", "text_encoder"):
        reference = getattr(trainer.model.image_model, part).state_dict()
        assert all(torch.equal(value, reference[key]) for key, value in getattr(model, part).state_dict().items()), part


def test_decoder_only_vae_fine_tune_keeps_the_latent_space(tmp_path) -> None:
    """`vae_train: decoder` (sd-vae-ft-mse style): the encoder, hence every latent a model was trained on, is
    bit-identical after training; the decoder learns; rescaling the latents is refused."""
    from zoetrope.formats.vae_file import load_vae_file

    vae_arguments = dict(
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=SIZE,
    )
    values = {"stage": "vae", "output_dir": str(tmp_path / "vae"), "steps": 3, "batch_size": 2, "lr": 1e-2,
              "checkpoint_every": 0, "vae_train": "decoder", "model": {"architecture": {"vae": vae_arguments}}}
    trainer = Trainer(load_train_config(values), dataset=TensorClips(image=True))
    assert trainer.trainable and all(
        name.split(".")[1] in ("decoder", "post_quant_conv") for name in trainer.trainable
    ), trainer.trainable
    before = {name: value.clone() for name, value in trainer.model.image_model.vae.state_dict().items()}
    exported = load_vae_file(trainer.fit()).state_dict()
    frozen = [name for name in before if name.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(exported[name], before[name]) for name in frozen)
    assert any(not torch.equal(exported[name], before[name]) for name in before if name.startswith("decoder."))
    with pytest.raises(ConfigError, match="calibrate_scaling_factor would rescale it"):
        load_train_config({**values, "calibrate_scaling_factor": True})
    with pytest.raises(ConfigError, match="only applies to the `vae` stage"):
        load_train_config({**values, "stage": "image"})


def test_vae_anchor_weight_holds_the_encoder_near_its_start_and_only_as_asked(tmp_path) -> None:
    """`vae_anchor_weight`: the anchor term is 0 at the start and equals its definition, the anchored encoder's
    latents drift less than a free one's over the same steps, trainable parameters exclude the frozen copy, and
    the option is refused where it means nothing."""
    vae_arguments = dict(
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=SIZE,
        scaling_factor=2.0,
    )
    values = {"stage": "vae", "output_dir": str(tmp_path / "free"), "steps": 6, "batch_size": 2, "lr": 2e-2,
              "checkpoint_every": 0, "log_every": 1, "model": {"architecture": {"vae": vae_arguments}}}
    pixels = TensorClips(count=4, image=True).clips[:, 0]

    def means(trainer: Trainer) -> torch.Tensor:
        with torch.no_grad():
            return trainer.model.image_model.vae.encode(pixels).latent_dist.mean

    drift = {}
    for name, weight in (("free", 0.0), ("anchored", 1e3)):
        trainer = Trainer(load_train_config({**values, "output_dir": str(tmp_path / name), "vae_anchor_weight": weight}),
                          dataset=TensorClips(image=True))
        assert not any(name.startswith("anchor.") for name in trainer.trainable)
        start = means(trainer)
        if weight:
            _, _, term = trainer.module(pixels, torch.zeros(4, 4, SIZE // 2, SIZE // 2))
            assert torch.allclose(term, torch.zeros(4), atol=1e-12)
        trainer.fit()
        drift[name] = float((means(trainer) - start).pow(2).mean())
        if weight:
            _, _, term = trainer.module(pixels, torch.zeros(4, 4, SIZE // 2, SIZE // 2))
            expected = ((means(trainer) - start) * 2.0).pow(2).flatten(1).mean(1)
            assert torch.allclose(term, expected, rtol=1e-4, atol=1e-9) and term.sum() > 0
    assert drift["anchored"] < 0.2 * drift["free"], drift
    for bad in ({"vae_train": "decoder"}, {"calibrate_scaling_factor": True}, {"stage": "image"}):
        with pytest.raises(ConfigError, match="vae_anchor_weight"):
            load_train_config({**values, "vae_anchor_weight": 1.0, **bad})


def test_vae_initial_logvar_starts_a_near_deterministic_posterior(tmp_path) -> None:
    vae_arguments = dict(
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=SIZE,
    )
    pixels = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    stds = {}
    for initial in (None, -7.0):
        architecture = {"vae": vae_arguments, "vae_initial_logvar": initial}
        config = load_train_config({"stage": "vae", "output_dir": str(tmp_path / str(initial)), "steps": 1,
                                    "model": {"architecture": architecture}})
        vae = Trainer(config, dataset=TensorClips(image=True)).model.image_model.vae
        with torch.no_grad():
            stds[initial] = vae.encode(pixels).latent_dist.std
    assert stds[None].mean() > 0.5  # diffusers' init: logvar near 0
    assert torch.allclose(stds[-7.0], torch.full_like(stds[-7.0], math.exp(-3.5)), rtol=0.5)


def test_calibrated_scaling_factor_gives_unit_variance_latents(tmp_path) -> None:
    vae_arguments = dict(
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 16], layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=SIZE,
    )
    config = load_train_config({"stage": "vae", "output_dir": str(tmp_path / "vae"), "steps": 1, "batch_size": 2,
                                "calibrate_scaling_factor": True, "checkpoint_every": 0,
                                "model": {"architecture": {"vae": vae_arguments}}})
    dataset = TensorClips(image=True)
    from zoetrope.formats.vae_file import load_vae_file

    exported = load_vae_file(Trainer(config, dataset=dataset).fit())
    pixels = torch.stack([dataset[index]["pixel_values"] for index in range(len(dataset))])
    with torch.no_grad():
        means = exported.encode(pixels).latent_dist.mean
    assert exported.config.scaling_factor != 1.0
    assert float((means * exported.config.scaling_factor).std()) == pytest.approx(1.0, rel=1e-4)


def test_latent_sample_false_trains_on_the_posterior_mean(training_files, tmp_path) -> None:
    pixels = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    latents = {}
    for sample in (True, False):
        trainer = Trainer(make_config(training_files, tmp_path / str(sample), "image", latent_sample=sample),
                          dataset=TensorClips(image=True))
        vae = trainer.model.image_model.vae
        latents[sample] = [trainer._latents(pixels) for _ in range(2)]
        with torch.no_grad():
            mean = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    assert torch.allclose(latents[False][0], latents[False][1])
    assert torch.allclose(latents[False][0][0, :, 0], mean[0], atol=1e-5)
    assert not torch.allclose(latents[True][0], latents[True][1])


def test_gradient_checkpointing_and_bf16_autocast(training_files, tmp_path) -> None:
    data = TensorClips(count=1)
    batch = collate([data[0]])
    gradients = []
    for index, changes in enumerate(({}, {"gradient_checkpointing": True}, {"mixed_precision": "bf16"})):
        trainer = Trainer(make_config(training_files, tmp_path / str(index), "motion", **changes), dataset=data)
        assert trainer.model.video_unet.gradient_checkpointing == bool(changes.get("gradient_checkpointing"))
        with torch.no_grad():
            for name, parameter in trainer.trainable.items():
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
        loss = trainer.accumulate([batch])
        assert math.isfinite(loss)
        gradients.append({name: p.grad.clone() for name, p in trainer.trainable.items()})
        assert all(p.dtype == torch.float32 for p in trainer.trainable.values())  # weights stay fp32 (as official)
    plain, checkpointed, bf16 = gradients
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5), name
    cosine = torch.nn.functional.cosine_similarity(
        torch.cat([g.flatten() for g in plain.values()]), torch.cat([g.flatten() for g in bf16.values()]), dim=0
    )
    assert cosine > 0.9  # bf16 autocast computes the same gradient, roughly


def test_personalize_lora_exports_as_kohya(training_files, tmp_path) -> None:
    from zoetrope.formats.kohya import load_image_lora
    from zoetrope.pipelines.components import load_image_model

    config = make_config(training_files, tmp_path, "personalize", steps=2, lr=1e-2, lora={"rank": 2, "text_encoder": True})
    trainer = Trainer(config, dataset=TensorClips(image=True))
    assert set(trainer.model.networks) == {"unet", "text_encoder"}
    exported = trainer.fit()
    ids = torch.tensor([[49406, 320, 1125, 49407]])
    sample, text = torch.randn(1, 4, 2, 2), torch.randn(1, 77, 32)
    image = trainer.model.image_model
    with torch.no_grad():
        expected = image.unet.eval()(sample, 10, encoder_hidden_states=text).sample, image.text_encoder(ids)[0]
        fresh = load_image_model(training_files["base"])
        load_image_lora(exported, fresh.unet, fresh.text_encoder).attach(fresh.unet, fresh.text_encoder)
        actual = fresh.unet(sample, 10, encoder_hidden_states=text).sample, fresh.text_encoder(ids)[0]
        plain = load_image_model(training_files["base"]).text_encoder(ids)[0]
    assert not torch.allclose(plain, expected[1], atol=1e-6)
    assert all(torch.allclose(a, e, atol=1e-5) for a, e in zip(actual, expected))


def test_main_train_on_a_webvid_style_folder_of_mp4s(training_files, tmp_path) -> None:
    """The layout `zoetrope world make` writes (videos.csv with videoid/name + videos/*.mp4) plugs in via YAML."""
    import yaml

    from zoetrope.media import save_video
    from zoetrope.training.engine import main_train

    (tmp_path / "videos").mkdir()
    rows = ["videoid,name,page_dir"]
    for index in range(2):
        frames = torch.rand(3, 6, SIZE, SIZE, generator=torch.Generator().manual_seed(index))
        save_video(frames, tmp_path / "videos" / f"clip{index}.mp4", fps=8)
        rows.append(f"clip{index},a shape moving {index},world")
    (tmp_path / "videos.csv").write_text("\n".join(rows) + "\n")
    config = {
        "stage": "motion", "output_dir": str(tmp_path / "run"), "steps": 5, "batch_size": 2, "log_every": 1,
        "model": {"image_model": training_files["base"], "motion": {"num_attention_heads": 4, "norm_num_groups": 8}},
        "data": {"kind": "video", "csv_path": str(tmp_path / "videos.csv"), "video_folder": str(tmp_path / "videos"),
                 "num_frames": FRAMES, "sample_stride": 1, "size": SIZE},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    exported = main_train(tmp_path / "train.yaml", overrides=["steps=1"])
    assert exported == tmp_path / "run" / "motion_module.safetensors"
    assert load_motion_module(exported).config.max_frames == 32
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["steps"] == 1 and saved["data"]["csv_path"].endswith("videos.csv")


def test_min_snr_weights_by_hand() -> None:
    alphas_cumprod = torch.tensor([0.99, 0.9, 0.5, 0.1])  # SNR 99, 9, 1, 0.111
    weights = min_snr_weights(alphas_cumprod, torch.tensor([0, 1, 2, 3]), gamma=5.0)
    assert torch.allclose(weights, torch.tensor([5 / 99, 5 / 9, 1.0, 1.0]))
    with pytest.raises(ConfigError, match="snr_gamma"):
        load_train_config({"stage": "image", "output_dir": "x", "snr_gamma": 0})


def weighted_loss_and_its_parts(training_files, tmp_path, **overrides) -> tuple[Trainer, torch.Tensor, dict, torch.Tensor, torch.Tensor]:
    """An image-stage trainer's `micro_loss` on 3 samples, with the inputs it drew, the noisy latents and the
    network's epsilon prediction on them (same draws: the generator is rewound), to recompute the loss by hand."""
    config = make_config(training_files, tmp_path, "image", batch_size=3, **overrides)
    trainer = Trainer(config, dataset=TensorClips(image=True))
    batch = collate([trainer.dataset[index] for index in range(3)])
    inputs = drawn_inputs(trainer, batch)
    with torch.no_grad():
        loss = trainer.micro_loss(batch)
        noisy = trainer.noise_scheduler.add_noise(inputs["latents"], inputs["noise"], inputs["timesteps"])
        epsilon = trainer.network(noisy, inputs["timesteps"], inputs["input_ids"])
    return trainer, loss, inputs, noisy, epsilon


def test_snr_gamma_weights_each_sample_of_the_loss(training_files, tmp_path) -> None:
    trainer, loss, inputs, _, epsilon = weighted_loss_and_its_parts(training_files, tmp_path, snr_gamma=5.0)
    error = (epsilon - inputs["noise"]) ** 2
    alpha_bar = trainer.noise_scheduler.alphas_cumprod[inputs["timesteps"]].double()
    snr = alpha_bar / (1 - alpha_bar)
    expected = (error.flatten(1).mean(1).double() * torch.clamp(snr, max=5.0) / snr).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() < error.mean().item()  # some timestep is cleaner than SNR 5, so the weighted loss is smaller


def test_v_loss_weighting_equals_the_v_prediction_loss(training_files, tmp_path) -> None:
    trainer, loss, inputs, noisy, epsilon = weighted_loss_and_its_parts(training_files, tmp_path, loss_weighting="v")
    # the same prediction read as v (diffusers' get_velocity) against the true v, per sample
    alpha_bar = trainer.noise_scheduler.alphas_cumprod[inputs["timesteps"]].view(-1, 1, 1, 1)
    x0 = (noisy - (1 - alpha_bar).sqrt() * epsilon) / alpha_bar.sqrt()
    v_predicted = alpha_bar.sqrt() * epsilon - (1 - alpha_bar).sqrt() * x0
    v_true = trainer.noise_scheduler.get_velocity(inputs["latents"], inputs["noise"], inputs["timesteps"])
    expected = ((v_predicted - v_true) ** 2).flatten(1).mean(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    with pytest.raises(ConfigError, match="snr_gamma"):
        load_train_config({"stage": "image", "output_dir": "x", "loss_weighting": "v", "snr_gamma": 5})


def test_logit_normal_timesteps_follow_the_distribution_and_uniform_is_unchanged() -> None:
    uniform = load_train_config({"stage": "motion", "output_dir": "x"})
    drawn = sample_timesteps(uniform, 1000, 5, torch.Generator().manual_seed(3))
    assert torch.equal(drawn, torch.randint(0, 1000, (5,), generator=torch.Generator().manual_seed(3)))

    config = load_train_config(
        {"stage": "motion", "output_dir": "x", "timestep_sampling": "logit_normal", "timestep_mean": 1.0}
    )
    steps = sample_timesteps(config, 1000, 20000, torch.Generator().manual_seed(0)).double()
    assert steps.min() >= 0 and steps.max() <= 999
    # median of floor(1000 * sigmoid(N(1, 1))) is floor(1000 * sigmoid(1)) = 731; a quarter lies below sigmoid(1 - 0.674)
    assert steps.median().item() == pytest.approx(731, abs=8)
    assert (steps < 1000 * torch.sigmoid(torch.tensor(1 - 0.6745))).double().mean().item() == pytest.approx(0.25, abs=0.01)
    assert (steps >= 500).double().mean().item() == pytest.approx(0.8413, abs=0.01)  # P(n > 0) for n ~ N(1, 1)


def test_timestep_mixture_draws_the_uniform_share_uniformly() -> None:
    config = load_train_config(
        {"stage": "motion", "output_dir": "x", "timestep_sampling": "logit_normal", "timestep_mean": 2.0,
         "timestep_std": 0.7, "timestep_uniform_fraction": 0.3}
    )
    steps = sample_timesteps(config, 1000, 40000, torch.Generator().manual_seed(1)).double()
    # below t = 500 the logit-normal part has P(n < 0) = P(z < -2.86) = 0.002; the uniform share puts 0.3 * 0.5 there
    assert (steps < 500).double().mean().item() == pytest.approx(0.3 * 0.5 + 0.7 * 0.0021, abs=0.01)
    assert (steps < 100).double().mean().item() == pytest.approx(0.03, abs=0.005)
    pure = load_train_config(
        {"stage": "motion", "output_dir": "x", "timestep_sampling": "logit_normal", "timestep_mean": 2.0, "timestep_std": 0.7}
    )
    # the pure logit-normal draw is unchanged by the option's existence (runs made before it reproduce)
    first = sample_timesteps(pure, 1000, 6, torch.Generator().manual_seed(5))
    logits = torch.randn(6, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.7 + 2.0
    assert torch.equal(first, torch.floor(torch.sigmoid(logits) * 1000).long())


def test_timestep_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="timestep_std"):
        load_train_config({"stage": "motion", "output_dir": "x", "timestep_sampling": "logit_normal", "timestep_std": 0})
    with pytest.raises(ConfigError, match="timestep_sampling: logit_normal"):
        load_train_config({"stage": "motion", "output_dir": "x", "timestep_mean": 1.0})
    with pytest.raises(ConfigError, match="timestep_sampling: logit_normal"):
        load_train_config({"stage": "motion", "output_dir": "x", "timestep_uniform_fraction": 0.5})
    with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
        load_train_config(
            {"stage": "motion", "output_dir": "x", "timestep_sampling": "logit_normal", "timestep_uniform_fraction": 1.0}
        )


class CountingClips(TensorClips):
    """TensorClips that counts how often each item is read."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reads = [0] * len(self.clips)

    def __getitem__(self, index: int) -> dict:
        self.reads[index] += 1
        return super().__getitem__(index)


@pytest.mark.parametrize("stage", ["image", "motion"])
def test_cache_latents_trains_exactly_as_without_and_reads_each_item_once(training_files, tmp_path, stage) -> None:
    changes = dict(steps=6, batch_size=2, latent_sample=False, caption_dropout=0.5, data={"random_flip": False})
    runs = {}
    for cache in (False, True):
        data = CountingClips(count=4, image=is_image(stage))
        trainer = Trainer(make_config(training_files, tmp_path / str(cache), stage, cache_latents=cache, **changes), dataset=data)
        trainer.fit()
        runs[cache] = (trainer, data.reads)
    assert runs[False][1] == [3, 3, 3, 3]  # 6 steps x 2 = 3 epochs of 4 items
    assert runs[True][1] == [1, 1, 1, 1]
    for name, parameter in runs[False][0].trainable.items():
        assert torch.equal(parameter, runs[True][0].trainable[name]), name


def test_cache_latents_refuses_what_it_would_freeze_or_lose(training_files, tmp_path) -> None:
    base = dict(cache_latents=True, latent_sample=False, data={"random_flip": False})
    with pytest.raises(ConfigError, match="latent_sample: false"):
        make_config(training_files, tmp_path, "image", **{**base, "latent_sample": True})
    with pytest.raises(ConfigError, match="random_flip: false"):
        make_config(training_files, tmp_path, "image", **{**base, "data": {}})
    with pytest.raises(ConfigError, match="num_workers: 0"):
        make_config(training_files, tmp_path, "image", num_workers=1, **base)
    with pytest.raises(ConfigError, match="trains the VAE"):
        Trainer(make_config(training_files, tmp_path, "vae", **base), dataset=TensorClips(image=True))
    from zoetrope.media import save_video

    (tmp_path / "videos").mkdir()
    save_video(torch.rand(3, FRAMES, SIZE, SIZE), tmp_path / "videos" / "clip.mp4", fps=8)
    (tmp_path / "videos.csv").write_text("videoid,name,page_dir\nclip,a red circle,world\n")
    video_data = {"kind": "video", "csv_path": str(tmp_path / "videos.csv"), "video_folder": str(tmp_path / "videos"),
                  "num_frames": FRAMES, "size": SIZE, "random_flip": False}
    with pytest.raises(ConfigError, match="random frame"):
        Trainer(make_config(training_files, tmp_path, "domain-adapter", **{**base, "data": video_data}))


def test_gradient_difference_loss_by_hand() -> None:
    from zoetrope.training.engine import gradient_difference_loss

    target = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])  # one vertical edge
    blurred = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]])
    # x: |grad target| = [1, 0], |grad blurred| = [0.5, 0.5] -> mean |diff| 0.5; y: all flat -> 0
    assert math.isclose(float(gradient_difference_loss(blurred, target)), 0.5)
    assert float(gradient_difference_loss(target + 0.3, target)) < 1e-6  # a colour shift has no edges to get wrong


def test_vae_loss_options_change_the_pixel_term(tmp_path) -> None:
    """Same seed, same batch: l1 replaces the MSE term, gradient_loss_weight adds w x the gradient-difference loss."""
    import torch.nn.functional as F

    from zoetrope.training.engine import gradient_difference_loss

    data = TensorClips(image=True)
    batch = collate([data[0], data[1]])
    losses, parts = {}, {}
    for name, changes in {"mse": {}, "l1": {"reconstruction_loss": "l1"}, "gdl": {"gradient_loss_weight": 2.0}}.items():
        config = load_train_config(merge_config_values(
            {"stage": "vae", "output_dir": str(tmp_path / name), "steps": 1, "batch_size": 2, "kl_weight": 0.0,
             "model": {"architecture": {"vae": {"block_out_channels": [8, 8], "down_block_types": ["DownEncoderBlock2D"] * 2,
                                                "up_block_types": ["UpDecoderBlock2D"] * 2, "norm_num_groups": 4,
                                                "latent_channels": 4, "sample_size": SIZE}}}},
            changes,
        ))
        trainer = Trainer(config, dataset=data)
        with torch.no_grad():
            losses[name] = float(trainer.micro_loss(batch))
            eps = torch.randn((2, 4, SIZE // 2, SIZE // 2), generator=torch.Generator().manual_seed(config.seed))
            reconstruction, _, anchor = trainer.network(batch["pixel_values"], eps)
            assert anchor is None
            parts[name] = (F.mse_loss(reconstruction, batch["pixel_values"]), F.l1_loss(reconstruction, batch["pixel_values"]),
                           gradient_difference_loss(reconstruction, batch["pixel_values"]))
    assert math.isclose(losses["mse"], float(parts["mse"][0]), rel_tol=1e-5)
    assert math.isclose(losses["l1"], float(parts["l1"][1]), rel_tol=1e-5)
    assert math.isclose(losses["gdl"], float(parts["gdl"][0] + 2.0 * parts["gdl"][2]), rel_tol=1e-5)
    with pytest.raises(ConfigError, match="gradient_loss_weight"):
        load_train_config({"stage": "vae", "output_dir": "o", "gradient_loss_weight": -1.0})


def test_v_prediction_with_zero_terminal_snr_trains_on_the_velocity(training_files, tmp_path) -> None:
    """Lin et al. 2024: rescaled betas reach alpha_bar_T = 0 and the target is v; Min-SNR stays finite there."""
    trainer, loss, inputs, _, prediction = weighted_loss_and_its_parts(
        training_files, tmp_path, prediction_type="v_prediction", zero_terminal_snr=True
    )
    schedule = trainer.noise_scheduler
    assert schedule.config.prediction_type == "v_prediction" and schedule.config.rescale_betas_zero_snr
    assert schedule.alphas_cumprod[-1].item() == 0.0 and schedule.alphas_cumprod[0].item() > 0.99
    alpha_bar = schedule.alphas_cumprod[inputs["timesteps"]].view(-1, 1, 1, 1)
    velocity = alpha_bar.sqrt() * inputs["noise"] - (1 - alpha_bar).sqrt() * inputs["latents"]
    assert loss.item() == pytest.approx(((prediction - velocity) ** 2).mean().item(), rel=1e-5)
    assert loss.item() != pytest.approx(((prediction - inputs["noise"]) ** 2).mean().item(), rel=1e-3)
    weights = min_snr_weights(schedule.alphas_cumprod, torch.tensor([0, 999]), gamma=5.0, velocity=True)
    assert torch.isfinite(weights).all() and weights[1].item() == 0.0  # pure noise carries no x0 signal to weigh
    assert weights[0].item() == pytest.approx(5.0 / (schedule.alphas_cumprod[0].item() / (1 - schedule.alphas_cumprod[0].item()) + 1), rel=1e-5)


def test_the_exported_image_model_records_its_parameterization_and_frozen_stages_inherit_it(training_files, tmp_path) -> None:
    from zoetrope.pipelines.components import Parameterization, load_image_model

    config = make_config(training_files, tmp_path, "image", steps=1, prediction_type="v_prediction", zero_terminal_snr=True)
    exported = Trainer(config, dataset=TensorClips(image=True)).fit()
    assert load_image_model(exported).parameterization == Parameterization("v_prediction", True)
    # the motion stage on that model trains on its schedule without being told
    motion = Trainer(make_config(training_files, tmp_path, "motion", steps=1, model={"image_model": str(exported)}), dataset=TensorClips())
    assert motion.noise_scheduler.config.prediction_type == "v_prediction"
    assert motion.noise_scheduler.config.beta_schedule == "linear" and motion.noise_scheduler.alphas_cumprod[-1] == 0
    # ... and a frozen UNet cannot be asked to predict something else
    with pytest.raises(ConfigError, match="keeps the image UNet frozen"):
        Trainer(make_config(training_files, tmp_path, "motion", model={"image_model": str(exported)}, prediction_type="epsilon", zero_terminal_snr=False), dataset=TensorClips())
    with pytest.raises(ConfigError, match="zero_terminal_snr"):
        load_train_config({"stage": "image", "output_dir": "x", "prediction_type": "epsilon", "zero_terminal_snr": True})
    with pytest.raises(ConfigError, match="loss_weighting"):
        Trainer(make_config(training_files, tmp_path, "image", zero_terminal_snr=True, loss_weighting="v"), dataset=TensorClips(image=True))
