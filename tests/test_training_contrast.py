"""Caption contrast (zoetrope.training.contrast): the negative caption swaps one group word, the hinge has the
gradient its docstring promises, the engine's loss is the denoising loss plus the hinge on the network's own
predictions, the run's draws are unchanged, and training with it makes the caption word matter more."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Dataset

from conftest import drawn_inputs, merge_config_values
from zoetrope.errors import ConfigError
from zoetrope.training.config import load_train_config
from zoetrope.training.contrast import contrast_loss, negative_caption
from zoetrope.training.engine import Trainer, collate, tokenize

SHAPES = ["circle", "square", "triangle", "star"]
SIZE = 16


def test_negative_caption_swaps_one_whole_group_word_for_each_other_word() -> None:
    text = "a red star moving left on a grey background"
    negatives = {negative_caption(text, [SHAPES], key) for key in range(12)}
    assert negatives == {f"a red {shape} moving left on a grey background" for shape in ("circle", "square", "triangle")}
    assert negative_caption(text, [SHAPES], 5) == negative_caption(text, [SHAPES], 5)  # deterministic
    assert negative_caption("a red starfish at the start", [SHAPES], 0) is None  # whole words only
    assert negative_caption("", [SHAPES], 3) is None  # a dropped caption has no negative
    two_groups = [SHAPES, ["red", "blue"]]
    seen = {negative_caption("a red circle", two_groups, key) for key in range(40)}
    assert seen == {"a blue circle", "a red square", "a red triangle", "a red star"}  # one word swapped at a time


def test_contrast_loss_is_a_smooth_hinge_with_a_sigmoid_gradient() -> None:
    own = torch.tensor([0.04, 0.04, 0.04], requires_grad=True)
    negative = torch.tensor([0.04, 0.05, 0.03], requires_grad=True)  # tie, negative clearly worse, negative better
    loss = contrast_loss(own, negative, temperature=0.02)
    scale = 0.02 * 0.04
    assert loss[0].item() == pytest.approx(scale * math.log(2))
    assert loss[1].item() < 1e-5 * scale  # 12.5 scales of margin: saturated, (almost) nothing left to learn
    assert loss[2].item() == pytest.approx(0.01 + scale * math.log1p(math.exp(-0.01 / scale)), rel=1e-6)
    loss.sum().backward()
    expected = torch.sigmoid((own.detach() - negative.detach()) / scale)
    assert torch.allclose(own.grad, expected) and torch.allclose(negative.grad, -expected)


def test_contrast_config_errors_name_the_fix() -> None:
    base = {"stage": "image", "output_dir": "out"}
    with pytest.raises(ConfigError, match="needs contrast_words"):
        load_train_config({**base, "contrast_weight": 1.0})
    with pytest.raises(ConfigError, match="two or more distinct words"):
        load_train_config({**base, "contrast_weight": 1.0, "contrast_words": [["circle", "Circle"]]})
    with pytest.raises(ConfigError, match="temperature > 0"):
        load_train_config({**base, "contrast_weight": 1.0, "contrast_words": [SHAPES], "contrast_temperature": 0})
    with pytest.raises(ConfigError, match="vae stage has none"):
        load_train_config({"stage": "vae", "output_dir": "out", "contrast_weight": 1.0, "contrast_words": [SHAPES]})


class ShapeStills(Dataset):
    """One fixed random picture per shape word, captioned with it: the word is all that tells them apart."""

    def __init__(self, count: int = 4) -> None:
        generator = torch.Generator().manual_seed(3)
        self.pictures = torch.rand(count, 3, SIZE, SIZE, generator=generator) * 2 - 1
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.pictures[index], "text": f"a red {SHAPES[index % 4]}"}


def image_trainer(training_files, tmp_path, **changes) -> Trainer:
    values = {
        "stage": "image", "output_dir": str(tmp_path / "image"), "model": {"image_model": training_files["base"]},
        "steps": 40, "batch_size": 4, "lr": 3e-3, "log_every": 100, "checkpoint_every": 0, "caption_dropout": 0.0,
        "latent_sample": False,
    }
    return Trainer(load_train_config(merge_config_values(values, changes)), dataset=ShapeStills())


@pytest.mark.parametrize("snr_gamma", [None, 5.0])
def test_engine_loss_is_the_denoising_loss_plus_the_hinge_and_draws_are_unchanged(training_files, tmp_path, snr_gamma) -> None:
    contrast = {"contrast_weight": 0.5, "contrast_words": [SHAPES], "contrast_temperature": 0.05}
    with_it = image_trainer(training_files, tmp_path / "a", snr_gamma=snr_gamma, **contrast)
    without = image_trainer(training_files, tmp_path / "b", snr_gamma=snr_gamma)
    batch = collate([with_it.dataset[index] for index in range(4)])
    inputs = drawn_inputs(with_it, batch)
    with torch.no_grad():
        loss = with_it.micro_loss(batch)
        plain = without.micro_loss(batch)
        after = with_it.generator.get_state()
        assert after.equal(without.generator.get_state())  # the contrast drew nothing of its own
        noisy = with_it.noise_scheduler.add_noise(inputs["latents"], inputs["noise"], inputs["timesteps"])
        target = with_it.noise_scheduler.get_velocity(inputs["latents"], inputs["noise"], inputs["timesteps"]) if (
            with_it.noise_scheduler.config.prediction_type == "v_prediction") else inputs["noise"]
        own = ((with_it.network(noisy, inputs["timesteps"], inputs["input_ids"]) - target) ** 2).flatten(1).mean(1)
        index, negative_ids = with_it._negatives(inputs["captions"])
        encoder = with_it.model.image_model.text_encoder
        decoded = with_it.model.image_model.tokenizer.batch_decode(negative_ids, skip_special_tokens=True)
        for position, text in zip(index.tolist(), decoded):
            assert text != inputs["captions"][position] and text.split()[-1] in SHAPES  # a shape word was swapped
        assert torch.equal(negative_ids[:1], tokenize(with_it.model.image_model.tokenizer, [decoded[0]], int(encoder.config.max_position_embeddings)))
        negative = ((with_it.network(noisy[index], inputs["timesteps"][index], negative_ids) - target[index]) ** 2).flatten(1).mean(1)
    assert len(index) == 4  # every caption holds a shape word
    weights = torch.ones(4)
    if snr_gamma is not None:  # Min-SNR weights the denoising loss and the hinge alike
        alpha_bar = with_it.noise_scheduler.alphas_cumprod[inputs["timesteps"]]
        weights = (alpha_bar / (1 - alpha_bar)).clamp(max=snr_gamma) / (alpha_bar / (1 - alpha_bar))
    assert plain.item() == pytest.approx((own * weights).mean().item(), rel=1e-5)
    hinge = (contrast_loss(own[index], negative, 0.05) * weights[index]).sum() / 4
    assert loss.item() == pytest.approx((own * weights).mean().item() + 0.5 * hinge.item(), rel=1e-5)
    assert hinge.item() > 0


def batch_margin(trainer: Trainer, batch: dict, start: torch.Tensor) -> float:
    """Mean relative gap (negative caption's error - own error) / own error on the batch's fixed draws."""
    trainer.generator.set_state(start)
    inputs = trainer.diffusion_inputs(batch)
    with torch.no_grad():
        noisy = trainer.noise_scheduler.add_noise(inputs["latents"], inputs["noise"], inputs["timesteps"])
        index, negative_ids = trainer._negatives(inputs["captions"])
        own = ((trainer.network(noisy, inputs["timesteps"], inputs["input_ids"]) - inputs["noise"]) ** 2).flatten(1).mean(1)
        negative = ((trainer.network(noisy[index], inputs["timesteps"][index], negative_ids) - inputs["noise"][index]) ** 2).flatten(1).mean(1)
    return float(((negative - own[index]) / own[index]).mean())


def test_training_with_the_contrast_makes_the_wrong_caption_fit_worse(training_files, tmp_path) -> None:
    """Steps on one fixed batch (same latents, timesteps, noise): with the contrast the wrong captions' error rises
    above the right ones'; the denoising loss alone leaves the gap near zero (the pictures can be fitted without
    their words)."""
    contrast = {"contrast_words": [SHAPES], "contrast_temperature": 0.05}
    gaps, losses = {}, {}
    for name, weight in (("plain", 0.0), ("contrast", 5.0)):
        trainer = image_trainer(training_files, tmp_path / name, lr=1e-3, contrast_weight=weight, **contrast)
        batch = collate([trainer.dataset[index] for index in range(4)])
        start = trainer.generator.get_state()
        before = batch_margin(trainer, batch, start)
        for _ in range(15):
            trainer.generator.set_state(start)
            losses.setdefault(name, []).append(trainer.accumulate([batch]))
            trainer.optimizer_step()
        gaps[name] = (before, batch_margin(trainer, batch, start))
    assert gaps["plain"][0] == pytest.approx(gaps["contrast"][0])  # same start
    assert gaps["contrast"][1] > gaps["contrast"][0] + 0.05 and gaps["contrast"][1] > gaps["plain"][1] + 0.05, gaps
    assert losses["contrast"][-1] < losses["contrast"][0]  # and the model still fits the pictures
