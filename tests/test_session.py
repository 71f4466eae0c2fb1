"""ChatSession: incremental prefill equals the whole history from scratch; undo, branches, tools."""

import pytest
import torch
from checkpoints import make_checkpoint

from lfmkit import LFM2, ChatSession, ContextLengthError, LFM2Config, LFM2State, SamplingParams, Tokenizer
from lfmkit.inference.generate import generate

GREEDY = SamplingParams.greedy(max_tokens=10)
TURNS = ["Hello! How are you today?", "What is the capital of France?", "Tell me a story about a robot."]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path, _ = make_checkpoint(tmp_path_factory.mktemp("sess"), layout="small", seed=5, with_tokenizer=True)
    return LFM2.from_pretrained(path, dtype="float32"), Tokenizer.from_pretrained(path)


def test_three_turns_prefill_only_new_tokens_and_equal_a_fresh_run(ckpt):
    model, tok = ckpt
    chat = ChatSession(model, tok, system="You are terse.", params=GREEDY)
    prefills = []
    for i, text in enumerate(TURNS):
        fed_before, pending_before = len(chat.tokens), list(chat.pending)
        reply = chat.send(text)
        prefills.append(chat.last_prefill_tokens)
        if i == 0:
            rendered = tok.apply_chat_template(chat.messages[:-1], add_generation_prompt=True)
            assert reply.prompt_ids == tok.encode(rendered)
            assert chat.last_prefill_tokens == len(reply.prompt_ids)
        else:
            # the previous reply's unfed last token, its <|im_end|>\n, the user turn, the generation prompt
            new = tok.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
            closing = tok.encode("<|im_end|>\n")
            if pending_before == closing[:1]:
                closing = closing[1:]
            assert reply.prompt_ids[fed_before:] == pending_before + closing + new
            assert chat.last_prefill_tokens == len(pending_before + closing + new)
        # the same tokens as generating from the whole history from scratch
        assert generate(model, reply.prompt_ids, GREEDY).token_ids == reply.token_ids
    # nothing was prefilled twice: prompt tokens + decoded tokens add up to the conversation
    decoded = len(chat.tokens) - chat.prefilled_tokens
    assert chat.prefilled_tokens == sum(prefills) and 0 < decoded < 3 * GREEDY.max_tokens
    assert chat.prefilled_tokens < 3 * len(tok.encode(tok.apply_chat_template(chat.messages)))
    # the carried state equals a fresh prefill of the exact token sequence
    fresh = model.new_state(1, chat.max_length)
    with torch.no_grad():
        model(torch.tensor([chat.tokens]), state=fresh)
    for a, b in zip(fresh.conv + fresh.keys, chat.state.conv + chat.state.keys):
        if a is not None:
            n = len(chat.tokens)
            torch.testing.assert_close(
                a[..., :n, :] if a.dim() == 4 else a, b[..., :n, :] if b.dim() == 4 else b, atol=1e-5, rtol=1e-4
            )
    # and its text is the template's rendering of the messages
    assert tok.decode(chat.tokens + chat.pending) in tok.apply_chat_template(chat.messages)


def test_undo_and_restore_replay_the_same_turn(ckpt):
    model, tok = ckpt
    chat = ChatSession(model, tok, params=GREEDY)
    first = chat.send(TURNS[0])
    snap = chat.snapshot()
    second = chat.send(TURNS[1])
    prefill_second = chat.last_prefill_tokens
    assert chat.undo() and len(chat.messages) == 2 and chat.turns == 1
    again = chat.send(TURNS[1])
    assert again.token_ids == second.token_ids and chat.last_prefill_tokens == prefill_second
    other = chat.send(TURNS[2])
    chat.restore(snap)  # back past two turns at once
    assert chat.send(TURNS[1]).token_ids == second.token_ids
    assert chat.undo() and chat.undo() and not chat.undo()
    assert chat.send(TURNS[0]).token_ids == first.token_ids
    assert other.prompt_ids[: len(first.prompt_ids)] == first.prompt_ids


def test_overwritten_snapshot_is_refused_and_fork_keeps_both_branches(ckpt):
    model, tok = ckpt
    chat = ChatSession(model, tok, params=GREEDY)
    chat.send(TURNS[0])
    base = chat.snapshot()
    chat.send(TURNS[1])
    late = chat.snapshot()
    chat.restore(base)
    chat.send(TURNS[2])  # rewrites the K/V slots `late` relied on
    with pytest.raises(Exception, match="overwritten"):
        chat.restore(late)
    chat.restore(base)
    branch = chat.fork()
    a = chat.send(TURNS[1])
    b = branch.send(TURNS[2])
    a2 = chat.send(TURNS[2])
    b2 = branch.send(TURNS[1])
    assert generate(model, a2.prompt_ids, GREEDY).token_ids == a2.token_ids
    assert generate(model, b2.prompt_ids, GREEDY).token_ids == b2.token_ids
    assert a.prompt_ids != b.prompt_ids


def test_context_limit_is_an_error_and_leaves_the_session_usable(ckpt):
    model, tok = ckpt
    chat = ChatSession(model, tok, params=GREEDY, max_length=64)
    chat.send("Hi")
    used = chat.context_used
    with pytest.raises(ContextLengthError, match="do not fit the session's 64-token state"):
        chat.send("Tell me a story about a robot who wanted to learn how to paint the sea and the sky.")
    assert chat.context_used == used and chat.turns == 1
    assert chat.send("Hi", max_tokens=2).finish_reason in ("length", "stop")


def test_interrupted_stream_leaves_no_trace_and_should_stop_keeps_the_partial_reply(ckpt):
    model, tok = ckpt
    chat = ChatSession(model, tok, params=GREEDY.replace(max_tokens=20))
    chat.send(TURNS[0])
    tokens, messages = list(chat.tokens), list(chat.messages)
    stream = chat.stream(TURNS[1])
    next(stream), next(stream)
    stream.close()  # the caller stopped reading (e.g. Ctrl-C while printing)
    assert chat.tokens == tokens and chat.messages == messages and chat.turns == 1
    steps = []
    reply = chat.send(TURNS[1], should_stop=lambda: len(steps.append(0) or steps) > 4)
    assert reply.finish_reason == "abort" and len(reply.token_ids) == 4
    assert chat.messages[-1] == {"role": "assistant", "content": reply.text}
    nxt = chat.send(TURNS[2])
    assert generate(model, nxt.prompt_ids, chat.params).token_ids == nxt.token_ids


def test_save_and_load_continue_the_same_conversation(ckpt, tmp_path):
    model, tok = ckpt
    chat = ChatSession(model, tok, system="Be brief.", params=GREEDY)
    chat.send(TURNS[0])
    chat.save(tmp_path / "chat.json")
    other = ChatSession(model, tok, params=GREEDY)
    other.load(tmp_path / "chat.json")
    assert other.messages == chat.messages and other.system == "Be brief."
    assert other.send(TURNS[1]).token_ids == chat.send(TURNS[1]).token_ids


# ---- tool round trip with a scripted model ---------------------------------------------------
class ScriptedModel(torch.nn.Module):
    """A stand-in LM that writes `replies[k]` after the k-th assistant generation prompt, then eos.

    It keeps a real `LFM2State` up to date (lengths, positions), so the session and the decode
    loop run exactly as with LFM2; it sees every fed token, so it also checks what was fed.
    """

    def __init__(self, replies, gen_prompt, vocab_size=512):
        super().__init__()
        self.config = LFM2Config(
            vocab_size=vocab_size,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            block_ff_dim=16,
            layer_types=["conv"],
            max_position_embeddings=4096,
        )
        self.replies, self.gen_prompt, self.seen = replies, gen_prompt, []
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    device = property(lambda self: torch.device("cpu"))
    dtype = property(lambda self: torch.float32)

    def new_state(self, batch_size=1, max_length=None, dtype=None):
        return LFM2State(self.config, batch_size, max_length or 4096)

    prefill = LFM2.prefill  # the chunk loop, over this forward

    def forward(self, input_ids, attention_mask=None, state=None, logits_to_keep=0):
        b, t = input_ids.shape
        state.check_room(t)
        state.advance(t, torch.full((b,), t))
        self.seen.extend(input_ids[0].tolist())
        g, k = self.gen_prompt, len(self.gen_prompt)
        starts = [i + k for i in range(len(self.seen) - k + 1) if self.seen[i : i + k] == g]
        reply = self.replies[min(len(starts), len(self.replies)) - 1]
        done = len(self.seen) - starts[-1]
        logits = torch.full((b, 1, self.config.vocab_size), -20.0)
        logits[0, 0, reply[done] if done < len(reply) else 7] = 20.0
        return logits


def test_tool_round_trip(ckpt):
    _, tok = ckpt
    call = tok.encode('<|tool_call_start|>[get_weather(location="Paris")]<|tool_call_end|>')
    answer = tok.encode("It is sunny and 21 degrees.")
    model = ScriptedModel([call, answer], tok.encode("<|im_start|>assistant\n"))
    tools = [
        {
            "name": "get_weather",
            "description": "Get the current weather for a location",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        }
    ]
    chat = ChatSession(model, tok, tools=tools, params=GREEDY.replace(max_tokens=40))
    reply = chat.send("What is the weather like in Paris?")
    assert reply.finish_reason == "stop" and reply.token_ids == call + [7]
    assert [(c.name, c.arguments) for c in reply.message.tool_calls] == [("get_weather", {"location": "Paris"})]
    assert "List of tools: <|tool_list_start|>" in tok.decode(reply.prompt_ids)
    final = chat.send_tool_results([{"temperature": 21, "unit": "celsius"}])
    assert final.text == "It is sunny and 21 degrees." and final.message.tool_calls == []
    fed = tok.decode(final.prompt_ids[len(reply.prompt_ids) :])
    assert fed == (
        '<|tool_call_start|>[get_weather(location="Paris")]<|tool_call_end|><|im_end|>\n<|im_start|>tool\n'
        '<|tool_response_start|>{"temperature": 21, "unit": "celsius"}<|tool_response_end|><|im_end|>\n'
        "<|im_start|>assistant\n"
    )
    assert model.seen == chat.tokens  # the model saw exactly the session's token sequence
    # streamed, the call arrives as a parsed event
    chat.reset()
    model.seen.clear()
    events = [e for chunk in chat.stream("Weather in Paris?") for e in chunk.events]
    assert [type(e).__name__ for e in events] == ["ToolCallEvent"] and events[0].call.name == "get_weather"
