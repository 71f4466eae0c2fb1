"""What an evaluation leaves behind: results.json, samples_<task>.jsonl, a table, a plot.

results.json: lfmkit's version, the time, the model and backend, the configuration, and per
task its score, standard error, sample count, method (the multiple-choice rule named), few-shot
count, data files and their sha256, and per-subtask scores. Each samples_<task>.jsonl line is one
item: the prompt as the model saw it, the raw output, the extracted prediction, the target and
whether it was counted correct.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
from pathlib import Path

from ..errors import EvalError


def lfmkit_version() -> str:
    """The installed distribution's version (the package root, which holds it too, is not imported here)."""
    try:
        return importlib.metadata.version("lfmkit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def write_outputs(directory: Path, summary: dict, samples: dict[str, list[dict]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    summary = {
        "lfmkit_version": lfmkit_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **summary,
    }
    (directory / "results.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for task, rows in samples.items():
        with open(directory / f"samples_{task}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def format_table(summary: dict) -> str:
    """The model card's layout: one row per task, score in percent with its standard error."""
    rows = [("task", "metric", "score", "± stderr", "n", "method")]
    for name, r in summary["results"].items():
        method = r.get("mc_rule") and f"mc-rule {r['mc_rule']}" or r["metric"]
        rows.append(
            (
                name,
                r["metric"],
                f"{100 * r['score']:.2f}",
                f"{100 * r['stderr']:.2f}",
                str(r["n"]),
                f"{r['num_fewshot']}-shot, {method}",
            )
        )
        for sub, s in r.get("subtasks", {}).items():
            rows.append((f"  {sub}", "", f"{100 * s['score']:.2f}", f"{100 * s['stderr']:.2f}", str(s["n"]), ""))
        for metric, value in r.get("metrics", {}).items():
            if metric != r["metric"]:
                rows.append(("", metric, f"{100 * value:.2f}", "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def read_results(path: Path) -> dict:
    file = path / "results.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalError(f"{file}: no such file (give a results.json or the folder holding one)") from None
    except json.JSONDecodeError as exc:
        raise EvalError(f"{file}: not JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise EvalError(f"{file}: not an lfmkit eval results.json (no 'results')")
    return data


def plot_results(paths: list[Path], out: Path, labels: list[str] | None = None) -> Path:
    """Grouped bars: one group per task, one bar per model (PNG, needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EvalError("plotting needs matplotlib: pip install matplotlib") from None
    runs = [read_results(p) for p in paths]
    labels = labels or [r.get("model") or str(p) for r, p in zip(runs, paths)]
    tasks = list(dict.fromkeys(t for r in runs for t in r["results"]))
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks) * len(runs)), 4))
    for k, (run, label) in enumerate(zip(runs, labels)):
        xs = [i + k * width for i in range(len(tasks))]
        ys = [100 * run["results"][t]["score"] if t in run["results"] else 0 for t in tasks]
        errs = [100 * run["results"][t]["stderr"] if t in run["results"] else 0 for t in tasks]
        ax.bar(xs, ys, width, yerr=errs, label=Path(label).name or label, capsize=2)
    ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(tasks))], tasks)
    ax.set_ylabel("score (%)")
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


__all__ = ["write_outputs", "format_table", "read_results", "plot_results"]
