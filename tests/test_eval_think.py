"""--think / --no-think reach the chat template as `enable_thinking`: with a template that defines
the switch (Qwen3's non-reasoning mode, which the model card used for its peers) the rendered
prompt changes as that template says; LFM2's template defines no such switch, so its prompt is
the same either way; an endpoint receives it as `chat_template_kwargs`."""

from __future__ import annotations

import json
import shutil

import pytest

from lfmkit.cli import main
from lfmkit.errors import EvalError
from lfmkit.evals import evaluate
from lfmkit.evals.backends import EndpointBackend

# Qwen3's generation-prompt rule, written for this test: an empty reasoning block when thinking is off.
SWITCH_TEMPLATE = (
    "{{- bos_token -}}{%- for m in messages -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}{%- endif -%}"
)
QUESTION = "What is 2 + 3?"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from checkpoints import make_checkpoint

    root = tmp_path_factory.mktemp("think")
    lfm2, _ = make_checkpoint(root / "lfm2", layout="small", seed=0, with_tokenizer=True)
    switch = root / "switch"
    shutil.copytree(lfm2, switch)
    (switch / "chat_template.jinja").write_text(SWITCH_TEMPLATE)
    data = root / "data" / "gsm8k"
    data.mkdir(parents=True)
    (data / "test.jsonl").write_text(json.dumps({"question": QUESTION, "answer": "2 + 3 = 5\n#### 5"}) + "\n")
    return lfm2, switch, root / "data"


def rendered_prompt(model, data, out, think):
    evaluate(str(model), "gsm8k", data, out, apply_chat_template=True, think=think, max_tokens=2)
    sample = json.loads((out / "samples_gsm8k.jsonl").read_text().splitlines()[0])
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["think"] == think
    return sample["prompt"]


def test_no_think_renders_the_templates_empty_reasoning_block(models, tmp_path):
    _, switch, data = models
    turn = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    assert rendered_prompt(switch, data, tmp_path / "off", False).endswith(turn + "<think>\n\n</think>\n\n")
    assert rendered_prompt(switch, data, tmp_path / "on", True).endswith(turn)
    assert rendered_prompt(switch, data, tmp_path / "unset", None).endswith(turn)


def test_lfm2s_template_has_no_switch_so_the_prompt_is_the_same(models, tmp_path):
    lfm2, _, data = models
    prompts = {think: rendered_prompt(lfm2, data, tmp_path / str(think), think) for think in (None, True, False)}
    assert len(set(prompts.values())) == 1
    assert prompts[None].endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")


def test_the_cli_flags(models, tmp_path):
    _, switch, data = models
    args = ["eval", str(switch), "--tasks", "gsm8k", "--data", str(data), "--max-tokens", "2"]
    assert main([*args, "--apply-chat-template", "--no-think", "--output", str(tmp_path / "a")]) == 0
    sample = json.loads((tmp_path / "a" / "samples_gsm8k.jsonl").read_text().splitlines()[0])
    assert sample["prompt"].endswith("<think>\n\n</think>\n\n")
    assert main([*args, "--think"]) == 2  # plain prompts have no template to switch
    with pytest.raises(EvalError, match="add --apply-chat-template"):
        evaluate(str(switch), "gsm8k", data, think=False)


def test_an_endpoint_receives_chat_template_kwargs():
    import httpx

    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{"message": {"content": "5"}, "text": "5"}]})

    backend = EndpointBackend("http://test", model="m", chat_template_kwargs={"enable_thinking": False})
    backend.client = httpx.Client(transport=httpx.MockTransport(handler))
    assert backend.generate([[{"role": "user", "content": QUESTION}]], 4, []) == ["5"]
    assert bodies[0]["chat_template_kwargs"] == {"enable_thinking": False} and bodies[0]["temperature"] == 0.0
