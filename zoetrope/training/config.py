"""The training config: one dataclass for every stage; a YAML file maps onto it strictly (`zoetrope.config`).

Defaults follow the official AnimateDiff motion-module recipe (`configs/training/v1/training.yaml`; see
`/work/shared/reference/animatediff-official.md` §6): AdamW(0.9, 0.999, wd 1e-2, eps 1e-8), lr 1e-4, batch 4 per
GPU, grad clip 1.0, constant LR without warmup, caption dropout 0.1. Unlike the official trainer,
`grad_accumulation` is real (the official one accepts the flag and ignores it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

from zoetrope.config import load_config
from zoetrope.errors import ConfigError

StageName = Literal["vae", "image", "personalize", "domain-adapter", "motion", "motion-lora", "sparsectrl"]
MixedPrecision = Literal["no", "fp16", "bf16"]


@dataclass
class ArchitectureConfig:
    """Constructor arguments of freshly initialised parts (training the base image model from scratch).

    `unet` and `vae` are diffusers `UNet2DConditionModel` / `AutoencoderKL` keyword arguments, `text_encoder` is a
    transformers `CLIPTextConfig`. A part left empty is not built here (it comes from `model.image_model` or
    `model.vae`).

    `unet: {addition_embed_type: text}` also pools the caption (attention pooling, as DeepFloyd IF) into the
    timestep embedding, so every ResNet block sees it, not only the cross-attention layers: on the shapes world
    it drew in 3,000 steps the shapes its control drew in 6,000, and no more after that (docs/world-training.md,
    thirty-first session). Such a UNet is no longer SD1.5's layout; its single-file export names the extra
    weights `encoder_pooling.*` as IF does, which zoetrope's loaders read back (other SD tools do not know them).

    `vae_initial_logvar` starts a scratch VAE's posterior log-variance there (the bias of the log-variance half of
    `quant_conv`) instead of near 0, so the decoder learns on near-deterministic latents from step 0. It does not
    keep them there: Adam rescales even SD's tiny KL gradient (weight 1e-6) to a learning-rate-sized step, and on the
    shapes world the std drifted from 0.03 back up to 0.24-0.70 in 800 steps. A briefly trained VAE therefore also
    wants `latent_sample: false` in the diffusion stages (docs/world-training.md).
    """

    unet: dict[str, Any] = field(default_factory=dict)
    vae: dict[str, Any] = field(default_factory=dict)
    text_encoder: dict[str, Any] = field(default_factory=dict)
    vae_initial_logvar: Optional[float] = None


@dataclass
class ModelConfig:
    """Where the parts of the model come from.

    image_model: SD1.5 single file (.safetensors/.ckpt) or diffusers folder; the frozen base of the video stages.
    vae: a VAE file written by the `vae` stage; replaces the image model's VAE (or the architecture's).
    architecture: build parts from scratch (the tiny shapes-world base model).
    motion_module: motion module to continue training (`motion`) or to put MotionLoRA on (`motion-lora`).
    motion_preset / motion: a fresh motion module's config, `PRESETS[motion_preset]` with the `motion` fields
        replaced; `block_out_channels` and `layers_per_block` default to the image UNet's.
    domain_adapter / domain_adapter_scale: a frozen domain adapter attached while training motion (AnimateDiff v3).
    """

    image_model: Optional[str] = None
    vae: Optional[str] = None
    architecture: Optional[ArchitectureConfig] = None
    motion_module: Optional[str] = None
    motion_preset: str = "v3"
    motion: dict[str, Any] = field(default_factory=dict)
    domain_adapter: Optional[str] = None
    domain_adapter_scale: float = 1.0
    sparse_control: Optional[str] = None


@dataclass
class SparseCtrlTrainConfig:
    """The SparseCtrl encoder the `sparsectrl` stage trains and the keyframe patterns it sees.

    Shape (`zoetrope.models.sparse_control.SparseControlConfig`): `condition` "rgb" (VAE latents of the keyframes)
    or "sketch" (edge maps of the keyframes, pixels in [0, 1]); `temporal: false` is the paper's frame-by-frame
    ablation (no motion modules in the encoder); `embedding_channels` are the sketch embedding's widths (their count
    sets the downsampling, 2 ** (n - 1), which must equal the VAE's); `motion` replaces fields of the encoder's
    motion-module preset (`SPARSECTRL_MOTION`, e.g. `num_attention_heads`, `norm_num_groups` for a tiny UNet).

    Keyframes per clip (Guo et al. 2023, arXiv:2311.16933 §3.2 trains on random sparsity patterns; the mixture is
    zoetrope's recipe, shared/reference/seed-systems.md §2.3): none with `p_zero_keyframes`, frame 0 only with
    `p_first_keyframe` (image animation), first and last with `p_first_last_keyframes` (interpolation), otherwise
    a uniform random count in 1..`max_keyframes` at uniform random positions.
    """

    condition: Literal["rgb", "sketch"] = "rgb"
    temporal: bool = True
    embedding_channels: list[int] = field(default_factory=lambda: [16, 32, 96, 256])
    motion: dict[str, Any] = field(default_factory=dict)
    max_keyframes: int = 4
    p_zero_keyframes: float = 0.1
    p_first_keyframe: float = 0.5
    p_first_last_keyframes: float = 0.2

    def __post_init__(self) -> None:
        if self.max_keyframes < 1:
            raise ConfigError(f"sparsectrl.max_keyframes={self.max_keyframes}; expected an integer >= 1")
        probabilities = (self.p_zero_keyframes, self.p_first_keyframe, self.p_first_last_keyframes)
        if any(not 0.0 <= value <= 1.0 for value in probabilities) or sum(probabilities) > 1.0 + 1e-9:
            raise ConfigError(
                f"sparsectrl.p_zero_keyframes/p_first_keyframe/p_first_last_keyframes={probabilities}; expected "
                "probabilities in [0, 1] with a sum <= 1 (the rest goes to random keyframes)"
            )
        if not self.embedding_channels or any(int(width) < 1 for width in self.embedding_channels):
            raise ConfigError(f"sparsectrl.embedding_channels={self.embedding_channels}; expected positive widths")


@dataclass
class LoRAConfig:
    """LoRA shape for the LoRA stages. `alpha=None` keeps the official AnimateDiff convention (multiplier 1).

    `target` replaces the stage's default module-name regex. `text_encoder` also trains a LoRA on the text
    encoder (`personalize` only). `spatial_target` (`motion-lora` only) also trains a LoRA on the image UNet's
    modules that this regex selects (convolutions too, as LoCon), exported beside the MotionLoRA as
    `spatial_lora.safetensors` (kohya format; load it with `--lora`). Why: a MotionLoRA acts on each latent pixel's
    frames alone, so a motion whose flow depends on where the pixel is (a zoom) needs image features that say
    where it is, which only the spatial layers can add (docs/world-training.md, twenty-third session).
    `position_code` (`motion-lora` only; not in the official AnimateDiff) trains a zero-initialised map from a
    fixed 2D position code into every motion module's tokens beside the MotionLoRA (`zoetrope.adapters.position`),
    exported as `position_code.safetensors` (load it with `--position-code`): the position given to the module
    directly, where the LoCon above did not learn to add it (twenty-fourth session).
    """

    rank: int = 4
    alpha: Optional[float] = None
    target: Optional[str] = None
    text_encoder: bool = False
    spatial_target: Optional[str] = None
    position_code: bool = False


@dataclass
class TrainConfig:
    """Everything a training run needs; `zoetrope train CONFIG.yaml` reads it from YAML.

    `data` is a mapping with `kind: video` (WebVid-style `videos.csv` + `videos/*.mp4`, e.g. `zoetrope world make`
    output) or `kind: images` (`metadata.jsonl` + pictures); its other keys go strictly to the dataset's config
    (`zoetrope.training.data`). `batch_size` is per process and per micro-batch: one optimizer step sees
    `batch_size * grad_accumulation * world_size` samples.

    `latent_sample`: diffusion stages train on a draw from the VAE posterior (LDM; right for SD's VAE, whose
    posterior std is tiny) or, when false, on its mean (for a VAE trained briefly, whose posterior noise is as wide
    as the latents themselves). `calibrate_scaling_factor` (`vae` stage): before export, set the VAE's
    `scaling_factor` to 1 / std of its latent means on the training data, so diffusion sees unit-variance latents
    (LDM, Rombach et al. 2022, §4.3.2: how SD's 0.18215 was found).

    `cache_latents` (diffusion stages): encode each training item with the frozen VAE the first time it is drawn
    and keep its latents in memory (kohya's `--cache_latents`): every later epoch skips decoding and encoding (~7 %
    of the shapes world's image step, measured; more where the VAE is large next to the UNet). Only exact when an item's pixels are the same every epoch, so it needs
    `latent_sample: false`, `data.random_flip: false`, `num_workers: 0`, and no random frame choice (image mode of
    a video dataset); clips longer than the sampled span keep their first random start. In memory: fits the shapes
    world (2,000 clips: 130 MB), not WebVid.

    `reconstruction_loss` (`vae` stage): the pixel term of the autoencoder loss. LDM's autoencoders train with L1
    (plus perceptual and GAN terms, which need pretrained networks); MSE is the default for backward compatibility.
    (On the shapes world L1 was much worse: it treats the small object as an outlier; docs/world-training.md.)
    `gradient_loss_weight` adds the gradient-difference loss of Mathieu et al. 2016 (mean |(|dx y| - |dx x|)| over
    both axes), which they made against the blur of MSE-trained video predictors: it rewards edges in the right
    place, where a small object's shape lives, and is blind to flat regions.

    `vae_train` (`vae` stage): `all` trains the whole autoencoder; `decoder` freezes the encoder (and its
    `quant_conv`) and fine-tunes only the decoder, the way Stability's sd-vae-ft-mse was made: the latents every
    image model, motion module and LoRA were trained on stay exactly what they were, so the fine-tuned VAE drops in
    (`--vae`) without retraining anything, while the decoder learns to draw better what the encoder tells apart (on
    the shapes world, 800 steps: colours read back 83 -> 99.7 %, shapes 80 -> 91 %); what the encoder merges (there:
    the pastel style's pale colours) no decoder can recover (docs/world-training.md, thirteenth session). It rules
    out `calibrate_scaling_factor`, which would rescale that latent space.

    `vae_anchor_weight` (`vae` stage, whole autoencoder): add that weight times the mean squared distance between
    the encoder's posterior means and those of the encoder the run started from (scaled, unit-variance latent
    units). Why: a decoder-only fine-tune cannot separate what the encoder merges (the pastel style's pale colours),
    and a free encoder fine-tune moves every latent, so every model above the VAE would need retraining. Anchored,
    the pictures the old encoder already reconstructs have no reason to move and stay put, while the ones it
    reconstructs badly (a new domain in the data) pay the anchor to move where the decoder can tell them apart:
    the models trained on the old latents still fit, and a model fine-tuned afterwards (a personalisation) can use
    the new region. 0 = off.

    `caption_phrase_dropout` / `caption_phrase_pattern`: with that probability per sample (drawn before
    `caption_dropout`), every match of the regular expression is cut from the caption. Why: a phrase present in
    every training caption becomes part of what the model expects, and a prompt without it falls off the training
    distribution. The shapes world's captions always end in "on a <colour> background", and the README's own
    command ("a red circle moving right") does not; the module then read the direction from tokens that the
    missing phrase changes. Dropping such a phrase for part of the samples teaches both forms (the way captions of
    real datasets vary in detail). Off by default; it draws nothing from the run's generator when off, so older
    runs resume exactly.

    `contrast_words` / `contrast_weight` / `contrast_temperature` (diffusion stages): the caption contrast of
    `zoetrope.training.contrast`. Each sample whose caption holds a word of one of the `contrast_words` groups (e.g.
    `[[circle, square, triangle, star]]`) is also denoised under a caption with that word swapped for another of its
    group, and `contrast_weight` times a smooth hinge on the gap between the two errors (in units of
    `contrast_temperature` times the sample's own error) is added to the loss. Why: the squared error barely feels
    a word that changes few pixels (a small object's outline), so the model learns to ignore it; the contrast makes
    the right caption fit better than the wrong one. 0 = off; it draws nothing from the run's generator, so a run
    with it sees the same batches and noise as the run without it.

    `snr_gamma`: Min-SNR-gamma loss weighting (Hang et al. 2023, arXiv 2303.09556; diffusers' `--snr_gamma`, 5 is
    the paper's value): each sample's epsilon loss is weighted by min(SNR(t), gamma) / SNR(t), so the nearly clean
    timesteps, whose gradients fight the coarse-structure timesteps, stop dominating. Unset = plain MSE (SD).

    `timestep_sampling`: how each sample's training timestep is drawn. `uniform` (DDPM, SD, AnimateDiff) or
    `logit_normal` (Esser et al. 2024, SD3, §3.1): t = floor(T * sigmoid(n)), n ~ N(`timestep_mean`,
    `timestep_std`); a positive mean spends more steps at high noise. Why one would: an epsilon loss gives the
    noisiest timesteps, where a clip's layout and direction are decided, weight ~alpha_bar (0.005 at t=900 on
    AnimateDiff's schedule), and sampling there (rather than re-weighting the loss) spends the forward passes where
    that signal is. On the shapes world it is what made a motion module follow a direction word at all
    (docs/world-training.md, tenth session: on a left/right-only world, 29 clips the prompted way vs 11 reversed,
    uniform 20 vs 15); on all eight motions 5,000 such steps left motion accuracy where it was (eleventh session).
    Off in the shipped world configs. `timestep_uniform_fraction` mixes the two
    draws: that share of the samples draws uniformly, the rest logit-normal, so a module trained mostly at high noise
    still sees the mid and low noise levels where it keeps an object coherent from frame to frame.

    `loss_weighting: v` re-weights instead: each sample's epsilon MSE times 1 / alpha_bar_t = (SNR + 1) / SNR,
    which is the v-prediction loss (Salimans & Ho 2022) of the same epsilon-predicting model (kohya's
    `--v_pred_like_loss` at full strength); it cannot be combined with `snr_gamma`, which pulls the other way.

    `ema_decay`: keep an exponential moving average of the trained parameters (Polyak averaging; DDPM, Ho et al.
    2020, sampled from an EMA at 0.9999; diffusers' `--use_ema`, whose `EMAModel` this uses) and export *it*, not
    the last weights: a diffusion model's raw weights wander with the noise of each step's few samples, and the
    average draws cleaner pictures from the same run. The average starts at the weights the run starts from and its
    decay warms up as min(`ema_decay`, (1 + s) / (10 + s)) at step s, so short runs want 0.99-0.999 (about the last
    100-1,000 steps) rather than DDPM's 0.9999. Checkpoints keep both: the export (and validation) use the average,
    the training state keeps the raw weights and the average, so `--resume` is exact. 0 = off.

    `compile`: run the training forward and backward through `torch.compile` (TorchInductor), in place, so the
    state dict, checkpoints and exports keep their keys; numerics differ from eager by float rounding only. Why: on
    a GPU Inductor fuses a UNet's elementwise work (GroupNorm, SiLU, attention reshapes) and is the usual first
    speed-up (not measured here: no GPU). On this project's 2-core CPU it does *not* pay: the world's image stage
    traced as one graph without breaks trained to the same losses (0.03416 / 0.03420 at step 250) at 0.72-0.94 s
    per step against eager's 0.69-0.77 beside another run, after a one-off compile of ~4 minutes (a bare UNet
    forward + backward: ~10 % faster; bf16 autocast: no faster; thirtieth session). Off by default.

    `prediction_type` / `zero_terminal_snr`: the image UNet's parameterization (`zoetrope.pipelines.components.
    Parameterization`); unset = whatever the image model file says (epsilon, flawed schedule for SD1.5). Only the
    stages that train the whole UNet (`image`, `personalize` with `method: full`) may change it, which is how Lin et
    al. 2024 converted SD 2.1 to v-prediction with zero terminal SNR: fine-tune on the rescaled schedule with the
    v target. The exported checkpoint records it, and every stage built on that checkpoint (domain adapter, motion,
    MotionLoRA, SparseCtrl) trains and samples with it. `zero_terminal_snr: true` implies v-prediction.
    """

    stage: StageName
    output_dir: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: dict[str, Any] = field(default_factory=dict)
    method: Literal["full", "lora"] = "full"
    train_text_encoder: Optional[bool] = None
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    sparsectrl: SparseCtrlTrainConfig = field(default_factory=SparseCtrlTrainConfig)

    steps: int = 100
    batch_size: int = 4
    grad_accumulation: int = 1
    lr: float = 1e-4
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    mixed_precision: MixedPrecision = "no"
    gradient_checkpointing: bool = False
    compile: bool = False
    caption_dropout: float = 0.1
    caption_phrase_dropout: float = 0.0
    caption_phrase_pattern: Optional[str] = None
    kl_weight: float = 1e-6
    reconstruction_loss: Literal["l1", "mse"] = "mse"
    gradient_loss_weight: float = 0.0
    latent_sample: bool = True
    cache_latents: bool = False
    calibrate_scaling_factor: bool = False
    vae_train: Literal["all", "decoder"] = "all"
    vae_anchor_weight: float = 0.0
    contrast_words: list[list[str]] = field(default_factory=list)
    contrast_weight: float = 0.0
    contrast_temperature: float = 0.02
    snr_gamma: Optional[float] = None
    timestep_sampling: Literal["uniform", "logit_normal"] = "uniform"
    timestep_mean: float = 0.0
    timestep_std: float = 1.0
    timestep_uniform_fraction: float = 0.0
    loss_weighting: Literal["epsilon", "v"] = "epsilon"
    prediction_type: Optional[Literal["epsilon", "v_prediction"]] = None
    zero_terminal_snr: Optional[bool] = None
    seed: int = 42
    num_workers: int = 0
    vae_chunk_size: int = 16
    device: Optional[str] = None

    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    validate_every: int = 0
    validation_prompts: list[str] = field(default_factory=list)
    validation_frames: int = 16
    validation_steps: int = 25
    validation_guidance: float = 8.0
    validation_seed: int = 42
    validation_size: Optional[int] = None

    def _check_caption_phrase(self) -> None:
        """`caption_phrase_dropout` needs a pattern that compiles and matches something other than the empty string."""
        if not 0.0 <= self.caption_phrase_dropout <= 1.0:
            raise ConfigError(f"caption_phrase_dropout={self.caption_phrase_dropout}; expected a probability in [0, 1]")
        if self.caption_phrase_dropout > 0 and not self.caption_phrase_pattern:
            raise ConfigError(
                f"caption_phrase_dropout={self.caption_phrase_dropout} needs caption_phrase_pattern, the regular "
                "expression of the phrase to drop (e.g. ' on an? \\w+ background')"
            )
        if self.caption_phrase_pattern is not None:
            try:
                compiled = re.compile(self.caption_phrase_pattern)
            except re.error as error:
                raise ConfigError(
                    f"caption_phrase_pattern={self.caption_phrase_pattern!r} is not a regular expression ({error})"
                ) from None
            if compiled.fullmatch(""):
                raise ConfigError(
                    f"caption_phrase_pattern={self.caption_phrase_pattern!r} matches the empty string; it must match "
                    "the phrase itself (e.g. ' on an? \\w+ background', not '( on an? \\w+ background)?')"
                )

    def _check_contrast(self) -> None:
        """The caption contrast needs a diffusion stage, a weight >= 0 and groups of two or more distinct words."""
        if self.contrast_weight < 0 or self.contrast_temperature <= 0:
            raise ConfigError(
                f"contrast_weight={self.contrast_weight}, contrast_temperature={self.contrast_temperature}; expected a "
                "weight >= 0 (0 = off) and a temperature > 0 (0.02: a margin of ~2 % of the sample's own error)"
            )
        for group in self.contrast_words:
            words = {str(word).lower() for word in group} if isinstance(group, (list, tuple)) else set()
            if len(words) < 2 or not all(isinstance(word, str) and word.strip() for word in group):
                raise ConfigError(
                    f"contrast_words group {group!r}: expected a list of two or more distinct words that can replace "
                    "each other in a caption, e.g. [circle, square, triangle, star]"
                )
        if self.contrast_weight > 0 and not self.contrast_words:
            raise ConfigError("contrast_weight > 0 needs contrast_words: the groups of words to swap, e.g. [[circle, square]]")
        if self.contrast_weight > 0 and self.stage == "vae":
            raise ConfigError("contrast_weight applies to the diffusion stages (captions); the vae stage has none")

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "grad_accumulation", "log_every", "vae_chunk_size", "validation_frames", "validation_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}; expected an integer >= 1")
        for name in ("warmup_steps", "checkpoint_every", "validate_every", "num_workers", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}; expected an integer >= 0 (0 switches it off)")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ConfigError(f"caption_dropout={self.caption_dropout}; expected a probability in [0, 1]")
        self._check_caption_phrase()
        self._check_contrast()
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ConfigError(f"snr_gamma={self.snr_gamma}; expected a positive number (5 is usual) or no value (off)")
        if self.vae_train != "all" and self.stage != "vae":
            raise ConfigError(f"vae_train: {self.vae_train} only applies to the `vae` stage (this is `{self.stage}`); remove it")
        if self.vae_train == "decoder" and self.calibrate_scaling_factor:
            raise ConfigError(
                "vae_train: decoder keeps the latent space the image model was trained on; calibrate_scaling_factor "
                "would rescale it. Remove calibrate_scaling_factor (or train the whole VAE: vae_train: all)"
            )
        if self.vae_anchor_weight < 0:
            raise ConfigError(f"vae_anchor_weight={self.vae_anchor_weight}; expected >= 0 (0 = off)")
        if self.vae_anchor_weight > 0 and (self.stage != "vae" or self.vae_train != "all" or self.calibrate_scaling_factor):
            raise ConfigError(
                "vae_anchor_weight keeps a fine-tuned VAE encoder near the latents it started with; it needs stage: vae "
                "with vae_train: all and no calibrate_scaling_factor (which would rescale those latents)"
            )
        if self.loss_weighting == "v" and self.snr_gamma is not None:
            raise ConfigError("loss_weighting: v and snr_gamma weight the loss in opposite directions; keep one of them")
        if self.prediction_type == "epsilon" and self.zero_terminal_snr:
            raise ConfigError("zero_terminal_snr: true needs prediction_type: v_prediction (epsilon is undefined at zero SNR)")
        if self.loss_weighting == "v" and self.prediction_type == "v_prediction":
            raise ConfigError("loss_weighting: v imitates a v-prediction loss for an epsilon model; a v_prediction model already has it")
        if self.timestep_std <= 0:
            raise ConfigError(f"timestep_std={self.timestep_std}; expected > 0 (the std of the logit-normal timestep draw)")
        if self.timestep_sampling == "uniform" and (self.timestep_mean, self.timestep_std, self.timestep_uniform_fraction) != (0.0, 1.0, 0.0):
            raise ConfigError(
                "timestep_mean/timestep_std/timestep_uniform_fraction shape the logit-normal timestep draw; set "
                "timestep_sampling: logit_normal or remove them"
            )
        if not 0.0 <= self.timestep_uniform_fraction < 1.0:
            raise ConfigError(
                f"timestep_uniform_fraction={self.timestep_uniform_fraction}; expected a share in [0, 1) of the samples "
                "drawn uniformly (1 would be timestep_sampling: uniform)"
            )
        if self.cache_latents:
            if self.latent_sample:
                raise ConfigError("cache_latents=true stores one encoding per item; set latent_sample: false (train on the posterior mean)")
            if self.num_workers:
                raise ConfigError(f"cache_latents=true keeps latents in the training process; set num_workers: 0 (got {self.num_workers})")
            if self.data.get("random_flip", True):
                raise ConfigError("cache_latents=true would freeze each item's first random flip; set data.random_flip: false")
        if self.gradient_loss_weight < 0:
            raise ConfigError(f"gradient_loss_weight={self.gradient_loss_weight}; expected >= 0 (0 = off)")
        if self.lr <= 0 or self.grad_clip < 0:
            raise ConfigError(f"lr={self.lr}, grad_clip={self.grad_clip}; expected lr > 0 and grad_clip >= 0 (0 = off)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(
                f"ema_decay={self.ema_decay}; expected a decay in [0, 1) (0 = off; 0.999 averages about the last "
                "1,000 steps)"
            )
        if self.lora.rank < 1:
            raise ConfigError(f"lora.rank={self.lora.rank}; expected an integer >= 1")
        if self.lora.spatial_target and self.stage != "motion-lora":
            raise ConfigError(
                f"lora.spatial_target trains an image-UNet LoRA beside a MotionLoRA (stage: motion-lora), not in stage "
                f"{self.stage!r}; use the domain-adapter or personalize stage for an image LoRA alone"
            )
        if self.lora.position_code and self.stage != "motion-lora":
            raise ConfigError(
                f"lora.position_code trains beside a MotionLoRA (stage: motion-lora), not in stage {self.stage!r}"
            )

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir)


def load_train_config(
    source: str | os.PathLike | Mapping[str, Any], overrides: Sequence[str] = ()
) -> TrainConfig:
    """Read a training config (YAML/JSON file or mapping) strictly, with `key=value` overrides."""
    return load_config(source, TrainConfig, overrides)
