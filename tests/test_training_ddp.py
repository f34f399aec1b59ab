"""Two-process DDP training on the CPU (gloo), launched with torchrun: both ranks end with identical weights, only
rank 0 writes files, the export loads for inference, and a resumed DDP run continues from the checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from conftest import make_tiny_image_model
from zoetrope.formats.motion import load_motion_module
from zoetrope.formats.sd_single_file import save_sd_single_file
from zoetrope.models.video_unet import VideoUNet
from zoetrope.training.checkpoint import list_checkpoints, load_training_state

SCRIPT = textwrap.dedent(
    """
    import logging, sys
    import torch
    from torch.utils.data import Dataset
    from zoetrope.training.config import load_train_config
    from zoetrope.training.engine import Trainer

    class Clips(Dataset):
        def __init__(self):
            self.clips = torch.rand(6, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
        def __len__(self):
            return len(self.clips)
        def __getitem__(self, index):
            return {"pixel_values": self.clips[index], "text": f"clip {index}"}

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    config = load_train_config(sys.argv[1])
    trainer = Trainer(config, resume=sys.argv[2] == "resume", dataset=Clips())
    assert trainer.dist.world_size == 2 and type(trainer.network).__name__ == "DistributedDataParallel"
    trainer.fit()
    rank = trainer.dist.rank
    torch.save({name: p.detach() for name, p in trainer.trainable.items()}, sys.argv[3] + f"/rank{rank}.pt")
    trainer.close()
    """
)


def run_torchrun(tmp_path: Path, config: dict, mode: str) -> subprocess.CompletedProcess:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(script), str(config_path), mode, str(tmp_path),
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_two_process_gloo_training_keeps_ranks_identical(tmp_path) -> None:
    model = make_tiny_image_model()
    save_sd_single_file(model.unet, model.vae, model.text_encoder, tmp_path / "base.safetensors")
    output = tmp_path / "run"
    config = {
        "stage": "motion",
        "output_dir": str(output),
        "model": {"image_model": str(tmp_path / "base.safetensors"), "motion": {"num_attention_heads": 4, "norm_num_groups": 8}},
        "steps": 3,
        "batch_size": 1,
        "grad_accumulation": 2,
        "lr": 1e-3,
        "log_every": 1,
        "checkpoint_every": 2,
    }
    result = run_torchrun(tmp_path, config, "fresh")
    assert result.returncode == 0, result.stderr[-4000:]

    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    assert any(rank0[name].abs().sum() > 0 for name in rank0 if "proj_out" in name)

    # rank 0 wrote the files; the state holds both ranks' RNG streams
    assert [step for step, _ in list_checkpoints(output)] == [2, 3]
    state = load_training_state(output / "checkpoints" / "step-0000003" / "training_state.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["generator"], state["rng"][1]["generator"])  # seed + rank
    assert (output / "metrics.csv").read_text().count("\n") == 4

    # the export is an official-layout motion module that runs in a VideoUNet
    modules = load_motion_module(output / "motion_module.safetensors")
    for name, value in modules.state_dict().items():
        trained = rank0.get(f"unet.motion_modules.{name}")
        assert trained is None or torch.equal(trained, value), name
    video = VideoUNet(model.unet, modules).eval()
    with torch.no_grad():
        prediction = video(torch.randn(1, 4, 4, 2, 2), torch.tensor([10]), torch.randn(1, 77, 32))
    assert prediction.shape == (1, 4, 4, 2, 2) and torch.isfinite(prediction).all()

    # resuming the 2-process run to more steps starts from the step-3 checkpoint
    config["steps"] = 4
    result = run_torchrun(tmp_path, config, "resume")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "resumed from" in result.stderr and "at step 3" in result.stderr
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    assert load_training_state(output / "checkpoints" / "step-0000004" / "training_state.pt")["step"] == 4
