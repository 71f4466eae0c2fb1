"""`lfmkit eval`: benchmark a model (`lfmkit eval MODEL --tasks ...`), judge two models' answers
(`lfmkit eval judge ...`) or plot several results side by side (`lfmkit eval plot ...`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TASK_NAMES = "mmlu, mmmlu, gpqa, gsm8k, mgsm, ifeval, ifbench"


class EvalParser(argparse.ArgumentParser):
    """`lfmkit eval` whose first word may name a sub-action (judge, plot) instead of MODEL."""

    actions: dict[str, argparse.ArgumentParser] = {}

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        if args and args[0] in self.actions:
            return self.actions[args[0]].parse_known_args(args[1:], namespace)
        return super().parse_known_args(args, namespace)


def register(sub) -> None:
    cls = sub._parser_class
    sub._parser_class = EvalParser
    try:
        p = sub.add_parser(
            "eval",
            help="benchmark a model (MMLU, GPQA, GSM8K, MGSM, MMMLU, IFEval, IFBench), judge, plot",
            description="Score MODEL on benchmarks with the model card's methods (docs/eval.md). Data comes from "
            "--data DIR/<task>/<split>.jsonl|csv|parquet with the Hugging Face datasets' columns, or, for a "
            "task without such a folder, the Hugging Face datasets cache (HF_DATASETS_OFFLINE=1: cache only). "
            "Also: 'lfmkit eval judge ...' (pairwise LLM judging) and 'lfmkit eval plot ...'.",
            epilog="examples:\n  lfmkit eval ./LFM2-1.2B --tasks mmlu,gsm8k --data bench --output out\n"
            "  lfmkit eval tiny --endpoint http://127.0.0.1:8000 --tasks gsm8k --data bench\n"
            "  lfmkit eval judge --answers-a a.jsonl --answers-b b.jsonl --judge http://127.0.0.1:8001\n"
            "  lfmkit eval plot out-a out-b --output compare.png",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    finally:
        sub._parser_class = cls
    p.add_argument(
        "model", help="checkpoint directory or Hub id; with --endpoint, the served model name ('-': the server's first)"
    )
    p.add_argument("--tasks", default="", help=f"comma-separated: {TASK_NAMES}")
    p.add_argument(
        "--data",
        default=None,
        help="folder holding <task>/<split>.jsonl (or .csv / .parquet); tasks without a folder there "
        "read the Hugging Face datasets cache",
    )
    p.add_argument("--output", default=None, help="folder for results.json and samples_<task>.jsonl")
    p.add_argument("--limit", type=int, default=None, help="first N items per task (per subtask)")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the model card's)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per batch (endpoint: requests in flight)")
    p.add_argument("--seed", type=int, default=0, help="seed (GPQA's choice order)")
    p.add_argument(
        "--apply-chat-template",
        action="store_true",
        help="render prompts as conversations with the model's chat template",
    )
    p.add_argument(
        "--think",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pass enable_thinking to the chat template (unset: the template's default)",
    )
    p.add_argument(
        "--mc-rule",
        choices=("vocab", "choices"),
        default="vocab",
        help="multiple choice: vocab = the model card's argmax over the vocabulary, decoded and "
        "stripped; choices = lm-eval's log-likelihood of each choice",
    )
    p.add_argument("--max-tokens", type=int, default=1024, help="generation budget per answer (reasoning included)")
    p.add_argument("--endpoint", default=None, metavar="URL", help="score an OpenAI-compatible server instead")
    p.add_argument("--api-key", default=None, help="endpoint API key (default: $OPENAI_API_KEY)")
    p.add_argument("--quant", choices=("int8", "int4"), default=None, help="quantize the model at load")
    p.add_argument("--dtype", default=None, help="weights dtype (float32, bfloat16)")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    p.add_argument(
        "--lm-eval-tasks",
        default=None,
        metavar="T1,T2",
        help="run lm-evaluation-harness tasks on the model (LMEvalModel) instead of --tasks",
    )
    p.add_argument(
        "--lm-eval-include",
        default=None,
        metavar="DIR",
        help="extra folder of lm-eval task YAML files (lm-eval's --include_path)",
    )
    p.set_defaults(func=run)
    EvalParser.actions = {"judge": _judge_parser(), "plot": _plot_parser()}


def _judge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lfmkit eval judge",
        description="Pairwise judging: every judge sees each prompt's two answers in both orders (an inconsistent "
        "verdict is a tie); win / tie / loss of A with bootstrap 95% intervals, per judge and pooled.",
    )
    p.add_argument("--answers-a", required=True, help="JSONL: one {prompt, answer} per line (model A)")
    p.add_argument("--answers-b", required=True, help="JSONL: the same prompts, in the same order (model B)")
    p.add_argument(
        "--judge",
        action="append",
        required=True,
        metavar="URL[#MODEL]",
        help="an OpenAI-compatible judge endpoint (repeat for a jury)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="write judge.json here (a folder)")
    p.set_defaults(func=run_judge, command="eval judge")
    return p


def _plot_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lfmkit eval plot", description="Bar chart of several runs' results.json.")
    p.add_argument("results", nargs="+", help="results.json files or the folders holding them")
    p.add_argument("--output", required=True, help="PNG file to write")
    p.add_argument("--labels", default=None, help="comma-separated names for the runs")
    p.set_defaults(func=run_plot, command="eval plot")
    return p


def _backend(args):
    from ..errors import EvalError
    from ..evals.backends import EndpointBackend

    kwargs = {"enable_thinking": args.think} if args.think is not None else None
    if args.endpoint:
        return EndpointBackend(
            args.endpoint,
            model=None if args.model == "-" else args.model,
            api_key=args.api_key,
            concurrency=args.batch_size,
            chat_template_kwargs=kwargs,
        )
    if args.batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1, got {args.batch_size}")
    from ..evals.runner import make_backend
    from ..loader import load

    model = load(args.model, quant=args.quant, dtype=args.dtype, device=args.device)
    return make_backend(model, batch_size=args.batch_size, chat_template_kwargs=kwargs)


def run(args) -> int:
    from ..errors import EvalError

    if args.lm_eval_tasks:
        return _run_lm_eval(args)
    if not args.tasks:
        raise EvalError(f"--tasks: name at least one task ({TASK_NAMES})")
    if args.data and not Path(args.data).is_dir():
        raise EvalError(f"--data {args.data}: no such directory (it holds <task>/<split>.jsonl files)")
    from ..evals.report import format_table
    from ..evals.runner import evaluate

    summary = evaluate(
        _backend(args),
        args.tasks,
        args.data,
        args.output,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        seed=args.seed,
        apply_chat_template=args.apply_chat_template,
        think=args.think,
        mc_rule=args.mc_rule,
        max_tokens=args.max_tokens,
        model_name=args.model,
    )
    print(format_table(summary))
    if args.output:
        print(f"\nwrote {Path(args.output) / 'results.json'} and samples_<task>.jsonl")
    return 0


def _run_lm_eval(args) -> int:
    from ..errors import EvalError

    try:
        import lm_eval
    except ImportError:
        raise EvalError("--lm-eval-tasks needs lm-eval: pip install 'lfmkit[eval]'") from None
    from ..evals.lm_eval_model import LMEvalModel

    lm = LMEvalModel(
        pretrained=args.model, batch_size=args.batch_size, quant=args.quant, dtype=args.dtype, device=args.device
    )
    from lm_eval.tasks import TaskManager

    tasks = [t for t in args.lm_eval_tasks.split(",") if t]
    manager = TaskManager(include_path=args.lm_eval_include) if args.lm_eval_include else None
    try:
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            num_fewshot=args.num_fewshot,
            limit=args.limit,
            apply_chat_template=args.apply_chat_template,
            random_seed=args.seed,
            task_manager=manager,
        )
    except KeyError as exc:
        raise EvalError(f"--lm-eval-tasks: lm-eval does not know {exc}") from None
    print(json.dumps(out["results"], indent=2, default=str))
    if args.output:
        Path(args.output).mkdir(parents=True, exist_ok=True)
        (Path(args.output) / "lm_eval_results.json").write_text(json.dumps(out["results"], indent=2, default=str))
    return 0


def _read_answers(path: str) -> list[dict]:
    from ..evals.data import read_file

    return read_file(Path(path), ("prompt", "answer"), "the answers file's fields").rows


def run_judge(args) -> int:
    from ..evals.judge import EndpointJudge, judge_pairwise

    a, b = _read_answers(args.answers_a), _read_answers(args.answers_b)
    judges = {}
    for spec in args.judge:
        url, _, model = spec.partition("#")
        judges[spec] = EndpointJudge(url, model or None)
    result = judge_pairwise(
        [r["prompt"] for r in a],
        [r["answer"] for r in a],
        [r["answer"] for r in b],
        judges,
        bootstrap=args.bootstrap,
        seed=args.seed,
    )
    for name, r in [("jury", result.jury), *result.judges.items()]:
        ci = r.ci.get("score")
        span = f"  (95% CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f})" if ci else ""
        print(
            f"{name}: A wins {100 * r.win:.1f}%  ties {100 * r.tie:.1f}%  loses {100 * r.loss:.1f}%  "
            f"score {100 * r.score:.1f}%{span}"
        )
    if args.output:
        Path(args.output).mkdir(parents=True, exist_ok=True)
        (Path(args.output) / "judge.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0


def run_plot(args) -> int:
    from ..evals.report import plot_results

    labels = args.labels.split(",") if args.labels else None
    print(f"wrote {plot_results([Path(r) for r in args.results], Path(args.output), labels)}")
    return 0
