"""Where the numbers come from: an lfmkit model in this process, or an OpenAI-compatible server.

Both answer the same two questions for the runner:

- `score_mc(texts / conversations, continuations)`: per prompt, the log-likelihood of each
  continuation and the decoded most likely next token (multiple choice, both rules);
- `generate(prompts, max_tokens, stop)`: a greedy completion per prompt (in process: continuous
  batching, a finished row taking the next prompt at once; inference/offline.py).

The in-process backend scores on the model's hybrid state (scoring.py): every shared few-shot
prefix is prefilled once, each question then runs only its own tokens, and the logits after it
give both the vocabulary argmax and every one-token continuation's log-likelihood.
`score_continuations` is that token-level core, shared with the lm-eval adapter.

The endpoint backend sends greedy requests (`temperature 0`, no penalties) to `/v1/completions`
(plain prompts) or `/v1/chat/completions` (conversations), several at a time; the choices rule
needs prompt log-likelihoods, which chat servers do not return, so it is refused there.
"""

from __future__ import annotations

import concurrent.futures
import os

from ..errors import EvalError
from ..inference.generate import encode_prompt
from ..inference.offline import generate_texts
from ..inference.sampling import SamplingParams
from .scoring import ContinuationScore, score_continuations


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
        """Greedy completions with continuous batching (inference/offline.py): `batch_size`
        rows decode together and a finished row takes the next prompt at once."""
        ids = [encode_text(self.tokenizer, self.prompt_text(p)) for p in prompts]
        params = SamplingParams.greedy(max_tokens=max_tokens, stop=list(stop))
        return generate_texts(
            self.model, ids, params, tokenizer=self.tokenizer, batch_size=self.batch_size, truncate=True
        )


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
