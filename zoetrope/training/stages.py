"""Declarative training stages (DESIGN principle 5): what trains, on which data, under which noise schedule, and
how the result is written for users. The loop, checkpoints, resume, logging, DDP and validation live once in
`zoetrope.training.engine`.

The AnimateDiff recipe (Guo et al. 2024, "AnimateDiff", §4) trains in three stages on top of a frozen
text-to-image model, each stage adding one small part:

| stage            | trains                                         | data   | betas         | export                         |
|------------------|------------------------------------------------|--------|---------------|--------------------------------|
| `vae`            | the VAE (reconstruction + KL, from scratch)    | image  | -             | VAE safetensors (+config)      |
| `image`          | the image UNet (+ text encoder from scratch)   | image  | scaled_linear | single-file SD (LDM layout)    |
| `personalize`    | the image UNet, fully or as LoRA (DreamBooth)  | image  | scaled_linear | single-file SD / kohya LoRA    |
| `domain-adapter` | LoRA on spatial attn1/attn2 q/k/v/out          | frames | scaled_linear | official adapter naming        |
| `motion`         | the motion modules (image UNet frozen)         | clip   | linear        | official motion-module layout  |
| `motion-lora`    | LoRA on the motion modules' attention q/k/v/out | clip  | linear        | official MotionLoRA naming     |
| `sparsectrl`     | a SparseCtrl encoder (video UNet frozen)       | clip   | linear        | official SparseCtrl layout     |

Motion stages use linear betas 0.00085 -> 0.012 instead of SD's scaled_linear: the AnimateDiff authors changed the
schedule on purpose for motion training (official `configs/training/v1/training.yaml`), image stages keep SD's.
Every diffusion stage minimises the epsilon-prediction MSE of Ho et al. 2020 (DDPM, eq. 14, "L_simple").

`sparsectrl` (Guo et al. 2023, arXiv:2311.16933, §3.2) trains a ControlNet-style condition encoder copied from the
image UNet's encoder, with its own temporal layers, on top of the frozen text-to-video model (image UNet + motion
module, + the domain adapter when given, assembled exactly as for `motion`). Each clip gets a random keyframe
pattern (`zoetrope.training.conditions`); the encoder's residuals are added to the frozen video UNet's skips. It is
the one stage with per-sample inputs besides latents and text, declared by `Stage.conditions`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import torch
from torch import nn

from zoetrope import __version__
from zoetrope.adapters.lora import LoRANetwork, inject_lora
from zoetrope.config import dump_config, load_config
from zoetrope.errors import ConfigError
from zoetrope.models.motion_module import PRESETS, MotionModuleConfig, MotionModules
from zoetrope.models.sparse_control import SPARSECTRL_MOTION, SparseControlConfig, SparseControlEncoder
from zoetrope.models.video_unet import VideoUNet
from zoetrope.pipelines.components import ImageModel, Parameterization
from zoetrope.training.config import ArchitectureConfig, TrainConfig

logger = logging.getLogger(__name__)

DataMode = Literal["image", "clip"]
Objective = Literal["epsilon", "reconstruction"]

#: The image UNet's spatial self- and cross-attention projections (the v3 domain adapter's targets).
SPATIAL_ATTENTION = r"attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$"
#: Transformer linears of the image UNet (a kohya-style image LoRA: attention and feed-forward).
IMAGE_LORA = r"attentions\.\d+\.transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))$"
#: The CLIP text encoder's attention and MLP linears.
TEXT_ENCODER_LORA = r"layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))$"
#: The motion modules' temporal attention projections (MotionLoRA's targets).
MOTION_ATTENTION = r"attentions\.\d+\.(to_q|to_k|to_v|to_out)$"


# ---------------------------------------------------------------------------------------------------- the model
@dataclass
class StageModel:
    """The assembled model of one stage: frozen image model, optional video UNet, and the trained add-ons.

    `networks` holds the LoRA networks this stage trains, by role (`unet`, `text_encoder`, `motion`); `frozen`
    holds attached networks that stay fixed (the domain adapter while training motion); `control` is the
    SparseCtrl encoder of the `sparsectrl` stage.
    """

    image_model: ImageModel
    video_unet: VideoUNet | None = None
    networks: dict[str, LoRANetwork] = field(default_factory=dict)
    frozen: dict[str, LoRANetwork] = field(default_factory=dict)
    train_text_encoder: bool = False
    control: SparseControlEncoder | None = None

    @property
    def motion_modules(self) -> MotionModules | None:
        return None if self.video_unet is None else self.video_unet.motion_modules

    def modules(self) -> dict[str, nn.Module]:
        """Every module whose parameters exist in this model, by role (for freezing and for the invariant test)."""
        parts: dict[str, nn.Module] = {}
        for name in ("text_encoder", "vae", "unet"):
            module = getattr(self.image_model, name)
            if module is not None:
                parts[name] = module
        if self.motion_modules is not None:
            parts["motion_modules"] = self.motion_modules
        for role, network in {**self.networks, **self.frozen}.items():
            parts[f"lora_{role}"] = network
        if self.control is not None:
            parts["sparse_control"] = self.control
        return parts

    def freeze(self) -> None:
        for module in self.modules().values():
            module.requires_grad_(False)


class Denoiser(nn.Module):
    """What the engine runs (and DDP wraps): text encoding + noise prediction, with every trained part a submodule.

    LoRA networks modify their models through hooks and are not submodules of them; registering them here lets DDP
    see (and all-reduce) their parameters. `forward(noisy, timesteps, input_ids)` takes latents `(b, c, f, h, w)`
    for the video UNet or `(b, c, h, w)` for the image UNet.
    """

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, networks: Mapping[str, LoRANetwork]) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.networks = nn.ModuleDict(dict(networks))

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        text = self.text_encoder(input_ids)[0]
        if noisy.ndim == 5:
            return self.unet(noisy, timesteps, text)
        return self.unet(noisy, timesteps, encoder_hidden_states=text, return_dict=False)[0]


class ControlledDenoiser(Denoiser):
    """A `Denoiser` whose video UNet is steered by a SparseCtrl encoder (the `sparsectrl` stage).

    `forward(noisy, timesteps, input_ids, condition, mask)`: the encoder turns the keyframe condition and mask
    (`(b, c, f, H, W)`, `(b, 1, f, H, W)`) into ControlNet residuals, which the frozen video UNet adds to its skip
    features and mid block, as the official pipeline does at inference (reference §5).
    """

    def __init__(
        self,
        unet: nn.Module,
        text_encoder: nn.Module,
        networks: Mapping[str, LoRANetwork],
        control: SparseControlEncoder,
    ) -> None:
        super().__init__(unet, text_encoder, networks)
        self.control = control

    def forward(  # type: ignore[override]
        self, noisy: torch.Tensor, timesteps: torch.Tensor, input_ids: torch.Tensor,
        condition: torch.Tensor, mask: torch.Tensor,
    ) -> torch.Tensor:
        text = self.text_encoder(input_ids)[0]
        down, mid = self.control(noisy, timesteps, text, condition, mask)
        return self.unet(
            noisy, timesteps, text, down_block_additional_residuals=down, mid_block_additional_residual=mid
        )


class Autoencoder(nn.Module):
    """The VAE as trained by the `vae` stage: encode, reparameterised sample, decode.

    `forward(pixels, eps)` returns `(reconstruction, kl, anchor)` with `kl` per sample; `eps` is the standard normal
    draw of the reparameterisation trick (Kingma & Welling 2014, eq. 10), passed in so randomness stays with the
    caller. With `anchored`, a frozen copy of the starting encoder is kept and `anchor` is each sample's mean squared
    distance between the trained and the starting posterior means, in scaled (unit-variance) latent units; else None.
    """

    def __init__(self, vae: nn.Module, anchored: bool = False) -> None:
        super().__init__()
        self.vae = vae
        self.anchor: nn.Module | None = None
        if anchored:  # a frozen copy of the encoding side only (`encode` never touches the decoder)
            self.anchor = copy.deepcopy(vae).requires_grad_(False)
            del self.anchor.decoder
            if getattr(self.anchor, "post_quant_conv", None) is not None:
                del self.anchor.post_quant_conv

    def forward(self, pixels: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.mean + posterior.std * eps.to(posterior.mean)
        reconstruction = self.vae.decode(latents).sample
        anchor = None
        if self.anchor is not None:
            with torch.no_grad():
                start = self.anchor.encode(pixels).latent_dist.mean
            scale = float(self.vae.config.scaling_factor)
            anchor = ((posterior.mean - start) * scale).pow(2).flatten(1).mean(dim=1)
        return reconstruction, posterior.kl(), anchor


# ---------------------------------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class Stage:
    """One training stage, declared as data.

    trains: freezes the assembled model and switches on (or injects, for LoRA) what this stage trains; the trained
        parameters are then exactly those with `requires_grad`.
    export: writes only what was trained, in the format users load, and returns the path.
    conditions: extra per-sample inputs of the trained module, `(model, config, pixels (f, c, h, w) in [-1, 1],
        latents (1, c, f, h, w), generator) -> {name: (1, ...) tensor}`; the engine calls it once per sample, in
        batch order after that sample's other draws, concatenates each name over the batch and passes them to the
        module as keyword arguments. None for stages whose module takes only latents, timesteps and text.
    """

    name: str
    description: str
    data_mode: DataMode
    objective: Objective
    beta_schedule: Literal["linear", "scaled_linear"] | None
    needs_video_unet: bool
    trains: Callable[[StageModel, TrainConfig, torch.Generator], None]
    export: Callable[[StageModel, Path, Mapping[str, object]], Path]
    export_name: Callable[[TrainConfig], str]
    conditions: Callable[
        [StageModel, TrainConfig, torch.Tensor, torch.Tensor, torch.Generator], dict[str, torch.Tensor]
    ] | None = None

    def noise_schedule(self, parameterization: Parameterization | None = None) -> dict[str, Any]:
        """The DDPM noise schedule (diffusers scheduler config) this stage trains and validates with.

        The betas are the stage's; `parameterization` (the image model's: what it predicts, zero terminal SNR or
        not) is applied on top, so a v-prediction base makes every stage above it v-prediction too.
        """
        from zoetrope.pipelines.components import default_scheduler_config

        schedule = default_scheduler_config()
        schedule["beta_schedule"] = self.beta_schedule or "linear"
        return (parameterization or Parameterization()).apply(schedule)


def _lora(config: TrainConfig, model: nn.Module, default_target: str, generator: torch.Generator, alpha: float | None) -> LoRANetwork:
    return inject_lora(model, config.lora.target or default_target, config.lora.rank, alpha, generator=generator)


def _train_vae(model: StageModel, config: TrainConfig, generator: torch.Generator) -> None:
    """The whole autoencoder, or (`vae_train: decoder`) only the decoder side, so the latent space stays put."""
    model.freeze()
    vae = model.image_model.vae
    if config.vae_train == "decoder":
        vae.decoder.requires_grad_(True)
        if getattr(vae, "post_quant_conv", None) is not None:
            vae.post_quant_conv.requires_grad_(True)
    else:
        vae.requires_grad_(True)


def _train_image(model: StageModel, config: TrainConfig, generator: torch.Generator) -> None:
    """Official `image_finetune`: every UNet parameter trains (`trainable_modules: ["."]`)."""
    model.freeze()
    model.image_model.unet.requires_grad_(True)
    if model.train_text_encoder:
        model.image_model.text_encoder.requires_grad_(True)


def _train_personalize(model: StageModel, config: TrainConfig, generator: torch.Generator) -> None:
    """DreamBooth (Ruiz et al. 2023) as a full fine-tune, or a LoRA (Hu et al. 2021) on the UNet's transformers."""
    if config.method == "full":
        _train_image(model, config, generator)
        return
    model.freeze()
    alpha = config.lora.alpha
    model.networks["unet"] = _lora(config, model.image_model.unet, IMAGE_LORA, generator, alpha)
    if config.lora.text_encoder:
        model.networks["text_encoder"] = inject_lora(
            model.image_model.text_encoder, TEXT_ENCODER_LORA, config.lora.rank, alpha, generator=generator
        )


def _train_domain_adapter(model: StageModel, config: TrainConfig, generator: torch.Generator) -> None:
    """AnimateDiff v3's domain adapter: LoRA on the spatial attention, fitted to video frames (Guo et al. §4.1)."""
    model.freeze()
    model.networks["unet"] = _lora(config, model.image_model.unet, SPATIAL_ATTENTION, generator, config.lora.alpha)


def _train_motion(model: StageModel, config: TrainConfig, generator: torch.Generator) -> None:
    """Official `trainable_modules: ["motion_modules."]`: the motion modules train, the image UNet stays frozen."""
    model.freeze()
    model.motion_modules.requires_grad_(True)


def _train_motion_lora(model: StageModel, config: TrainConfig, generator: torch.Generator) -> None:
    """MotionLoRA (Guo et al. §4.3): LoRA on the motion modules' temporal attention, from a few clips; with
    `lora.spatial_target`, a second LoRA on those image-UNet modules trains with it, with `lora.position_code` a
    position code for the motion modules (see `LoRAConfig`)."""
    model.freeze()
    model.networks["motion"] = _lora(config, model.motion_modules, MOTION_ATTENTION, generator, config.lora.alpha)
    if config.lora.spatial_target:
        model.networks["unet"] = inject_lora(
            model.image_model.unet, config.lora.spatial_target, config.lora.rank, config.lora.alpha, generator=generator
        )
    if config.lora.position_code:
        from zoetrope.adapters.position import PositionCode

        model.networks["position"] = PositionCode(model.motion_modules).attach(model.motion_modules)


def sparse_control_config(config: TrainConfig, unet: nn.Module, vae: nn.Module | None) -> SparseControlConfig:
    """The encoder config of `config.sparsectrl`, with its motion modules fitted to `unet` and checked against `vae`.

    The sketch embedding downsamples by `2 ** (len(embedding_channels) - 1)`; it must equal the VAE's factor so the
    embedded pixels land on the latent grid.
    """
    settings = config.sparsectrl
    motion_values = {**SPARSECTRL_MOTION.to_dict(), **settings.motion}
    motion = load_config(motion_values, MotionModuleConfig, name="sparsectrl.motion")
    control = SparseControlConfig(
        condition=settings.condition, embedding_channels=tuple(settings.embedding_channels), motion=motion,
        temporal=settings.temporal,
    )
    if vae is not None and settings.condition == "sketch":
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if control.downsample_factor != factor:
            raise ConfigError(
                f"sparsectrl.embedding_channels={list(settings.embedding_channels)} downsamples sketches by "
                f"{control.downsample_factor}, the VAE by {factor}; give {int(math.log2(factor)) + 1} widths"
            )
    return control


def _train_sparsectrl(model: StageModel, config: TrainConfig, generator: torch.Generator) -> None:
    """SparseCtrl (Guo et al. 2023 §3.2): only the condition encoder trains; the text-to-video model stays frozen.

    A fresh encoder copies the image UNet's encoder weights (official `from_unet`); its condition embedding, zero
    convolutions and motion-module outputs start at zero, so training starts from the unsteered video model.
    `model.sparse_control` continues training a saved encoder instead. With `sparsectrl.temporal: false` and a saved
    encoder that has temporal layers, those layers are dropped and every other weight kept: the frame-by-frame
    ablation then starts from the same spatial weights as the temporal encoder it is compared with.
    """
    from zoetrope.formats.sparsectrl import load_sparse_control

    model.freeze()
    unet = model.image_model.unet
    if config.model.sparse_control:
        encoder = load_sparse_control(config.model.sparse_control, unet)
        if not config.sparsectrl.temporal and encoder.has_motion_modules:
            encoder = _without_temporal_layers(encoder, unet)
            logger.info("sparsectrl: %s without its temporal layers (sparsectrl.temporal: false)",
                        config.model.sparse_control)
        else:
            logger.info("sparsectrl: the encoder's shape comes from %s (sparsectrl.condition/... ignored)",
                        config.model.sparse_control)
    else:
        encoder = SparseControlEncoder.from_unet(unet, sparse_control_config(config, unet, model.image_model.vae))
    first = next(unet.parameters())
    model.control = encoder.to(device=first.device, dtype=first.dtype)
    model.control.requires_grad_(True)


def _without_temporal_layers(encoder: SparseControlEncoder, unet: nn.Module) -> SparseControlEncoder:
    """The same encoder with no temporal layers: every non-temporal weight copied (strictly, so nothing else is
    lost or left at its initial value)."""
    ablation = SparseControlEncoder.from_unet(unet, encoder.config.with_(temporal=False), copy_weights=False)
    spatial = {key: value for key, value in encoder.state_dict().items() if ".motion_modules." not in key}
    ablation.load_state_dict(spatial, strict=True)
    return ablation.to(dtype=next(encoder.parameters()).dtype)


def _sparsectrl_conditions(
    model: StageModel, config: TrainConfig, pixels: torch.Tensor, latents: torch.Tensor, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """One clip's keyframe condition and mask: a random pattern (engine generator), then latents or edge maps."""
    from zoetrope.training.conditions import clip_condition, keyframe_pattern

    settings = config.sparsectrl
    frames = keyframe_pattern(
        pixels.shape[0], generator, settings.max_keyframes, settings.p_zero_keyframes, settings.p_first_keyframe,
        settings.p_first_last_keyframes,
    )
    kind = model.control.config.condition
    clip = (pixels.float() + 1) / 2
    condition, mask = clip_condition(clip, frames, kind, model.image_model.vae, config.vae_chunk_size)
    return {"condition": condition.to(latents.device), "mask": mask.to(latents.device)}


def _metadata(model: StageModel, metadata: Mapping[str, object]) -> dict[str, object]:
    return {"zoetrope.version": __version__, **metadata}


def _export_vae(model: StageModel, path: Path, metadata: Mapping[str, object]) -> Path:
    from zoetrope.formats.vae_file import save_vae_file

    return save_vae_file(model.image_model.vae, path, _metadata(model, metadata))


def _export_sd(model: StageModel, path: Path, metadata: Mapping[str, object]) -> Path:
    from zoetrope.formats.sd_single_file import save_sd_single_file

    image = model.image_model
    info = {**_metadata(model, metadata), **image.parameterization.metadata()}
    return save_sd_single_file(image.unet, image.vae, image.text_encoder, path, info)


def _export_personalize(model: StageModel, path: Path, metadata: Mapping[str, object]) -> Path:
    if "unet" not in model.networks:
        return _export_sd(model, path, metadata)
    from zoetrope.formats.kohya import save_kohya_lora

    return save_kohya_lora(
        path, unet=model.networks["unet"], text_encoder=model.networks.get("text_encoder"), metadata=_metadata(model, metadata)
    )


def _export_domain_adapter(model: StageModel, path: Path, metadata: Mapping[str, object]) -> Path:
    from zoetrope.formats.lora_files import save_domain_adapter

    return save_domain_adapter(model.networks["unet"], path, _metadata(model, metadata))


def _export_motion(model: StageModel, path: Path, metadata: Mapping[str, object]) -> Path:
    from zoetrope.formats.motion import save_motion_module

    return save_motion_module(model.motion_modules, path, layout="official", metadata=_metadata(model, metadata))


SPATIAL_LORA_NAME = "spatial_lora.safetensors"
"""The file beside a MotionLoRA export that holds its image-UNet LoRA (`lora.spatial_target`)."""


def _export_motion_lora(model: StageModel, path: Path, metadata: Mapping[str, object]) -> Path:
    from zoetrope.formats.lora_files import POSITION_CODE_NAME, save_motion_lora, save_position_code

    text = _metadata(model, metadata)
    if "unet" in model.networks:
        from zoetrope.formats.kohya import save_kohya_lora

        save_kohya_lora(path.with_name(SPATIAL_LORA_NAME), unet=model.networks["unet"], metadata=text)
    if "position" in model.networks:
        save_position_code(model.networks["position"], path.with_name(POSITION_CODE_NAME), text)
    return save_motion_lora(model.networks["motion"], path, text)


def _export_sparsectrl(model: StageModel, path: Path, metadata: Mapping[str, object]) -> Path:
    from zoetrope.formats.sparsectrl import save_sparse_control

    return save_sparse_control(model.control, path, _metadata(model, metadata))


def _fixed(name: str) -> Callable[[TrainConfig], str]:
    return lambda _config: name


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("vae", "the VAE, reconstruction + KL", "image", "reconstruction", None, False,
              _train_vae, _export_vae, _fixed("vae.safetensors")),
        Stage("image", "the text-to-image UNet (and text encoder when built from scratch)", "image", "epsilon",
              "scaled_linear", False, _train_image, _export_sd, _fixed("model.safetensors")),
        Stage("personalize", "DreamBooth-style full fine-tune or LoRA of the image model", "image", "epsilon",
              "scaled_linear", False, _train_personalize, _export_personalize,
              lambda config: "lora.safetensors" if config.method == "lora" else "model.safetensors"),
        Stage("domain-adapter", "LoRA on the image UNet's spatial attention, on video frames", "image", "epsilon",
              "scaled_linear", False, _train_domain_adapter, _export_domain_adapter, _fixed("domain_adapter.safetensors")),
        Stage("motion", "the motion modules on clips, image UNet frozen", "clip", "epsilon", "linear", True,
              _train_motion, _export_motion, _fixed("motion_module.safetensors")),
        Stage("motion-lora", "MotionLoRA on the motion modules' attention", "clip", "epsilon", "linear", True,
              _train_motion_lora, _export_motion_lora, _fixed("motion_lora.safetensors")),
        Stage("sparsectrl", "a SparseCtrl keyframe encoder on clips, video UNet frozen", "clip", "epsilon", "linear",
              True, _train_sparsectrl, _export_sparsectrl, _fixed("sparse_control.safetensors"),
              conditions=_sparsectrl_conditions),
    )
}


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"stage {name!r} is unknown; expected one of {', '.join(STAGES)}")
    return STAGES[name]


# ---------------------------------------------------------------------------------------------------- assembling
def _scratch_parts(architecture: ArchitectureConfig) -> dict[str, nn.Module]:
    """Freshly initialised parts from constructor arguments (global RNG: the caller seeds it in a fork)."""
    parts: dict[str, nn.Module] = {}
    try:
        if architecture.unet:
            from diffusers import UNet2DConditionModel

            parts["unet"] = UNet2DConditionModel(**architecture.unet)
        if architecture.vae:
            from diffusers import AutoencoderKL

            parts["vae"] = AutoencoderKL(**architecture.vae)
            if architecture.vae_initial_logvar is not None:
                _set_initial_logvar(parts["vae"], architecture.vae_initial_logvar)
        if architecture.text_encoder:
            from transformers import CLIPTextConfig, CLIPTextModel

            parts["text_encoder"] = CLIPTextModel(CLIPTextConfig(**architecture.text_encoder))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model.architecture: cannot build a part from the given arguments ({error})") from error
    return parts


def _set_initial_logvar(vae: nn.Module, logvar: float) -> None:
    """Start the posterior log-variance of a fresh AutoencoderKL at `logvar` (see `ArchitectureConfig`).

    The encoder emits (mean, logvar) stacked on channels and `quant_conv` (when present) mixes them; the bias of its
    second half is the log-variance's offset. The weights of that half are scaled down so the start is `logvar`
    give or take a little, not `logvar` plus the same spread as the means.
    """
    layer = vae.quant_conv if getattr(vae, "quant_conv", None) is not None else vae.encoder.conv_out
    latent_channels = layer.out_channels // 2
    with torch.no_grad():
        layer.weight[latent_channels:].mul_(0.1)
        layer.bias[latent_channels:].fill_(float(logvar))


def build_image_model(config: TrainConfig, stage: Stage) -> ImageModel:
    """The image model: loaded from `model.image_model`, parts replaced or built by `model.architecture`/`model.vae`."""
    from zoetrope.pipelines.components import bundled_tokenizer, load_image_model
    from zoetrope.formats.vae_file import load_vae_file

    settings = config.model
    if settings.image_model:
        image = load_image_model(settings.image_model)
    else:
        image = ImageModel(tokenizer=bundled_tokenizer(), text_encoder=None, vae=None, unet=None)
    for name, part in _scratch_parts(settings.architecture or ArchitectureConfig()).items():
        setattr(image, name, part)
    if settings.vae:
        image.vae = load_vae_file(settings.vae)
    needed = ("vae",) if stage.objective == "reconstruction" else ("vae", "unet", "text_encoder")
    missing = [name for name in needed if getattr(image, name) is None]
    if missing:
        raise ConfigError(
            f"stage {stage.name!r} needs {', '.join(missing)} but none was given: set model.image_model (an SD1.5 "
            "checkpoint), model.vae, or model.architecture." + "/".join(missing) + " to build it from scratch"
        )
    image.parameterization = training_parameterization(config, stage, image.parameterization)
    return image


def training_parameterization(config: TrainConfig, stage: Stage, model: Parameterization) -> Parameterization:
    """The parameterization a run trains with: the config's where set, else the image model's (`model`).

    Only a stage that trains the whole UNet can change it (Lin et al. 2024 fine-tuned SD 2.1 this way); a frozen
    UNet keeps predicting what it was trained to, so asking a motion or LoRA stage for another one is refused.
    """
    zero = model.zero_terminal_snr if config.zero_terminal_snr is None else config.zero_terminal_snr
    kind = config.prediction_type or ("v_prediction" if zero else model.prediction_type)
    wanted = Parameterization(kind, zero)
    if config.loss_weighting == "v" and wanted.prediction_type == "v_prediction":
        raise ConfigError("loss_weighting: v imitates a v-prediction loss for an epsilon model; this model predicts v already")
    trains_unet = stage.name == "image" or (stage.name == "personalize" and config.method == "full")
    if wanted != model and not trains_unet:
        raise ConfigError(
            f"stage {stage.name!r} keeps the image UNet frozen, which predicts {model.prediction_type} "
            f"(zero terminal SNR: {model.zero_terminal_snr}); it cannot train for {wanted.prediction_type} (zero terminal "
            f"SNR: {wanted.zero_terminal_snr}). Remove prediction_type/zero_terminal_snr, or convert the image model "
            "first with the image stage (or personalize with method: full)"
        )
    return wanted


def motion_config_for(unet: nn.Module, preset: str, overrides: Mapping[str, Any]) -> MotionModuleConfig:
    """`PRESETS[preset]` fitted to `unet`'s block widths and depth, then `overrides` applied (checked strictly)."""
    if preset not in PRESETS:
        raise ConfigError(f"model.motion_preset={preset!r}; expected one of {', '.join(PRESETS)}")
    layers = unet.config.layers_per_block
    values = PRESETS[preset].to_dict()
    values["block_out_channels"] = list(unet.config.block_out_channels)
    values["layers_per_block"] = layers if isinstance(layers, int) else int(layers[0])
    values["cross_attention_dim"] = int(unet.config.cross_attention_dim)  # what a Temporal_Cross attention reads
    values.update(overrides)
    if "attention_block_types" in overrides and "attentions_per_block" not in overrides:
        values["attentions_per_block"] = len(overrides["attention_block_types"])
    return load_config(values, MotionModuleConfig, name="model.motion")


def assemble(config: TrainConfig, stage: Stage, generator: torch.Generator) -> StageModel:
    """Build the stage's model and set what trains. Deterministic given the global RNG state (seeded by the caller)."""
    from zoetrope.formats.lora_files import load_domain_adapter
    from zoetrope.formats.motion import extend_motion_modules, load_motion_module

    image = build_image_model(config, stage)
    scratch = config.model.architecture or ArchitectureConfig()
    train_text_encoder = config.train_text_encoder
    if train_text_encoder is None:
        train_text_encoder = bool(scratch.text_encoder) and stage.name == "image"
    model = StageModel(image_model=image, train_text_encoder=train_text_encoder)
    if stage.needs_video_unet:
        if config.model.motion_module:
            modules = load_motion_module(config.model.motion_module)
            requested = dict(config.model.motion)
            types = requested.pop("attention_block_types", None)
            cross_dim = requested.pop("cross_attention_dim", image.unet.config.cross_attention_dim)
            requested.pop("attentions_per_block", None)
            if types is not None and tuple(types) != modules.config.attention_types:
                if stage.name != "motion":
                    raise ConfigError(
                        f"model.motion.attention_block_types can only add attentions in the `motion` stage, not in "
                        f"{stage.name!r}: the {stage.name} stage adapts the motion module as it is"
                    )
                modules = extend_motion_modules(modules, tuple(types), int(cross_dim))
                logger.info("motion module extended to attentions %s (new ones start as no-ops)", list(types))
            if requested:
                logger.info("model.motion is ignored: the motion module's config comes from %s", config.model.motion_module)
        elif stage.name == "motion-lora":
            raise ConfigError("stage 'motion-lora' needs model.motion_module: the motion module the MotionLoRA adapts")
        elif stage.name == "sparsectrl":
            raise ConfigError(
                "stage 'sparsectrl' needs model.motion_module: the trained motion module the encoder steers "
                "(train the `motion` stage first)"
            )
        else:
            modules = MotionModules(motion_config_for(image.unet, config.model.motion_preset, config.model.motion))
        model.video_unet = VideoUNet(image.unet, modules)
        if config.model.domain_adapter:
            adapter = load_domain_adapter(config.model.domain_adapter, image.unet, config.model.domain_adapter_scale)
            model.frozen["domain_adapter"] = adapter.attach(image.unet)
    elif config.model.domain_adapter or config.model.motion_module:
        logger.info("stage %s trains no video UNet; model.domain_adapter / model.motion_module are ignored", stage.name)
    stage.trains(model, config, generator)
    return model


def build_module(model: StageModel, stage: Stage, anchored: bool = False) -> nn.Module:
    """The module the engine calls (and DDP wraps): a `Denoiser`, or the `Autoencoder` for the `vae` stage
    (`anchored`: it keeps the starting encoder, for `vae_anchor_weight`)."""
    if stage.objective == "reconstruction":
        return Autoencoder(model.image_model.vae, anchored)
    unet = model.video_unet if model.video_unet is not None else model.image_model.unet
    if model.control is not None:
        return ControlledDenoiser(unet, model.image_model.text_encoder, model.networks, model.control)
    return Denoiser(unet, model.image_model.text_encoder, model.networks)


def trained_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that train: exactly those with `requires_grad`, by name in `module`."""
    return {name: parameter for name, parameter in module.named_parameters() if parameter.requires_grad}


def export_metadata(config: TrainConfig, stage: Stage, step: int) -> dict[str, object]:
    """What goes into every exported file: stage, step and the training config (for reproduction)."""
    return {
        "zoetrope.training.stage": stage.name,
        "zoetrope.training.step": str(step),
        "zoetrope.training.config": json.dumps(dump_config(config)),
    }


def describe(stage: Stage) -> str:
    return f"{stage.name}: {stage.description} ({stage.data_mode} data, {stage.beta_schedule or 'no'} noise schedule)"


__all__ = [
    "STAGES", "Stage", "StageModel", "Denoiser", "ControlledDenoiser", "Autoencoder", "assemble", "build_module",
    "get_stage", "trained_parameters", "training_parameterization", "motion_config_for", "export_metadata", "sparse_control_config",
]
