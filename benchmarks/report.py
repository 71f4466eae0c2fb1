"""Turn `lfmkit bench --compare --json` output into a table, the ratios, and a PNG plot.

    lfmkit bench lfm2-350m --quant int4,int8 --compare --json > results/350m.jsonl
    python benchmarks/report.py results/350m.jsonl results/1.2b.jsonl --plot benchmarks/tok_s.png

Needs matplotlib for --plot (the `bench` extra); the table and ratios need nothing extra.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from lfmkit.bench import BenchResult, format_table, ratios


def load(paths: list[str]) -> list[list[BenchResult]]:
    names = {f.name for f in fields(BenchResult)}
    runs = []
    for p in paths:
        rows = []
        with open(p) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    d = json.loads(line)
                    rows.append(BenchResult(**{k: v for k, v in d.items() if k in names}))
        runs.append(rows)
    return runs


def plot(runs: list[list[BenchResult]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, title in (
        (axes[0], "prefill_tok_s", "prefill tok/s (512-token prompt)"),
        (axes[1], "decode_tok_s", "decode tok/s (batch 1)"),
    ):
        labels, values, colors = [], [], []
        for rows in runs:
            for r in rows:
                v = getattr(r, key)
                if v is None:
                    continue
                labels.append(f"{r.model}\n{r.engine} {r.weights}")
                values.append(v)
                colors.append(
                    {"lfmkit": "tab:blue", "llama.cpp": "tab:orange", "transformers": "tab:gray"}[r.engine]
                    if "shape" not in r.model
                    else "tab:cyan"
                )
        ax.barh(range(len(values)), values, color=colors)
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.1f}", va="center", fontsize=7)
    fig.suptitle("lfmkit vs llama.cpp vs transformers, same run per model (random weights, real shapes)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--plot", default=None, help="write a PNG of tok/s per engine and model")
    args = ap.parse_args()
    runs = load(args.files)
    for path, rows in zip(args.files, runs):
        print(f"## {path}\n")
        print(format_table(rows))
        print()
        for line in ratios(rows):
            print(line)
        print()
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
