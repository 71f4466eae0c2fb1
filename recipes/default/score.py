"""Held-out tool calling and extraction: the default model's two tasks `lfmkit eval` has no
benchmark for, scored with the same verifiers as training (verify.py).

    python recipes/default/score.py MODEL DATA_DIR OUT.json [--limit 40] [--quant int4]

For each of test/tools_seen.jsonl (training tools, held-out requests, entities and system
prompts), test/tools_unseen.jsonl (tools no training row shows) and test/extract.jsonl
(held-out document templates and a document kind training never shows): greedy generation with
`lfmkit.generate`, then the verifier. Writes per set: `score` (mean verifier score), `exact`
(fraction scored 1), `well_formed` (tool sets: a parsable call list naming a tool of the prompt;
extraction: a JSON object), `right_tool` (tool sets: the first call names the expected tool),
`n`, and a few samples.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from verify import _json_object, verify

import lfmkit
from lfmkit.text.chat import parse_assistant_message

SETS = ("tools_seen", "tools_unseen", "extract")


def _tool_checks(row: dict, completion: str) -> tuple[bool, bool]:
    try:
        calls = parse_assistant_message(completion).tool_calls
    except lfmkit.LFMKitError:
        return False, False
    names = {t["function"]["name"] for t in row["tools"]}
    well = bool(calls) and all(c.name in names for c in calls)
    right = bool(calls) and calls[0].name == row["tool_calls"][0]["name"]
    return well, right


def score_set(model, tok, rows: list[dict], max_tokens: int = 96) -> dict:
    prompts = [
        tok.apply_chat_template(r["prompt"], tools=r.get("tools"), add_generation_prompt=True, tokenize=True)
        for r in rows
    ]
    results = lfmkit.generate(
        model, prompts, tokenizer=tok, max_tokens=max_tokens, temperature=0.0, repetition_penalty=1.0
    )
    scores, wells, rights, samples = [], [], [], []
    for row, res in zip(rows, results):
        text = res.text
        s = verify(row, row["prompt"], text)
        scores.append(s)
        if row["task"] == "tools":
            well, right = _tool_checks(row, text)
        else:
            well, right = _json_object(text) is not None, None
        wells.append(well)
        rights.append(right)
        if len(samples) < 5:
            samples.append({"prompt": row["prompt"][-1]["content"], "output": text, "score": s})
    out = {
        "n": len(rows),
        "score": sum(scores) / len(rows),
        "exact": sum(s == 1.0 for s in scores) / len(rows),
        "well_formed": sum(wells) / len(rows),
        "samples": samples,
    }
    if rows[0]["task"] == "tools":
        out["right_tool"] = sum(bool(r) for r in rights) / len(rows)
    return out


def score_model(model_dir: str, data: Path, limit: int, quant: str | None = None) -> dict:
    start = time.time()
    model = lfmkit.load(model_dir, quant=quant)
    tok = lfmkit.Tokenizer.from_pretrained(model_dir)
    report = {"model": model_dir, "quant": quant}
    for name in SETS:
        with open(data / "test" / f"{name}.jsonl") as f:
            rows = [json.loads(line) for line in f][:limit]
        report[name] = score_set(model, tok, rows)
    report["seconds"] = round(time.time() - start, 1)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Score held-out tool calling and extraction.")
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("output")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--quant", choices=["int8", "int4"])
    args = parser.parse_args(argv)
    report = score_model(args.model, Path(args.data), args.limit, args.quant)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(" ".join(f"{k}={report[k]['score']:.3f}" for k in SETS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
