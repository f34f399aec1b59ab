"""The one training engine: loop, gradient accumulation, mixed precision, DDP, logging, validation, checkpoints.

Every stage (`zoetrope.training.stages`) runs through `Trainer`; a stage only declares what trains, the data mode,
the noise schedule and the export. Behaviour follows the official AnimateDiff `train.py` (reference §6) with
three deliberate differences:

- gradient accumulation is real: each micro-batch's loss is divided by the number of micro-batches, the optimizer
  steps once per `grad_accumulation` micro-batches, and DDP skips the all-reduce (`no_sync`) on all but the last;
- checkpoints hold only the trained parameters in the format users load (no whole-UNet `module.`-prefixed dump),
  plus a `training_state.pt` from which `--resume` continues bit for bit;
- randomness of the loop (VAE posterior samples, timesteps, noise, caption dropout) comes from one
  `torch.Generator` per rank (seed + rank, as the official `42 + rank`), drawn *per sample* in batch order, so a
  batch of 2 and two micro-batches of 1 see identical noise, and the generator's state is checkpointed.

The diffusion loss is DDPM's L_simple (Ho et al. 2020, eq. 14): `x_t = sqrt(ᾱ_t) x_0 + sqrt(1-ᾱ_t) ε` with one
uniform timestep per video, and `MSE(ε_θ(x_t, t, c), ε)` computed in float32.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from zoetrope.config import load_config, save_config
from zoetrope.errors import CheckpointError, ConfigError
from zoetrope.training.checkpoint import (
    capture_rng,
    latest_checkpoint,
    load_training_state,
    restore_rng,
    write_checkpoint,
)
from zoetrope.training.config import TrainConfig, load_train_config
from zoetrope.training.contrast import contrast_loss, negative_caption, negative_key
from zoetrope.training.stages import (
    Stage,
    StageModel,
    assemble,
    build_module,
    export_metadata,
    get_stage,
    trained_parameters,
)

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"
METRIC_COLUMNS = ("step", "loss", "lr", "grad_norm", "seconds_per_step", "samples_per_second")


# ---------------------------------------------------------------------------------------------------- pure parts
def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier on the base LR for optimizer step `step` (0-based): linear warmup, then constant or cosine.

    Warmup reaches the full LR at the end of its last step ((step+1)/warmup, so no step runs at LR 0); cosine
    decays from 1 to 0 over the remaining steps (Loshchilov & Hutter 2017, SGDR eq. 5 without restarts).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def drop_captions(texts: Sequence[str], probability: float, generator: torch.Generator) -> list[str]:
    """Replace each caption by "" with `probability` (one uniform draw per caption, in order).

    Classifier-free guidance (Ho & Salimans 2022, §3.2) needs the same network to model the unconditional
    distribution; AnimateDiff drops 10 % of captions (`cfg_random_null_text_ratio: 0.1`).
    """
    draws = torch.rand(len(texts), generator=generator)
    return ["" if float(draw) < probability else text for draw, text in zip(draws, texts)]


def drop_phrases(texts: Sequence[str], probability: float, pattern: str, generator: torch.Generator) -> list[str]:
    """Cut every match of `pattern` from each caption with `probability` (one uniform draw per caption, in order).

    Whitespace left doubled or trailing by the cut is closed up, so "a red circle moving right on a grey background"
    becomes exactly "a red circle moving right" (what a user types), not a variant with a stray space.
    """
    compiled = re.compile(pattern)
    draws = torch.rand(len(texts), generator=generator)
    return [
        " ".join(compiled.sub(" ", text).split()) if float(draw) < probability else text
        for draw, text in zip(draws, texts)
    ]


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """CLIP token ids `(n, max_length)`, padded and truncated as SD1.5 training does (no attention mask)."""
    return tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt").input_ids


def gradient_difference_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mathieu et al. 2016 (eq. 5, alpha = 1): mean over both image axes of | |grad target| - |grad prediction| |.

    Images `(..., h, w)`; finite differences between neighbouring pixels. Zero wherever both are flat, so it adds
    nothing for the background and everything for a misplaced or blurred edge.
    """
    loss = prediction.new_zeros(())
    for axis in (-1, -2):
        grad_prediction = torch.diff(prediction, dim=axis).abs()
        grad_target = torch.diff(target, dim=axis).abs()
        loss = loss + (grad_target - grad_prediction).abs().mean()
    return loss


def make_noise_scheduler(schedule: Mapping[str, Any]) -> Any:
    """The DDPM forward process (`add_noise`) on the given beta schedule."""
    from diffusers import DDPMScheduler

    values = {key: value for key, value in schedule.items() if not key.startswith("_")}
    return DDPMScheduler.from_config(values)


def min_snr_weights(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float, velocity: bool = False
) -> torch.Tensor:
    """Min-SNR-gamma weights per timestep (Hang et al. 2023): min(SNR, gamma) / SNR on an epsilon loss.

    SNR(t) = alpha_bar_t / (1 - alpha_bar_t). Epsilon-MSE already equals SNR-weighted x0-MSE, so clamping the SNR
    at gamma means multiplying the epsilon loss by min(SNR, gamma) / SNR: 1 at noisy timesteps, < 1 at clean ones.
    A v-MSE is (SNR + 1)-weighted x0-MSE, hence min(SNR, gamma) / (SNR + 1) for `velocity` (finite at zero SNR).
    """
    alpha_bar = alphas_cumprod.to(timesteps.device, torch.float64)[timesteps]
    snr = alpha_bar / (1.0 - alpha_bar)
    return (torch.clamp(snr, max=gamma) / (snr + 1.0 if velocity else snr)).float()


def loss_weights(
    config: TrainConfig, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, velocity: bool = False
) -> torch.Tensor | None:
    """Per-sample weights on the MSE (`snr_gamma` or `loss_weighting: v`), or None for the plain mean.

    `velocity`: the model predicts v (the Min-SNR weights differ; `loss_weighting: v` is refused for it at build).
    """
    if config.snr_gamma is not None:
        return min_snr_weights(alphas_cumprod, timesteps, config.snr_gamma, velocity)
    if config.loss_weighting == "v":  # 1 / alpha_bar: the v-prediction loss of the same model (see TrainConfig)
        return (1.0 / alphas_cumprod.to(timesteps.device, torch.float64)[timesteps]).float()
    return None


def sample_timesteps(config: TrainConfig, num_train_timesteps: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` training timesteps in [0, T) as `config.timestep_sampling` says (see `TrainConfig`).

    Uniform is one `randint` draw (bit-identical to runs made before this option); logit-normal is one `randn` draw
    pushed through a sigmoid, so the run's random stream stays one draw per sample either way. A mixture
    (`timestep_uniform_fraction` > 0) draws both and a coin per sample, three draws, only when asked for.
    """
    if config.timestep_sampling == "uniform":
        return torch.randint(0, num_train_timesteps, (count,), generator=generator)
    logits = torch.randn(count, generator=generator, dtype=torch.float64) * config.timestep_std + config.timestep_mean
    steps = torch.floor(torch.sigmoid(logits) * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)
    if config.timestep_uniform_fraction > 0:
        uniform = torch.randint(0, num_train_timesteps, (count,), generator=generator)
        coin = torch.rand(count, generator=generator, dtype=torch.float64) < config.timestep_uniform_fraction
        steps = torch.where(coin, uniform, steps)
    return steps


# ---------------------------------------------------------------------------------------------------- distributed
@dataclass
class Distributed:
    """This process' place in the run; `world_size == 1` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed() -> Distributed:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK): nccl on CUDA, gloo on the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        created = True
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, created_group=created)


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` (per-epoch shuffle from `seed + epoch`, rank-strided) that can start mid-epoch.

    `start` skips the first `start` indices of this rank's epoch order, so a resumed run sees exactly the samples
    the interrupted one would have seen next. Without a process group pass `num_replicas=1, rank=0`.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


# ---------------------------------------------------------------------------------------------------- data
def data_config(config: TrainConfig, stage: Stage) -> Any:
    """`config.data` mapped strictly onto the dataset config of its `kind`, in the stage's data mode.

    `kind: video` maps the other keys onto `VideoDataConfig` (a `zoetrope world make` folder: `csv_path:
    world/videos.csv`, `video_folder: world/videos`); image stages read still frames of it (`image_mode`).
    `kind: images` maps them onto `ImageDataConfig` (`folder: world/images` with `metadata.jsonl`). The default
    kind is `images` for the vae/image/personalize stages and `video` for the others; `seed` defaults to the
    run's seed.
    """
    from zoetrope.training.data import ImageDataConfig, VideoDataConfig

    values = dict(config.data)
    default_kind = "images" if stage.name in ("vae", "image", "personalize") else "video"
    kind = values.pop("kind", default_kind)
    values.setdefault("seed", config.seed)
    if kind == "video":
        if stage.data_mode == "image":
            values["image_mode"] = True
        elif values.get("image_mode"):
            raise ConfigError(f"data.image_mode=true but stage {stage.name!r} trains on clips; remove data.image_mode")
        return load_config(values, VideoDataConfig, name="training config: data")
    if kind == "images":
        if stage.data_mode == "clip":
            raise ConfigError(f"data.kind=images but stage {stage.name!r} trains on clips; use data.kind: video")
        return load_config(values, ImageDataConfig, name="training config: data")
    raise ConfigError(f"data.kind={kind!r}; expected 'video' (clips index + videos) or 'images' (an image folder)")


def build_dataset(config: TrainConfig, stage: Stage, rank: int = 0) -> Dataset:
    """The dataset `config.data` describes (see `data_config`); `rank` enters every item's seed."""
    from zoetrope.training.data import ImageFolderDataset, VideoDataConfig, VideoDataset

    settings = data_config(config, stage)
    if isinstance(settings, VideoDataConfig):
        return VideoDataset(settings, rank=rank)
    return ImageFolderDataset(settings, rank=rank)


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack `pixel_values` (or the cached `latents`) and list the captions."""
    key = "latents" if "latents" in items[0] else "pixel_values"
    return {key: torch.stack([item[key] for item in items]), "text": [item["text"] for item in items]}


class LatentCache(Dataset):
    """A dataset whose items' pixels are replaced by their latents, encoded on first use and then kept in memory.

    Lazy rather than a pass over the whole dataset up front: a run shorter than an epoch (the world's motion stage)
    pays nothing extra, and each rank encodes only the items its sampler draws. `encode` maps one item's pixels to
    latents `(1, c, f, h, w)`; they are stored without the batch axis.
    """

    def __init__(self, dataset: Dataset, encode: Any) -> None:
        self.dataset = dataset
        self.encode = encode
        self.items: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        cached = self.items.get(index)
        if cached is None:
            item = self.dataset[index]
            cached = {"latents": self.encode(item["pixel_values"])[0].cpu(), "text": item["text"]}
            self.items[index] = cached
        return cached


# ---------------------------------------------------------------------------------------------------- metrics
class MetricsLog:
    """CSV (always) and TensorBoard (when installed) metrics, written by rank 0 only."""

    def __init__(self, folder: Path, resume_step: int | None) -> None:
        self.path = folder / METRICS_FILE
        kept: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            with self.path.open(newline="") as handle:
                kept = [row for row in csv.DictReader(handle) if int(row["step"]) <= resume_step]
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(kept)
        self.writer: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder / "tensorboard"))
        except ImportError:
            logger.info("tensorboard is not installed: metrics go to %s only (pip install tensorboard)", self.path)

    def write(self, values: Mapping[str, float]) -> None:
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=METRIC_COLUMNS).writerow({key: values.get(key, "") for key in METRIC_COLUMNS})
        if self.writer is not None:
            for key, value in values.items():
                if key != "step":
                    self.writer.add_scalar(f"train/{key}", value, int(values["step"]))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------------------------------------------- the trainer
class Trainer:
    """One training run of one stage. `Trainer(config).fit()` trains; `train(config)` does the same.

    Construction builds everything (process group membership, model, optimizer, data) and, with `resume`, loads the
    latest checkpoint under `config.output_dir`. `dataset` replaces the one `config.data` describes (tests,
    notebooks): any map-style dataset of `{"pixel_values", "text"}` items.
    """

    def __init__(self, config: TrainConfig, resume: bool = False, dataset: Dataset | None = None) -> None:
        self.config = config
        self.stage = get_stage(config.stage)
        self.dist = init_distributed()
        self.device = torch.device(config.device or (f"cuda:{self.dist.local_rank}" if torch.cuda.is_available() else "cpu"))
        self.output = config.output_path
        self.step = 0
        self.epoch = 0
        self.position = 0

        # 1. Seeds: the model is built identically on every rank; the loop's randomness differs per rank.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model: StageModel = assemble(config, self.stage, torch.Generator().manual_seed(config.seed))
        rank_seed = config.seed + self.dist.rank
        torch.manual_seed(rank_seed)
        np.random.seed(rank_seed % 2**32)
        random.seed(rank_seed)
        self.generator = torch.Generator().manual_seed(rank_seed)

        # 2. The module that trains, on the device, with only the stage's parameters requiring grad.
        self.module = build_module(self.model, self.stage, anchored=config.vae_anchor_weight > 0)
        for part in self.model.modules().values():
            part.to(self.device)
        self.module.to(self.device)
        if config.gradient_checkpointing:
            self._enable_gradient_checkpointing()
        self.trainable = trained_parameters(self.module)
        if not self.trainable:
            raise ConfigError(f"stage {self.stage.name!r}: nothing to train (no parameter requires grad)")
        self.module.train()  # frozen parts too: diffusers' gradient checkpointing acts only in training mode
        if config.compile:  # in place (nn.Module.compile): parameter names, checkpoints and exports are unchanged
            self.module.compile()
        self.network: nn.Module = self.module
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = DistributedDataParallel(self.module, device_ids=device_ids, broadcast_buffers=False)
        count = sum(parameter.numel() for parameter in self.trainable.values())
        logger.info("stage %s: training %d tensors, %.2fM parameters", self.stage.name, len(self.trainable), count / 1e6)

        # 3. Optimizer, LR schedule, mixed precision (AdamW as the official recipe: Loshchilov & Hutter 2019).
        self.optimizer = torch.optim.AdamW(
            list(self.trainable.values()), lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.weight_decay, eps=config.adam_eps,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, config.steps, config.warmup_steps, config.lr_schedule)
        )
        self.ema = self._make_ema()
        self.autocast_dtype = self._autocast_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        if self.stage.objective == "epsilon":
            self.noise_scheduler = make_noise_scheduler(self.stage.noise_schedule(self.model.image_model.parameterization))

        # 4. Data: a rank-strided sampler that can start mid-epoch, and a loader that never touches the global RNG.
        self.dataset = dataset if dataset is not None else build_dataset(config, self.stage, self.dist.rank)
        self.sampler = ResumableSampler(self.dataset, self.dist.world_size, self.dist.rank, config.seed)
        if self.sampler.num_samples < config.batch_size:
            raise ConfigError(
                f"batch_size={config.batch_size} but each of the {self.dist.world_size} process(es) gets only "
                f"{self.sampler.num_samples} of the {len(self.dataset)} samples; lower batch_size or add data"
            )

        if config.cache_latents:
            self._check_cacheable()
            self.dataset = LatentCache(self.dataset, self._latents)

        # 5. Resume.
        resumed = self._resume() if resume else None
        if self.dist.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            save_config(config, self.output / "config.yaml")
            self.metrics = MetricsLog(self.output, resumed)
        self.dist.barrier()

    # ------------------------------------------------------------------ setup helpers
    def _make_ema(self) -> Any:
        """diffusers' EMAModel over the trained parameters (`ema_decay`), or None when off.

        Imported here: `diffusers.training_utils` costs seconds to import, and most runs do not average.
        """
        if not self.config.ema_decay:
            return None
        from diffusers.training_utils import EMAModel

        return EMAModel(list(self.trainable.values()), decay=self.config.ema_decay, foreach=True)

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """The trained parameters hold the moving average inside the block (no-op without `ema_decay`)."""
        if self.ema is None:
            yield
            return
        parameters = list(self.trainable.values())
        self.ema.store(parameters)
        self.ema.copy_to(parameters)
        try:
            yield
        finally:
            self.ema.restore(parameters)

    def _check_cacheable(self) -> None:
        """`cache_latents` needs latents that are a fixed function of the item (see `TrainConfig`)."""
        name = self.stage.name
        if self.stage.objective != "epsilon":
            raise ConfigError(f"cache_latents=true but stage {name!r} trains the VAE itself; remove cache_latents")
        if self.stage.conditions is not None:
            raise ConfigError(f"cache_latents=true but stage {name!r} also reads the pixels (its conditions); remove cache_latents")
        if getattr(getattr(self.dataset, "config", None), "image_mode", False):
            raise ConfigError(
                f"cache_latents=true would freeze the random frame stage {name!r} takes from each clip; remove "
                "cache_latents, or train on an image folder (data.kind: images)"
            )

    def _autocast_dtype(self) -> torch.dtype | None:
        precision = self.config.mixed_precision
        if precision == "no":
            return None
        if self.device.type == "cuda":
            return torch.float16 if precision == "fp16" else torch.bfloat16
        if precision == "bf16":
            return torch.bfloat16
        logger.info("mixed_precision=fp16 needs CUDA; training on %s in float32 (bf16 works on the CPU)", self.device)
        return None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _enable_gradient_checkpointing(self) -> None:
        """Recompute activations in backward instead of storing them.

        With a video UNet only the motion modules are checkpointed (the VideoUNet hook): diffusers' own block
        checkpointing would recompute the image UNet's blocks in backward, outside the VideoUNet call whose frame
        context the motion hooks read, so the recomputation would differ from the forward. Image stages use
        diffusers' block checkpointing.
        """
        if self.model.video_unet is not None:
            self.model.video_unet.gradient_checkpointing = True
        else:
            for name in ("unet", "vae"):
                part = getattr(self.model.image_model, name)
                if part is not None and hasattr(part, "enable_gradient_checkpointing"):
                    part.enable_gradient_checkpointing()
        encoder = self.model.image_model.text_encoder
        if self.model.train_text_encoder and encoder is not None:
            encoder.gradient_checkpointing_enable()

    # ------------------------------------------------------------------ one micro-batch
    def _latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] `(f, c, h, w)` or `(c, h, w)` of one sample -> scaled VAE latents `(1, c, f, h, w)`."""
        from zoetrope.pipelines.components import encode_frames

        frames = rearrange(pixels, "f c h w -> 1 c f h w") if pixels.ndim == 4 else rearrange(pixels, "c h w -> 1 c 1 h w")
        frames = (frames.to(self.device, torch.float32) + 1) / 2
        with torch.no_grad(), self.autocast():
            latents = encode_frames(
                self.model.image_model.vae, frames, self.config.vae_chunk_size, self.generator, self.config.latent_sample
            )
        return latents.float().contiguous()  # encode_frames returns a permuted view; cached latents are contiguous

    def diffusion_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Latents, noise, timesteps and token ids of a batch; random draws per sample, in order (see module doc).

        Per sample: VAE posterior sample, timestep ~ U{0..T-1}, noise ~ N(0, I), caption dropout, then the stage's
        extra inputs (`Stage.conditions`, e.g. SparseCtrl keyframes), returned under "conditions".
        """
        pixels, texts = batch.get("pixel_values"), list(batch["text"])
        latents, noise, timesteps, captions = [], [], [], []
        conditions: dict[str, list[torch.Tensor]] = {}
        steps = self.noise_scheduler.config.num_train_timesteps
        cached = batch.get("latents")
        for index in range(len(texts)):
            sample = cached[index : index + 1].to(self.device) if cached is not None else self._latents(pixels[index])
            latents.append(sample)
            timesteps.append(sample_timesteps(self.config, steps, 1, self.generator))
            noise.append(torch.randn(sample.shape, generator=self.generator).to(self.device))
            caption = [texts[index]]
            if self.config.caption_phrase_dropout > 0:
                caption = drop_phrases(
                    caption, self.config.caption_phrase_dropout, str(self.config.caption_phrase_pattern), self.generator
                )
            captions += drop_captions(caption, self.config.caption_dropout, self.generator)
            if self.stage.conditions is not None:
                extra = self.stage.conditions(self.model, self.config, pixels[index], sample, self.generator)
                for name, value in extra.items():
                    conditions.setdefault(name, []).append(value)
        latents_all, noise_all = torch.cat(latents), torch.cat(noise)
        if self.stage.data_mode == "image":
            latents_all, noise_all = latents_all[:, :, 0], noise_all[:, :, 0]
        ids = self._token_ids(captions)
        return {
            "latents": latents_all, "noise": noise_all, "timesteps": torch.cat(timesteps).to(self.device),
            "input_ids": ids.to(self.device), "captions": captions,
            "conditions": {name: torch.cat(values).to(self.device) for name, values in conditions.items()},
        }

    def _negatives(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Indices of the samples that get a negative caption, and its token ids (`config.contrast_words`)."""
        found = [
            (index, negative_caption(text, self.config.contrast_words, negative_key(self.step, index, text)))
            for index, text in enumerate(captions)
        ]
        found = [(index, text) for index, text in found if text is not None]
        if not found:
            return None
        ids = self._token_ids([text for _, text in found])
        return torch.tensor([index for index, _ in found], device=self.device), ids.to(self.device)

    def _token_ids(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids of `texts` for the image model's text encoder (its full context, as SD1.5 trains)."""
        encoder = self.model.image_model.text_encoder
        return tokenize(self.model.image_model.tokenizer, texts, int(encoder.config.max_position_embeddings))

    def micro_loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The stage's loss on one micro-batch (float32 scalar, graph attached)."""
        if self.stage.objective == "reconstruction":
            pixels = batch["pixel_values"]
            if pixels.ndim == 5:
                pixels = rearrange(pixels, "b f c h w -> (b f) c h w")
            pixels = pixels.to(self.device, torch.float32)
            latent_channels = self.model.image_model.vae.config.latent_channels
            factor = 2 ** (len(self.model.image_model.vae.config.block_out_channels) - 1)
            shape = (pixels.shape[0], latent_channels, pixels.shape[-2] // factor, pixels.shape[-1] // factor)
            eps = torch.randn(shape, generator=self.generator).to(self.device)
            with self.autocast():
                reconstruction, kl, anchor = self.network(pixels, eps)
            # LDM's autoencoder objective (Rombach et al. 2022, appendix G) without the perceptual/GAN terms.
            pixel_loss = F.l1_loss if self.config.reconstruction_loss == "l1" else F.mse_loss
            loss = pixel_loss(reconstruction.float(), pixels) + self.config.kl_weight * kl.float().mean()
            if self.config.gradient_loss_weight:
                loss = loss + self.config.gradient_loss_weight * gradient_difference_loss(reconstruction.float(), pixels)
            if anchor is not None:
                loss = loss + self.config.vae_anchor_weight * anchor.float().mean()
            return loss
        inputs = self.diffusion_inputs(batch)
        noisy = self.noise_scheduler.add_noise(inputs["latents"], inputs["noise"], inputs["timesteps"])
        timesteps, ids, conditions = inputs["timesteps"], inputs["input_ids"], inputs["conditions"]
        negatives = self._negatives(inputs["captions"]) if self.config.contrast_weight > 0 else None
        if negatives is not None:  # one forward pass: the negatives ride along as extra samples (DDP-safe)
            index, negative_ids = negatives
            noisy, timesteps = torch.cat([noisy, noisy[index]]), torch.cat([timesteps, timesteps[index]])
            ids = torch.cat([ids, negative_ids])
            conditions = {name: torch.cat([value, value[index]]) for name, value in conditions.items()}
        with self.autocast():
            prediction = self.network(noisy, timesteps, ids, **conditions).float()
        count = inputs["latents"].shape[0]
        prediction, negative_prediction = prediction[:count], prediction[count:]
        target = inputs["noise"]
        velocity = self.noise_scheduler.config.prediction_type == "v_prediction"
        if velocity:  # v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho 2022)
            target = self.noise_scheduler.get_velocity(inputs["latents"], inputs["noise"], inputs["timesteps"])
        target = target.float()
        weights = loss_weights(self.config, self.noise_scheduler.alphas_cumprod, inputs["timesteps"], velocity)
        per_sample = F.mse_loss(prediction, target, reduction="none").flatten(1).mean(dim=1)
        loss = per_sample.mean() if weights is None else (per_sample * weights).mean()
        if negatives is not None:
            negative_error = F.mse_loss(negative_prediction, target[index], reduction="none").flatten(1).mean(dim=1)
            hinge = contrast_loss(per_sample[index], negative_error, self.config.contrast_temperature)
            if weights is not None:  # the same timestep weighting as the denoising loss (see contrast module)
                hinge = hinge * weights[index]
            loss = loss + self.config.contrast_weight * hinge.sum() / count
        return loss

    def accumulate(self, micro_batches: Sequence[Mapping[str, Any]]) -> float:
        """Forward/backward over the micro-batches of one optimizer step; gradients end up as for one big batch.

        Each loss is divided by the number of micro-batches (equal sizes make this the mean over the whole batch);
        under DDP all but the last backward skip the gradient all-reduce. Returns the mean loss.
        """
        count = len(micro_batches)
        total = 0.0
        for index, batch in enumerate(micro_batches):
            last = index == count - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.network.no_sync()
            with sync:
                loss = self.micro_loss(batch)
                self.scaler.scale(loss / count).backward()
            total += float(loss.detach()) / count
        return total

    def optimizer_step(self) -> float:
        """Unscale, clip the gradient norm (official 1.0), step AdamW and the LR schedule; returns the grad norm."""
        self.scaler.unscale_(self.optimizer)
        parameters = list(self.trainable.values())
        if self.config.grad_clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(parameters, self.config.grad_clip))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None])))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # ------------------------------------------------------------------ data stream
    def micro_batches(self) -> Iterator[dict[str, Any]]:
        """Endless micro-batches in sampler order; `self.epoch`/`self.position` always describe what was consumed."""
        while True:
            self.sampler.set_epoch(self.epoch)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            self.sampler.start = self.position
            loader = DataLoader(
                self.dataset, batch_size=self.config.batch_size, sampler=self.sampler, drop_last=True,
                num_workers=self.config.num_workers, collate_fn=collate, generator=torch.Generator().manual_seed(0),
                pin_memory=self.device.type == "cuda", persistent_workers=False,
            )
            for batch in loader:
                self.position += self.config.batch_size
                yield batch
            self.epoch += 1
            self.position = 0

    # ------------------------------------------------------------------ the loop
    def fit(self, until: int | None = None) -> Path | None:
        """Train to `config.steps` (or stop after step `until`, writing a checkpoint to resume from).

        Returns the final export path on rank 0 (None on other ranks, and when stopped early).
        """
        config = self.config
        stop = config.steps if until is None else min(until, config.steps)
        progress = tqdm(total=config.steps, initial=self.step, desc=self.stage.name, disable=not self.dist.is_main, dynamic_ncols=True)
        stream = self.micro_batches()
        window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        while self.step < stop:
            loss = self.accumulate([next(stream) for _ in range(config.grad_accumulation)])
            grad_norm = self.optimizer_step()
            if self.ema is not None:
                self.ema.step(self.trainable.values())
            self.step += 1
            window_loss, window_steps = window_loss + loss, window_steps + 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}")
            if self.step % config.log_every == 0 or self.step == stop:
                elapsed = time.perf_counter() - window_start
                self._log(window_loss / window_steps, grad_norm, elapsed / window_steps)
                window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
            if config.validate_every and self.step % config.validate_every == 0:
                self.validate()
            if config.checkpoint_every and self.step % config.checkpoint_every == 0 and self.step != stop:
                self.checkpoint()
        progress.close()
        self.checkpoint()
        final = None
        if self.step >= config.steps:
            if config.calibrate_scaling_factor:
                with self.averaged():  # the latents of the VAE that is exported
                    self.calibrate_scaling_factor()
            final = self.export(self.output / self.stage.export_name(config))
        self.dist.barrier()
        if self.dist.is_main:
            self.metrics.close()
        return final

    def _log(self, loss: float, grad_norm: float, seconds_per_step: float) -> None:
        if self.dist.enabled:
            value = torch.tensor([loss], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(value)
            loss = float(value) / self.dist.world_size
        if not self.dist.is_main:
            return
        samples = self.config.batch_size * self.config.grad_accumulation * self.dist.world_size
        values = {
            "step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
            "seconds_per_step": seconds_per_step, "samples_per_second": samples / max(seconds_per_step, 1e-9),
        }
        self.metrics.write(values)
        logger.info("step %d: loss %.5f, lr %.3g, grad norm %.3g", self.step, loss, values["lr"], grad_norm)

    def calibrate_scaling_factor(self, max_samples: int = 512) -> float:
        """Set the VAE's `scaling_factor` to 1 / std of its latent means over up to `max_samples` training items.

        Every rank measures the same items (the first ones of the dataset), so all ranks agree without a collective.
        """
        vae = self.model.image_model.vae
        count = min(len(self.dataset), max_samples)
        loader = DataLoader(
            Subset(self.dataset, range(count)), batch_size=self.config.batch_size, collate_fn=collate
        )
        means = []
        with torch.no_grad():
            for batch in loader:
                pixels = batch["pixel_values"].to(self.device, torch.float32)
                pixels = pixels.flatten(0, 1) if pixels.ndim == 5 else pixels
                means.append(vae.encode(pixels).latent_dist.mean.float().cpu())
        std = float(torch.cat(means).std())
        if not math.isfinite(std) or std <= 0:
            raise ConfigError(f"calibrate_scaling_factor: latent std {std} on {count} samples; the VAE is degenerate")
        vae.register_to_config(scaling_factor=1.0 / std)
        logger.info("VAE latent std %.4f on %d samples: scaling_factor = %.4f", std, count, 1.0 / std)
        return 1.0 / std

    # ------------------------------------------------------------------ export, checkpoint, resume
    def _write_export(self, path: Path) -> Path:
        """The stage's user-format file of the trained parameters (their moving average with `ema_decay`)."""
        with self.averaged():
            return self.stage.export(self.model, path, export_metadata(self.config, self.stage, self.step))

    def export(self, path: Path) -> Path | None:
        """Rank 0 writes the trained parameters in the user format (others wait)."""
        written = self._write_export(path) if self.dist.is_main else None
        self.dist.barrier()
        return written

    def training_state(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        """What `--resume` needs beyond the export: the raw trained weights (the export may be their average),
        optimizer, schedules, data position and every rank's RNG."""
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "stage": self.stage.name,
            "world_size": self.dist.world_size,
            "trainable": {name: parameter.detach().cpu().clone() for name, parameter in self.trainable.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_states,
        }
        if self.ema is not None:
            ema = self.ema.state_dict()
            state["ema"] = {**ema, "shadow_params": [tensor.detach().cpu().clone() for tensor in ema["shadow_params"]]}
        return state

    def checkpoint(self) -> None:
        """Atomic checkpoint by rank 0 (export + training state with every rank's RNG), between two barriers."""
        local = capture_rng(self.generator)
        if self.dist.enabled:
            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, local)
        else:
            gathered = [local]
        self.dist.barrier()
        if self.dist.is_main:
            write_checkpoint(
                self.output, self.step,
                lambda folder: self._write_export(folder / self.stage.export_name(self.config)),
                self.training_state(gathered), keep=self.config.keep_checkpoints,
            )
        self.dist.barrier()

    def _resume(self) -> int | None:
        folder = latest_checkpoint(self.output)
        if folder is None:
            logger.warning("--resume: no checkpoint under %s; starting from step 0", self.output)
            return None
        state = load_training_state(folder / "training_state.pt")
        if state.get("stage") != self.stage.name:
            raise CheckpointError(f"{folder}: a {state.get('stage')!r} checkpoint, but the config trains {self.stage.name!r}")
        saved = state["trainable"]
        if set(saved) != set(self.trainable) or any(saved[k].shape != self.trainable[k].shape for k in saved):
            raise CheckpointError(
                f"{folder}: the checkpoint's trained parameters do not match this config's (different model or LoRA "
                "rank?); resume with the config the run started with"
            )
        with torch.no_grad():
            for name, parameter in self.trainable.items():
                parameter.copy_(saved[name].to(parameter))
        self._resume_ema(folder, state.get("ema"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.position = int(state["step"]), int(state["epoch"]), int(state["position"])
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            restore_rng(rng[self.dist.rank], self.generator)
        else:
            logger.warning(
                "%s was written by %d processes, this run has %d: RNG streams are reseeded (not an exact continuation)",
                folder, len(rng), self.dist.world_size,
            )
            self.generator.manual_seed(self.config.seed + self.dist.rank + 1_000_003 * self.step)
        logger.info("resumed from %s at step %d (epoch %d, sample %d)", folder, self.step, self.epoch, self.position)
        return self.step

    def _resume_ema(self, folder: Path, saved: Mapping[str, Any] | None) -> None:
        """Restore the moving average; a checkpoint without one cannot continue an averaged run exactly."""
        if self.ema is None:
            if saved is not None:
                logger.warning("%s holds a moving average (ema_decay) and this config has none: it is dropped", folder)
            return
        if saved is None:
            raise CheckpointError(
                f"{folder}: written without ema_decay, so there is no moving average to continue; resume with the "
                "config the run started with, or start a new run from this checkpoint's export with ema_decay set"
            )
        shadow = saved["shadow_params"]
        if len(shadow) != len(self.trainable) or any(
            tensor.shape != parameter.shape for tensor, parameter in zip(shadow, self.trainable.values())
        ):
            raise CheckpointError(f"{folder}: the moving average does not match this config's trained parameters")
        self.ema.load_state_dict(dict(saved))
        self.ema.shadow_params = [
            tensor.to(parameter) for tensor, parameter in zip(self.ema.shadow_params, self.trainable.values())
        ]

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> list[Path]:
        """Rank 0 samples the validation prompts and writes GIFs to `samples/`; the others wait."""
        written: list[Path] = []
        if self.dist.is_main and self.config.validation_prompts and self.stage.objective == "epsilon":
            from zoetrope.models.video_unet import VideoUNet
            from zoetrope.pipelines.text_to_video import VideoPipeline, generate, save

            video_unet = self.model.video_unet or VideoUNet(self.model.image_model.unet)
            frames = self.config.validation_frames if self.model.video_unet is not None else 1
            schedule = self.stage.noise_schedule(self.model.image_model.parameterization)
            pipeline = VideoPipeline(self.model.image_model, video_unet, schedule)
            size = self.config.validation_size
            self.module.eval()
            try:
                with self.autocast(), self.averaged():
                    result = generate(
                        pipeline, list(self.config.validation_prompts), num_frames=frames, width=size, height=size,
                        steps=self.config.validation_steps, guidance_scale=self.config.validation_guidance,
                        seed=self.config.validation_seed, progress=False,
                    )
            finally:
                self.module.train()
            written = save(result, self.output / "samples" / f"step-{self.step:07d}.gif", fps=8)
            logger.info("validation samples: %s", ", ".join(str(path) for path in written))
        self.dist.barrier()
        return written

    def close(self) -> None:
        if self.dist.created_group and dist.is_initialized():
            dist.destroy_process_group()


def train(config: TrainConfig, resume: bool = False, dataset: Dataset | None = None) -> Path | None:
    """Run one training stage to the end; returns the export path on rank 0."""
    trainer = Trainer(config, resume=resume, dataset=dataset)
    try:
        return trainer.fit()
    finally:
        trainer.close()


def main_train(config_path: str | os.PathLike, resume: bool = False, overrides: Sequence[str] = ()) -> Path | None:
    """Entry of `zoetrope train CONFIG.yaml [--resume] [--set key=value ...]` (also under torchrun)."""
    return train(load_train_config(config_path, overrides), resume=resume)
