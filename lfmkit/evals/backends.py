"""Where the numbers come from: an lfmkit model in this process, or an OpenAI-compatible server.

Both answer the same two questions for the runner:

- `score_mc(texts / conversations, continuations)`: per prompt, the log-likelihood of each
  continuation and the decoded most likely next token (multiple choice, both rules);
- `generate(prompts, max_tokens, stop)`: a greedy completion per prompt.

The in-process backend runs batches on the model's hybrid state, one forward pass per
question: prompts are sorted by their tokens so a batch shares its few-shot prefix, which is
prefilled once and copied (conv windows and K/V) into every row; each row then runs only its
question, and the logits after it give both the vocabulary argmax and every one-token
continuation's log-likelihood (a continuation of several tokens gets a row of its own, the
question plus that continuation). `score_continuations` is that token-level core, shared with
the lm-eval adapter.

The endpoint backend sends greedy requests (`temperature 0`, no penalties) to `/v1/completions`
(plain prompts) or `/v1/chat/completions` (conversations), several at a time; the choices rule
needs prompt log-likelihoods, which chat servers do not return, so it is refused there.
"""

from __future__ import annotations

import concurrent.futures
import os
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import EvalError
from ..inference.generate import encode_prompt, generate
from ..inference.sampling import SamplingParams
from ..inference.shared_prefix import common_prefix

# Token rows (rows x tokens) per forward pass when scoring: one pass for typical MMLU questions
# after their shared few-shot prefix; long rows are split (the state carries them across passes).
ROW_TOKENS_PER_PASS = 2048


@dataclass
class ContinuationScore:
    """lm-eval's (log-likelihood, is_greedy) for each continuation, and the context's argmax token."""

    logliks: list[float]
    greedy: list[bool]
    top_token: int


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids as lm-eval's HF backend and `lfmkit.generate` encode text: bos first unless present."""
    return encode_prompt(text, tokenizer)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: trailing spaces move to the continuation, whose ids are the
    whole string's ids past the context's."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode_text(tokenizer, context + continuation)
    ctx = encode_text(tokenizer, context)
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def score_continuations(
    model, requests: Sequence[tuple[list[int], list[list[int]]]], batch_size: int = 16
) -> list[ContinuationScore]:
    """For each (context ids, [continuation ids ...]): every continuation's summed log-probability
    and whether greedy decoding would produce it, plus the argmax token after the context.

    Contexts are sorted by their tokens, so a batch holds contexts sharing their few-shot prefix.
    The batch's common prefix is prefilled once, into one state row that every row copies; each
    row then runs only its own tokens: the rest of its context, plus, for a continuation of
    several tokens, that continuation without its last token. Rows are right-padded (padding after
    a row's real tokens cannot change them) and logits are taken only where they are needed.
    """
    limit = model.config.max_position_embeddings
    requests = [(_fit(ctx, conts, limit), conts) for ctx, conts in requests]
    order = sorted(range(len(requests)), key=lambda i: requests[i][0])
    out: list[ContinuationScore | None] = [None] * len(requests)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for i, score in zip(idx, _score_batch(model, [requests[i] for i in idx], batch_size)):
            out[i] = score
    return out


def _fit(ctx: list[int], conts: list[list[int]], limit: int) -> list[int]:
    """Drop the oldest context tokens when context + longest continuation exceeds the context size."""
    if not ctx:
        raise EvalError("a multiple-choice context encodes to no tokens")
    if any(not c for c in conts):
        raise EvalError("a continuation encodes to no tokens")
    longest = max((len(c) for c in conts), default=0)
    return ctx[max(0, len(ctx) + longest - 1 - limit) :]


def _score_batch(model, batch, max_rows: int) -> list[ContinuationScore]:
    p = common_prefix([ctx for ctx, _ in batch])
    # A row: (question, continuation index or None, its tokens past the prefix).
    rows = []
    for b, (ctx, conts) in enumerate(batch):
        multi = [k for k, c in enumerate(conts) if len(c) > 1]
        rows += [(b, k, ctx[p:] + conts[k][:-1]) for k in multi] or [(b, None, ctx[p:])]
    width = max(len(toks) for _, _, toks in rows)
    prefix_state = None
    if p:
        prefix_state = model.new_state(batch_size=1, max_length=p + width)
        model.prefill(torch.tensor([batch[0][0][:p]], device=model.device), prefix_state)
    first: dict[int, torch.Tensor] = {}  # question -> log-probs after its context
    tails: dict[tuple[int, int], tuple[float, bool]] = {}
    for start in range(0, len(rows), max_rows):
        group = rows[start : start + max_rows]
        logp = _row_logprobs(model, prefix_state, p, width, group, batch)
        for (b, k, _), lp in zip(group, logp):
            first.setdefault(b, lp[0])
            if k is not None:
                cont = torch.tensor(batch[b][1][k][1:], device=lp.device)
                rest = lp[1 : 1 + len(cont)]
                tails[(b, k)] = (float(rest.gather(-1, cont[:, None]).sum()), bool((rest.argmax(-1) == cont).all()))
    scores = []
    for b, (_, conts) in enumerate(batch):
        top = int(first[b].argmax())
        logliks, greedy = [], []
        for k, cont in enumerate(conts):
            ll, gr = tails.get((b, k), (0.0, True))
            logliks.append(float(first[b][cont[0]]) + ll)
            greedy.append(top == cont[0] and gr)
        scores.append(ContinuationScore(logliks, greedy, top))
    return scores


def _row_logprobs(model, prefix_state, p: int, width: int, group, batch) -> list[torch.Tensor]:
    """Run a group of rows after the shared prefix; per row the log-probabilities [n, V] at the
    positions that predict its continuation (the context's last token onwards)."""
    state = model.new_state(batch_size=len(group), max_length=p + width)
    if prefix_state is not None:
        for r in range(len(group)):
            state.copy_row(prefix_state, 0, r)
    ids = torch.full((len(group), width), model.config.pad_token_id, dtype=torch.long)
    picks, counts = [], []
    for r, (b, k, toks) in enumerate(group):
        ids[r, : len(toks)] = torch.tensor(toks)
        own = len(batch[b][0]) - p  # the context's tokens in this row
        n = 1 if k is None else len(batch[b][1][k])
        picks += [r * width + own - 1 + j for j in range(n)]
        counts.append(n)
    ids = ids.to(model.device)
    step = max(1, ROW_TOKENS_PER_PASS // len(group))  # bounds activation memory for long prompts
    hidden = torch.cat(
        [model(ids[:, a : a + step], state=state, return_hidden=True) for a in range(0, width, step)], dim=1
    )  # [R, width, H]
    picked = hidden.reshape(-1, hidden.shape[-1])[torch.tensor(picks, device=hidden.device)]
    logp = model.lm_head(picked).float().log_softmax(-1)
    return list(logp.split(counts))


class LocalBackend:
    """An lfmkit model (and its tokenizer) in this process."""

    name = "lfmkit"

    def __init__(self, model, tokenizer, batch_size: int = 16, chat_template_kwargs: dict | None = None):
        if tokenizer is None:
            raise EvalError("the model's checkpoint has no tokenizer (tokenizer.json); evaluation needs one")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.chat_template_kwargs = chat_template_kwargs or {}

    def prompt_text(self, prompt) -> str:
        """A plain prompt as given; a conversation rendered with the checkpoint's chat template."""
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, **self.chat_template_kwargs)

    def score_mc(self, prompts: list, continuations: list[list[str]]) -> list[tuple[list[float], str]]:
        """Per prompt: the log-likelihood of each continuation and the decoded argmax token."""
        requests = []
        for prompt, conts in zip(prompts, continuations):
            text = self.prompt_text(prompt)
            pairs = [encode_pair(self.tokenizer, text, c) for c in conts]
            ctx = pairs[0][0] if pairs else encode_text(self.tokenizer, text)
            requests.append((ctx, [cont for _, cont in pairs]))
        scores = score_continuations(self.model, requests, self.batch_size)
        return [(s.logliks, self.tokenizer.decode([s.top_token])) for s in scores]

    def generate(self, prompts: list, max_tokens: int, stop: list[str]) -> list[str]:
        ids = [encode_text(self.tokenizer, self.prompt_text(p)) for p in prompts]
        params = SamplingParams.greedy(max_tokens=max_tokens, stop=list(stop))
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out: list[str] = [""] * len(ids)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = [ids[i] for i in idx]
            results = generate(self.model, batch, params, tokenizer=self.tokenizer, truncate=True, share_prefix=True)
            for i, r in zip(idx, results):
                out[i] = r.text
        return out


class EndpointBackend:
    """Any OpenAI-compatible server (lfmkit serve, vLLM, llama.cpp, Ollama ...), greedy requests."""

    name = "endpoint"
    # Greedy over the server's defaults (lfmkit and vLLM would otherwise apply repetition penalties).
    GREEDY = {
        "temperature": 0.0,
        "top_p": 1.0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }

    def __init__(
        self,
        url: str,
        model: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 600.0,
        chat_template_kwargs: dict | None = None,
    ):
        import httpx

        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        key = api_key or os.environ.get("OPENAI_API_KEY")
        self.client = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {key}"} if key else {})
        self.concurrency = concurrency
        self.extra = {"chat_template_kwargs": chat_template_kwargs} if chat_template_kwargs else {}
        self.model = model or self._first_model()

    def _post(self, path: str, body: dict) -> dict:
        import httpx

        try:
            r = self.client.post(self.base + path, json=body)
        except httpx.HTTPError as exc:
            raise EvalError(f"--endpoint {self.base}{path}: {type(exc).__name__}: {exc}") from None
        if r.status_code >= 400:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:200]
            raise EvalError(f"--endpoint {self.base}{path}: HTTP {r.status_code}: {message}")
        return r.json()

    def _first_model(self) -> str:
        import httpx

        try:
            r = self.client.get(self.base + "/models")
            r.raise_for_status()
            return r.json()["data"][0]["id"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            raise EvalError(
                f"--endpoint {self.base}/models: cannot list the served models ({exc}); pass --endpoint-model NAME"
            ) from None

    def _complete(self, prompt, max_tokens: int, stop: list[str]) -> str:
        body = {"model": self.model, "max_tokens": max_tokens, **self.GREEDY, **self.extra}
        if stop:
            body["stop"] = list(stop)[:4]
        if isinstance(prompt, str):
            return self._post("/completions", {**body, "prompt": prompt})["choices"][0]["text"]
        message = self._post("/chat/completions", {**body, "messages": prompt})["choices"][0]["message"]
        return message.get("content") or ""

    def _map(self, fn, items: list) -> list:
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, items))

    def score_mc(self, prompts: list, continuations: list[list[str]]) -> list[tuple[list[float], str]]:
        if any(continuations):
            raise EvalError(
                "--mc-rule choices needs prompt log-likelihoods, which OpenAI-compatible chat "
                "servers do not return; use --mc-rule vocab with --endpoint"
            )
        return [([], text) for text in self._map(lambda p: self._complete(p, 1, []), prompts)]

    def generate(self, prompts: list, max_tokens: int, stop: list[str]) -> list[str]:
        return self._map(lambda p: self._complete(p, max_tokens, stop), prompts)


__all__ = ["LocalBackend", "EndpointBackend", "score_continuations", "encode_pair", "encode_text", "ContinuationScore"]
