"""How well the student would draft for the teacher: greedy acceptance per draft token.

    python recipes/default/draft_agreement.py TEACHER STUDENT DATA_DIR [--limit 24] [--k 4]

The teacher answers held-out prompts greedily (every task); along each answer, the student's
greedy next token given the same prefix is compared with the teacher's. Under greedy
verification a draft token is accepted exactly when it equals the teacher's token, so this
fraction is the per-token acceptance rate; the expected tokens per teacher forward with k
draft tokens follow from the run lengths of agreement (each forward yields the accepted prefix
plus one teacher token). lfmkit has no speculative decoding engine on this branch, so no
wall-clock speed-up is measured here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import lfmkit

SETS = ("test/tools_seen.jsonl", "test/extract.jsonl")


def prompts(data: Path, limit: int) -> list[dict]:
    rows = []
    for name in SETS:
        rows += [json.loads(line) for line in (data / name).read_text().splitlines()][:limit]
    for line in (data / "bench/gsm8k/test.jsonl").read_text().splitlines()[:limit]:
        rows.append({"prompt": [{"role": "user", "content": json.loads(line)["question"]}]})
    return rows


def tokens_per_forward(agree: list[bool], k: int) -> float:
    """Teacher tokens produced per teacher forward when the student drafts k tokens at a time."""
    i, forwards = 0, 0
    while i < len(agree):
        accepted = 0
        while accepted < k and i + accepted < len(agree) and agree[i + accepted]:
            accepted += 1
        i += accepted + 1  # the accepted drafts, then the teacher's own token
        forwards += 1
    return len(agree) / max(1, forwards)


@torch.no_grad()
def measure(teacher_dir: str, student_dir: str, data: Path, limit: int, k: int) -> dict:
    tok = lfmkit.Tokenizer.from_pretrained(teacher_dir)
    teacher, student = lfmkit.load(teacher_dir, dtype="float32"), lfmkit.load(student_dir, dtype="float32")
    rows = prompts(data, limit)
    ids = [
        tok.apply_chat_template(r["prompt"], tools=r.get("tools"), add_generation_prompt=True, tokenize=True)
        for r in rows
    ]
    outs = lfmkit.generate(teacher, ids, tokenizer=tok, max_tokens=96, temperature=0.0, repetition_penalty=1.0)
    agree_all, per_forward = [], []
    for prompt, out in zip(ids, outs):
        answer = list(out.token_ids)
        if not answer:
            continue
        full = torch.tensor([prompt + answer])
        guess = student(full)[0, len(prompt) - 1 : -1].argmax(-1).tolist()
        agree = [g == t for g, t in zip(guess, answer)]
        agree_all += agree
        per_forward.append((len(agree), tokens_per_forward(agree, k)))
    tokens = sum(n for n, _ in per_forward)
    return {
        "answers": len(per_forward),
        "tokens": tokens,
        "acceptance_per_token": sum(agree_all) / max(1, len(agree_all)),
        f"tokens_per_teacher_forward_k{k}": sum(n * t for n, t in per_forward) / max(1, tokens),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Greedy draft acceptance of the student for the teacher.")
    parser.add_argument("teacher")
    parser.add_argument("student")
    parser.add_argument("data")
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--k", type=int, default=4)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.teacher, args.student, Path(args.data), args.limit, args.k), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
