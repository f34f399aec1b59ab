"""Write the shapes world to disk in the layouts real datasets use, so the real loaders are the ones exercised.

Layout of `make_world(out_dir, ...)`:

    out_dir/
      world.json                 how the set was made (config, seed, counts, motions, camera, style)
      videos.csv                 WebVid-10M columns: videoid,name,page_dir (name = caption), what AnimateDiff reads
      videos.jsonl               one row per clip: path, caption, videoid, num_frames, fps + the ClipSpec fields
      videos/{videoid}.mp4       H.264 clips (video domain: watermark band + compression artefacts)
      images/{id}.png            clean image-domain pictures (the LAION stand-in)
      images/metadata.jsonl      Hugging Face imagefolder rows: file_name, text (+ the ClipSpec fields)

Video ids are 7-digit integers (1000000, 1000001, ...) like WebVid's, so a CSV reader that parses them as numbers
still finds `{videoid}.mp4`. Clips and images are drawn from separate random streams derived from `seed`, so adding
images does not change the clips.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from zoetrope import __version__
from zoetrope.errors import InputError
from zoetrope.media import save_video
from zoetrope.world.render import (
    BASE_MOTIONS,
    ClipSpec,
    WorldConfig,
    caption,
    render_clip,
    render_image,
    sample_clip_spec,
)

logger = logging.getLogger(__name__)

FIRST_VIDEO_ID = 1_000_000
PAGE_DIR = "shapes_world"
WEBVID_COLUMNS = ("videoid", "name", "page_dir")


@dataclass(frozen=True)
class WorldPreset:
    """A named recipe for `make_world`: how many clips and images, which motions, camera and style."""

    num_clips: int
    num_images: int
    motions: tuple[str, ...] = BASE_MOTIONS
    camera: str | None = None
    style: str | None = None
    description: str = ""
    image_motion_fraction: float = 0.0


PRESETS: dict[str, WorldPreset] = {
    "base": WorldPreset(
        500,
        500,
        description="motion-module and domain-adapter data: 8 object motions, no camera",
        image_motion_fraction=0.75,
    ),
    "zoom-in": WorldPreset(50, 0, ("still",), camera="zoom in", description="MotionLoRA data: camera zooming in"),
    "zoom-out": WorldPreset(50, 0, ("still",), camera="zoom out", description="MotionLoRA data: camera zooming out"),
    "pan-left": WorldPreset(50, 0, ("still",), camera="pan left", description="MotionLoRA data: camera panning left"),
    "pan-right": WorldPreset(
        50, 0, ("still",), camera="pan right", description="MotionLoRA data: camera panning right"
    ),
    "pastel": WorldPreset(
        0, 200, style="pastel", description="personalised image set: pastel palette, trigger zxq", image_motion_fraction=0.75
    ),
    "striped": WorldPreset(
        0, 200, style="striped", description="personalised image set: striped fill, trigger vkw", image_motion_fraction=0.75
    ),
}
"""The standard sets: `base` for stages 1-2, one per camera motion for MotionLoRA, one per style for the
personalised (DreamBooth stand-in) image model. Their images have motion captions (`image_motion_fraction`, see
`make_world`)."""


@dataclass(frozen=True)
class WorldFiles:
    """Where `make_world` put things."""

    root: Path
    videos_csv: Path
    videos_jsonl: Path
    images_metadata: Path
    num_clips: int
    num_images: int


def make_world(
    out_dir: str | Path,
    config: WorldConfig | None = None,
    num_clips: int = 500,
    num_images: int = 500,
    seed: int = 0,
    motions: tuple[str, ...] | None = None,
    camera: str | tuple[str, ...] | None = None,
    style: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    image_motion_fraction: float = 0.0,
) -> WorldFiles:
    """Render `num_clips` video-domain clips and `num_images` clean images and write them in the layout above.

    `motions` defaults to `config.motions` (the eight base motions), or to ("still",) when `camera` is set, so a
    MotionLoRA set shows the camera move and nothing else.

    `image_motion_fraction` of the images are stills *of something moving*: the first frame of a clip with one of
    `config.motions`, captioned with its motion ("a red square moving left on a grey background"), like the LAION
    photos of a running dog that SD is trained on. Why: the motion module has no text input of its own; it reads
    the motion from the image UNet's features, which carry the motion words only if the image model learned to
    attend to them. Without such captions the base model never sees "moving left" and the motion words reach the
    motion module as untrained embeddings. The first frame also carries a real, weak cue (a clip moving left starts
    on the right, one growing starts small). The rest are captioned without motion. Deterministic: the same
    arguments write byte-identical CSV/JSONL and pixel-identical frames. Refuses to write into a folder that
    already holds a world unless `overwrite=True`.
    """
    config = config or WorldConfig()
    root = Path(out_dir)
    if num_clips < 0 or num_images < 0 or num_clips + num_images == 0:
        raise InputError(
            f"make_world: found num_clips={num_clips}, num_images={num_images}; expected non-negative counts with "
            "at least one clip or image"
        )
    files = WorldFiles(
        root=root,
        videos_csv=root / "videos.csv",
        videos_jsonl=root / "videos.jsonl",
        images_metadata=root / "images" / "metadata.jsonl",
        num_clips=num_clips,
        num_images=num_images,
    )
    if not overwrite and (files.videos_csv.exists() or files.images_metadata.exists()):
        raise InputError(f"{root}: already holds a shapes world; choose an empty folder or pass overwrite=True")
    if not 0.0 <= image_motion_fraction <= 1.0:
        raise InputError(f"make_world: image_motion_fraction={image_motion_fraction}; expected a fraction in [0, 1]")
    if motions is None:
        motions = ("still",) if camera is not None else config.motions

    clip_rng = np.random.default_rng([seed, 0])
    image_rng = np.random.default_rng([seed, 1])
    bar = tqdm(total=num_clips + num_images, desc="shapes world", unit="item", disable=not progress)
    try:
        if num_clips:
            (root / "videos").mkdir(parents=True, exist_ok=True)
            csv_rows, json_rows = [], []
            for index in range(num_clips):
                spec = sample_clip_spec(clip_rng, config, motions=motions, camera=camera, style=style)
                videoid = str(FIRST_VIDEO_ID + index)
                relative = f"videos/{videoid}.mp4"
                save_video(render_clip(spec, config, video_domain=True), root / relative, fps=config.fps)
                text = caption(spec)
                csv_rows.append((videoid, text, PAGE_DIR))
                json_rows.append(
                    {
                        "path": relative,
                        "caption": text,
                        "videoid": videoid,
                        "num_frames": config.num_frames,
                        "fps": config.fps,
                        **spec.to_dict(),
                    }
                )
                bar.update(1)
            with open(files.videos_csv, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(WEBVID_COLUMNS)
                writer.writerows(csv_rows)
            _write_jsonl(files.videos_jsonl, json_rows)
        if num_images:
            (root / "images").mkdir(parents=True, exist_ok=True)
            image_rows = []
            for index in range(num_images):
                moving = bool(image_rng.random() < image_motion_fraction)
                image_motions = config.motions if moving else ("still",)
                spec = sample_clip_spec(image_rng, config, motions=image_motions, style=style)
                file_name = f"{index:06d}.png"
                Image.fromarray(render_image(spec, config)).save(root / "images" / file_name)
                image_rows.append({"file_name": file_name, "text": caption(spec, video=moving), **spec.to_dict()})
                bar.update(1)
            _write_jsonl(files.images_metadata, image_rows)
    finally:
        bar.close()
    manifest = {
        "zoetrope_version": __version__,
        "seed": seed,
        "num_clips": num_clips,
        "num_images": num_images,
        "motions": list(motions),
        "camera": camera if camera is None or isinstance(camera, str) else list(camera),
        "style": style,
        "image_motion_fraction": image_motion_fraction,
        "config": {key: list(value) if isinstance(value, tuple) else value for key, value in vars(config).items()},
    }
    (root / "world.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %d clips and %d images to %s", num_clips, num_images, root)
    return files


def make_preset(
    name: str,
    out_dir: str | Path,
    config: WorldConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    scale: float = 1.0,
    overwrite: bool = False,
) -> WorldFiles:
    """`make_world` with a named recipe from `PRESETS`; `scale` multiplies the counts (e.g. 0.1 for a smoke run)."""
    if name not in PRESETS:
        raise InputError(f"world preset {name!r}: unknown; expected one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    return make_world(
        out_dir,
        config,
        num_clips=int(round(preset.num_clips * scale)),
        num_images=int(round(preset.num_images * scale)),
        seed=seed,
        motions=preset.motions,
        camera=preset.camera,
        style=preset.style,
        progress=progress,
        overwrite=overwrite,
        image_motion_fraction=preset.image_motion_fraction,
    )


def read_clip_specs(jsonl_path: str | Path) -> list[tuple[str, str, ClipSpec]]:
    """Read `videos.jsonl` (or `images/metadata.jsonl`) back as (path, caption, ClipSpec) rows."""
    rows = []
    path = Path(jsonl_path)
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            data = json.loads(line)
            rows.append(
                (
                    data.get("path", data.get("file_name")),
                    data.get("caption", data.get("text")),
                    ClipSpec.from_dict(data),
                )
            )
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
