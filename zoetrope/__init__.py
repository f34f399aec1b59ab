"""zoetrope: turn text-to-image diffusion models into video generators (the AnimateDiff family).

Public API (imported lazily so that `import zoetrope` stays cheap):
    load_pipeline, generate, save      -- three-line notebook use
    load_motion_module, VideoUNet      -- building blocks for other tools
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_motion_module": ("zoetrope.formats.motion", "load_motion_module"),
    "VideoUNet": ("zoetrope.models.video_unet", "VideoUNet"),
    "MotionModuleConfig": ("zoetrope.models.motion_module", "MotionModuleConfig"),
    "load_pipeline": ("zoetrope.pipelines.load", "load_pipeline"),
    "generate": ("zoetrope.pipelines.text_to_video", "generate"),
    "save": ("zoetrope.pipelines.text_to_video", "save"),
    "ZoetropeError": ("zoetrope.errors", "ZoetropeError"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attribute = _LAZY[name]
        return getattr(importlib.import_module(module_name), attribute)
    raise AttributeError(f"module 'zoetrope' has no attribute {name!r}")
