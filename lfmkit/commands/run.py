"""`lfmkit run MODEL "prompt"`: generate from one prompt, streaming the text as it comes.

Also home of the options `run` and `chat` share: model loading (--device, --dtype) and the
sampling flags, turned into a `SamplingParams` on top of the checkpoint's defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

DTYPES = ("float32", "bfloat16", "float16")


class IntermixedParser(argparse.ArgumentParser):
    """Lets positionals come after options (`lfmkit run MODEL --chat "prompt"`), which plain
    argparse refuses once an optional positional has been skipped."""

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._mixing:
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def add_parser(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """`sub.add_parser` building an IntermixedParser."""
    cls = sub._parser_class
    sub._parser_class = IntermixedParser
    try:
        return sub.add_parser(name, **kwargs)
    finally:
        sub._parser_class = cls


# ---- shared with `lfmkit chat` ---------------------------------------------------------------
def add_model_args(p) -> None:
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="checkpoint directory, Hugging Face id (LiquidAI/LFM2-1.2B) or .gguf file (default: the model "
        "that ships with lfmkit)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: cpu)")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="weights and state dtype (default: float32 on CPU, the checkpoint's dtype elsewhere)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def add_sampling_args(p) -> None:
    g = p.add_argument_group(
        "sampling",
        "defaults: the checkpoint's generation_config.json, else the model "
        "card (temperature 0.3, min_p 0.15, repetition_penalty 1.05)",
    )
    g.add_argument("--max-tokens", type=int, default=None, help="most tokens to generate (default 256)")
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    g.add_argument("--greedy", action="store_true", help="argmax decoding: temperature 0, no min_p, no penalties")
    g.add_argument("--top-k", type=int, default=None, help="keep the k likeliest tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling (1 = off)")
    g.add_argument("--min-p", type=float, default=None, help="drop tokens below min_p x the top probability")
    g.add_argument("--repetition-penalty", type=float, default=None, help="1 = off")
    g.add_argument("--presence-penalty", type=float, default=None)
    g.add_argument("--frequency-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=None, help="same seed, same output")
    g.add_argument(
        "--stop",
        action="append",
        default=None,
        metavar="TEXT",
        help="stop when the output contains TEXT (repeatable; TEXT is not printed)",
    )
    g.add_argument("--ignore-eos", action="store_true", help="keep generating past the end-of-turn token")


def add_draft_args(p) -> None:
    g = p.add_argument_group(
        "speculative decoding",
        "draft several tokens per step and verify them in one forward of the model: the same output "
        "(greedy: token for token; sampled: the same distribution), faster when drafts are accepted",
    )
    g.add_argument(
        "--draft",
        default=None,
        metavar="MODEL|ngram",
        help="a smaller model with the same tokenizer (e.g. LFM2-350M for LFM2-2.6B), loaded like MODEL, or "
        "'ngram': prompt lookup (drafts copied from earlier in the context; no second model)",
    )
    g.add_argument("--draft-k", type=int, default=None, help="tokens drafted per step (default 4)")
    g.add_argument(
        "--draft-adaptive", action="store_true", help="adapt k per sequence (up after a full accept, down after none)"
    )


def load_draft(args, quant: str | None = None):
    """The `Speculator` for --draft (None without it): the draft model loaded on the same
    device and dtype as MODEL (and `quant`), or n-gram lookup."""
    from ..errors import ConfigError
    from ..inference.speculative import DEFAULT_K, NGRAM, Speculator
    from ..loader import load as load_model

    if args.draft is None:
        if args.draft_k is not None or args.draft_adaptive:
            raise ConfigError("--draft-k and --draft-adaptive need --draft MODEL or --draft ngram")
        return None
    draft = args.draft
    if draft != NGRAM:
        import torch

        device = args.device or "cpu"
        dtype = args.dtype or ("float32" if torch.device(device).type == "cpu" else None)
        draft = load_model(draft, quant=quant, dtype=dtype, device=device)
    k = DEFAULT_K if args.draft_k is None else args.draft_k
    return Speculator(draft, k=k, adaptive=args.draft_adaptive)


def load(args):
    """The model and its tokenizer (None when the checkpoint ships none)."""
    import torch

    from ..default_model import resolve_model
    from ..inference.generate import load_tokenizer_for
    from ..loader import load as load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or "cpu"
    dtype = args.dtype or ("float32" if torch.device(device).type == "cpu" else None)
    args.model = resolve_model(args.model)
    model = load_model(args.model, dtype=dtype, device=device)
    return model, load_tokenizer_for(model)


def sampling_params(args, model):
    from ..inference.sampling import SamplingParams

    names = (
        "max_tokens",
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "stop",
    )
    overrides = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if args.ignore_eos:
        overrides["ignore_eos"] = True
    if args.greedy:
        overrides.update(temperature=0.0, min_p=0.0, repetition_penalty=1.0)
        for n in ("temperature", "min_p", "repetition_penalty"):
            if getattr(args, n, None) is not None and n != "temperature":
                overrides[n] = getattr(args, n)
    return SamplingParams.for_model(model, **overrides)


# ---- lfmkit run ------------------------------------------------------------------------------
def register(sub) -> None:
    p = add_parser(
        sub,
        "run",
        help="generate text from a prompt (streams)",
        description="Generate from one prompt and stream the text to stdout. With --chat the prompt is "
        "wrapped in the model's chat template as a user message; --json prints one JSON object "
        "with the prompt, its token ids, the generated ids and text instead.",
        epilog='examples:\n  lfmkit run LiquidAI/LFM2-350M "The capital of France is"\n'
        '  lfmkit run ./my-lfm2 --chat "Write a haiku about CPUs" --temperature 0.7\n'
        '  echo "Summarise: ..." | lfmkit run ./my-lfm2 --chat --json -',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("prompt", nargs="?", default=None, help='the prompt text ("-" or nothing: read it from stdin)')
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template (a user turn)")
    p.add_argument("--system", default=None, help="system prompt (implies --chat)")
    p.add_argument(
        "--ids", default=None, metavar="1,2,3", help="the prompt as comma-separated token ids instead of text"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (prompt, prompt_ids, generated_ids, text, finish_reason, usage, "
        "timings) instead of streaming",
    )
    p.add_argument(
        "--logprobs",
        type=int,
        default=None,
        metavar="K",
        help="with --json: each generated token's logprob and the K likeliest alternatives",
    )
    p.add_argument("--stats", action="store_true", help="print prefill / decode speed to stderr at the end")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--json-schema",
        default=None,
        metavar="FILE",
        help="structured output: the answer is JSON valid against the JSON Schema in FILE (enforced while decoding)",
    )
    g.add_argument(
        "--grammar",
        default=None,
        metavar="FILE",
        help="structured output: the answer follows the Lark grammar in FILE (llguidance Lark, docs/generation.md)",
    )
    add_sampling_args(p)
    add_draft_args(p)
    p.set_defaults(func=run)


def constraint_from_args(args, tokenizer):
    """The --json-schema / --grammar constraint (None without either); errors name the file."""
    from pathlib import Path

    from ..errors import GenerationError
    from ..inference.constrain import Constraint, GrammarError

    flag, file = ("--json-schema", args.json_schema) if args.json_schema else ("--grammar", args.grammar)
    if file is None:
        return None
    if tokenizer is None:
        raise GenerationError(f"{flag}: the checkpoint has no tokenizer, which structured output needs")
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GenerationError(f"{flag} {file}: cannot read it ({exc.strerror or exc})") from None
    try:
        if flag == "--grammar":
            return Constraint.lark(text, tokenizer)
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GenerationError(f"{flag} {file}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
        return Constraint.json_schema(schema, tokenizer)
    except GrammarError as exc:
        raise GenerationError(f"{flag} {file}: {exc}") from None


def _prompt(args, tokenizer):
    from ..errors import GenerationError

    if args.ids is not None:
        try:
            return [int(t) for t in args.ids.replace(" ", "").split(",") if t]
        except ValueError:
            raise GenerationError(f"--ids: expected comma-separated integers, got {args.ids!r}") from None
    text = args.prompt
    if text is None or text == "-":
        text = sys.stdin.read()
    if tokenizer is None:
        raise GenerationError(f"{args.model}: the checkpoint has no tokenizer; give the prompt as --ids 1,2,3")
    if args.chat or args.system is not None:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        return messages + [{"role": "user", "content": text}]
    return text


def run(args) -> int:
    from ..default_model import names_a_model
    from ..inference.generate import encode_prompt, stream_generate

    if args.prompt is None and args.model is not None and not names_a_model(args.model):
        args.prompt, args.model = args.model, None  # `lfmkit run "Hi"`: the default model
    model, tokenizer = load(args)
    spec = load_draft(args)
    params = sampling_params(args, model)
    if args.logprobs:
        params = params.replace(logprobs=True, top_logprobs=args.logprobs)
    constraint = constraint_from_args(args, tokenizer)
    if constraint is not None:
        params = params.replace(constraint=constraint)
    prompt = _prompt(args, tokenizer)
    ids = encode_prompt(prompt, tokenizer)
    start = time.perf_counter()
    first = None
    result = None
    out = sys.stdout
    for chunk in stream_generate(model, ids, params, tokenizer=tokenizer, parse=False, draft=spec):
        if first is None:
            first = time.perf_counter()
        if chunk.text and not args.json:
            out.write(chunk.text)
            out.flush()
        if chunk.result is not None:
            result = chunk.result
    end = time.perf_counter()
    prefill_s = (first or end) - start
    decode_s = end - (first or end)
    n_gen = len(result.token_ids)
    timings = {
        "prefill_s": round(prefill_s, 4),
        "decode_s": round(decode_s, 4),
        "prefill_tokens_per_s": round(len(ids) / prefill_s, 2) if prefill_s > 0 else None,
        "decode_tokens_per_s": round((n_gen - 1) / decode_s, 2) if n_gen > 1 and decode_s > 0 else None,
    }
    if args.json:
        obj = {
            "model": str(getattr(model, "source_path", args.model)),
            "prompt": prompt if isinstance(prompt, (str, list)) else None,
            "prompt_ids": ids,
            "generated_ids": result.token_ids,
            "text": result.text,
            "finish_reason": result.finish_reason,
            "stop_reason": result.stop_reason,
            "usage": {
                "prompt_tokens": result.usage.prompt_tokens,
                "completion_tokens": result.usage.completion_tokens,
                "total_tokens": result.usage.total_tokens,
            },
            "params": params.to_dict(),
            "timings": timings,
        }
        if spec is not None:
            obj["speculative"] = speculation_summary(spec)
        if result.logprobs is not None:
            obj["logprobs"] = [
                {
                    "token_id": e.token_id,
                    "logprob": e.logprob,
                    "top": [{"token_id": t, "logprob": lp} for t, lp in e.top],
                }
                for e in result.logprobs
            ]
        print(json.dumps(obj, ensure_ascii=False))
    else:
        if result.text and not result.text.endswith("\n"):
            out.write("\n")
        out.flush()
    if args.stats:
        print(
            f"[{len(ids)} prompt tokens in {prefill_s:.2f}s"
            + (f" ({timings['prefill_tokens_per_s']} tok/s)" if timings["prefill_tokens_per_s"] else "")
            + f", {n_gen} generated in {decode_s:.2f}s"
            + (f" ({timings['decode_tokens_per_s']} tok/s)" if timings["decode_tokens_per_s"] else "")
            + f", finish: {result.finish_reason}"
            + (f", {speculation_line(spec)}" if spec is not None else "")
            + "]",
            file=sys.stderr,
        )
    return 0


def speculation_summary(spec) -> dict:
    """--json's view of a speculative run: draft, k, steps, drafted / accepted tokens."""
    st = spec.stats
    rate = st.acceptance_rate
    return {
        "draft": spec.name,
        "k": spec.k,
        "steps": st.steps,
        "drafted": st.drafted,
        "accepted": st.accepted,
        "acceptance_rate": round(rate, 4) if rate is not None else None,
        "tokens_per_step": round(st.tokens_per_step, 3) if st.tokens_per_step is not None else None,
    }


def speculation_line(spec) -> str:
    """One line about a speculative run, for --stats and `lfmkit chat`."""
    st = spec.stats
    rate = f"{100 * st.acceptance_rate:.0f}%" if st.acceptance_rate is not None else "n/a"
    per = f"{st.tokens_per_step:.2f}" if st.tokens_per_step is not None else "n/a"
    return f"draft {spec.name} k={spec.k}: {st.accepted}/{st.drafted} drafts accepted ({rate}), {per} tokens per step"
