"""Rename rules as data: one table of (ours, theirs) fragment pairs serves both directions.

A fragment may contain `{n}` (a block/layer index). Rules apply in order; each direction compiles the fragments to
regular expressions anchored on dots, so `.norms.{n}.` never matches inside `.attention_norms.0.`. Round trips
(ours -> theirs -> ours) are tested on full key manifests, which is what makes the table trustworthy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, TypeVar

Value = TypeVar("Value")


def _pattern(fragment: str) -> re.Pattern[str]:
    return re.compile(r"(\d+)".join(re.escape(piece) for piece in fragment.split("{n}")))


def _replacement(fragment: str) -> str:
    pieces = fragment.split("{n}")
    out = pieces[0].replace("\\", "\\\\")
    for index, piece in enumerate(pieces[1:], start=1):
        out += f"\\g<{index}>" + piece.replace("\\", "\\\\")
    return out


@dataclass(frozen=True)
class RenameRules:
    """Ordered fragment pairs; `to_theirs` applies them forwards, `to_ours` backwards (reverse order)."""

    pairs: tuple[tuple[str, str], ...]

    def _apply(self, key: str, forward: bool) -> str:
        pairs = self.pairs if forward else tuple((b, a) for a, b in reversed(self.pairs))
        for source, target in pairs:
            key = _pattern(source).sub(_replacement(target), key)
        return key

    def to_theirs(self, key: str) -> str:
        return self._apply(key, forward=True)

    def to_ours(self, key: str) -> str:
        return self._apply(key, forward=False)

    def map_to_theirs(self, state: Mapping[str, Value]) -> dict[str, Value]:
        return {self.to_theirs(key): value for key, value in state.items()}

    def map_to_ours(self, state: Mapping[str, Value]) -> dict[str, Value]:
        return {self.to_ours(key): value for key, value in state.items()}


def sample_keys(keys: Iterable[str], count: int = 3) -> str:
    """A short, readable excerpt of a key list for error messages."""
    keys = sorted(keys)
    shown = ", ".join(keys[:count])
    return f"{shown}{', ...' if len(keys) > count else ''} ({len(keys)} in all)"


def key_mismatch(
    expected: Iterable[str], found: Iterable[str], optional_suffix: str = ".pos_encoding"
) -> tuple[list[str], list[str]]:
    """(missing, unexpected) keys of a strict load; keys ending in `optional_suffix` may be missing.

    Why the default: motion-module positional encodings are sinusoidal buffers that many released files (v1, and
    SparseCtrl encoders) leave out; the model recomputes them, so their absence is not damage.
    """
    expected, found = list(expected), list(found)
    expected_set, found_set = set(expected), set(found)
    missing = [key for key in expected if key not in found_set and not key.endswith(optional_suffix)]
    return missing, [key for key in found if key not in expected_set]


def describe_mismatch(missing: Iterable[str], unexpected: Iterable[str]) -> str:
    """'missing a, b, ... (n in all); unexpected c (1 in all)' for strict-loading errors ('' when both are empty)."""
    problems = []
    missing, unexpected = list(missing), list(unexpected)
    if missing:
        problems.append(f"missing {sample_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected {sample_keys(unexpected)}")
    return "; ".join(problems)
