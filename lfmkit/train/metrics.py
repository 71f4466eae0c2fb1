"""What a run shows: `metrics.jsonl` (one JSON object per optimizer step) and the loss curve PNG.

Each line has at least `step`, `epoch`, `loss`, `learning_rate`, `grad_norm`, `tokens` (real
tokens in the step, all processes), `trained_tokens`, `tokens_per_s` and `elapsed_s`. On
resume the file is cut back to the checkpoint's step first, so the steps a killed run logged
after its last checkpoint are not counted twice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class MetricsLog:
    """Appends one JSON line per step to `<output>/metrics.jsonl` (flushed every line)."""

    def __init__(self, output: str | Path, resume_step: int = 0):
        self.path = Path(output) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step] if resume_step else []
        with self.path.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl (a torn last line from a killed run is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def plot_loss(output: str | Path) -> Path | None:
    """Draw loss (and learning rate) against step into `<output>/loss.png`; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = [r for r in read_metrics(Path(output) / METRICS_FILE) if math.isfinite(r.get("loss", math.nan))]
    if not records:
        return None
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, [r["loss"] for r in records], color="tab:blue", linewidth=1.2, label="loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean over trained tokens)")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(
        steps,
        [r["learning_rate"] for r in records],
        color="tab:orange",
        linewidth=0.8,
        alpha=0.7,
        label="learning rate",
    )
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_lines() + lr_ax.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right")
    fig.tight_layout()
    path = Path(output) / PLOT_FILE
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["MetricsLog", "read_metrics", "plot_loss", "METRICS_FILE", "PLOT_FILE"]
