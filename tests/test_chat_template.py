"""Chat templates: the seed's tool conversation byte for byte, and equality with transformers."""

import copy
import glob
import json
import os

import pytest

from lfmkit import TokenizerError
from lfmkit.text.chat_template import LFM2_CHAT_TEMPLATE, render_chat_template
from lfmkit.text.tokenizer import Tokenizer

SEED = glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "seeds", "002_*.txt")) + glob.glob(
    "/work/shared/seeds/002_*.txt"
)

TOOL = {
    "name": "get_candidate_status",
    "description": "Retrieves the current status of a candidate in the recruitment process",
    "parameters": {
        "type": "object",
        "properties": {"candidate_id": {"type": "string", "description": "Unique identifier for the candidate"}},
        "required": ["candidate_id"],
    },
}
RESULT = {
    "candidate_id": "12345",
    "status": "Interview Scheduled",
    "position": "Clinical Research Associate",
    "date": "2023-11-20",
}
ANSWER = (
    'The candidate with ID 12345 is currently in the "Interview Scheduled" stage for the position of '
    "Clinical Research Associate, with an interview date set for 2023-11-20."
)


def seed_messages():
    """seeds/002's tool conversation as an OpenAI client sends it."""
    return [
        {"role": "user", "content": "What is the current status of candidate ID 12345?"},
        {
            "role": "assistant",
            "content": "Checking the current status of candidate ID 12345.",
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_candidate_status", "arguments": json.dumps({"candidate_id": "12345"})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": json.dumps(RESULT)},
        {"role": "assistant", "content": ANSWER},
    ]


def seed_text() -> str:
    """The tool-use example exactly as it appears in the seed (each turn ends with a newline)."""
    if not SEED:
        pytest.skip("seeds/002 not available")
    text = open(SEED[0], encoding="utf-8").read()
    start = text.index("<|startoftext|><|im_start|>system\nList of tools:")
    end = text.index("2023-11-20.<|im_end|>\n", start) + len("2023-11-20.<|im_end|>\n")
    return text[start:end]


# ---- the seed contract ------------------------------------------------------------------


@pytest.mark.parametrize("tools", [[TOOL], [{"type": "function", "function": TOOL}]], ids=["bare", "openai"])
def test_seed_tool_conversation_renders_byte_for_byte(tok, tools):
    assert tok.apply_chat_template(seed_messages(), tools=tools) == seed_text()


def test_seed_tool_conversation_with_system_prompt(tok):
    system = "You are a recruiting assistant."
    expected = seed_text().replace(
        "<|im_start|>system\nList of tools:", f"<|im_start|>system\n{system}\nList of tools:", 1
    )
    messages = [{"role": "system", "content": system}] + seed_messages()
    assert tok.apply_chat_template(messages, tools=[TOOL]) == expected


def test_seed_rendering_without_a_checkpoint_template_uses_builtin(tmp_path, tok_dir):
    # A checkpoint with no template at all falls back to the built-in LFM2 one.
    import shutil

    for name in ("tokenizer.json", "special_tokens_map.json"):
        shutil.copy(tok_dir / name, tmp_path / name)
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    bare = Tokenizer.from_pretrained(tmp_path)
    assert not bare.has_chat_template
    assert bare.chat_template == LFM2_CHAT_TEMPLATE
    assert bare.apply_chat_template(seed_messages(), tools=[TOOL]) == seed_text()


def test_seed_model_card_chat_example(tok):
    messages = [
        {"role": "system", "content": "You are a helpful assistant trained by Liquid AI."},
        {"role": "user", "content": "What is C. elegans?"},
        {"role": "assistant", "content": "It's a tiny nematode that lives in temperate soil environments."},
    ]
    assert tok.apply_chat_template(messages) == (
        "<|startoftext|><|im_start|>system\nYou are a helpful assistant trained by Liquid AI.<|im_end|>\n"
        "<|im_start|>user\nWhat is C. elegans?<|im_end|>\n"
        "<|im_start|>assistant\nIt's a tiny nematode that lives in temperate soil environments.<|im_end|>\n"
    )
    assert tok.apply_chat_template(messages[:2], add_generation_prompt=True).endswith(
        "What is C. elegans?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tokenized_prompt_uses_special_token_ids(tok):
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True)
    tail = [6] + tok.encode("assistant\n")
    assert ids[:2] == [1, 6] and ids[-len(tail) :] == tail
    assert tok.decode(ids) == "<|startoftext|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert ids.count(7) == 1


def test_caller_messages_are_not_modified(tok):
    messages = seed_messages()
    before = copy.deepcopy(messages)
    tok.apply_chat_template(messages, tools=[TOOL])
    assert messages == before


# ---- equality with transformers ------------------------------------------------------------

CONVERSATIONS = {
    "plain": ([{"role": "user", "content": "Hello!"}], None, {}),
    "system+multi-turn": (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?"},
        ],
        None,
        {},
    ),
    "content-parts": (
        [
            {"role": "system", "content": [{"type": "text", "text": "Sys "}, {"type": "text", "text": "prompt"}]},
            {"role": "user", "content": [{"type": "text", "text": "part one, "}, {"type": "text", "text": "part two"}]},
        ],
        None,
        {},
    ),
    "tools-no-system": (
        [{"role": "user", "content": "Weather in Paris and time in CET?"}],
        [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather",
                    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
                },
            },
            {"name": "get_time", "parameters": {"tz": {"type": "string"}}},
        ],
        {},
    ),
    "parallel-calls-dict-args": (
        [
            {"role": "system", "content": "You call tools."},
            {"role": "user", "content": "Do things"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "arguments": {
                                "s": 'quote " and \\ backslash\nnewline',
                                "n": -3,
                                "x": 2.5,
                                "ok": True,
                                "no": False,
                                "nil": None,
                                "l": [1, "two", [3.0, None]],
                                "d": {"k": {"z": [True]}},
                                "u": "héllo 🙂",
                            },
                        },
                    },
                    {"type": "function", "function": {"name": "g", "arguments": {}}},
                ],
            },
            {"role": "tool", "content": "ok"},
            {"role": "tool", "content": [{"type": "text", "text": "second result"}]},
        ],
        None,
        {},
    ),
    "reasoning-history": (
        [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "<think>\nold thoughts\n</think>\n\nanswer one"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "<think>new</think>answer two"},
        ],
        None,
        {},
    ),
    "reasoning-history-kept": (
        [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "<think>old</think> a1"},
            {"role": "user", "content": "q2"},
        ],
        None,
        {"keep_past_thinking": True},
    ),
    "reasoning-field": (
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "reasoning_content": "because"},
        ],
        None,
        {},
    ),
    "none-values-dropped": (
        [
            {"role": "user", "content": "q", "name": None},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}],
            },
        ],
        None,
        {},
    ),
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_builtin_template_matches_transformers(tok, hf, name, add_generation_prompt):
    messages, tools, extra = CONVERSATIONS[name]
    ours = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt, **extra)
    theirs = hf.apply_chat_template(
        copy.deepcopy(messages), tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
    )
    assert ours == theirs
    ids = tok.apply_chat_template(
        messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=True, **extra
    )
    assert ids == hf.encode(theirs, add_special_tokens=False)


def test_past_reasoning_is_dropped_but_last_kept(tok):
    text = tok.apply_chat_template(CONVERSATIONS["reasoning-history"][0])
    assert "old thoughts" not in text and "<|im_start|>assistant\nanswer one<|im_end|>" in text
    assert "<think>new</think>answer two" in text


def test_tool_call_arguments_render_as_python_literals(tok):
    from lfmkit.text.chat import parse_tool_calls

    messages = CONVERSATIONS["parallel-calls-dict-args"][0]
    text = tok.apply_chat_template(messages)
    calls = parse_tool_calls(text)
    assert [c.name for c in calls] == ["f", "g"]
    assert calls[0].arguments == messages[2]["tool_calls"][0]["function"]["arguments"]


# Templates exercising the environment transformers provides; each must render identically.
FOREIGN_TEMPLATES = {
    "chatml-loopcontrols": (
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "whitespace-blocks": (
        "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role == 'user' %}\n"
        "User: {{ m.content }}\n    {% else %}\nBot: {{ m.content }}\n    {% endif %}\n{% endfor %}\n"
        "{% if add_generation_prompt %}Bot:{% endif %}"
    ),
    "tojson-options": (
        "{% if tools %}{{ tools | tojson(indent=2) }}\n{{ tools | tojson(separators=(',', ':')) }}\n"
        "{{ tools | tojson(sort_keys=true) }}{% endif %}{% for m in messages %}{{ m | tojson }}{% endfor %}"
        "{{ eos_token }}{{ pad_token }}"
    ),
    "namespace-dict-generation": (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
        "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}"
        "{{ m.content }}{% endif %}{% endfor %}{{ ns.n }} {{ dict(a=1, b='x') | tojson }}"
        "{{ strftime_now('%Y') | length }}"
    ),
    "tool-call-strings": (
        "{% for m in messages %}{% if m.tool_calls is defined %}{% for c in m.tool_calls %}"
        "{% if c.function.arguments is string %}S:{{ c.function.arguments }}{% else %}"
        "D:{{ c.function.arguments | tojson }}{% endif %}{% endfor %}{% endif %}{{ m.content }}\n{% endfor %}"
    ),
}

FOREIGN_MESSAGES = [
    {"role": "system", "content": "sys"},
    {"role": "user", "content": 'héllo <b>&amp;</b> "q"'},
    {
        "role": "assistant",
        "content": "hi",
        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"b": 2, "a": [1, "x"]}}}],
    },
    {"role": "user", "content": "bye"},
]


@pytest.mark.parametrize("name", sorted(FOREIGN_TEMPLATES))
def test_checkpoint_templates_render_like_transformers(tok, hf, name):
    template = FOREIGN_TEMPLATES[name]
    tools = [{"name": "zeta", "alpha": [1, 2], "nested": {"y": 1, "x": "<&>"}}]
    for add_generation_prompt in (False, True):
        ours = tok.apply_chat_template(
            FOREIGN_MESSAGES, tools=tools, chat_template=template, add_generation_prompt=add_generation_prompt
        )
        theirs = hf.apply_chat_template(
            copy.deepcopy(FOREIGN_MESSAGES),
            tools=tools,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        assert ours == theirs


def test_string_arguments_pass_through_when_asked(tok, hf):
    template = FOREIGN_TEMPLATES["tool-call-strings"]
    messages = [
        {
            "role": "assistant",
            "content": "x",
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}],
        }
    ]
    theirs = hf.apply_chat_template(copy.deepcopy(messages), chat_template=template, tokenize=False)
    assert tok.apply_chat_template(messages, chat_template=template, parse_tool_arguments=False) == theirs
    assert theirs.startswith('S:{"a":1}')
    assert tok.apply_chat_template(messages, chat_template=template).startswith('D:{"a": 1}')


def test_continue_final_message_like_transformers(tok, hf):
    messages = [{"role": "user", "content": "Write a haiku"}, {"role": "assistant", "content": "Autumn moon  "}]
    ours = tok.apply_chat_template(messages, continue_final_message=True)
    theirs = hf.apply_chat_template(copy.deepcopy(messages), continue_final_message=True, tokenize=False)
    assert ours == theirs
    assert ours.endswith("<|im_start|>assistant\nAutumn moon  ")


def test_checkpoint_template_file_takes_precedence(tmp_path, tok_dir):
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tok_dir / name, tmp_path / name)
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.content }}]{% endfor %}")
    t = Tokenizer.from_pretrained(tmp_path)
    assert t.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "[a][b]"


def test_named_templates(tmp_path, tok_dir):
    import shutil

    shutil.copy(tok_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    config = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|im_end|>",
        "chat_template": [
            {"name": "default", "template": "D{{ messages[0].content }}"},
            {"name": "tool_use", "template": "T{{ messages[0].content }}"},
        ],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    t = Tokenizer.from_pretrained(tmp_path)
    msg = [{"role": "user", "content": "x"}]
    assert t.apply_chat_template(msg) == "Dx"
    assert t.apply_chat_template(msg, tools=[{"name": "f"}]) == "Tx"
    assert t.apply_chat_template(msg, chat_template="tool_use") == "Tx"


# ---- errors and the sandbox ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ messages.__class__ }}{{ ().__class__.__bases__[0].__subclasses__() }}",
        "{% set ns = namespace() %}{% set ns._x = 1 %}",
        "{{ messages.append(1) }}",
    ],
)
def test_sandbox_blocks_escapes(tok, template):
    with pytest.raises(TokenizerError):
        out = tok.apply_chat_template([{"role": "user", "content": "x"}], chat_template=template)
        # Jinja's sandbox may render unsafe attributes as undefined (empty) instead of raising
        assert "class" not in out and "subclasses" not in out
        raise TokenizerError("rendered harmlessly")


def test_raise_exception_becomes_tokenizer_error(tok):
    template = (
        "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}"
    )
    with pytest.raises(TokenizerError, match="first message must be from the user"):
        tok.apply_chat_template([{"role": "assistant", "content": "x"}], chat_template=template)


def test_bad_inputs_raise_tokenizer_error(tok):
    with pytest.raises(TokenizerError, match="empty conversation"):
        tok.apply_chat_template([])
    with pytest.raises(TokenizerError, match="does not compile"):
        tok.apply_chat_template([{"role": "user", "content": "x"}], chat_template="{% for %}")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        tok.apply_chat_template(
            [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]
        )
    with pytest.raises(TokenizerError, match="both"):
        tok.apply_chat_template(
            [{"role": "user", "content": "x"}], add_generation_prompt=True, continue_final_message=True
        )


def test_render_function_is_usable_without_a_tokenizer():
    text = render_chat_template(
        LFM2_CHAT_TEMPLATE,
        [{"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        special_tokens={"bos_token": "<s>"},
    )
    assert text == "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_python_functions_as_tools_like_transformers(tok, hf):
    def get_weather(location: str, unit: str = "celsius"):
        """Get the weather.

        Args:
            location: The city.
            unit: celsius or fahrenheit.
        """

    messages = [{"role": "user", "content": "Weather?"}]
    ours = tok.apply_chat_template(messages, tools=[get_weather], add_generation_prompt=True)
    assert ours == hf.apply_chat_template(messages, tools=[get_weather], add_generation_prompt=True, tokenize=False)
    assert '"name": "get_weather"' in ours
    with pytest.raises(TokenizerError, match="tools\\[0\\]"):
        tok.apply_chat_template(messages, tools=[lambda x: x])


def test_generation_spans_are_the_assistant_blocks_and_leave_the_text_unchanged():
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "see you"},
    ]
    spans = []
    text = render_chat_template(
        LFM2_CHAT_TEMPLATE, messages, special_tokens={"bos_token": "<s>"}, generation_spans=spans
    )
    assert text == render_chat_template(LFM2_CHAT_TEMPLATE, messages, special_tokens={"bos_token": "<s>"})
    assert [text[a:b] for a, b in spans] == ["hello<|im_end|>\n", "see you<|im_end|>\n"]


def test_a_generation_block_buffered_inside_a_macro_is_refused_not_misplaced():
    source = (
        "{% macro turn(m) %}<{% generation %}{{ m.content }}{% endgeneration %}{% endmacro %}"
        "{% for m in messages %}[{{ turn(m) }}]{% endfor %}"
    )
    messages = [{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]
    with pytest.raises(TokenizerError, match="generation"):
        render_chat_template(source, messages, generation_spans=[])
    spans = []  # a macro that is just the block: emitted where it renders, so located exactly
    text = render_chat_template(source.replace("%}<{%", "%}{%"), messages, generation_spans=spans)
    assert [text[a:b] for a, b in spans] == ["x", "y"]
