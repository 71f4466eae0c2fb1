"""Many prompts, one call, continuous batching: what an evaluation or a batch job runs.

`generate_texts(model, prompts, params, batch_size=8)` keeps `batch_size` sequences decoding
together, as the server's engine does (engine.py), driven here without its thread: when a
sequence ends (a stop string, an end token, its max_tokens) the next waiting prompt is
prefilled into its row at the next step. A static batch (lm-eval's Hugging Face backend,
`generate` on a list) instead decodes every batch until its longest answer ends, so rows that
finished early sit idle; on a real model, whose answers end at different lengths, that idle
share is what continuous batching gives back.

Prompts are queued longest first, so the ones prefilled together pad little. When the prompts
share a long prefix (few-shot examples: `worth_sharing`), the engine's prefix cache is on, so
that prefix is prefilled about twice for the whole run rather than once per batch. Each row's
text is its own: rows never see each other (the engine's tests compare with `generate`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import GenerationError
from .engine import Engine, EngineConfig
from .generate import _context_check
from .handle import ErrorEvent, FinishEvent, TokenEvent
from .prefix_cache import DEFAULT_CACHE_MB
from .sampling import SamplingParams
from .shared_prefix import worth_sharing

PREFILL_TOKENS = 2048  # prompt tokens (padded) prefilled per step while others decode


def generate_texts(
    model,
    prompts: Sequence[list[int]],
    params: SamplingParams | Sequence[SamplingParams],
    *,
    tokenizer,
    batch_size: int = 8,
    cache_mb: float | None = None,
    truncate: bool = False,
) -> list[str]:
    """The completion text of each prompt (token ids), in order, with continuous batching over
    `batch_size` rows; `params` for all prompts or one per prompt (n = 1).

    `cache_mb`: the prefix cache's budget (None: on when the prompts share a long prefix, off
    otherwise). `truncate`: a prompt too long for the model's context keeps its newest tokens
    (else ContextLengthError). Raises GenerationError if a prompt fails."""
    if not prompts:
        return []
    each = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
    if len(each) != len(prompts):
        raise GenerationError(f"params: {len(each)} SamplingParams for {len(prompts)} prompts")
    for sp in each:
        sp.validate()
        if (sp.n or 1) != 1:
            raise GenerationError("generate_texts takes n=1 (one completion per prompt)")
    context = model.config.max_position_embeddings
    prompts = [
        _context_check(model, list(p), sp, truncate, context, "the model's context", i)
        for i, (p, sp) in enumerate(zip(prompts, each))
    ]
    if cache_mb is None:
        cache_mb = DEFAULT_CACHE_MB if worth_sharing(prompts) else 0.0
    config = EngineConfig(
        max_concurrent=batch_size,
        max_queued=len(prompts),
        max_length=max(len(p) + sp.max_tokens for p, sp in zip(prompts, each)),
        prefill_chunk=PREFILL_TOKENS,
        cache_mb=cache_mb,
    )
    engine = Engine(model, tokenizer, config)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    handles = {}
    for i in order:
        try:
            handles[i] = engine.enqueue(prompts[i], each[i])
        except GenerationError as exc:  # a token id outside the vocabulary, ...
            raise GenerationError(f"prompt {i}: {exc}") from None
    texts: dict[int, list[str]] = {i: [] for i in handles}
    running = set(handles)
    while running:
        engine.step()
        for i in list(running):
            for event in handles[i].ready():
                if isinstance(event, (TokenEvent, FinishEvent)):
                    texts[i].append(event.text)
                if isinstance(event, FinishEvent):
                    running.discard(i)
                elif isinstance(event, ErrorEvent):
                    raise GenerationError(f"prompt {i}: {event.message}")
    return ["".join(texts[i]) for i in range(len(prompts))]


__all__ = ["generate_texts", "PREFILL_TOKENS"]
