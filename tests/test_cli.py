"""The `zoetrope` command end to end on a tiny random model saved in the single-file (LDM) layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from conftest import make_tiny_image_model, make_tiny_motion_modules
from zoetrope.cli import main
from zoetrope.formats.motion import save_motion_module
from zoetrope.formats.sd_single_file import save_sd_single_file


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    image = make_tiny_image_model()
    model = folder / "tiny-sd.safetensors"
    save_sd_single_file(image.unet, image.vae, image.text_encoder, model)
    motion = save_motion_module(make_tiny_motion_modules(), folder / "mm_tiny.safetensors")
    return model, motion


def _frame_count(path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_generate_writes_a_video_with_the_right_frame_count(files, tmp_path, suffix, capsys) -> None:
    model, motion = files
    out = tmp_path / f"clip{suffix}"
    code = main([
        "generate", "a red circle moving right", "--model", str(model), "--motion-module", str(motion),
        "--frames", "6", "--width", "32", "--height", "32", "--steps", "2", "--seed", "7", "-o", str(out),
    ])
    assert code == 0
    assert out.exists() and _frame_count(out) == 6
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["prompt"] == "a red circle moving right" and sidecar["seed"] == 7
    assert "seed 7" in capsys.readouterr().out


def test_generate_with_a_position_code(files, tmp_path, capsys) -> None:
    """`--position-code PATH[:STRENGTH]` attaches the code: it changes the clip, strength 0 does not, the sidecar
    names it, and a file of another kind is one line of error."""
    import imageio.v3 as iio

    from zoetrope.adapters.position import PositionCode
    from zoetrope.formats.lora_files import save_position_code
    from zoetrope.formats.motion import load_motion_module

    model, motion = files
    modules = load_motion_module(motion)
    code = PositionCode(modules)
    with torch.no_grad():
        for weight in code.named_weights().values():
            weight.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(0))
    path = save_position_code(code, tmp_path / "position_code.safetensors")
    common = ["a red circle", "--model", str(model), "--motion-module", str(motion), "--frames", "4", "--width", "32",
              "--height", "32", "--steps", "2", "--seed", "3"]
    clips = {}
    for name, extra in (("plain", []), ("coded", ["--position-code", str(path)]), ("off", ["--position-code", f"{path}:0"])):
        out = tmp_path / f"{name}.gif"
        assert main(["generate", *common, *extra, "-o", str(out)]) == 0
        clips[name] = iio.imread(out, index=None).astype(int)
    assert np.array_equal(clips["plain"], clips["off"]) and np.abs(clips["plain"] - clips["coded"]).max() > 0
    sidecar = json.loads((tmp_path / "coded.gif.json").read_text())
    assert sidecar["sources"]["position_code"] == f"{path}:1.0"
    capsys.readouterr()
    assert main(["generate", *common, "--position-code", str(motion), "-o", str(tmp_path / "bad.gif")]) != 0
    assert "is not a position code" in capsys.readouterr().err


def test_wrong_file_in_a_slot_is_one_line(files, tmp_path, capsys) -> None:
    model, motion = files
    code = main(["generate", "x", "--model", str(motion), "--motion-module", str(motion), "-o", str(tmp_path / "a.gif")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "motion module" in err and "--motion-module" in err


def test_inspect(files, capsys) -> None:
    model, motion = files
    assert main(["inspect", str(model), str(motion)]) == 0
    out = capsys.readouterr().out
    assert "Stable Diffusion image model" in out and "motion module" in out and "v3" in out


def test_convert_round_trip(files, tmp_path, capsys) -> None:
    _, motion = files
    assert main(["convert", str(motion), str(tmp_path / "adapter"), "--to", "diffusers"]) == 0
    assert main(["convert", str(tmp_path / "adapter"), str(tmp_path / "back.safetensors"), "--to", "official"]) == 0
    from safetensors.torch import load_file

    first, back = load_file(str(motion)), load_file(str(tmp_path / "back.safetensors"))
    assert first.keys() == back.keys() and all((first[k] == back[k]).all() for k in first)


def test_run_official_prompt_config(files, tmp_path) -> None:
    model, motion = files
    config = [{
        "dreambooth_path": str(model), "motion_module": str(motion), "seed": [5, -1], "steps": 2,
        "guidance_scale": 7.5, "prompt": ["a red circle", "a blue star"], "n_prompt": [""], "W": 32, "H": 32, "L": 4,
        "inference_config": "configs/inference/inference-v3.yaml",
    }]
    path = tmp_path / "prompts.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), "-o", str(tmp_path / "out")]) == 0
    gifs = sorted((tmp_path / "out").glob("*.gif"))
    assert len(gifs) == 2 and all(_frame_count(g) == 4 for g in gifs)
    used = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert used[0]["random_seed"] == 5 and used[1]["random_seed"] >= 0


def test_run_rejects_unknown_fields(tmp_path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump([{"prompt": ["x"], "guidance": 3}]))
    assert main(["run", str(path)]) == 2
    assert "unknown field(s) ['guidance']" in capsys.readouterr().err


def test_generate_with_travel_windows_and_noise_flags(files, tmp_path, capsys) -> None:
    model, motion = files
    out = tmp_path / "long.gif"
    code = main([
        "generate", "flat colours", "--prompt-at", "0:a red circle", "--prompt-at", "-1:a blue star",
        "--model", str(model), "--motion-module", str(motion), "--frames", "10", "--context-length", "6",
        "--context-overlap", "2", "--show-windows", "--noise", "pyoco_mixed", "--noise-param", "alpha=1.0",
        "--motion-scale", "1.2", "--width", "32", "--height", "32", "--steps", "2", "--seed", "1", "-o", str(out),
        "--zero-snr", "--guidance-end", "2",
    ])
    assert code == 0 and _frame_count(out) == 10
    printed = capsys.readouterr().out
    assert "step" in printed.lower() or "#" in printed
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["prompt"] == {"0": "a red circle", "-1": "a blue star"} or sidecar["prompt"]["0"] == "a red circle"
    assert sidecar["context"]["length"] == 6 and sidecar["noise"] == "pyoco_mixed"
    assert sidecar["prediction_type"] == "v_prediction" and sidecar["zero_terminal_snr"] is True
    assert sidecar["guidance_end"] == 2.0  # a guidance schedule through context windows


def test_video_to_video_keeps_frames_and_fps(files, tmp_path) -> None:
    import numpy as np

    from zoetrope.media import read_video, save_video

    model, motion = files
    source = tmp_path / "in.mp4"
    save_video(np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8), source, fps=12)
    out = tmp_path / "out.mp4"
    assert main([
        "generate", "a red circle", "--video", str(source), "--strength", "0.5", "--model", str(model),
        "--motion-module", str(motion), "--steps", "2", "--seed", "1", "-o", str(out),
    ]) == 0
    frames, fps = read_video(out)
    assert frames.shape[0] == 5 and round(fps) == 12


@pytest.fixture(scope="module")
def sparsectrl_file(files, tmp_path_factory):
    """A random (non-zero) RGB SparseCtrl encoder for the tiny model, in the official layout."""
    import torch

    from conftest import tiny_motion_config
    from zoetrope.formats.sparsectrl import save_sparse_control
    from zoetrope.models.sparse_control import SparseControlConfig, SparseControlEncoder
    from zoetrope.pipelines.components import load_image_model

    unet = load_image_model(files[0]).unet
    motion = tiny_motion_config(attentions_per_block=1, mid_block=False)
    encoder = SparseControlEncoder.from_unet(unet, SparseControlConfig(condition="rgb", motion=motion))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    folder = tmp_path_factory.mktemp("sparsectrl")
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 40, 40)).save(folder / "first.png")
    return save_sparse_control(encoder, folder / "sparsectrl_rgb.safetensors"), folder / "first.png"


def test_run_executes_official_sparsectrl_entries_like_generate_control(files, sparsectrl_file, tmp_path) -> None:
    import numpy as np

    from zoetrope.media import read_video

    model, motion = files
    encoder, image = sparsectrl_file
    common = ["--model", str(model), "--motion-module", str(motion), "--frames", "4", "--width", "32", "--height", "32",
              "--steps", "2", "--seed", "5", "--guidance", "8.5"]
    assert main(["generate", "a red circle", *common, "--control", "rgb", "--control-model", str(encoder),
                 "--keyframe", f"0:{image}", "--keyframe", f"-1:{image}", "-o", str(tmp_path / "g_%03d.png")]) == 0
    assert main(["generate", "a red circle", *common, "-o", str(tmp_path / "plain_%03d.png")]) == 0
    entry = {
        "dreambooth_path": str(model), "motion_module": str(motion), "seed": 5, "steps": 2, "guidance_scale": 8.5,
        "prompt": ["a red circle"], "W": 32, "H": 32, "L": 4, "controlnet_path": str(encoder),
        "controlnet_config": "configs/inference/sparsectrl/latent_condition.yaml",
        "controlnet_images": [image.name, image.name], "controlnet_image_indexs": [0, -1],
    }
    config = image.parent / "prompts.yaml"  # image paths relative to the config's folder
    config.write_text(yaml.safe_dump([entry]))
    assert main(["run", str(config), "-o", str(tmp_path / "run"), "--format", ".png"]) == 0
    controlled = read_video(tmp_path / "g_%03d.png")[0]
    plain = read_video(tmp_path / "plain_%03d.png")[0]
    ran = read_video(tmp_path / "run" / "0-0-a-red-circle")[0]
    assert np.abs(controlled.astype(int) - plain.astype(int)).max() > 0  # the keyframes steer the clip
    assert np.array_equal(ran, controlled)  # `run` with the official fields = `generate --control`


def test_generate_color_match_gives_the_keyframe_colour(files, sparsectrl_file, tmp_path, capsys) -> None:
    import numpy as np

    from zoetrope.media import read_video

    model, motion = files
    encoder, image = sparsectrl_file  # a flat (200, 40, 40) picture
    common = ["--model", str(model), "--motion-module", str(motion), "--frames", "4", "--width", "32", "--height", "32",
              "--steps", "2", "--seed", "5", "--control", "rgb", "--control-model", str(encoder), "--keyframe", f"0:{image}"]
    assert main(["generate", "a red circle", *common, "--color-match", "1", "-o", str(tmp_path / "m_%03d.png")]) == 0
    assert main(["generate", "a red circle", *common, "-o", str(tmp_path / "p_%03d.png")]) == 0
    matched = read_video(tmp_path / "m_%03d.png")[0].astype(float)
    plain = read_video(tmp_path / "p_%03d.png")[0].astype(float)
    target = np.array([200.0, 40.0, 40.0])
    assert np.abs(matched.mean(axis=(1, 2)) - target).max() < 3  # every frame: the only keyframe's colour
    assert np.abs(plain[0].mean(axis=(0, 1)) - target).max() > 20  # the tiny random model alone does not draw it
    code = main(["generate", "x", "--model", str(model), "--motion-module", str(motion), "--color-match", "1",
                 "-o", str(tmp_path / "c.gif")])
    assert code == 2 and "--color-match matches the frames to RGB keyframe images" in capsys.readouterr().err


def test_run_sparsectrl_entry_errors(files, sparsectrl_file, tmp_path, capsys) -> None:
    model, motion = files
    encoder, image = sparsectrl_file
    base = {"dreambooth_path": str(model), "motion_module": str(motion), "prompt": ["x"], "steps": 1, "L": 4}
    cases = [
        ({"controlnet_path": str(encoder)}, "without controlnet_images"),
        ({"controlnet_images": [str(image)]}, "without controlnet_path"),
        ({"controlnet_path": str(encoder), "controlnet_images": [str(image)], "controlnet_image_indexs": [0, 3]},
         "1 controlnet_images but 2 controlnet_image_indexs"),
    ]
    for extra, message in cases:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump([{**base, **extra}]))
        assert main(["run", str(path)]) == 2
        assert message in capsys.readouterr().err
    code = main(["generate", "x", "--model", str(model), "--motion-module", str(motion), "--frames", "4", "--steps", "1",
                 "--control", "sketch", "--control-model", str(encoder), "--keyframe", f"0:{image}",
                 "-o", str(tmp_path / "s.gif")])
    assert code == 2 and "is a rgb SparseCtrl encoder; use --control rgb" in capsys.readouterr().err
    for extra in (["--keyframe", f"0:{image}"], ["--keyframe-replace", "0.4"]):  # no --control: refused, not ignored
        code = main(["generate", "x", "--model", str(model), "--motion-module", str(motion), *extra,
                     "-o", str(tmp_path / "k.gif")])
        assert code == 2 and "add --control rgb" in capsys.readouterr().err
    code = main(["generate", "x", "--model", str(model), "--motion-module", str(motion), "--frames", "4", "--steps", "1",
                 "--control", "rgb", "--control-model", str(encoder), "--keyframe", f"0:{image}",
                 "--keyframe-replace", "2", "-o", str(tmp_path / "r.gif")])
    assert code == 2 and "must be a fraction of the sampling steps" in capsys.readouterr().err


def test_eval_scores_style_when_the_suffix_is_a_style_trigger(files, tmp_path, monkeypatch) -> None:
    from dataclasses import replace

    import zoetrope.pipelines.text_to_video as text_to_video
    from zoetrope.cli import _scored_prompt
    from zoetrope.world.render import parse_caption

    prompt = "a red circle moving left on a grey background"
    assert _scored_prompt(f"{prompt}, in zxq style", "in zxq style") == f"{prompt}, in zxq style"
    assert _scored_prompt(f"{prompt}, high quality", "high quality") == prompt
    model, motion = files
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(model), "--motion-module", str(motion), "--limit", "2", "--frames", "4",
                 "--steps", "1", "--suffix", "in zxq style", "--guidance-end", "1", "-o", str(out)]) == 0
    results = json.loads(out.read_text())
    assert len(results["clips"]) == 2 and results["settings"]["guidance_end"] == 1.0
    plain = results["clips"]
    seen: dict = {}
    real_generate = text_to_video.generate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(text_to_video, "generate", spy)
    assert main(["eval", "--model", str(model), "--motion-module", str(motion), "--limit", "2", "--frames", "4",
                 "--steps", "1", "--suffix", "in zxq style", "--guidance-end", "1", "--motion-guidance", "12",
                 "-o", str(out)]) == 0
    pushed, settings = (json.loads(out.read_text())[key] for key in ("clips", "settings"))
    assert [parse_caption(p) for p in settings["dual_prompts"]] == [  # the same captions without the motion words
        replace(parse_caption(row["prompt"]), motion=None) for row in pushed
    ]
    assert all(parse_caption(row["prompt"]).motion is not None for row in pushed)
    assert [row["prompt"] for row in pushed] == [row["prompt"] for row in plain]  # scored against the full prompt
    assert seen["dual_prompt"] == settings["dual_prompts"] and seen["dual_guidance"] == 12.0  # what generate got
    assert all(row["style_correct"] is not None for row in results["clips"])  # style is scored, not n/a
    assert "noise" not in seen  # the official draw unless --noise asks for a prior
    assert main(["eval", "--model", str(model), "--motion-module", str(motion), "--limit", "1", "--frames", "4",
                 "--steps", "1", "--noise", "zoom_warped", "--noise-param", "zoom=1.4", "-o", str(out)]) == 0
    assert seen["noise"] == "zoom_warped" and seen["noise_params"] == {"zoom": 1.4}
    assert json.loads(out.read_text())["settings"]["noise"] == "zoom_warped"


def test_eval_keeps_only_the_asked_motions(files, tmp_path, capsys) -> None:
    model, motion = files
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(model), "--motion-module", str(motion), "--motions", "left,grow",
                 "--frames", "2", "--steps", "1", "-o", str(out)]) == 0
    prompts = [row["prompt"] for row in json.loads(out.read_text())["clips"]]
    assert len(prompts) == 6 and all(("moving left" in p) != ("growing" in p) for p in prompts)
    assert main(["eval", "--model", str(model), "--motion-module", str(motion), "--motions", "left,right", "--seeds", "2",
                 "--same-noise", "--frames", "2", "--steps", "1", "-o", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [row["seed"] for row in results["clips"]] == [0] * 6 + [1] * 6
    assert 1 / 6 <= results["summary"]["noise_agreement"] <= 1.0  # six prompts per seed
    code = main(["eval", "--model", str(model), "--motion-module", str(motion), "--motions", "sideways",
                 "-o", str(out)])
    assert code == 2 and "['sideways'] not in the base suite; choose from down, grow" in capsys.readouterr().err


def test_eval_without_the_background_phrase(files, tmp_path) -> None:
    model, motion = files
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(model), "--motion-module", str(motion), "--motions", "right,still",
                 "--no-background", "--frames", "2", "--steps", "1", "-o", str(out)]) == 0
    results = json.loads(out.read_text())
    prompts = [row["prompt"] for row in results["clips"]]
    assert prompts[:3] == ["a green square moving right", "a magenta circle moving right", "a cyan star moving right"]
    assert len(prompts) == 6 and not any("background" in p for p in prompts)
    assert results["summary"]["background_scored"] == 0 and results["summary"]["motion_scored"] == 6


def test_eval_scores_given_prompts_and_refuses_free_text(files, tmp_path, capsys) -> None:
    model, motion = files
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(model), "--motion-module", str(motion), "--prompt", "a red circle moving right",
                 "--seeds", "3", "--same-noise", "--frames", "2", "--steps", "1", "-o", str(out)]) == 0
    rows = json.loads(out.read_text())["clips"]
    assert [(row["prompt"], row["seed"]) for row in rows] == [("a red circle moving right", seed) for seed in range(3)]
    code = main(["eval", "--model", str(model), "--motion-module", str(motion), "--prompt", "a corgi on the beach",
                 "-o", str(out)])
    assert code == 2 and "not in the shapes-world grammar" in capsys.readouterr().err


def test_world_make_with_a_motion_trail(tmp_path, capsys) -> None:
    out = tmp_path / "trail"
    assert main(["world", "make", str(out), "--preset", "pastel", "--scale", "0.02", "--trail-alpha", "0.25"]) == 0
    manifest = json.loads((out / "world.json").read_text())
    assert manifest["config"]["trail_alpha"] == 0.25 and manifest["num_images"] == 4
    assert main(["world", "make", str(tmp_path / "bad"), "--trail-alpha", "0.9"]) != 0
    assert "trail_alpha" in capsys.readouterr().err


def test_world_make_with_a_speed_range(tmp_path, capsys) -> None:
    out = tmp_path / "speeds"
    assert main(["world", "make", str(out), "--scale", "0.01", "--speed-range", "0.15", "0.7"]) == 0
    manifest = json.loads((out / "world.json").read_text())
    assert manifest["config"]["speed_range"] == [0.15, 0.7]
    specs = [json.loads(line) for line in (out / "videos.jsonl").read_text().splitlines()]
    moving = [row for row in specs if row["motion"] in ("left", "right", "up", "down")]
    assert moving and all(0.15 <= row["speed"] <= 0.7 for row in moving)
    assert main(["world", "make", str(tmp_path / "bad"), "--speed-range", "0.5", "0.2"]) != 0
    assert "speed_range" in capsys.readouterr().err
    upright = tmp_path / "upright"
    assert main(["world", "make", str(upright), "--scale", "0.01", "--angle-range", "0", "0"]) == 0
    rows = [json.loads(line) for line in (upright / "images" / "metadata.jsonl").read_text().splitlines()]
    assert rows and all(row["angle"] == 0.0 for row in rows)
    zoom = tmp_path / "zoom"
    assert main(["world", "make", str(zoom), "--preset", "zoom-in", "--scale", "0.1", "--camera-speed-range", "0.8", "1"]) == 0
    rows = [json.loads(line) for line in (zoom / "videos.jsonl").read_text().splitlines()]
    assert rows and all(row["camera"] == "zoom in" and 0.8 <= row["camera_speed"] <= 1.0 for row in rows)
    assert main(["world", "make", str(tmp_path / "bad"), "--camera-speed-range", "0", "1"]) != 0
    assert "camera_speed_range" in capsys.readouterr().err
    faint, flat = tmp_path / "faint", tmp_path / "flat"
    for folder, amplitude in ((faint, "8"), (flat, "0")):
        assert main(["world", "make", str(folder), "--scale", "0.01", "--texture-amplitude", amplitude]) == 0
    assert json.loads((faint / "world.json").read_text())["config"]["texture_amplitude"] == 8.0

    def background_spread(folder) -> float:
        """Largest per-channel std of the first still's pixels well away from its shape."""
        from PIL import Image

        row = json.loads((folder / "images" / "metadata.jsonl").read_text().splitlines()[0])
        image = np.asarray(Image.open(folder / "images" / row["file_name"]), dtype=float)
        y, x = np.mgrid[0:64, 0:64] + 0.5
        far = np.hypot(x - row["x"] * 64, y - row["y"] * 64) > 2 * row["radius"] * 64 + 2
        return float(image[far].std(axis=0).max())

    assert background_spread(flat) == 0.0 and background_spread(faint) > 0.5
    assert main(["world", "make", str(tmp_path / "bad"), "--texture-amplitude", "-1"]) != 0
    assert "texture_amplitude" in capsys.readouterr().err
    fixed = tmp_path / "fixed"
    assert main(["world", "make", str(fixed), "--scale", "0.01", "--fixed-textures"]) == 0
    assert json.loads((fixed / "world.json").read_text())["config"]["fixed_textures"] is True
    rows = [json.loads(line) for line in (fixed / "images" / "metadata.jsonl").read_text().splitlines()]
    assert len({(row["background"], row["texture_seed"]) for row in rows}) == len({row["background"] for row in rows})


def test_generate_keyframes_first(files, sparsectrl_file, tmp_path, capsys) -> None:
    model, motion = files
    encoder, _ = sparsectrl_file
    common = ["--model", str(model), "--motion-module", str(motion), "--frames", "6", "--width", "32", "--height", "32",
              "--steps", "2", "--seed", "5"]
    out = tmp_path / "long.gif"
    assert main(["generate", "a red circle", *common, "--context-length", "4", "--context-overlap", "2",
                 "--keyframes-first", "--no-keyframe-retime", "--control-model", str(encoder), "--fill-guidance", "4",
                 "-o", str(out)]) == 0
    assert _frame_count(out) == 6
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["keyframes_first"]["keyframes"] == [0, 2, 4] and sidecar["guidance_scale"] == 4
    assert sidecar["keyframes_first"]["retime"] is False
    assert sidecar["keyframes_first"]["replace"] == 0.3 and sidecar["keyframes_first"]["motion_lora"] is False
    travelled = tmp_path / "travel.gif"  # prompt travel: the keyed prompts reach both passes, recorded as given
    assert main(["generate", *common, "--prompt-at", "0:a red circle", "--prompt-at", "4:a blue circle",
                 "--context-length", "4", "--context-overlap", "2", "--keyframes-first", "--control-model", str(encoder),
                 "--keyframe-levels", "2", "-o", str(travelled)]) == 0
    sidecar = json.loads(travelled.with_name(travelled.name + ".json").read_text())
    assert sidecar["prompt"] == {"0": "a red circle", "4": "a blue circle"} and sidecar["keyframes_first"]["retime"]
    assert sidecar["keyframes_first"]["levels"] == 2
    refusals = [
        ([], "add --context-length"),
        (["--context-length", "4", "--context-overlap", "2", "--control", "rgb"], "makes its own keyframes"),
        (["--context-length", "4", "--context-overlap", "2", "--keyframe-spacing", "1"], "spacing of at least 2"),
    ]
    for extra, message in refusals:
        code = main(["generate", "x", *common, "--keyframes-first", "--control-model", str(encoder), *extra,
                     "-o", str(tmp_path / "bad.gif")])
        assert code == 2 and message in capsys.readouterr().err
