"""Prompt travel: keyed prompts ("frame 0: a cat, frame 16: a dog") -> one text embedding per frame.

The pipeline (1) parses the map with `parse_prompt_map`, (2) encodes each keyed prompt once, giving
`(n_prompts, tokens, dim)`, (3) computes per-frame blend weights with `travel_weights` and (4) blends with
`interpolate_embeddings`, giving `(num_frames, tokens, dim)`. Inside a context window the frame-indexed predict
slices that tensor with the window's frame indices (see `zoetrope.sampling.context`).

Defaults differ from animatediff-cli-prompt-travel on purpose: interpolation is *not* circular (frames after the
last key hold the last prompt; the CLI always travels back to prompt 0, the "last prompt bleeding into the first"
complaint), and the blend is lerp unless slerp is asked for.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from einops import rearrange

from zoetrope.errors import InputError

PromptMap = Mapping[int | str, str] | Sequence[str] | str


def _join(*parts: str) -> str:
    return ", ".join(part.strip() for part in parts if part and part.strip())


def _parse_key(key: int | str, where: str) -> int:
    if isinstance(key, bool):
        raise InputError(f"prompt map key {key!r} ({where}): expected a frame number like 0, 16 or -1")
    if isinstance(key, int):
        return key
    try:
        return int(str(key).strip())
    except ValueError:
        raise InputError(f"prompt map key {key!r} ({where}): expected a frame number like 0, 16 or -1") from None


def _entries(prompt_map: PromptMap) -> list[tuple[int, str]]:
    if isinstance(prompt_map, Mapping):
        return [(_parse_key(key, f"{key!r}: {value!r}"), str(value)) for key, value in prompt_map.items()]
    items = prompt_map.split("|") if isinstance(prompt_map, str) else list(prompt_map)
    entries = []
    for item in items:
        if not item.strip():
            continue
        key, separator, text = item.partition(":")
        if not separator:
            raise InputError(f"prompt map entry {item!r}: expected 'frame: prompt', e.g. '0: a cat|16: a dog'")
        entries.append((_parse_key(key, repr(item)), text.strip()))
    return entries


def parse_prompt_map(prompt_map: PromptMap, num_frames: int, *, head: str = "", tail: str = "") -> dict[int, str]:
    """Keyed prompts as `{frame: prompt}`, sorted by frame, with `head` prepended and `tail` appended.

    Accepts `{0: "a cat", "16": "a dog"}`, `["0: a cat", "16: a dog"]` or `"0: a cat | 16: a dog"`. A negative
    frame counts from the end (-1 is the last frame). Parts are joined with ", " (as the CLI's head/tail prompts).
    """
    if num_frames < 1:
        raise InputError(f"num_frames={num_frames}: must be >= 1")
    resolved: dict[int, str] = {}
    for key, text in _entries(prompt_map):
        frame = key + num_frames if key < 0 else key
        if not 0 <= frame < num_frames:
            raise InputError(
                f"prompt map key {key}: outside a {num_frames}-frame video; use 0..{num_frames - 1} "
                f"or -{num_frames}..-1"
            )
        if frame in resolved:
            raise InputError(f"prompt map key {key}: frame {frame} is keyed twice; keep one prompt per frame")
        resolved[frame] = _join(head, text, tail)
    if not resolved:
        raise InputError("prompt map: no keyed prompt found; give at least one, e.g. {0: 'a cat'}")
    return dict(sorted(resolved.items()))


def travel_weights(
    keys: Sequence[int], num_frames: int, hold: float = 0.0, circular: bool = False
) -> list[tuple[int, int, float]]:
    """Per frame `(prompt_a, prompt_b, w)`: the frame's embedding is blend(E[prompt_a], E[prompt_b], w).

    `keys` are the keyed frames, ascending; prompt indices refer to positions in `keys`. At a keyed frame the
    result is exactly `(i, i, 0.0)`. Between keys k_i and k_{i+1}, the first `hold` fraction of the segment keeps
    prompt i (w = 0), then w rises linearly to 1 at k_{i+1} (the CLI's `prompt_fixed_ratio`).
    Non-circular (default): frames before the first key hold the first prompt and frames after the last key hold
    the last. Circular: the last key travels on to the first one around the end of the video (for loops).
    """
    keys = list(keys)
    if not keys:
        raise InputError("prompt travel: no keyed frames")
    if sorted(set(keys)) != keys:
        raise InputError(f"prompt travel keys {keys}: must be strictly ascending")
    if keys[0] < 0 or keys[-1] >= num_frames:
        raise InputError(f"prompt travel keys {keys}: must lie in 0..{num_frames - 1}")
    if not 0.0 <= hold <= 1.0:
        raise InputError(f"prompt travel hold={hold}: must be a fraction in [0, 1]; try 0.5")

    def ramp(offset: float, length: float) -> float:
        held = hold * length
        if offset <= held or length - held <= 0:
            return 0.0
        return min((offset - held) / (length - held), 1.0)

    last = len(keys) - 1
    result = []
    for frame in range(num_frames):
        if frame in keys:
            index = keys.index(frame)
            result.append((index, index, 0.0))
            continue
        following = next((i for i, key in enumerate(keys) if key > frame), None)
        if following is not None and following > 0:  # between two keys
            start, end = keys[following - 1], keys[following]
            result.append((following - 1, following, ramp(frame - start, end - start)))
        elif not circular or last == 0:
            index = 0 if following == 0 else last
            result.append((index, index, 0.0))
        else:  # the wrap segment: from the last key, past the end, to the first key
            length = keys[0] + num_frames - keys[last]
            offset = (frame - keys[last]) % num_frames
            result.append((last, 0, ramp(offset, length)))
    return result


def _slerp(start: torch.Tensor, end: torch.Tensor, weight: torch.Tensor, threshold: float) -> torch.Tensor:
    """Spherical interpolation per vector (last axis); lerp where the vectors are nearly (anti)parallel."""
    start_unit = start / start.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    end_unit = end / end.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cosine = (start_unit * end_unit).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    angle = torch.acos(cosine)
    sine = torch.sin(angle)
    parallel = cosine.abs() > threshold
    safe_sine = torch.where(parallel, torch.ones_like(sine), sine)
    spherical = (torch.sin((1 - weight) * angle) * start + torch.sin(weight * angle) * end) / safe_sine
    linear = torch.lerp(start, end, weight)
    return torch.where(parallel, linear, spherical)


def interpolate_embeddings(
    embeddings: torch.Tensor,
    weights: Sequence[tuple[int, int, float]],
    method: str = "lerp",
    *,
    parallel_threshold: float = 0.9995,
) -> torch.Tensor:
    """Per-frame embeddings `(num_frames, tokens, dim)` from keyed ones `(n_prompts, tokens, dim)`.

    lerp: (1-w)·A + w·B. slerp (Shoemake 1985) per token vector: sin((1-w)θ)/sinθ·A + sin(wθ)/sinθ·B with θ the
    angle between A and B, falling back to lerp when |cos θ| > `parallel_threshold` (sd-webui-animatediff uses
    0.9995). Keeps the norm of CLIP token vectors, which a lerp shrinks mid-way. Frames with w = 0 or 1 are copied
    exactly from their keyed prompt. Computed in float32, returned in the embeddings' dtype.
    """
    if method not in ("lerp", "slerp"):
        raise InputError(f"prompt interpolation={method!r}: expected 'lerp' or 'slerp'")
    if embeddings.dim() != 3:
        raise InputError(f"prompt embeddings of shape {tuple(embeddings.shape)}: expected (n_prompts, tokens, dim)")
    count = embeddings.shape[0]
    if any(not (0 <= a < count and 0 <= b < count) for a, b, _ in weights):
        raise InputError(f"prompt travel weights refer to prompts outside 0..{count - 1}")
    index_a = torch.tensor([a for a, _, _ in weights], device=embeddings.device)
    index_b = torch.tensor([b for _, b, _ in weights], device=embeddings.device)
    weight = torch.tensor([w for _, _, w in weights], device=embeddings.device, dtype=torch.float32)
    weight = rearrange(weight, "f -> f 1 1")  # broadcast over (tokens, dim)
    start = embeddings.float()[index_a]
    end = embeddings.float()[index_b]
    if method == "lerp":
        blended = torch.lerp(start, end, weight)
    else:
        blended = _slerp(start, end, weight, parallel_threshold)
    blended = torch.where(weight == 0, start, torch.where(weight == 1, end, blended))
    return blended.to(embeddings.dtype)


def travel_embeddings(
    embeddings: torch.Tensor,
    keys: Sequence[int],
    num_frames: int,
    *,
    hold: float = 0.0,
    circular: bool = False,
    method: str = "lerp",
) -> torch.Tensor:
    """`travel_weights` + `interpolate_embeddings`: keyed `(n_prompts, tokens, dim)` -> `(num_frames, tokens, dim)`."""
    if embeddings.shape[0] != len(keys):
        raise InputError(f"prompt travel: {embeddings.shape[0]} embeddings for {len(keys)} keyed frames")
    return interpolate_embeddings(embeddings, travel_weights(keys, num_frames, hold, circular), method)


def pad_to_same_length(cond: torch.Tensor, uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad `(batch, tokens, dim)` embeddings along tokens to the longer one, repeating the last token embedding.

    Long prompts encoded in 77-token chunks give different token counts for prompt and negative prompt; they
    must match to run as one CFG batch (sd-webui-animatediff #383, "pad cond/uncond to same length"). The last
    token of a CLIP encoding is the end/pad token, so repeating it is what a longer padded encoding would hold.
    """
    if cond.dim() != 3 or uncond.dim() != 3 or cond.shape[-1] != uncond.shape[-1]:
        raise InputError(
            f"embeddings {tuple(cond.shape)} and {tuple(uncond.shape)}: expected (batch, tokens, dim) with equal dim"
        )

    def pad(tensor: torch.Tensor, tokens: int) -> torch.Tensor:
        missing = tokens - tensor.shape[1]
        if missing == 0:
            return tensor
        return torch.cat([tensor, tensor[:, -1:].expand(-1, missing, -1)], dim=1)

    tokens = max(cond.shape[1], uncond.shape[1])
    return pad(cond, tokens), pad(uncond, tokens)
