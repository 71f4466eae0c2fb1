"""int8 and int4 against bf16 on a shipped model: top-1 agreement, perplexity, task accuracy.

    python recipes/default/quant_table.py MODEL DATA_DIR OUT.json [--limit 30]

The reference is the checkpoint as shipped (bfloat16 weights, computed in float32). On the
held-out conversations of DATA_DIR/test/text.jsonl (rendered with the chat template):
`top1_agreement`, the fraction of positions whose argmax next token equals the reference's;
`ppl`, the perplexity of the text's next tokens; both over the last assistant turn (the models
are trained on assistant turns only). Task accuracy is score.py's (held-out tool calling and
extraction) at each precision.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from score import score_model

import lfmkit

MODES = (None, "int8", "int4")


def held_out_ids(model_dir: str, data: Path, limit: int) -> list[tuple[list[int], int]]:
    """(token ids, where the last assistant turn starts) per held-out conversation: the models
    are trained on assistant turns only, so that turn is what agreement and perplexity measure."""
    tok = lfmkit.Tokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in (data / "test" / "text.jsonl").read_text().splitlines()][:limit]
    out = []
    for r in rows:
        full = tok.apply_chat_template(r["messages"], tools=r.get("tools"), tokenize=True)
        head = tok.apply_chat_template(
            r["messages"][:-1], tools=r.get("tools"), add_generation_prompt=True, tokenize=True
        )
        out.append((full, len(head)))
    return out


@torch.no_grad()
def logits_of(model, ids: list[list[int]]) -> list[torch.Tensor]:
    return [model(torch.tensor([x]))[0].float() for x, _ in ids]


def agreement(model_dir: str, data: Path, limit: int = 80) -> dict:
    """{mode: {"top1_agreement", "ppl"}} for bf16 (None), int8 and int4."""
    ids = held_out_ids(model_dir, data, limit)
    reference = None
    out = {}
    for mode in MODES:
        logits = logits_of(lfmkit.load(model_dir, quant=mode, dtype="float32" if mode is None else None), ids)
        if reference is None:
            reference = logits
        same = total = 0
        nll = 0.0
        for (x, start), ref, got in zip(ids, reference, logits):
            span = slice(start - 1, len(x) - 1)  # the positions that predict the answer's tokens
            same += int((ref[span].argmax(-1) == got[span].argmax(-1)).sum())
            total += len(x) - start
            nll += float(torch.nn.functional.cross_entropy(got[span], torch.tensor(x[start:]), reduction="sum"))
        out[mode or "bf16"] = {"top1_agreement": same / total, "ppl": math.exp(nll / total)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="int8 / int4 vs bf16 on a shipped model.")
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("output")
    parser.add_argument("--limit", type=int, default=30)
    args = parser.parse_args(argv)
    report = agreement(args.model, Path(args.data))
    for mode in MODES:
        tasks = score_model(args.model, Path(args.data), args.limit, quant=mode)
        report[mode or "bf16"].update(
            right_tool_seen=tasks["tools_seen"]["right_tool"],
            tool_call_listed_seen=tasks["tools_seen"]["well_formed"],
            extract_json=tasks["extract"]["well_formed"],
            extract_fields=tasks["extract"]["score"],
        )
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
