"""Tiny real components shared by the tests (widths 32-64, a few frames, 8-16 px latents)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
)


def make_tiny_unet(seed: int = 0, **overrides):
    """A tiny SD1.5-shaped diffusers UNet with random (non-zero) weights."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**TINY_UNET, **overrides})
    with torch.no_grad():
        for parameter in unet.parameters():  # diffusers zero-inits some outputs; randomise all for sharper tests
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return unet.eval()


def tiny_motion_config(**overrides):
    from zoetrope.models.motion_module import MotionModuleConfig

    base = dict(block_out_channels=(32, 64), layers_per_block=1, num_attention_heads=4, norm_num_groups=8)
    return MotionModuleConfig(**{**base, **overrides})


def make_tiny_motion_modules(seed: int = 1, **overrides):
    """Motion modules with random weights everywhere (proj_out included) so they actually move things."""
    from zoetrope.models.motion_module import MotionModules

    torch.manual_seed(seed)
    modules = MotionModules(tiny_motion_config(zero_init=False, **overrides))
    with torch.no_grad():
        for parameter in modules.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return modules.eval()


@pytest.fixture
def tiny_unet():
    return make_tiny_unet()


def make_tiny_vae(seed: int = 2):
    """A 4-level AutoencoderKL (downsamples by 8 like SD's) at widths of 8."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    ).eval()


def make_tiny_text_encoder(seed: int = 3):
    """A 2-layer CLIP text encoder (width 32) over the real CLIP vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return CLIPTextModel(config).eval()


def make_tiny_image_model(seed: int = 0):
    """Tokenizer (bundled CLIP BPE), tiny text encoder, tiny VAE, tiny UNet: a complete SD1.5-shaped image model."""
    from zoetrope.pipelines.components import ImageModel, bundled_tokenizer

    return ImageModel(
        tokenizer=bundled_tokenizer(),
        text_encoder=make_tiny_text_encoder(seed + 3),
        vae=make_tiny_vae(seed + 2),
        unet=make_tiny_unet(seed),
    )


def make_tiny_pipeline(seed: int = 0, **motion_overrides):
    from zoetrope.models.video_unet import VideoUNet
    from zoetrope.pipelines.text_to_video import VideoPipeline

    image_model = make_tiny_image_model(seed)
    video_unet = VideoUNet(image_model.unet, make_tiny_motion_modules(seed + 1, **motion_overrides))
    return VideoPipeline(image_model=image_model, video_unet=video_unet.eval())


def merge_config_values(values: dict, changes: dict) -> dict:
    """Training-config test values with `changes` applied (nested dicts merged one level deep)."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return values


def all_tensors(trainer) -> dict:
    """Every parameter of every part of a training stage's model, by `part.name`, cloned."""
    return {
        f"{part}.{name}": parameter.detach().clone()
        for part, module in trainer.model.modules().items()
        for name, parameter in module.named_parameters()
    }


@pytest.fixture(scope="module")
def training_files(tmp_path_factory) -> dict[str, str]:
    """A tiny SD1.5-shaped single file and a tiny (non-zero) official-layout motion module on disk, by role
    (`base`, `motion`): what the training tests point their configs at."""
    from zoetrope.formats.motion import save_motion_module
    from zoetrope.formats.sd_single_file import save_sd_single_file

    folder = tmp_path_factory.mktemp("models")
    model = make_tiny_image_model()
    save_sd_single_file(model.unet, model.vae, model.text_encoder, folder / "base.safetensors")
    save_motion_module(make_tiny_motion_modules(), folder / "motion.safetensors")
    return {"base": str(folder / "base.safetensors"), "motion": str(folder / "motion.safetensors")}


def drawn_inputs(trainer, batch) -> dict:
    """The diffusion inputs (latents, noise, timesteps, ids) that the trainer's next `micro_loss(batch)` will draw:
    drawn here, then the generator is rewound, so a test can recompute that loss by hand."""
    state = trainer.generator.get_state()
    inputs = trainer.diffusion_inputs(batch)
    trainer.generator.set_state(state)
    return inputs
