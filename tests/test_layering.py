"""DESIGN.md's dependency direction, enforced on the import statements of every module (no arrow points back)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "zoetrope"

# layer -> zoetrope layers it may import (errors, config and media are shared leaves)
ALLOWED = {
    "sampling": {"sampling", "errors"},
    "models": {"models", "errors", "config"},
    "adapters": {"adapters", "models", "errors", "config"},
    "formats": {"formats", "models", "adapters", "errors", "config", "__init__"},
    "pipelines": {"pipelines", "models", "adapters", "sampling", "formats", "errors", "config", "media", "world"},
    "training": {"training", "pipelines", "models", "adapters", "sampling", "formats", "errors", "config", "media", "world", "__init__"},
    "world": {"world", "errors", "media", "pipelines", "formats", "models", "__init__"},
}
THIRD_PARTY_SAMPLING = {"torch", "einops", "numpy", "tqdm"}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_layers_only_import_downwards() -> None:
    problems = []
    for layer, allowed in ALLOWED.items():
        for path in (PACKAGE / layer).glob("*.py"):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] != "zoetrope":
                    continue
                target = parts[1] if len(parts) > 1 else "__init__"
                if target not in allowed:
                    problems.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not problems, "\n".join(problems)


def test_sampling_is_pure_tensor_code() -> None:
    for path in (PACKAGE / "sampling").glob("*.py"):
        for name in _imports(path):
            root = name.split(".")[0]
            allowed = root == "zoetrope" or root in THIRD_PARTY_SAMPLING or root in sys.stdlib_module_names
            assert allowed, f"{path.name} imports {name}"


def test_no_print_outside_the_cli() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name == "cli.py":
            continue
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "print"]
        assert not calls, f"{path.relative_to(PACKAGE)} calls print()"
