"""Frames <-> files: GIF, MP4 (H.264), animated WebP and PNG frames, each carrying the metadata that made it.

Why this module exists: a generated clip is only reproducible if the prompt, seed and settings travel with the file,
and every format hides metadata somewhere different. `save_video` writes the metadata into the file itself (GIF
comment, MP4 `comment` tag, WebP EXIF ImageDescription, PNG text chunk) *and* into a JSON sidecar that any tool can
read; `read_metadata` reads it back from either place.

Conventions:
- frames handed to `save_video` are either the pipeline's per-video output, a float tensor `(c, f, h, w)` in [0, 1],
  or uint8 frames `(f, h, w, c)` (numpy or torch), or a list of PIL images;
- everything read back is uint8 numpy `(f, h, w, 3)` RGB, the layout every decoder and metric here agrees on;
- every file is written to a temporary name in the target folder and renamed into place, so a crash or a reader
  polling the folder never sees half a video.

Decoding goes through PyAV (FFmpeg) for MP4 and other containers. GIF and WebP are read with Pillow, because FFmpeg
cannot decode animated WebP and Pillow keeps the exact GIF palette. Both GIF and WebP encoders merge identical
consecutive frames into one longer frame; the readers undo that (a constant-rate decode, like FFmpeg's `-vsync cfr`),
so frame counts survive a round trip whenever the clip moves at least once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageSequence
from PIL.PngImagePlugin import PngInfo

from zoetrope.errors import InputError, MediaError

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES: tuple[str, ...] = (".gif", ".mp4", ".webp")
"""Suffixes `save_video` writes as one file; a path without a suffix is a folder of PNG frames."""

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
"""Suffixes read as images when they sit in a folder of frames."""

METADATA_KEY = "zoetrope"
"""PNG text-chunk keyword that holds the metadata JSON."""

FPS_KEY = "fps"
"""PNG text-chunk keyword that holds the frame rate (PNG has no timing of its own)."""

FOLDER_METADATA = "metadata.json"
"""Sidecar name for a folder of frames."""

FRAME_NAME = "frame_{index:05d}.png"
"""Frame file names in a folder written by `save_video`."""

MP4_CRF = 18
"""x264 constant rate factor: 18 is visually lossless for most content and keeps the files small."""

WEBP_QUALITY = 90
"""Lossy WebP quality; the WebP encoder's default (80) visibly smears thin edges."""

DEFAULT_FPS = 8.0
"""Frame rate reported for stills and frame folders that carry none (AnimateDiff's usual output rate)."""

_EXIF_IMAGE_DESCRIPTION = 0x010E
_PATTERN = re.compile(r"%0?\d*d")


# --------------------------------------------------------------------------------------------------------------
# Frames in memory.


def psnr(first: np.ndarray, second: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two 8-bit-level images (any equal shapes) in dB (inf when equal)."""
    error = float(np.mean((np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)) ** 2))
    return math.inf if error == 0 else 10.0 * math.log10(255.0**2 / error)


def frames_to_uint8(frames: torch.Tensor | np.ndarray | Sequence[Image.Image]) -> np.ndarray:
    """Any accepted frame layout -> uint8 numpy `(f, h, w, 3)`.

    Accepted: a floating tensor/array `(c, f, h, w)` in [0, 1] (the pipeline's per-video output; clamped, then
    rounded), a uint8 tensor/array `(f, h, w, c)`, or a list of PIL images of one size. One channel is repeated to
    RGB; a fourth (alpha) channel is dropped.
    """
    if isinstance(frames, (list, tuple)):
        if not frames or not all(isinstance(image, Image.Image) for image in frames):
            raise InputError("frames: a list must hold at least one PIL image and nothing else")
        sizes = {image.size for image in frames}
        if len(sizes) > 1:
            raise InputError(f"frames: the PIL images have different sizes {sorted(sizes)}; resize them to one size")
        array = np.stack([np.asarray(image.convert("RGB")) for image in frames])
    elif isinstance(frames, (torch.Tensor, np.ndarray)):
        if isinstance(frames, torch.Tensor):
            frames = frames.detach().cpu()
            array = (frames.float() if frames.is_floating_point() else frames).numpy()  # numpy has no bfloat16
        else:
            array = np.asarray(frames)
        if array.ndim != 4:
            raise InputError(
                f"frames: got shape {tuple(array.shape)}; expected (c, f, h, w) floats in [0, 1] or (f, h, w, c) uint8"
            )
        if np.issubdtype(array.dtype, np.floating):
            array = rearrange(array, "c f h w -> f h w c")
            array = np.round(np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
        elif array.dtype != np.uint8:
            raise InputError(f"frames: dtype {array.dtype}; expected floats in [0, 1] (c, f, h, w) or uint8 (f, h, w, c)")
    else:
        raise InputError(f"frames: got {type(frames).__name__}; expected a tensor, a numpy array or a list of PIL images")
    channels = array.shape[-1]
    if channels == 1:
        array = np.repeat(array, 3, axis=-1)
    elif channels == 4:
        array = array[..., :3]
    elif channels != 3:
        raise InputError(
            f"frames: {channels} channels in shape {tuple(array.shape)}; expected 1, 3 or 4 "
            "(floats are (c, f, h, w), uint8 is (f, h, w, c))"
        )
    if 0 in array.shape:
        raise InputError(f"frames: empty clip of shape {tuple(array.shape)}")
    return np.ascontiguousarray(array)


def make_grid(videos: Sequence[torch.Tensor], columns: int) -> torch.Tensor:
    """Tile videos `(c, f, h, w)` into one video `(c, f, rows*h, columns*w)`, row by row; empty cells are black.

    Why: comparing prompts or seeds side by side in one file keeps them in sync when played.
    """
    if not videos:
        raise InputError("make_grid: no videos given")
    if columns < 1:
        raise InputError(f"make_grid: columns={columns}; expected a positive number")
    shapes = {tuple(video.shape) for video in videos}
    if len(shapes) > 1 or len(next(iter(shapes))) != 4:
        raise InputError(f"make_grid: videos have shapes {sorted(shapes)}; expected one shape (c, f, h, w)")
    columns = min(columns, len(videos))
    rows = math.ceil(len(videos) / columns)
    cells = list(videos) + [torch.zeros_like(videos[0])] * (rows * columns - len(videos))
    return rearrange(torch.stack(cells), "(rows columns) c f h w -> c f (rows h) (columns w)", rows=rows)


# --------------------------------------------------------------------------------------------------------------
# Writing.


def save_video(
    frames: torch.Tensor | np.ndarray | Sequence[Image.Image],
    path: str | os.PathLike,
    fps: float = 8,
    metadata: dict | None = None,
    loop: int = 0,
) -> Path:
    """Write a clip; the format comes from the suffix. Returns the path written (the folder for PNG frames).

    - `.gif`: palette per frame (exact when a frame has at most 256 colours, else median cut without dithering,
      which would flicker); metadata JSON in the GIF comment. GIF timing is in 1/100 s: frame times alternate
      (120/130 ms for 8 fps) so the average rate is exact.
    - `.mp4`: H.264 (libx264, CRF 18) in yuv420p, tagged BT.601 limited range, which is what the RGB->YUV conversion
      uses, so players show the colours we meant. 4:2:0 needs even sizes: an odd height or width is **padded** by
      one row/column repeating the edge pixels (nothing is cropped away). Metadata JSON in the container's `comment`.
    - `.webp`: animated lossy WebP (quality 90); metadata JSON in the EXIF ImageDescription.
    - a path without a suffix: a folder of `frame_00000.png`, ... ; a `.png` path with a printf pattern
      (`shot_%04d.png`): frames named by the pattern; a plain `.png` path: a single frame. Metadata and the frame
      rate in PNG text chunks. Stale frames with higher numbers from an earlier, longer save are removed.
      Each file is written atomically; the folder as a whole is not.

    `loop` is the GIF/WebP loop count (0 = forever). With `metadata`, a sidecar JSON is also written: `<path>.json`
    beside a file (`clip.mp4.json`) or `metadata.json` inside the frame folder; without it, a stale sidecar from an
    earlier save to the same path is removed.
    """
    path = Path(path)
    if fps <= 0:
        raise InputError(f"fps={fps}; expected a positive frame rate")
    array = frames_to_uint8(frames)
    suffix = path.suffix.lower()
    text = _metadata_text(metadata) if metadata is not None else None
    if suffix == ".gif":
        with _atomic(path) as temporary:
            _write_gif(array, temporary, fps, text, loop)
    elif suffix == ".mp4":
        with _atomic(path) as temporary:
            _write_mp4(array, temporary, fps, text)
    elif suffix == ".webp":
        with _atomic(path) as temporary:
            _write_webp(array, temporary, fps, text, loop)
    elif suffix == ".png" or suffix == "":
        return _write_png_frames(array, path, fps, metadata, text)
    else:
        raise MediaError(
            f"{path}: unknown video suffix {path.suffix!r}; use one of {', '.join(VIDEO_SUFFIXES)}, '.png' "
            "(one frame or a pattern like frame_%05d.png) or a folder path without a suffix for PNG frames"
        )
    _update_sidecar(path.with_name(path.name + ".json"), metadata)
    return path


def _metadata_text(metadata: dict) -> str:
    """Compact ASCII JSON: every container stores ASCII safely (EXIF text is ASCII by definition)."""
    try:
        return json.dumps(metadata, ensure_ascii=True, default=str)
    except (TypeError, ValueError) as error:
        raise InputError(f"metadata: cannot be written as JSON ({error}); use str/int/float/list/dict values") from error


def _update_sidecar(path: Path, metadata: dict | None) -> None:
    """Write the sidecar, or remove a stale one left by an earlier save to the same path (it would describe
    another clip)."""
    if metadata is None:
        path.unlink(missing_ok=True)
    else:
        _write_sidecar(path, metadata)


def _write_sidecar(path: Path, metadata: dict) -> None:
    text = json.dumps(metadata, ensure_ascii=False, indent=2, default=str) + "\n"
    with _atomic(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the body finished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        raise MediaError(f"{path}: cannot write ({error}); check the folder exists and is writable") from error
    finally:
        temporary.unlink(missing_ok=True)


def _frame_durations_ms(count: int, fps: float, tick_ms: int) -> list[int]:
    """Per-frame display times on the format's clock (GIF: 10 ms ticks, WebP: 1 ms), rounded cumulatively.

    Why: 8 fps is 125 ms a frame, which a 10 ms clock cannot hold; alternating 120/130 ms keeps the clip's
    length and average rate exact instead of drifting to 8.33 fps.
    """
    ends = [round((index + 1) * 1000.0 / fps / tick_ms) * tick_ms for index in range(count)]
    durations = [end - start for start, end in zip([0, *ends[:-1]], ends)]
    return [max(duration, tick_ms) for duration in durations]


def _to_palette(frame: np.ndarray) -> Image.Image:
    """RGB frame -> 'P' image; exact when the frame has at most 256 colours."""
    colours, inverse = np.unique(frame.reshape(-1, 3), axis=0, return_inverse=True)
    if len(colours) <= 256:
        image = Image.fromarray(inverse.reshape(frame.shape[:2]).astype(np.uint8), mode="P")
        image.putpalette(colours.astype(np.uint8).tobytes())
        return image
    return Image.fromarray(frame).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def _write_gif(array: np.ndarray, path: Path, fps: float, text: str | None, loop: int) -> None:
    images = [_to_palette(frame) for frame in array]
    durations = _frame_durations_ms(len(images), fps, tick_ms=10)
    options: dict[str, Any] = {"duration": durations, "loop": loop, "disposal": 1, "optimize": False}
    if text is not None:
        options["comment"] = text.encode("ascii")
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], **options)


def _write_webp(array: np.ndarray, path: Path, fps: float, text: str | None, loop: int) -> None:
    images = [Image.fromarray(frame) for frame in array]
    durations = _frame_durations_ms(len(images), fps, tick_ms=1)
    options: dict[str, Any] = {"duration": durations, "loop": loop, "quality": WEBP_QUALITY}
    if text is not None:
        exif = Image.Exif()
        exif[_EXIF_IMAGE_DESCRIPTION] = text
        options["exif"] = exif.tobytes()
    images[0].save(path, format="WEBP", save_all=True, append_images=images[1:], **options)


def _write_mp4(array: np.ndarray, path: Path, fps: float, text: str | None) -> None:
    height, width = array.shape[1:3]
    pad_height, pad_width = height % 2, width % 2
    if pad_height or pad_width:
        array = np.pad(array, ((0, 0), (0, pad_height), (0, pad_width), (0, 0)), mode="edge")
        logger.info("%s: padded %dx%d to %dx%d (yuv420p needs even sizes)", path, width, height, *array.shape[2:0:-1])
    container = av.open(str(path), mode="w", format="mp4")
    try:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = array.shape[2], array.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(MP4_CRF)}
        context = stream.codec_context
        # 6 = SMPTE 170M (BT.601), 1 = limited ("MPEG") range: what swscale's default RGB->YUV conversion uses.
        context.colorspace, context.color_primaries, context.color_trc, context.color_range = 6, 6, 6, 1
        if text is not None:
            container.metadata["comment"] = text
        for frame in array:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    except av.FFmpegError as error:
        raise MediaError(f"{path}: H.264 encoding failed ({error}); check PyAV was built with libx264") from error
    finally:
        container.close()


def _write_png_frames(array: np.ndarray, path: Path, fps: float, metadata: dict | None, text: str | None) -> Path:
    info = PngInfo()
    info.add_text(FPS_KEY, f"{fps:g}")
    if text is not None:
        info.add_text(METADATA_KEY, text)
    if path.suffix.lower() == ".png" and not _PATTERN.search(path.name):
        if len(array) != 1:
            raise MediaError(
                f"{path}: a plain .png holds one frame but the clip has {len(array)}; pass a folder path "
                "(frames frame_00000.png, ...) or a pattern like clip_%05d.png"
            )
        with _atomic(path) as temporary:
            Image.fromarray(array[0]).save(temporary, format="PNG", pnginfo=info)
        _update_sidecar(path.with_name(path.name + ".json"), metadata)
        return path
    if path.suffix.lower() == ".png":
        folder, pattern = path.parent, path.name
        name_of = lambda index: pattern % index  # noqa: E731 - printf pattern given by the user
    else:
        folder = path
        name_of = lambda index: FRAME_NAME.format(index=index)  # noqa: E731
    if folder.exists() and not folder.is_dir():
        raise MediaError(f"{folder}: exists and is not a folder; choose another output path or a video suffix")
    for index, frame in enumerate(array):
        with _atomic(folder / name_of(index)) as temporary:
            Image.fromarray(frame).save(temporary, format="PNG", pnginfo=info)
    stale = len(array)
    while (folder / name_of(stale)).is_file():  # frames left by an earlier, longer clip would be read back with it
        (folder / name_of(stale)).unlink()
        stale += 1
    _update_sidecar(folder / FOLDER_METADATA, metadata)
    return path


# --------------------------------------------------------------------------------------------------------------
# Reading.


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a clip to uint8 `(f, h, w, 3)` RGB and its frame rate.

    Reads any container/codec FFmpeg knows (through PyAV), GIF and animated WebP (through Pillow, expanded to a
    constant frame rate), a folder of images (natural sort order: frame_2 before frame_10), a printf pattern
    (`shot_%04d.png`), or a single image (one frame). Stills and frame folders report the `fps` PNG text chunk that
    `save_video` writes, else 8. `max_frames` stops decoding early (the cheap way to take a clip's head).
    """
    path = Path(path)
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max_frames={max_frames}; expected a positive number or None")
    if _PATTERN.search(path.name):
        files = _pattern_files(path)
        frames, fps = _read_image_files(files, path, max_frames)
    elif path.is_dir():
        files = sorted((item for item in path.iterdir() if item.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        frames, fps = _read_image_files(files, path, max_frames)
    elif not path.is_file():
        raise MediaError(f"{path}: no such file or folder; check the path")
    elif path.suffix.lower() in (".gif", ".webp"):
        frames, fps = _read_with_pillow(path, max_frames)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        frames, fps = _read_image_files([path], path, max_frames)
    else:
        frames, fps = _read_with_av(path, max_frames)
    return frames, fps


def read_image(path: str | os.PathLike, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Read one RGB image as uint8 `(h, w, 3)`; the first frame of a GIF/WebP.

    `size` (an int for a square, or `(height, width)`) resizes so the image covers the size, keeping its aspect
    ratio, then centre-crops: the same framing as the training data, so conditioning images are never stretched.
    """
    path = Path(path)
    image = _open_image(path).convert("RGB")
    if size is not None:
        height, width = _pair(size, "size")
        scale = max(height / image.height, width / image.width)
        resized = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
        image = image.resize(resized, Image.Resampling.BICUBIC)
        left, top = (resized[0] - width) // 2, (resized[1] - height) // 2
        image = image.crop((left, top, left + width, top + height))
    return np.asarray(image).copy()


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata `save_video` stored with a clip: from the file itself, else from its JSON sidecar; `{}` if none.

    A comment that is not a JSON object (a GIF from another tool) comes back as `{"comment": text}`.
    """
    path = Path(path)
    text: str | None = None
    if path.is_dir():
        sidecar = path / FOLDER_METADATA
        if sidecar.is_file():
            return _parse_metadata(sidecar.read_text(encoding="utf-8"), sidecar)
        files = sorted((item for item in path.iterdir() if item.suffix.lower() == ".png"), key=_natural_key)
        return _parse_metadata(_open_image(files[0]).info.get(METADATA_KEY), files[0]) if files else {}
    if _PATTERN.search(path.name):
        sidecar = path.parent / FOLDER_METADATA
        if sidecar.is_file():
            return _parse_metadata(sidecar.read_text(encoding="utf-8"), sidecar)
        files = _pattern_files(path)
        return _parse_metadata(_open_image(files[0]).info.get(METADATA_KEY), files[0]) if files else {}
    if not path.is_file():
        raise MediaError(f"{path}: no such file or folder; check the path")
    suffix = path.suffix.lower()
    if suffix == ".gif":
        comment = _open_image(path).info.get("comment")
        text = comment.decode("utf-8", errors="replace") if isinstance(comment, bytes) else comment
    elif suffix == ".webp":
        description = _open_image(path).getexif().get(_EXIF_IMAGE_DESCRIPTION)
        text = description.decode("utf-8", errors="replace") if isinstance(description, bytes) else description
    elif suffix in IMAGE_SUFFIXES:
        text = _open_image(path).info.get(METADATA_KEY)
    else:
        try:
            with av.open(str(path)) as container:
                text = container.metadata.get("comment")
        except (av.FFmpegError, OSError, ValueError) as error:
            raise MediaError(f"{path}: cannot read the container ({error}); is it a video file?") from error
    if text:
        return _parse_metadata(text, path)
    sidecar = path.with_name(path.name + ".json")
    return _parse_metadata(sidecar.read_text(encoding="utf-8"), sidecar) if sidecar.is_file() else {}


def _parse_metadata(text: str | None, path: Path) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {"comment": text}
    return value if isinstance(value, dict) else {"comment": text}


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _pattern_files(path: Path) -> list[Path]:
    files = []
    index = 0 if (path.parent / (path.name % 0)).is_file() else 1  # printf sequences start at 0 or 1
    while (path.parent / (path.name % index)).is_file():
        files.append(path.parent / (path.name % index))
        index += 1
    return files


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(value, int) and value > 0 for value in pair):
        raise InputError(f"{name}={size!r}; expected a positive int or (height, width)")
    return pair[0], pair[1]


def _open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise MediaError(f"{path}: no such file; check the path")
    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise MediaError(f"{path}: not a readable image ({error}); re-export it as PNG or JPEG") from error
    return image


def _read_image_files(files: list[Path], source: Path, max_frames: int | None) -> tuple[np.ndarray, float]:
    if not files:
        raise MediaError(f"{source}: no image frames found (looked for {', '.join(IMAGE_SUFFIXES)})")
    files = files[:max_frames]
    images = [_open_image(file) for file in files]
    fps_text = images[0].info.get(FPS_KEY)
    frames = [np.asarray(image.convert("RGB")) for image in images]
    sizes = {frame.shape for frame in frames}
    if len(sizes) > 1:
        raise MediaError(f"{source}: frames have different sizes {sorted(sizes)}; every frame must have one size")
    try:
        fps = float(fps_text) if fps_text else DEFAULT_FPS
    except ValueError:
        fps = DEFAULT_FPS
    return np.stack(frames), fps


def _read_with_pillow(path: Path, max_frames: int | None) -> tuple[np.ndarray, float]:
    """GIF/WebP frames at a constant rate.

    The shortest frame duration is one frame period; a frame shown for k periods (the encoders merge identical
    frames) is repeated k times. The rate is frames over total time, so alternating 120/130 ms reads as 8 fps.
    """
    image = _open_image(path)
    frames: list[np.ndarray] = []
    durations: list[float] = []
    try:
        for frame in ImageSequence.Iterator(image):
            frames.append(np.asarray(frame.convert("RGB")))
            durations.append(float(frame.info.get("duration") or 0))
            if max_frames is not None and len(frames) >= max_frames:
                break
    except (OSError, ValueError, EOFError) as error:
        raise MediaError(f"{path}: broken animation after {len(frames)} frames ({error}); re-export it") from error
    positive = [duration for duration in durations if duration > 0]
    if not positive:
        return np.stack(frames), DEFAULT_FPS
    base = min(positive)
    repeats = [max(1, round(duration / base)) for duration in durations]
    fps = 1000.0 * sum(repeats) / sum(duration if duration > 0 else base for duration in durations)
    return np.repeat(np.stack(frames), repeats, axis=0)[:max_frames], fps


def _read_with_av(path: Path, max_frames: int | None) -> tuple[np.ndarray, float]:
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: has no video stream; pass a video file")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as error:
        raise MediaError(f"{path}: not a readable video ({error}); check the file is complete") from error
    if not frames:
        raise MediaError(f"{path}: the video stream has no frames; the file is empty or truncated")
    return np.stack(frames), float(rate) if rate else DEFAULT_FPS
