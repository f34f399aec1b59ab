"""The GPU benchmark also runs at a tiny size on the CPU; CI checks it prints its report and equal outputs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_tiny_cpu_reports_times_ratio_and_equal_latents() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--tiny", "--device", "cpu", "--runs", "1",
         "--steps", "2", "--frames", "4", "--size", "32"],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout
    assert re.search(r"diffusers : min [\d.]+ s", out) and re.search(r"zoetrope  : min [\d.]+ s", out)
    assert re.search(r"speed-up .*: [\d.]+x", out) and "TFLOP" in out
    difference = float(re.search(r"max \|diff\| ([\d.e+-]+)", out).group(1))
    assert difference < 1e-3
