"""`lfmkit serve MODEL`: an OpenAI-compatible HTTP server with continuous batching."""

from __future__ import annotations

import argparse
import logging
import os


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve MODEL (checkpoint directory or Hugging Face id) with an OpenAI-compatible API: "
        "GET /v1/models, POST /v1/chat/completions, POST /v1/completions (streaming with "
        '"stream": true), GET /health, GET /metrics (Prometheus). Requests are decoded '
        "together in one continuously refilled batch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="checkpoint directory or Hugging Face id (with tokenizer files; default: the model shipped with lfmkit)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument(
        "--served-model-name", default=None, help="the model name clients send in 'model' (unset: MODEL as given)"
    )
    key = p.add_mutually_exclusive_group()
    key.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on /v1/* (visible in the process list: prefer "
        "--api-key-file or $LFMKIT_API_KEY; unset: $LFMKIT_API_KEY, else open)",
    )
    key.add_argument(
        "--api-key-file",
        default=None,
        metavar="PATH",
        help="read the API key from PATH (its first line, surrounding whitespace stripped)",
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=8,
        help="sequences decoded together (batch slots); more requests wait in the queue",
    )
    p.add_argument(
        "--max-queued",
        type=int,
        default=64,
        help="requests allowed to wait for a slot; beyond that: HTTP 429 with Retry-After",
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="tokens per sequence, prompt + completion (unset: min(model context, 4096)); "
        "memory for the K/V state is reserved for max-concurrent sequences of this length",
    )
    p.add_argument(
        "--prefill-chunk",
        type=int,
        default=128,
        help="prompt tokens prefilled per step while other streams decode (smaller: "
        "smoother streams, larger: faster time to first token)",
    )
    p.add_argument(
        "--cache-mb",
        type=float,
        default=1024,
        metavar="MiB",
        help="prefix cache budget: snapshots of the model state at the end of every prompt and answer, "
        "so a conversation's next turn prefills only its new tokens (least recently used evicted first; "
        "0: off)",
    )
    p.add_argument("--dtype", default="float32", help="weights dtype: float32, bfloat16 or float16")
    p.add_argument(
        "--quantize",
        default=None,
        choices=("int8", "int4"),
        help="weight-only quantization at load (lfmkit.quant): smaller and faster decode on CPU",
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    p.add_argument(
        "--draft",
        default=None,
        metavar="MODEL|ngram",
        help="speculative decoding: a smaller model with the same tokenizer (loaded with the same --dtype and "
        "--quantize), or 'ngram' (prompt lookup); the same output, several tokens per forward",
    )
    p.add_argument("--draft-k", type=int, default=4, help="tokens drafted per sequence per step (with --draft)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (unset: torch's choice)")
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM / Ctrl-C: stop accepting, let running requests finish this long, then end "
        "the rest (streams with an error event and [DONE])",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="server log level",
    )
    p.set_defaults(func=run)


def api_key(args) -> str | None:
    """The API key: --api-key or the first line of --api-key-file (one of them), else $LFMKIT_API_KEY."""
    from ..errors import ConfigError

    if args.api_key_file is not None:
        try:
            with open(args.api_key_file, encoding="utf-8") as f:
                key = f.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"--api-key-file {args.api_key_file}: cannot read the key ({getattr(exc, 'strerror', None) or exc})"
            ) from None
        if not key:
            raise ConfigError(f"--api-key-file {args.api_key_file}: the file's first line is empty")
        return key
    return args.api_key or os.environ.get("LFMKIT_API_KEY") or None


def build_context(args):
    """Load the model and tokenizer and build the engine + server context (no network yet)."""
    import torch

    from ..default_model import resolve_model
    from ..errors import ConfigError
    from ..inference.engine import Engine, EngineConfig
    from ..inference.metrics import ServingMetrics
    from ..inference.sampling import generation_config_defaults
    from ..io.hub import resolve_model_path
    from ..loader import load
    from ..serve.app import ServerContext
    from ..text.tokenizer import Tokenizer

    if args.port < 0 or args.port > 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    if not args.shutdown_grace >= 0:
        raise ConfigError(f"--shutdown-grace must be >= 0 seconds, got {args.shutdown_grace}")
    if not args.cache_mb >= 0:
        raise ConfigError(f"--cache-mb must be >= 0 MiB, got {args.cache_mb}")
    key = api_key(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        args.served_model_name = args.served_model_name or "lfmkit-default"
    args.model = resolve_model(args.model)
    path = resolve_model_path(args.model)
    model = load(path, quant=args.quantize or None, dtype=args.dtype, device=args.device)
    tokenizer = Tokenizer.from_pretrained(path)
    draft = args.draft
    if draft is not None and draft != "ngram":
        draft = load(resolve_model_path(draft), quant=args.quantize or None, dtype=args.dtype, device=args.device)
    config = EngineConfig(
        max_concurrent=args.max_concurrent,
        max_queued=args.max_queued,
        max_length=args.max_model_len,
        prefill_chunk=args.prefill_chunk,
        draft=draft,
        draft_k=args.draft_k,
        cache_mb=args.cache_mb,
    )
    engine = Engine(model, tokenizer, config, ServingMetrics())
    return ServerContext(
        engine, tokenizer, args.served_model_name or args.model, defaults=generation_config_defaults(path), api_key=key
    )


def run(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        from ..errors import LFMKitError

        raise LFMKitError(
            f"serving needs FastAPI and uvicorn ({exc.name} is missing): pip install 'lfmkit[serve]'"
        ) from None
    from ..serve.runner import run_server

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    context = build_context(args)
    run_server(context, host=args.host, port=args.port, log_level=args.log_level, grace=args.shutdown_grace)
    return 0
