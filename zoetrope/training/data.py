"""Training data from real files: captioned video clips (WebVid-style or a plain index) and captioned image folders.

Behaviour follows the official AnimateDiff `WebVid10M` dataset (Guo et al., 2023, arXiv 2307.04725; see
/work/shared/reference/animatediff-official.md §6 "Data"):

- a clip of `num_frames` frames spaced `sample_stride` apart: `clip_len = min(n, (num_frames - 1) * stride + 1)`,
  a random start in `[0, n - clip_len]`, indices `linspace(start, start + clip_len - 1, num_frames)` truncated to
  int (so a video shorter than the full span is squeezed into it rather than rejected);
- image mode takes one random frame (the image-finetune / domain-adapter stages);
- transforms: to [0, 1] -> random horizontal flip -> resize the short side -> centre crop -> normalise to [-1, 1];
- an item is `{"pixel_values": (f, c, h, w) or (c, h, w) float, "text": caption}`.

Where we differ from the official code, on purpose:
- a bad file (missing, unreadable, shorter than `num_frames`) never raises: the item is replaced by another index
  drawn from the item's own generator, counted in `dataset.skipped` by reason and logged once per file; only when
  `max_consecutive_failures` replacements in a row fail do we raise a `MediaError` (the data is unusable, and a
  loop of silent retries would hang training);
- randomness is not global: every item draws from a generator seeded by `(seed, rank, epoch, index)`, so an item is
  the same whichever DataLoader worker loads it, differs per epoch (`set_epoch`) and per DDP rank, and a run can be
  reproduced exactly;
- `size` may be `(height, width)`: the resize then scales the short side so that the frame covers both sides.

`skipped` counts what the process that loaded the items saw: with DataLoader workers each worker has its own copy.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.data import Dataset

from zoetrope.errors import ConfigError, MediaError
from zoetrope.media import IMAGE_SUFFIXES, read_image

logger = logging.getLogger(__name__)

WEBVID_COLUMNS: tuple[str, ...] = ("videoid", "name")
"""Columns a WebVid CSV needs (`page_dir` is in the official files but unused: videos sit flat in video_folder)."""

PLAIN_COLUMNS: tuple[str, ...] = ("path", "caption")
"""Columns of a plain CSV/JSONL index."""

IMAGE_INDEX_NAMES: tuple[str, ...] = ("metadata.jsonl", "captions.jsonl")
"""Caption indexes an image folder may hold (Hugging Face `imagefolder` convention: `file_name`, `text`)."""


class SkipItem(Exception):
    """Internal: this file cannot give an item; `reason` is the `skipped` counter key."""

    def __init__(self, reason: str, path: Path, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.path = path


@dataclass
class VideoDataConfig:
    """Where the clips are and how to sample them. Defaults are the official motion-module training values.

    Exactly one of `csv_path` / `jsonl_path` is given. A CSV with `videoid, name` columns is WebVid-style
    (`{video_folder}/{videoid}.mp4`, caption `name`); otherwise the CSV/JSONL needs `path, caption`, with paths
    relative to `video_folder` when given, else to the index file's folder.
    """

    csv_path: str | None = None
    jsonl_path: str | None = None
    video_folder: str | None = None
    num_frames: int = 16
    sample_stride: int = 4
    size: int | tuple[int, int] = 256
    random_flip: bool = True
    image_mode: bool = False
    seed: int = 0
    max_consecutive_failures: int = 50

    def __post_init__(self) -> None:
        if (self.csv_path is None) == (self.jsonl_path is None):
            raise ConfigError(
                f"data: csv_path={self.csv_path!r}, jsonl_path={self.jsonl_path!r}; give exactly one index file"
            )
        for name in ("num_frames", "sample_stride", "max_consecutive_failures"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{name}={value!r}; expected a positive integer")
        self.size = _size_pair(self.size, "data.size")


@dataclass
class ImageDataConfig:
    """A folder of captioned images for the image stages (image finetune, domain adapter, personalisation).

    Captions come from `metadata.jsonl` / `captions.jsonl` (`file_name`, `text`) in the folder if present, else from
    `name.txt` beside each `name.png`; an image without either trains with an empty caption (a warning says how
    many).
    """

    folder: str
    size: int | tuple[int, int] = 256
    random_flip: bool = True
    seed: int = 0
    max_consecutive_failures: int = 50

    def __post_init__(self) -> None:
        if not isinstance(self.max_consecutive_failures, int) or self.max_consecutive_failures < 1:
            raise ConfigError(f"data.max_consecutive_failures={self.max_consecutive_failures!r}; expected >= 1")
        self.size = _size_pair(self.size, "data.size")


# --------------------------------------------------------------------------------------------------------------
# Pure helpers (tested directly).


def sample_frame_indices(num_available: int, num_frames: int, stride: int, generator: torch.Generator) -> list[int]:
    """The official clip sampling: span `min(n, (num_frames - 1) * stride + 1)` frames from a random start and
    take `num_frames` evenly spaced indices over it (`np.linspace(..., dtype=int)`, i.e. truncation)."""
    clip_length = min(num_available, (num_frames - 1) * stride + 1)
    start = int(torch.randint(0, num_available - clip_length + 1, (1,), generator=generator))
    return np.linspace(start, start + clip_length - 1, num_frames, dtype=int).tolist()


def video_transform(frames: torch.Tensor, size: tuple[int, int], flip: bool) -> torch.Tensor:
    """uint8 `(f, h, w, c)` -> float `(f, c, H, W)` in [-1, 1]: /255, optional flip, resize to cover, centre crop.

    The resize scales so the frame covers `size` (for a square size: the short side becomes `size`, as
    torchvision's `Resize(int)` in the official code), bilinear with antialiasing; the crop offset rounds like
    torchvision's `CenterCrop`.
    """
    pixels = rearrange(frames, "f h w c -> f c h w").float() / 255.0
    if flip:
        pixels = pixels.flip(-1)
    target_height, target_width = size
    height, width = pixels.shape[-2:]
    if target_height * width >= target_width * height:  # the height decides the scale
        resized = (target_height, max(target_width, int(target_height * width / height)))
    else:
        resized = (max(target_height, int(target_width * height / width)), target_width)
    if resized != (height, width):
        pixels = F.interpolate(pixels, size=resized, mode="bilinear", antialias=True, align_corners=False)
    top = int(round((resized[0] - target_height) / 2.0))
    left = int(round((resized[1] - target_width) / 2.0))
    pixels = pixels[..., top : top + target_height, left : left + target_width]
    return (pixels - 0.5) / 0.5


def count_video_frames(path: Path) -> int:
    """Frames in the first video stream: the header count when the container has one, else counted packets."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size)


def decode_frames(path: Path, indices: Sequence[int]) -> np.ndarray:
    """Decode the frames at `indices` (any order, repeats allowed) as uint8 `(len(indices), h, w, 3)`.

    One sequential decode that stops after the last wanted frame and converts only the wanted ones to RGB: no
    seeking (exact for every codec) and memory bounded by the clip, not the video.
    """
    wanted = set(indices)
    last = max(wanted)
    found: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        for position, frame in enumerate(container.decode(video=0)):
            if position in wanted:
                found[position] = frame.to_ndarray(format="rgb24")
            if position >= last:
                break
    missing = wanted - found.keys()
    if missing:
        raise MediaError(f"{path}: ended before frame {min(missing)}; the file is truncated")
    return np.stack([found[index] for index in indices])


# --------------------------------------------------------------------------------------------------------------
# Index files.


def read_index(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV (header line) or JSONL (one object a line) index."""
    if not path.is_file():
        raise ConfigError(f"data index {path}: no such file; check csv_path/jsonl_path")
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{path}:{number}: not JSON ({error.msg}); each line must be one JSON object") from error
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{number}: a {type(row).__name__}; each line must be one JSON object")
            rows.append(row)
        return rows
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _require_columns(rows: list[dict[str, Any]], columns: Sequence[str], path: Path) -> None:
    for number, row in enumerate(rows, start=1):
        missing = [column for column in columns if row.get(column) in (None, "")]
        if missing:
            raise ConfigError(
                f"{path}: row {number} lacks {missing} (columns found: {sorted(row)}); expected "
                f"{list(WEBVID_COLUMNS)} (WebVid) or {list(PLAIN_COLUMNS)}"
            )


def _video_entries(config: VideoDataConfig) -> tuple[Path, tuple[Path, ...], list[tuple[str, str]]]:
    """(index file, folders to resolve paths against in order, [(relative video path, caption)]).

    Strings, not Paths: a WebVid index has millions of rows. A plain index's paths are tried under `video_folder`
    first, then under the index's folder, so `videos/x.mp4` rows work with or without `video_folder` set.
    """
    index_path = Path(config.csv_path or config.jsonl_path)  # type: ignore[arg-type]
    rows = read_index(index_path)
    if not rows:
        raise ConfigError(f"{index_path}: the index has no rows; add one row per clip")
    columns = set(rows[0])
    if set(WEBVID_COLUMNS) <= columns:
        _require_columns(rows, WEBVID_COLUMNS, index_path)
        roots = (Path(config.video_folder) if config.video_folder is not None else index_path.parent,)
        return index_path, roots, [(f"{row['videoid']}.mp4", str(row["name"])) for row in rows]
    if set(PLAIN_COLUMNS) <= columns:
        _require_columns(rows, PLAIN_COLUMNS, index_path)
        roots = (index_path.parent,)
        if config.video_folder is not None:
            roots = (Path(config.video_folder), index_path.parent)
        return index_path, roots, [(str(row["path"]), str(row["caption"])) for row in rows]
    raise ConfigError(
        f"{index_path}: columns found {sorted(columns)}; expected {list(WEBVID_COLUMNS)} (WebVid: "
        f"video_folder/videoid.mp4, caption name) or {list(PLAIN_COLUMNS)}"
    )


def _size_pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(value, int) and value > 0 for value in pair):
        raise ConfigError(f"{name}={size!r}; expected a positive int or [height, width]")
    return (pair[0], pair[1])


# --------------------------------------------------------------------------------------------------------------
# Datasets.


class _SkippingDataset(Dataset):
    """Per-item generators, `set_epoch`, and the skip-and-replace policy shared by the video and image datasets."""

    def __init__(self, seed: int, rank: int, max_consecutive_failures: int, source: Path) -> None:
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self.max_consecutive_failures = max_consecutive_failures
        self.source = source
        self.skipped: Counter[str] = Counter()
        self._warned: set[Path] = set()  # warn once per bad file

    def __len__(self) -> int:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """New random draws (clip starts, flips, replacements) for each epoch, as DistributedSampler.set_epoch."""
        self.epoch = epoch

    def item_generator(self, index: int) -> torch.Generator:
        """The generator of item `index` this epoch on this rank: a hash of (seed, rank, epoch, index)."""
        state = np.random.SeedSequence([self.seed, self.rank, self.epoch, index]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def load(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        generator = self.item_generator(index)
        candidate = index
        reasons: Counter[str] = Counter()
        example: SkipItem | None = None
        for _ in range(self.max_consecutive_failures):
            try:
                return self.load(candidate, generator)
            except SkipItem as skip:
                self.skipped[skip.reason] += 1
                reasons[skip.reason] += 1
                example = example or skip
                if skip.path not in self._warned:
                    self._warned.add(skip.path)
                    logger.warning("skipping %s (%s): %s", skip.path, skip.reason, skip)
                candidate = int(torch.randint(0, len(self), (1,), generator=generator))
        summary = ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items()))
        raise MediaError(
            f"{self.source}: {self.max_consecutive_failures} items in a row failed to load ({summary}; "
            f"e.g. {example.path if example else '?'}: {example}); the data is unusable: check the index paths "
            "and the folder the files live in"
        )


class VideoDataset(_SkippingDataset):
    """Captioned clips from a WebVid-style CSV or a plain CSV/JSONL index (see `VideoDataConfig`).

    `rank` (the DDP rank) enters every item's seed so ranks draw differently, as the official per-rank seed.
    """

    def __init__(self, config: VideoDataConfig, rank: int = 0) -> None:
        index_path, self.roots, self.entries = _video_entries(config)
        super().__init__(config.seed, rank, config.max_consecutive_failures, index_path)
        self.config = config

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        relative, caption = self.entries[index]
        candidates = [root / relative for root in self.roots]
        path = next((candidate for candidate in candidates if candidate.is_file()), candidates[0])
        needed = 1 if self.config.image_mode else self.config.num_frames
        if not path.is_file():
            raise SkipItem("missing", path, "no such file")
        try:
            available = count_video_frames(path)
        except (MediaError, av.FFmpegError, OSError, ValueError) as error:
            raise SkipItem("unreadable", path, f"cannot open ({error})") from error
        if available < needed:
            raise SkipItem("too_short", path, f"{available} frames, need {needed}")
        if self.config.image_mode:
            indices = [int(torch.randint(0, available, (1,), generator=generator))]
        else:
            indices = sample_frame_indices(available, self.config.num_frames, self.config.sample_stride, generator)
        flip = bool(torch.rand((), generator=generator) < 0.5) and self.config.random_flip  # always draw: same stream
        try:
            frames = decode_frames(path, indices)
        except (MediaError, av.FFmpegError, OSError, ValueError) as error:
            raise SkipItem("unreadable", path, f"cannot decode ({error})") from error
        pixels = video_transform(torch.from_numpy(frames), self.config.size, flip)  # type: ignore[arg-type]
        return {"pixel_values": pixels[0] if self.config.image_mode else pixels, "text": caption}


class ImageFolderDataset(_SkippingDataset):
    """Captioned images from one folder (see `ImageDataConfig`); items are `pixel_values (c, h, w)` and `text`."""

    def __init__(self, config: ImageDataConfig, rank: int = 0) -> None:
        folder = Path(config.folder)
        if not folder.is_dir():
            raise ConfigError(f"data.folder={config.folder!r}: no such folder; point it at the folder of images")
        self.entries = _image_entries(folder)
        super().__init__(config.seed, rank, config.max_consecutive_failures, folder)
        self.config = config

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        path, caption = self.entries[index]
        flip = bool(torch.rand((), generator=generator) < 0.5) and self.config.random_flip
        if not path.is_file():
            raise SkipItem("missing", path, "no such file")
        try:
            image = read_image(path)
        except MediaError as error:
            raise SkipItem("unreadable", path, f"cannot read ({error.__cause__ or error})") from error
        pixels = video_transform(torch.from_numpy(image)[None], self.config.size, flip)  # type: ignore[arg-type]
        return {"pixel_values": pixels[0], "text": caption}


def _image_entries(folder: Path) -> list[tuple[Path, str]]:
    for name in IMAGE_INDEX_NAMES:
        index_path = folder / name
        if index_path.is_file():
            rows = read_index(index_path)
            for number, row in enumerate(rows, start=1):
                if "file_name" not in row or "text" not in row:
                    raise ConfigError(
                        f"{index_path}:{number}: keys found {sorted(row)}; expected 'file_name' and 'text'"
                    )
            if not rows:
                raise ConfigError(f"{index_path}: no rows; add one {{\"file_name\", \"text\"}} object per image")
            return [(folder / str(row["file_name"]), str(row["text"])) for row in rows]
    images = sorted(item for item in folder.iterdir() if item.suffix.lower() in IMAGE_SUFFIXES and item.is_file())
    if not images:
        raise ConfigError(f"data.folder={str(folder)!r}: no images ({', '.join(IMAGE_SUFFIXES)}) and no metadata.jsonl")
    entries = []
    uncaptioned = 0
    for image in images:
        caption_file = image.with_suffix(".txt")
        if caption_file.is_file():
            entries.append((image, caption_file.read_text(encoding="utf-8").strip()))
        else:
            uncaptioned += 1
            entries.append((image, ""))
    if uncaptioned:
        logger.warning("%s: %d of %d images have no caption .txt; they train with an empty caption",
                       folder, uncaptioned, len(images))
    return entries

