"""The frozen image-model parts every pipeline shares, and the small steps around them.

Why one module: text-to-video, video-to-video, SparseCtrl and training all need the same four things done the same
way: load an SD1.5 image model offline (a diffusers folder or an LDM single file), turn prompts into CLIP embeddings,
move between pixels and latents in frame chunks, and build a scheduler by name. Keeping them here means a pipeline
reads as numbered steps and a fix (e.g. the decode memory bound) lands everywhere at once.

Latent scaling follows Rombach et al. 2022 (LDM, §4.3.2 / appendix G): the VAE's latents are multiplied by a scale
factor (0.18215 for SD1.x) so that they have roughly unit variance for the diffusion model; decoding divides by it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from einops import rearrange

from zoetrope.errors import CheckpointError, ConfigError, InputError

logger = logging.getLogger(__name__)

SUBFOLDERS = ("unet", "vae", "text_encoder")

PredictionType = Literal["epsilon", "v_prediction"]
#: Metadata keys that say what a checkpoint predicts: the Stability model spec (`epsilon` / `v`), kohya's training
#: record (sd-scripts' `--v_parameterization`, `--zero_terminal_snr`), and zoetrope's own.
MODELSPEC_PREDICTION = "modelspec.prediction_type"
ZERO_SNR_KEYS = ("zoetrope.zero_terminal_snr", "ss_zero_terminal_snr")


def _flag(value: object) -> bool:
    """A boolean metadata string as kohya and zoetrope write it ("True", "true", "1")."""
    return str(value).strip().lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class Parameterization:
    """What an image UNet predicts and on which schedule end: a property of the *weights*, not of the sampler.

    SD1.5 predicts epsilon on a schedule whose last step keeps sqrt(alpha_bar) = 0.07 of the picture (it never
    reaches zero SNR). Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed") rescale the
    betas so alpha_bar_T = 0 (the model must then predict v, Salimans & Ho 2022: epsilon is undefined at T) and
    sample from t = T with trailing spacing. Why it matters for video: a model trained on the flawed schedule reads
    the low frequencies of each frame's starting noise as picture, so a frame's global colour follows its own noise
    and the background flickers; on the shapes world zero SNR cut that flicker 16x (docs/world-training.md, seventh
    session). Sampling such weights with the wrong parameterization gives mush, so it travels with the checkpoint
    (`metadata()` / `from_metadata`).
    """

    prediction_type: PredictionType = "epsilon"
    zero_terminal_snr: bool = False

    def __post_init__(self) -> None:
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"prediction_type={self.prediction_type!r}; expected 'epsilon' or 'v_prediction'")
        if self.zero_terminal_snr and self.prediction_type == "epsilon":
            raise ConfigError(
                "zero terminal SNR needs prediction_type v_prediction: at the last step the input is pure noise, so "
                "predicting the noise is trivial and says nothing about the picture (Lin et al. 2024, §3.2)"
            )

    def apply(self, schedule: Mapping[str, Any]) -> dict[str, Any]:
        """`schedule` (a diffusers scheduler config) with this parameterization; trailing spacing under zero SNR."""
        result = dict(schedule)
        result["prediction_type"] = self.prediction_type
        result["rescale_betas_zero_snr"] = self.zero_terminal_snr
        if self.zero_terminal_snr:  # sample from t = T, which leading spacing skips (Lin et al. 2024, §3.3)
            result["timestep_spacing"] = "trailing"
        return result

    def metadata(self) -> dict[str, str]:
        """The safetensors metadata that records this parameterization (Stability model spec + zoetrope's key)."""
        return {
            MODELSPEC_PREDICTION: "v" if self.prediction_type == "v_prediction" else "epsilon",
            ZERO_SNR_KEYS[0]: "true" if self.zero_terminal_snr else "false",
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> "Parameterization":
        """Read `metadata()` back, also kohya's `ss_v_parameterization` / `ss_zero_terminal_snr`; default epsilon."""
        spec = str(metadata.get(MODELSPEC_PREDICTION, "")).strip().lower()
        v = spec in ("v", "v_prediction") or _flag(metadata.get("ss_v_parameterization"))
        zero = any(_flag(metadata.get(key)) for key in ZERO_SNR_KEYS)
        return cls("v_prediction" if v or zero else "epsilon", zero)

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any]) -> "Parameterization":
        """From a diffusers `scheduler_config.json` (what a diffusers model folder says about its weights)."""
        kind = config.get("prediction_type", "epsilon")
        if kind not in ("epsilon", "v_prediction"):
            raise CheckpointError(
                f"the scheduler config predicts {kind!r}; zoetrope samples epsilon and v_prediction models only"
            )
        return cls(kind, bool(config.get("rescale_betas_zero_snr", False)))


@dataclass
class ImageModel:
    """The frozen parts of a text-to-image model: CLIP tokenizer and text encoder, VAE, 2D UNet, and what it predicts."""

    tokenizer: Any  # transformers CLIPTokenizer
    text_encoder: torch.nn.Module  # transformers CLIPTextModel
    vae: torch.nn.Module  # diffusers AutoencoderKL
    unet: torch.nn.Module  # diffusers UNet2DConditionModel
    parameterization: Parameterization = field(default_factory=Parameterization)


# ----------------------------------------------------------------------------------------------- loading


def bundled_tokenizer() -> Any:
    """OpenAI's CLIP BPE tokenizer (49408 tokens) from the package data; no hub access."""
    from transformers import CLIPTokenizer

    folder = Path(str(resources.files("zoetrope").joinpath("assets", "tokenizer")))
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def _check_consistent(model: ImageModel, source: Path) -> None:
    """Parts of different model families (an SDXL UNet with a CLIP-L encoder...) fail late and obscurely; fail here."""
    width = model.text_encoder.config.hidden_size
    if model.unet.config.cross_attention_dim != width:
        raise CheckpointError(
            f"{source}: the UNet attends to {model.unet.config.cross_attention_dim}-wide text embeddings but the text "
            f"encoder gives {width}; the parts come from different model families (SD1.5 needs 768 for both)"
        )
    if model.vae.config.latent_channels != model.unet.config.in_channels:
        raise CheckpointError(
            f"{source}: the VAE has {model.vae.config.latent_channels} latent channels but the UNet takes "
            f"{model.unet.config.in_channels}; this is not a text-to-image SD model (an inpainting model?)"
        )
    if len(model.tokenizer) > model.text_encoder.config.vocab_size:
        raise CheckpointError(
            f"{source}: the tokenizer has {len(model.tokenizer)} tokens but the text encoder only "
            f"{model.text_encoder.config.vocab_size} embeddings; use the tokenizer that came with the model"
        )


def _load_diffusers_folder(path: Path, dtype: torch.dtype) -> ImageModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    missing = [name for name in SUBFOLDERS if not (path / name / "config.json").is_file()]
    if not (path / "model_index.json").is_file() or missing:
        has_index = (path / "model_index.json").is_file()
        found = f"no {', '.join(missing)}/config.json" if has_index else "no model_index.json"
        raise CheckpointError(
            f"{path}: not a diffusers Stable Diffusion folder ({found}); expected model_index.json with unet/, vae/ "
            "and text_encoder/ subfolders, or pass a single-file .safetensors/.ckpt checkpoint"
        )
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True, torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True, torch_dtype=dtype)
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as error:  # diffusers/transformers report missing or bad weights this way
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"{path}: cannot load the diffusers model ({first_line}); check that the weights are complete"
        ) from error
    tokenizer_folder = path / "tokenizer"
    if (tokenizer_folder / "vocab.json").is_file():
        tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True)
    else:
        logger.info("%s has no tokenizer/; using the bundled CLIP tokenizer", path)
        tokenizer = bundled_tokenizer()
    parameterization = Parameterization()
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    if scheduler_file.is_file():
        try:
            parameterization = Parameterization.from_scheduler_config(json.loads(scheduler_file.read_text("utf-8")))
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{scheduler_file}: not valid JSON ({error}); fix or delete the file") from error
    return ImageModel(tokenizer, text_encoder, vae, unet, parameterization)


def load_image_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> ImageModel:
    """Load a frozen SD1.5 image model from a diffusers folder or an LDM single file, fully offline.

    A folder must hold `model_index.json` with `unet/`, `vae/`, `text_encoder/` (and optionally `tokenizer/`,
    else the bundled CLIP tokenizer is used); a file is read by `zoetrope.formats.sd_single_file`. The parts are put
    in eval mode with gradients off (training attaches its own trainable modules); they stay on the CPU.
    """
    from zoetrope.formats.sd_single_file import load_sd_single_file

    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such file or folder; pass an SD1.5 checkpoint (.safetensors/.ckpt) or a diffusers folder"
        )
    if path.is_dir():
        model = _load_diffusers_folder(path, dtype)
    else:
        from zoetrope.formats.safe_load import read_metadata

        parts = load_sd_single_file(path, dtype=dtype)
        parameterization = Parameterization.from_metadata(read_metadata(path))
        model = ImageModel(bundled_tokenizer(), parts.text_encoder, parts.vae, parts.unet, parameterization)
    _check_consistent(model, path)
    for module in (model.text_encoder, model.vae, model.unet):
        module.eval().requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------------------- text


def encode_prompts(tokenizer: Any, text_encoder: torch.nn.Module, prompts: Sequence[str]) -> torch.Tensor:
    """CLIP embeddings `(n, 77, dim)` of `prompts`: the text encoder's last hidden state, as SD1.5 conditions on.

    Prompts are padded with the end token to the encoder's 77 positions and truncated beyond (a warning names the
    prompt and the dropped words). No attention mask is passed, as in SD1.5 training: CLIP's causal mask already
    keeps padding from affecting the real tokens. Runs on the text encoder's device; gradients follow the caller's
    autograd mode.
    """
    if isinstance(prompts, str) or not prompts or not all(isinstance(prompt, str) for prompt in prompts):
        raise InputError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    max_length = int(text_encoder.config.max_position_embeddings)
    full = tokenizer(list(prompts), padding=False, truncation=False, verbose=False).input_ids
    for prompt, ids in zip(prompts, full):
        if len(ids) > max_length:
            dropped = tokenizer.decode(ids[max_length - 1 : -1])
            logger.warning(
                "prompt %r is %d tokens long (with start and end tokens); CLIP reads only %d, so %r is ignored: "
                "shorten the prompt",
                prompt, len(ids), max_length, dropped,
            )
    tokens = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    device = next(text_encoder.parameters()).device
    return text_encoder(tokens.input_ids.to(device)).last_hidden_state


# ----------------------------------------------------------------------------------------------- pixels <-> latents


def _check_video(tensor: torch.Tensor, name: str, chunk_size: int) -> None:
    if tensor.ndim != 5:
        raise InputError(
            f"{name} must be a (batch, channels, frames, height, width) tensor, got shape {tuple(tensor.shape)}"
        )
    if chunk_size < 1:
        raise InputError(f"chunk_size must be at least 1, got {chunk_size}")


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
    """Latents `(b, c, f, h, w)` -> frames `(b, 3, f, H, W)` float32 in [0, 1], `chunk_size` frames at a time.

    The VAE decoder is the memory peak of video sampling (its activations at full resolution scale with the frame
    count), so frames go through it in chunks: peak memory is bounded by `chunk_size`, not by the video length. The
    VAE treats frames independently, so the result equals one-shot decoding. Chunks run on the VAE's device and
    dtype; the frames are returned on the latents' device.
    """
    _check_video(latents, "latents", chunk_size)
    batch = latents.shape[0]
    scaling = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    images = rearrange(latents, "b c f h w -> (b f) c h w")
    decoded = []
    for chunk in images.split(chunk_size):
        chunk = chunk.to(device=vae.device, dtype=vae.dtype) / scaling + shift
        pixels = vae.decode(chunk).sample
        decoded.append((pixels.float() / 2 + 0.5).clamp(0, 1).to(latents.device))
    return rearrange(torch.cat(decoded), "(b f) c h w -> b c f h w", b=batch)


def encode_frames(
    vae: torch.nn.Module,
    frames: torch.Tensor,
    chunk_size: int = 16,
    generator: torch.Generator | None = None,
    sample: bool = True,
) -> torch.Tensor:
    """Frames `(b, 3, f, H, W)` in [0, 1] -> scaled latents `(b, 4, f, H/8, W/8)`, `chunk_size` frames at a time.

    `sample=True` draws from the VAE posterior (the training path, as LDM does); `sample=False` takes its mode
    (deterministic, for video-to-video). Latents are returned in the VAE's dtype on the frames' device.
    """
    _check_video(frames, "frames", chunk_size)
    batch = frames.shape[0]
    scaling = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    images = rearrange(frames, "b c f h w -> (b f) c h w")
    encoded = []
    for chunk in images.split(chunk_size):
        chunk = chunk.to(device=vae.device, dtype=vae.dtype) * 2 - 1
        posterior = vae.encode(chunk).latent_dist
        latents = posterior.sample(generator=generator) if sample else posterior.mode()
        encoded.append(((latents - shift) * scaling).to(frames.device))
    return rearrange(torch.cat(encoded), "(b f) c h w -> b c f h w", b=batch)


# ----------------------------------------------------------------------------------------------- schedulers

# name -> (diffusers class, overrides on top of the model's scheduler config)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m-karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "lcm": ("LCMScheduler", {}),
}


def default_scheduler_config() -> dict[str, Any]:
    """The noise schedule AnimateDiff's motion modules were trained and sampled with (bundled, a fresh dict).

    Linear betas 0.00085 -> 0.012 over 1000 steps (not SD's scaled_linear: the AnimateDiff paper departs from it on
    purpose), DDIM with `steps_offset=1`, `clip_sample=False`, leading spacing, `set_alpha_to_one=True`.
    """
    source = resources.files("zoetrope").joinpath("assets", "sd15", "scheduler.json")
    return json.loads(source.read_text(encoding="utf-8"))


def make_scheduler(name: str = "ddim", config: Mapping[str, Any] | None = None) -> Any:
    """A fresh diffusers scheduler by `name` on the noise schedule `config` (default: `default_scheduler_config()`).

    Every sampler shares the model's training schedule (betas, offset); only the solver differs. A fresh object per
    call, because diffusers schedulers keep per-run state (`set_timesteps`, multistep history).
    """
    import diffusers

    key = name.strip().lower()
    if key not in SCHEDULERS:
        raise ConfigError(f"scheduler {name!r} is unknown; expected one of {', '.join(SCHEDULERS)}")
    class_name, overrides = SCHEDULERS[key]
    schedule = dict(default_scheduler_config() if config is None else config)
    schedule.pop("_class_name", None)
    return getattr(diffusers, class_name).from_config(schedule, **overrides)
