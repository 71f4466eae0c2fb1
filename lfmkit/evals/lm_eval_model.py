"""lm-evaluation-harness on lfmkit's engine: `LMEvalModel`, an lm-eval `LM` registered as `lfmkit`.

    import lm_eval
    from lfmkit.evals import LMEvalModel
    lm_eval.simple_evaluate(model=LMEvalModel(pretrained="./LFM2-1.2B"), tasks=["hellaswag"])

Tokenization is lm-eval's own (`TemplateLM`: context / continuation split, empty contexts get
the prefix token; `tok_encode` adds the tokenizer's bos as lm-eval's Hugging Face backend does),
so the same requests produce the same token ids, and the log-likelihoods come from
`score_continuations`: one prefill per distinct context, on the hybrid state. Rolling
log-likelihoods use lm-eval's own windowing; generation is greedy, each request with its own
stop strings and budget, all in one continuous batch (`lfmkit.inference.offline`).
"""

from __future__ import annotations

from collections import defaultdict

import lm_eval.models  # noqa: F401  - lm-eval fills its model registry only while it is empty; fill it first
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ..errors import EvalError
from ..inference.generate import load_tokenizer_for
from ..inference.offline import generate_texts
from ..inference.sampling import SamplingParams
from .backends import score_continuations

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HF backend default


@register_model("lfmkit")
class LMEvalModel(TemplateLM):
    """An lfmkit model (path or loaded) behind lm-eval's LM interface."""

    def __init__(
        self,
        pretrained=None,
        model=None,
        tokenizer=None,
        batch_size: int | str = 16,
        quant: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        **_ignored,
    ):
        super().__init__()
        if model is None:
            if pretrained is None:
                raise EvalError("LMEvalModel needs pretrained=DIR (or model=an lfmkit model)")
            from ..loader import load

            model = load(pretrained, quant=quant, dtype=dtype, device=device)
        self.model = model
        self.tokenizer = tokenizer or load_tokenizer_for(model)
        if self.tokenizer is None:
            raise EvalError("LMEvalModel: the checkpoint has no tokenizer.json")
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16

    # ---- what TemplateLM needs -----------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self.model.config.max_position_embeddings

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.path or "lfmkit").replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """As lm-eval's HF backend: the tokenizer's special tokens (bos) unless the text has them."""
        if add_special_tokens is None:
            bos = self.tokenizer.bos_token
            add_special_tokens = not (bos and string.startswith(bos))
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """Requests sharing a context are scored from one prefill of it."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        conts = []
        for i, (_, ctx, cont) in enumerate(requests):
            full = (list(ctx) + list(cont))[-(self.max_length + 1) :]  # lm-eval's left truncation
            groups[tuple(full[: len(full) - len(cont)])].append(i)
            conts.append(list(cont))
        keys = list(groups)
        scores = score_continuations(
            self.model, [(list(k), [conts[i] for i in groups[k]]) for k in keys], self.batch_size
        )
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        for key, score in zip(keys, scores):
            for i, ll, greedy in zip(groups[key], score.logliks, score.greedy):
                out[i] = (ll, greedy)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (string,) in [r.args for r in requests]:
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows])
            out.append(sum(ll for ll, _ in scores))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy completions, all requests in one continuous batch of `batch_size` rows
        (inference/offline.py): a row that stops takes the next request at once."""
        prompts, params = [], []
        for context, gen_kwargs in (r.args for r in requests):
            kwargs = dict(gen_kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_tokens = int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            prompts.append(self.tok_encode(context)[-(self.max_length - max_tokens) :])
            params.append(SamplingParams.greedy(max_tokens=max_tokens, stop=until))
        return generate_texts(self.model, prompts, params, tokenizer=self.tokenizer, batch_size=self.batch_size)

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)


__all__ = ["LMEvalModel"]
