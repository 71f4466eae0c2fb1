"""`lfmkit chat` in a real terminal (streaming, /reset, /undo, Ctrl-C), and its tool and reasoning display."""

import argparse
import builtins
import json
import os
import sys

import pexpect
import pytest
from checkpoints import make_checkpoint
from test_session import ScriptedModel

from lfmkit import LFM2, ChatSession, SamplingParams, Tokenizer
from lfmkit.commands.chat import ChatApp, Style


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path, _ = make_checkpoint(tmp_path_factory.mktemp("chat"), layout="small", seed=7, with_tokenizer=True)
    return path, LFM2.from_pretrained(path, dtype="float32"), Tokenizer.from_pretrained(path)


def spawn(path, *args):
    return pexpect.spawn(
        sys.executable,
        ["-m", "lfmkit", "chat", str(path), "--threads", "1", *args],
        env=dict(os.environ, TERM="dumb"),
        encoding="utf-8",
        timeout=90,
    )


def test_chat_in_a_terminal_streams_resets_and_survives_ctrl_c(ckpt, tmp_path):
    path, model, tok = ckpt
    greedy = SamplingParams.greedy(max_tokens=8, ignore_eos=True)
    ref = ChatSession(model, tok, params=greedy)
    first = ref.send("Hello").text
    second = ref.send("What is the capital of France?").text

    child = spawn(path, "--greedy", "--max-tokens", "8", "--ignore-eos")
    child.expect_exact(">>> ")
    child.sendline("Hello")
    child.expect_exact("Hello\r\n")
    child.expect_exact("[max_tokens reached: 8 tokens]")
    assert child.before.replace("\r\n", "\n") == first + "\n"
    child.expect_exact(">>> ")
    child.sendline("What is the capital of France?")
    child.expect_exact("France?\r\n")
    child.expect_exact("[max_tokens reached")
    assert child.before.replace("\r\n", "\n") == second + "\n"  # the second turn saw the first
    # /undo then the same message again gives the same second reply
    child.expect_exact(">>> ")
    child.sendline("/undo")
    child.expect_exact("[last turn removed]")
    child.sendline("What is the capital of France?")
    child.expect_exact("France?\r\n")
    child.expect_exact("[max_tokens reached")
    assert child.before.replace("\r\n", "\n") == second + "\n"
    # /reset: the first message gets the first reply again
    child.sendline("/reset")
    child.expect_exact("[conversation reset]")
    child.sendline("Hello")
    child.expect_exact("Hello\r\n")
    child.expect_exact("[max_tokens reached")
    assert child.before.replace("\r\n", "\n") == first + "\n"
    # Ctrl-C during a long reply stops it and returns to the prompt
    child.sendline("/set max_tokens 900")
    child.expect_exact("[max_tokens = 900]")
    child.sendline("Tell me a story")
    child.expect_exact("story\r\n")
    child.expect(".")  # the reply has started streaming
    child.sendintr()
    child.expect_exact("[stopped]")
    child.expect_exact(">>> ")
    child.sendline("/info")
    child.expect(r"turns 2, tokens (\d+)/1024")
    assert int(child.match.group(1)) < 300  # far fewer than 900 tokens were generated
    child.sendintr()  # Ctrl-C at the prompt does not leave either
    child.expect_exact("Ctrl-D or /quit to leave")
    child.sendline(f"/save {tmp_path / 'c.json'}")
    child.expect_exact("[saved 4 messages")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    saved = json.loads((tmp_path / "c.json").read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant", "user", "assistant"]


def test_bad_tools_file_is_one_line(ckpt, tmp_path):
    path, _, _ = ckpt
    (tmp_path / "tools.json").write_text("{not json")
    from lfmkit.cli import main

    assert main(["chat", str(path), "--tools", str(tmp_path / "tools.json")]) == 2


# ---- tool calls and reasoning, with a scripted model -----------------------------------------
class Out:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def app_for(tok, replies, tool_command=None):
    model = ScriptedModel([tok.encode(r) for r in replies], tok.encode("<|im_start|>assistant\n"))
    tools = [{"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}]
    session = ChatSession(model, tok, tools=tools, params=SamplingParams.greedy(max_tokens=60))
    out = Out()
    args = argparse.Namespace(tool_command=tool_command)
    return ChatApp(args, session, Style(color=False), out=out), out, session


CALL = '<|tool_call_start|>[get_weather(location="Paris")]<|tool_call_end|>'


def test_tool_calls_are_shown_and_typed_results_go_back(ckpt, monkeypatch):
    _, _, tok = ckpt
    app, out, session = app_for(tok, [CALL, "It is sunny and 21 degrees."])
    monkeypatch.setattr(builtins, "input", lambda prompt: "sunny, 21 C" if prompt == "result of get_weather> " else "")
    app.turn("What is the weather like in Paris?")
    assert out.text == '[tool call] get_weather(location="Paris")\nIt is sunny and 21 degrees.\n'
    assert session.messages[-2] == {"role": "tool", "content": "sunny, 21 C"}


def test_tool_command_answers_the_calls(ckpt):
    _, _, tok = ckpt
    cmd = f"{sys.executable} -c \"import json,sys; c=json.load(sys.stdin); print(c['arguments']['location'].upper())\""
    app, out, session = app_for(tok, [CALL, "It is sunny and 21 degrees."], tool_command=cmd)
    app.turn("What is the weather like in Paris?")
    assert "[get_weather returned] PARIS\n" in out.text and out.text.endswith("It is sunny and 21 degrees.\n")
    assert session.messages[-2] == {"role": "tool", "content": "PARIS"}


def test_reasoning_is_shown_apart_from_the_answer(ckpt):
    _, _, tok = ckpt
    app, out, _ = app_for(tok, ["<think>Let me think step by step.</think>The capital of France is Paris."])
    app.turn("What is the capital of France?")
    assert out.text == "(thinking) Let me think step by step.\nThe capital of France is Paris.\n"


def test_ctrl_c_while_a_command_runs_does_not_leave(ckpt, monkeypatch):
    """SIGINT can land after a command's output was read but before the next prompt (the terminal
    test sends Ctrl-C right after /info prints): the chat stays, with its hint, as at the prompt."""
    _, _, tok = ckpt
    app, out, _ = app_for(tok, ["hi"])
    lines = iter(["/info", "/quit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    real, calls = app.command, []

    def interrupted(line):
        calls.append(line)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(line)

    app.command = interrupted
    assert app.loop() == 0
    assert "[Ctrl-D or /quit to leave]" in out.text and calls == ["/info", "/quit"]
