"""Caption contrast: a denoising loss that must also tell the right caption from a wrong one.

Why: a diffusion model's loss says how well the caption *explains* the noisy picture, and a model can fit most of
a picture without one word of its caption. On the shapes world the shipped base image model draws colours right
(99 %) and shapes barely (33 %), and a diffusion-classifier probe (Li et al. 2023, "Your Diffusion Model is
Secretly a Zero-Shot Classifier": noise a true still, compare the denoising loss under each candidate caption)
shows why: with the colour word swapped the loss rises ~10 %, with the shape word swapped it moves by under 1 %, and
the lowest-loss shape word is the right one for only half of the stills (colour: 97 %). The squared error spends
its gradient where the pixels are, and a shape's outline is a few latent pixels; the mean over shapes is round.

So the caption contrast gives the word its own gradient. For each training sample whose caption holds a word of
one of the configured groups (e.g. ``[circle, square, triangle, star]``), a *negative* caption swaps that word for
another of its group, and the UNet predicts the same noisy latents under it (one forward pass, the negatives
concatenated to the batch). With per-sample errors ``e+`` (own caption) and ``e-`` (negative) the extra loss is a
smooth hinge on their gap, measured in units of ``s = temperature * e+`` (held constant):

    contrast = weight * s * softplus((e+ - e-) / s)

Its gradient is ``weight * sigmoid((e+ - e-) / s)``: half the weight while the two captions fit equally well
(pulling ``e+`` down and ``e-`` up), and vanishing once the negative fits worse by a few ``temperature`` of the
sample's own error, so a model that already tells the words apart is left to the denoising loss and the wrong
caption's prediction is not pushed further than that margin. The hinge takes the denoising loss's per-timestep
weights where the run has them (Min-SNR): the errors of the noisiest steps are large and say nothing about a small
shape (no caption can), and unweighted they would take most of the contrast's gradient (measured on the shapes
world's base with a v loss: unweighted errors average 0.33 against 0.046 weighted, the contrast's gradient norm 8x
the denoising loss's at weight 4). This is the discriminative tuning of text-to-image
models (e.g. Qu et al. 2024, "Discriminative Probing and Tuning for Text-to-Image Generation") in its simplest
form, with the diffusion classifier's own score as the discriminator.

What it did on the shapes world (docs/world-training.md, twenty-eighth session): 2,000 image steps with it made the
loss pick the right shape for 84 % of true stills (the same steps without it: 62 %), yet the stills the model draws
read 43 % against 47 %: the shape is committed at high noise, where no caption lowers the loss, so a model that
knows the word can still fail to draw it. On the motion stage (weight 4) it cost motion accuracy. It is the tool
for a word the loss ignores, not for one the sampler cannot draw.

The negative word is chosen from the caption text and the training step (a hash, no draw from the run's
generator), so a run with the contrast sees exactly the batches, timesteps and noise of the same run without it,
and `--resume` stays exact.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _word_pattern(word: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)


def negative_caption(text: str, groups: Sequence[Sequence[str]], key: int) -> str | None:
    """`text` with one word of one group swapped for another word of that group, or None if no group word occurs.

    Every (group, word) occurrence is a candidate; `key` picks the occurrence and the replacement, so the same
    caption at the same step always gets the same negative. Whole words only ("star" does not match "start").
    """
    found = [
        (group, word, match)
        for group in groups
        for word in group
        for match in _word_pattern(word).finditer(text)
    ]
    if not found:
        return None
    group, word, match = found[key % len(found)]
    others = [other for other in group if other.lower() != word.lower()]
    replacement = others[(key // len(found)) % len(others)]
    return text[: match.start()] + replacement + text[match.end():]


def negative_key(step: int, index: int, text: str) -> int:
    """A deterministic, well-spread choice key for sample `index` of a micro-batch at `step`."""
    return zlib.crc32(f"{step}:{index}:{text}".encode())


def contrast_loss(own: torch.Tensor, negative: torch.Tensor, temperature: float) -> torch.Tensor:
    """Smooth hinge `s * softplus((own - negative) / s)`, `s = temperature * own` (detached), per sample.

    `own` / `negative`: per-sample mean squared errors under the sample's caption and under its negative caption.
    """
    scale = (temperature * own.detach()).clamp_min(1e-12)
    return scale * F.softplus((own - negative) / scale)
