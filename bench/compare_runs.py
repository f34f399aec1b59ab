"""Compare the training losses of two runs that share a seed (a paired experiment), window by window.

    python bench/compare_runs.py runs/exp/motion-cross-bundled runs/exp/motion-self-bundled --window 1000

Two runs of the same stage with the same `seed` draw the same clips, timesteps and noise at every step (the engine
seeds its data order and noise from `seed`), so the difference of their logged losses at equal steps is free of the
sampling noise that swamps a comparison of loss *curves*: a change worth 0.5 % of the loss, invisible in either
curve, is clear in the paired difference. For each window of steps this prints both mean losses, their relative
difference and a paired t statistic over the logged rows in the window (|t| > 3: the difference is not chance).
Reads each run's `metrics.csv` (or the file itself); only steps logged by both runs are compared.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from zoetrope.training.engine import METRICS_FILE


@dataclass(frozen=True)
class Window:
    """Paired statistics over the logged steps in (start, end]."""

    end: int
    rows: int
    loss_a: float
    loss_b: float
    t: float

    @property
    def relative(self) -> float:
        """(a - b) / b: negative when run a has the lower loss."""
        return self.loss_a / self.loss_b - 1.0


def read_losses(path: str | Path) -> dict[int, float]:
    """step -> logged loss of a run folder's metrics.csv (or of the CSV file given)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {METRICS_FILE} here; pass a run's output_dir or its {METRICS_FILE}")
    with path.open(newline="") as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle) if row.get("loss")}


def paired_windows(a: dict[int, float], b: dict[int, float], window: int) -> list[Window]:
    """Windowed paired comparison of two step -> loss maps (steps logged by both only)."""
    if window <= 0:
        raise ValueError(f"window must be a positive number of steps, got {window}")
    steps = sorted(set(a) & set(b))
    if not steps:
        raise ValueError("the two runs have no logged step in common (different log_every, or one has not started)")
    buckets: dict[int, list[int]] = defaultdict(list)  # window end -> steps in (end - window, end]
    for step in steps:
        buckets[-(-step // window) * window].append(step)
    windows = []
    for end, inside in sorted(buckets.items()):
        differences = [a[step] - b[step] for step in inside]
        mean = statistics.fmean(differences)
        if len(differences) < 2:
            t = math.nan
        elif (spread := statistics.stdev(differences)) > 0:
            t = mean / (spread / math.sqrt(len(differences)))
        else:  # identical differences: none (the same run twice) or a constant offset
            t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        windows.append(Window(end=end, rows=len(inside), loss_a=statistics.fmean(a[s] for s in inside),
                              loss_b=statistics.fmean(b[s] for s in inside), t=t))
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", help="output_dir (or metrics.csv) of the run under test")
    parser.add_argument("run_b", help="output_dir (or metrics.csv) of its control, same seed")
    parser.add_argument("--window", type=int, default=500, help="steps per window")
    args = parser.parse_args()
    windows = paired_windows(read_losses(args.run_a), read_losses(args.run_b), args.window)
    print(f"{'steps to':>8}  {'rows':>4}  {'loss a':>8}  {'loss b':>8}  {'a vs b':>7}  {'paired t':>8}")
    for w in windows:
        print(f"{w.end:>8}  {w.rows:>4}  {w.loss_a:>8.5f}  {w.loss_b:>8.5f}  {100 * w.relative:>+6.2f}%  {w.t:>8.2f}")


if __name__ == "__main__":
    main()
