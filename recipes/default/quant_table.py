"""int8 and int4 against bf16 on a shipped model: top-1 agreement, perplexity, task accuracy.

    python recipes/default/quant_table.py MODEL DATA_DIR OUT.json [--limit 30] [--prefill w8a8,bf16] [--no-tasks]

The reference is the checkpoint as shipped (bfloat16 weights, computed in float32). On the
held-out conversations of DATA_DIR/test/text.jsonl (rendered with the chat template):
`top1_agreement`, the fraction of positions whose argmax next token equals the reference's;
`ppl`, the perplexity of the text's next tokens; both over the last assistant turn (the models
are trained on assistant turns only). Task accuracy is score.py's (held-out tool calling and
extraction) at each precision.

The conversations run as one forward each, which is a prefill: for int8 and int4 its GEMMs are
W8A8 by default (`--prefill`, lfmkit/quant/prefill.py). `--prefill w8a8,bf16` measures both
prefill modes, the second under the key `MODE+bf16-prefill` (`int8+bf16-prefill`, ...);
`--no-tasks` leaves out the task columns (they run on generation with the default prefill).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from score import score_model

import lfmkit
from lfmkit.quant.prefill import check_prefill

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


def variants(prefills: tuple[str, ...]) -> list[tuple[str, str | None, str]]:
    """(report key, quant mode, prefill mode): bf16 once, then each quant mode per prefill mode
    (the first prefill mode keeps the plain key, "int8"; the others are "int8+bf16-prefill")."""
    out = [("bf16", None, prefills[0])]
    for mode in MODES[1:]:
        out += [(mode if i == 0 else f"{mode}+{p}-prefill", mode, p) for i, p in enumerate(prefills)]
    return out


def agreement(model_dir: str, data: Path, limit: int = 80, prefills: tuple[str, ...] = ("w8a8",)) -> dict:
    """{key: {"top1_agreement", "ppl"}} for bf16, int8 and int4 (each in every prefill mode,
    see `variants`)."""
    ids = held_out_ids(model_dir, data, limit)
    reference = None
    out = {}
    for key, mode, prefill in variants(prefills):
        dtype = "float32" if mode is None else None
        logits = logits_of(lfmkit.load(model_dir, quant=mode, dtype=dtype, prefill=prefill), ids)
        if reference is None:
            reference = logits
        same = total = 0
        nll = 0.0
        for (x, start), ref, got in zip(ids, reference, logits):
            span = slice(start - 1, len(x) - 1)  # the positions that predict the answer's tokens
            same += int((ref[span].argmax(-1) == got[span].argmax(-1)).sum())
            total += len(x) - start
            nll += float(torch.nn.functional.cross_entropy(got[span], torch.tensor(x[start:]), reduction="sum"))
        out[key] = {"top1_agreement": same / total, "ppl": math.exp(nll / total)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="int8 / int4 vs bf16 on a shipped model.")
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("output")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--prefill", default="w8a8", help="comma-separated prefill modes: w8a8, bf16")
    parser.add_argument("--no-tasks", action="store_true", help="agreement and perplexity only")
    args = parser.parse_args(argv)
    prefills = tuple(check_prefill(p) for p in args.prefill.split(","))
    report = agreement(args.model, Path(args.data), prefills=prefills)
    for mode in () if args.no_tasks else MODES:
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
