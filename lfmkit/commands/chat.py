"""`lfmkit chat MODEL`: an interactive multi-turn chat in the terminal.

Replies stream as they are generated; reasoning (`<think>…</think>`) is shown apart from the
answer; tool calls are shown and their results typed in (or produced by --tool-command).
Ctrl-C stops the reply being written and returns to the prompt; Ctrl-D or /quit leaves.
The conversation's state is kept between turns (each turn prefills only the new message).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading

from .run import (
    add_draft_args,
    add_model_args,
    add_parser,
    add_sampling_args,
    load,
    load_draft,
    sampling_params,
    speculation_line,
)

HELP = """commands:
  /reset            forget the conversation (keeps the system prompt)
  /system [TEXT]    set (or, without TEXT, clear) the system prompt and start over
  /undo             drop the last turn (your message and the reply)
  /save FILE        write the conversation (messages and exact tokens) as JSON
  /load FILE        continue a conversation saved with /save
  /set NAME VALUE   change a sampling parameter (temperature, top_p, max_tokens, seed, ...)
  /info             tokens used, turns, sampling parameters (and drafts accepted, with --draft)
  /help             this help
  /quit             leave (or Ctrl-D)
Ctrl-C stops a reply that is being written."""

MAX_TOOL_ROUNDS = 8


def register(sub) -> None:
    p = add_parser(
        sub,
        "chat",
        help="chat with a model in the terminal (multi-turn, streaming, tools)",
        description="Interactive multi-turn chat. The model's state is kept between turns, so each turn only "
        "processes the new message. Type /help in the chat for commands; Ctrl-C stops a reply, "
        "Ctrl-D leaves.",
    )
    add_model_args(p)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument(
        "--tools",
        default=None,
        metavar="tools.json",
        help="JSON file with a list of tool definitions (OpenAI style or bare {name, description, "
        "parameters}); the model's calls are shown and you type each result",
    )
    p.add_argument(
        "--tool-command",
        default=None,
        metavar="CMD",
        help='run CMD for each tool call instead of asking: it gets {"name", "arguments"} as JSON on '
        "stdin and its stdout is the result",
    )
    p.add_argument(
        "--max-length", type=int, default=8192, help="tokens the conversation may hold (state size; default 8192)"
    )
    p.add_argument(
        "--no-color",
        action="store_true",
        help="no ANSI colours (also off when not a terminal, with TERM=dumb or NO_COLOR set)",
    )
    add_sampling_args(p)
    add_draft_args(p)
    p.set_defaults(func=run)


class Style:
    def __init__(self, color: bool):
        self.color = color

    def dim(self, text: str) -> str:
        return f"\x1b[2m{text}\x1b[0m" if self.color and text else text

    def bold(self, text: str) -> str:
        return f"\x1b[1m{text}\x1b[0m" if self.color and text else text


def load_tools(path: str) -> list:
    from ..errors import GenerationError

    try:
        with open(path, encoding="utf-8") as f:
            tools = json.load(f)
    except ValueError as exc:
        raise GenerationError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(tools, dict) and "tools" in tools:
        tools = tools["tools"]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise GenerationError(f"{path}: expected a JSON list of tool definitions")
    return tools


class Interrupt:
    """Ctrl-C while a reply streams sets a flag (checked between tokens) instead of raising."""

    def __init__(self):
        self.event = threading.Event()
        self._old = None

    def __enter__(self):
        self.event.clear()
        self._old = signal.signal(signal.SIGINT, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)
        return False


class ChatApp:
    def __init__(self, args, session, style: Style, out=sys.stdout):
        self.args, self.session, self.style, self.out = args, session, style, out

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    # ---- one reply -------------------------------------------------------------------------
    def stream(self, chunks) -> object:
        """Print a streamed reply; return its GenerationResult."""
        from ..text.chat import ContentDelta, ReasoningDelta, ToolCallError, ToolCallEvent, format_tool_calls

        result = None
        mode = None  # "reasoning" | "content"
        for chunk in chunks:
            for ev in chunk.events:
                if isinstance(ev, ReasoningDelta):
                    if mode != "reasoning":
                        self.write(self.style.dim("(thinking) "))
                        mode = "reasoning"
                    self.write(self.style.dim(ev.text))
                elif isinstance(ev, ContentDelta):
                    if mode == "reasoning":
                        self.write("\n")
                    mode = "content"
                    self.write(ev.text)
                elif isinstance(ev, ToolCallEvent):
                    if mode is not None:
                        self.write("\n")
                    mode = None
                    self.write(
                        self.style.bold("[tool call] ") + format_tool_calls([ev.call], markers=False)[1:-1] + "\n"
                    )
                elif isinstance(ev, ToolCallError):
                    self.write(self.style.dim(f"\n[tool call did not parse: {ev.message}]\n"))
            if chunk.result is not None:
                result = chunk.result
        if mode is not None:
            self.write("\n")
        if result is not None and result.finish_reason == "abort":
            self.write(self.style.dim("[stopped]\n"))
        elif result is not None and result.finish_reason == "length":
            self.write(self.style.dim(f"[max_tokens reached: {result.usage.completion_tokens} tokens]\n"))
        return result

    def turn(self, text: str) -> None:
        with Interrupt() as stop:
            result = self.stream(self.session.stream(text, should_stop=stop.event.is_set))
            rounds = 0
            while (
                result is not None
                and result.finish_reason == "stop"
                and result.message.tool_calls
                and rounds < MAX_TOOL_ROUNDS
                and not stop.event.is_set()
            ):
                rounds += 1
                results = self.tool_results(result.message.tool_calls, stop)
                if results is None:
                    self.write(self.style.dim("[tool results not given; the calls stay unanswered]\n"))
                    return
                result = self.stream(self.session.stream_tool_results(results, should_stop=stop.event.is_set))

    def tool_results(self, calls, stop: Interrupt) -> list | None:
        results = []
        for call in calls:
            if self.args.tool_command:
                results.append(self.run_tool_command(call))
                self.write(self.style.dim(f"[{call.name} returned] {results[-1]}\n"))
                continue
            # Let Ctrl-C interrupt the input() (restore the default handler for the prompt).
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                answer = input(f"result of {call.name}> ")
            except (EOFError, KeyboardInterrupt):
                self.write("\n")
                return None
            finally:
                signal.signal(signal.SIGINT, lambda *_: stop.event.set())
            results.append(answer)
        return results

    def run_tool_command(self, call) -> str:
        payload = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
        try:
            proc = subprocess.run(
                shlex.split(self.args.tool_command), input=payload, capture_output=True, text=True, timeout=120
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"error: tool command failed: {exc}"
        if proc.returncode != 0:
            return f"error: tool command exited with {proc.returncode}: {proc.stderr.strip()[:500]}"
        return proc.stdout.strip()

    # ---- commands --------------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Handle a /command; return False to quit."""
        from ..errors import LFMKitError

        name, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        s = self.session
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            self.write(HELP + "\n")
        elif name == "reset":
            s.reset()
            self.write(self.style.dim("[conversation reset]\n"))
        elif name == "system":
            s.reset(system=rest or None)
            self.write(self.style.dim(f"[system prompt {'set' if rest else 'cleared'}; conversation reset]\n"))
        elif name == "undo":
            self.write(self.style.dim("[last turn removed]\n" if s.undo() else "[nothing to undo]\n"))
        elif name == "save":
            if not rest:
                self.write("usage: /save FILE\n")
            else:
                s.save(rest)
                self.write(self.style.dim(f"[saved {len(s.messages)} messages to {rest}]\n"))
        elif name == "load":
            if not rest:
                self.write("usage: /load FILE\n")
            else:
                s.load(rest)
                self.write(self.style.dim(f"[loaded {len(s.messages)} messages, {s.context_used} tokens]\n"))
        elif name == "set":
            key, _, value = rest.partition(" ")
            try:
                parsed = json.loads(value) if value else None
            except ValueError:
                parsed = value
            try:
                s.params = s.params.replace(**{key.replace("-", "_"): parsed})
                self.write(self.style.dim(f"[{key} = {parsed!r}]\n"))
            except (TypeError, LFMKitError) as exc:
                self.write(f"error: {exc}\n")
        elif name == "info":
            p = s.params
            self.write(
                f"turns {s.turns}, tokens {s.context_used}/{s.max_length}, prefilled {s.prefilled_tokens}\n"
                f"temperature {p.temperature}, top_k {p.top_k}, top_p {p.top_p}, min_p {p.min_p}, "
                f"repetition_penalty {p.repetition_penalty}, max_tokens {p.max_tokens}, seed {p.seed}\n"
            )
            if s.spec is not None:
                self.write(speculation_line(s.spec) + "\n")
        else:
            self.write(f"unknown command /{name}; /help lists them\n")
        return True

    def loop(self) -> int:
        interactive = sys.stdin.isatty()
        if interactive:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
            self.write(self.style.dim("Type a message, /help for commands, Ctrl-D to leave.\n"))
        while True:
            # Ctrl-C never leaves the chat: at the prompt, while a command runs, or in the moment
            # between a reply and the next prompt (a turn in progress stops the reply instead).
            try:
                if not self.step(interactive):
                    return 0
            except KeyboardInterrupt:
                self.write(self.style.dim("\n[Ctrl-D or /quit to leave]\n"))

    def step(self, interactive: bool) -> bool:
        """Read and handle one line; False to leave."""
        from ..errors import LFMKitError

        try:
            line = input(self.style.bold(">>> ") if interactive else "")
        except EOFError:
            if interactive:
                self.write("\n")
            return False
        if not line.strip():
            return True
        try:
            if line.startswith("/"):
                return self.command(line.strip())
            self.turn(line)
        except (LFMKitError, OSError) as exc:
            self.write(f"error: {exc}\n")
        return True


def run(args) -> int:
    from ..inference.session import ChatSession

    tools = load_tools(args.tools) if args.tools else None
    model, tokenizer = load(args)
    if tokenizer is None:
        from ..errors import TokenizerError

        raise TokenizerError(f"{args.model}: the checkpoint has no tokenizer, which chat needs")
    params = sampling_params(args, model)
    session = ChatSession(
        model,
        tokenizer,
        system=args.system,
        tools=tools,
        params=params,
        max_length=args.max_length,
        draft=load_draft(args),
    )
    color = (
        sys.stdout.isatty() and not args.no_color and os.environ.get("TERM") != "dumb" and "NO_COLOR" not in os.environ
    )
    style = Style(color=color)
    return ChatApp(args, session, style).loop()
