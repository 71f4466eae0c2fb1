"""`lfmkit prefs build`: semi-online preference pairs from SFT conversations (`lfmkit.train.prefs`)."""

from __future__ import annotations

import argparse

HELP = """\
Sample --num-samples completions per conversation of --prompts with the model (batched; the
samples of a prompt share one prefill), score every candidate (the SFT answer included) with
the judge(s), and write the highest vs the lowest scored as a preference pair in TRL's format,
with both scores and the judges' raw outputs, when the pair passes --min-chosen-score and
--min-gap. Several judges are averaged (a jury). A killed run continues with --resume.

example:
  lfmkit prefs build --model sft-run/ --prompts sft.jsonl --num-samples 4 \\
      --judge my_judges:helpfulness --judge-endpoint http://127.0.0.1:8000/v1 \\
      --min-chosen-score 6 --min-gap 2 --output pairs.jsonl
  lfmkit train dpo --model sft-run/ --data pairs.jsonl --loss sigmoid_norm --output dpo-run/

A Python judge is function(messages, completion) -> float (higher is better), messages the
conversation without the answer. See docs/training.md.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "prefs",
        help="build preference pairs (sample, judge, pair)",
        description="Preference data for `lfmkit train dpo`.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    b = actions.add_parser(
        "build",
        help="semi-online pairs: sample K completions, judge, keep best vs worst",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--model", required=True, help="the model to sample from (directory, Hub id or .gguf)")
    b.add_argument(
        "--prompts",
        required=True,
        metavar="SFT.jsonl",
        help="conversations: 'messages' rows (the last assistant message is the reference answer) or "
        "'prompt' message lists (.jsonl/.json/.parquet or a `datasets` directory)",
    )
    b.add_argument("--output", required=True, metavar="PAIRS.jsonl", help="the pairs file (appended; + .progress)")
    b.add_argument("--num-samples", type=int, default=4, metavar="K", help="completions sampled per prompt (default 4)")
    b.add_argument(
        "--judge",
        action="append",
        default=[],
        dest="judges",
        metavar="MODULE:FUNCTION",
        help="a Python judge, function(messages, completion) -> float; repeatable",
    )
    b.add_argument(
        "--judge-endpoint",
        action="append",
        default=[],
        dest="judge_endpoints",
        metavar="URL",
        help="an LLM judge: an OpenAI-compatible server (lfmkit serve, llama.cpp, vLLM, hosted); repeatable",
    )
    b.add_argument("--judge-model", help="the 'model' field sent to the judge endpoint (default 'judge')")
    b.add_argument(
        "--judge-rubric",
        metavar="FILE",
        help="rubric prompt with {conversation} and {response}; it must ask for '[[N]]' "
        "(default: MT-Bench's 1-10 grading prompt)",
    )
    b.add_argument("--judge-api-key", help="bearer token for the endpoint (default: $LFMKIT_JUDGE_API_KEY)")
    b.add_argument("--judge-workers", type=int, default=8, help="concurrent requests per endpoint (default 8)")
    b.add_argument("--min-chosen-score", type=float, help="keep pairs whose chosen score is at least this")
    b.add_argument(
        "--min-gap",
        type=float,
        default=0.0,
        help="keep pairs whose chosen score exceeds the rejected by at least this (default 0: any positive gap)",
    )
    b.add_argument("--max-tokens", type=int, default=512, help="tokens per sampled completion (default 512)")
    b.add_argument("--temperature", type=float, help="sampling temperature (default: the model's generation config)")
    b.add_argument("--top-p", type=float, help="nucleus sampling (default: the model's generation config)")
    b.add_argument("--seed", type=int, default=42, help="sampling seed; each prompt gets its own from it (default 42)")
    b.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch (default 8)")
    b.add_argument("--quant", choices=("int8", "int4", "bf16"), help="load the model quantized for sampling")
    b.add_argument("--device", help="cpu, cuda, ... (default: the loader's)")
    b.add_argument("--resume", action="store_true", help="continue a killed or finished run into --output")
    b.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    b.set_defaults(func=run_build)
    p.set_defaults(func=lambda args: p.print_help() or 0, action=None)


def run_build(args) -> int:
    from ..train.prefs import PrefsConfig, build_pairs

    names = {f for f in PrefsConfig.__dataclass_fields__}
    config = PrefsConfig(**{k: v for k, v in vars(args).items() if k in names})
    build_pairs(config)
    return 0
