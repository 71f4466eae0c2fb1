"""The recipe's tables, from what its stages wrote (for MODEL_CARD.md and BENCHMARKS.md).

    python recipes/default/report.py RUN_DIR            # the per-stage table (markdown)
    python recipes/default/report.py RUN_DIR --json     # the same numbers as JSON

One row per evaluated stage: the held-out scores (`lfmkit eval`'s gsm8k and ifeval on the
generated held-out sets; score.py's tool calling with seen and unseen tools and extraction) and
the wall time of the stage's training command (times.jsonl).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

STAGES = (
    "teacher", "teacher-2", "teacher-3", "teacher-4",
    "distill-1", "distill", "distill-2", "sft", "dpo-b2", "dpo-b5", "merge", "grpo",
)  # fmt: skip
# The first chain's post-training stages (on the student of `distill`), kept under RUN_DIR/chain1/
# when the chain was rerun on the longer-trained models: listed as "chain1/<stage>".
CHAIN1 = ("sft", "dpo-b2", "dpo-b5", "merge", "grpo")
COLUMNS = {
    "math": "math (gsm8k-style)",
    "ifeval": "IFEval prompt strict",
    "ifeval_inst": "IFEval instruction strict",
    "call_seen": "parsable call to a listed tool, seen",
    "right_tool_seen": "right tool, seen tools",
    "tools_seen": "exact call, seen tools",
    "right_tool_unseen": "right tool, unseen tools",
    "tools_unseen": "exact call, unseen tools",
    "json": "extraction: a JSON object",
    "extract_fields": "extraction fields right",
    "extract": "extraction exact",
}


def stage_rows(run: Path) -> list[dict]:
    times = {}
    if (run / "times.jsonl").exists():
        for line in (run / "times.jsonl").read_text().splitlines():
            t = json.loads(line)
            times[t["stage"]] = t["seconds"]
    rows = []
    evals = [(stage, run / "evals" / stage) for stage in STAGES]
    evals += [(f"chain1/{stage}", run / "chain1" / "evals" / stage) for stage in CHAIN1]
    for stage, ev in evals:
        if not (ev / "done").exists():
            continue
        results = json.loads((ev / "results.json").read_text())["results"]
        tasks = json.loads((ev / "tasks.json").read_text())
        rows.append(
            {
                "stage": stage,
                "math": results["gsm8k"]["score"],
                "ifeval": results["ifeval"]["score"],
                "ifeval_inst": results["ifeval"]["metrics"]["inst_level_strict_acc"],
                "call_seen": tasks["tools_seen"]["well_formed"],
                "right_tool_seen": tasks["tools_seen"]["right_tool"],
                "tools_seen": tasks["tools_seen"]["exact"],
                "right_tool_unseen": tasks["tools_unseen"]["right_tool"],
                "tools_unseen": tasks["tools_unseen"]["exact"],
                "json": tasks["extract"]["well_formed"],
                "extract_fields": tasks["extract"]["score"],
                "extract": tasks["extract"]["exact"],
                "n": results["gsm8k"]["n"],
                "train_s": times.get(stage),
                "eval_s": times.get(f"eval {stage}"),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| stage | " + " | ".join(COLUMNS.values()) + " | training wall time |"]
    lines.append("|---" * (len(COLUMNS) + 2) + "|")
    for r in rows:
        cells = [f"{100 * r[c]:.1f}" for c in COLUMNS]
        wall = f"{r['train_s'] / 60:.1f} min" if r["train_s"] is not None else "-"
        lines.append(f"| {r['stage']} | " + " | ".join(cells) + f" | {wall} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Tabulate the recipe's per-stage evals.")
    parser.add_argument("run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = stage_rows(Path(args.run))
    print(json.dumps(rows, indent=2) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
