"""Errors for people.

Every failure a user can cause (a wrong file, a bad config field, too many frames) raises a `ZoetropeError`
subclass whose message names the file or field, what was found, what was expected and what to do. The CLI prints
that one line; `--debug` shows the traceback.
"""

from __future__ import annotations


class ZoetropeError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class CheckpointError(ZoetropeError):
    """A weights file is missing, unreadable, truncated, or not what the caller expected."""


class ConfigError(ZoetropeError):
    """A config file or field is wrong: unknown key, wrong type, value out of range."""


class MediaError(ZoetropeError):
    """An image or video cannot be read or written."""


class FrameCountError(ZoetropeError):
    """More frames than the motion module's positional encoding supports, or a bad frame count."""


class InputError(ZoetropeError):
    """A bad argument to a pipeline: size not a multiple of 8, empty prompt list, bad keyframe index."""
