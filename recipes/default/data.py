"""The default model's data: four narrow tasks, generated from a seed (no downloads).

    python recipes/default/data.py OUT_DIR [--seed 0] [--scale 1.0]

writes, under OUT_DIR:

| path | what |
|---|---|
| `train/{tools,extract,math,ifeval}.jsonl` | SFT conversations (`messages`, `tools`) for the four tasks |
| `prefs/prompts.jsonl` | conversations for `lfmkit prefs build` (their last assistant turn is the reference) |
| `grpo/prompts.jsonl`, `grpo/eval.jsonl` | `lfmkit train grpo` prompts with their verifier fields |
| `bench/gsm8k/test.jsonl`, `bench/ifeval/train.jsonl` | held-out sets in the layouts `lfmkit eval` reads |
| `test/{tools_seen,tools_unseen,extract}.jsonl` | held-out tool and extraction prompts, expected calls / JSON |
| `test/text.jsonl` | held-out rendered conversations, for perplexity |
| `answer_key.jsonl` | the verifier's answer for every prefs prompt (read by `verify.judge`) |

The four tasks are the narrow uses LFM2's model card recommends: agentic tool calling in
LFM2's format (tools in the system prompt, a Pythonic call, the tool's result, a final answer),
data extraction from documents into JSON, multi-step arithmetic with a `<think>` trace, and
instructions with constraints the IFEval verifiers check. Training rows draw only from the
`train` halves of `pools.py`; held-out rows only from the `test` halves (entities, tools,
request templates, documents, topics and phrasings), so no held-out prompt can be memorised.
The same seed writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pools

SPLIT = {"train": 0, "test": 1}
STATUS = ["confirmed", "sent", "delayed", "on time", "booked", "shipped", "done"]
CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "snowy"]
SUBJECTS = (
    ["the budget", "the meeting", "the trip", "the launch", "the report", "the party", "lunch"],
    ["the audit", "the workshop", "the move"],
)
ROLES = (["engineer", "designer", "manager", "analyst", "teacher", "nurse", "chef"], ["pilot", "architect"])
EVENTS = (
    ["book fair", "jazz festival", "tech summit", "food market", "marathon", "art show"],
    ["film festival", "chess open"],
)
WORDS = (["house", "water", "friend", "book", "tree", "sun", "bread", "cat"], ["moon", "bridge", "garden"])
AIRLINES = (["LH", "BA", "AF", "KL", "UA"], ["QF", "SK"])


# ---- values -----------------------------------------------------------------------------------
def value_of(kind: str, rng: random.Random, split: str):
    """One value of `kind` from the split's pool (entities) or range (numbers, codes)."""
    s = SPLIT[split]
    if kind in pools.ENTITIES:
        return rng.choice(pools.ENTITIES[kind][s])
    simple = {
        "temp": lambda: rng.randint(-5, 35),
        "condition": lambda: rng.choice(CONDITIONS),
        "clock": lambda: f"{rng.randint(6, 22):02d}:{rng.choice([0, 15, 30, 45]):02d}",
        "price": lambda: round(rng.uniform(5, 900), 2),
        "amount": lambda: rng.randint(10, 500),
        "subject": lambda: rng.choice(SUBJECTS[s]),
        "status": lambda: rng.choice(STATUS),
        "count": lambda: rng.randint(2, 12),
        "big": lambda: rng.randint(1000, 900000),
        "phone": lambda: f"555-{rng.randint(1000, 9999)}",
        # train orders start with A-M, test orders with N-Z: codes never repeat across splits
        "order": lambda: rng.choice("ABCDEFGHJKLM" if s == 0 else "NPQRSTUVWXYZ") + str(rng.randint(1000, 9999)),
        "flight": lambda: rng.choice(AIRLINES[s]) + str(rng.randint(100, 999)),
        "word": lambda: rng.choice(WORDS[s]),
        "event": lambda: rng.choice(EVENTS[s]),
        "rate": lambda: round(rng.uniform(0.5, 2.0), 3),
        "date": lambda: f"{2023 + s * 2 + rng.randint(0, 1)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "invoice": lambda: f"INV-{rng.randint(1000, 9999)}{'' if s == 0 else 'X'}",
        "fullname": lambda: f"{rng.choice(pools.ENTITIES['person'][s])} {rng.choice(pools.ENTITIES['surname'][s])}",
        "role": lambda: rng.choice(ROLES[s]),
    }
    return simple[kind]()


def json_type(kind: str) -> str:
    return "integer" if kind in ("count", "amount") else "string"


# ---- tool calling -----------------------------------------------------------------------------
def tool_schema(tool) -> dict:
    name, description, params, *_ = tool
    properties = {p: {"type": json_type(kind), "description": d} for p, kind, d in params}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": [p for p, _, _ in params]},
        },
    }


def tool_example(rng: random.Random, split: str, tools: list, requests: list, systems) -> dict:
    """One tool-calling conversation plus the expected call: system + tools, a request, the call,
    the tool's result, the final answer."""
    tool = rng.choice(tools)
    name, _, params, phrase, result_kinds, answer = tool
    args = {}
    for p, kind, _ in params:
        value = value_of(kind, rng, split)
        while value in args.values():  # two different cities for get_distance
            value = value_of(kind, rng, split)
        args[p] = value
    result = {k: value_of(kind, rng, split) for k, kind in result_kinds.items()}
    others = [t for t in tools if t is not tool]
    shown = rng.sample(others, rng.randint(1, min(2, len(others)))) + [tool]
    rng.shuffle(shown)
    request = rng.choice(requests).format(phrase=phrase.format(**args))
    request = request[0].upper() + request[1:]
    call = {"type": "function", "function": {"name": name, "arguments": args}}
    prompt = [{"role": "system", "content": rng.choice(systems)}, {"role": "user", "content": request}]
    messages = prompt + [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": json.dumps(result)},
        {"role": "assistant", "content": answer.format(**args, **result)},
    ]
    return {
        "messages": messages,
        "tools": [tool_schema(t) for t in shown],
        "prompt": prompt,
        "tool_calls": [{"name": name, "arguments": args}],
    }


# ---- extraction -------------------------------------------------------------------------------
def extract_example(rng: random.Random, split: str, documents: list, requests: list) -> dict:
    kind, fields, train_templates, test_templates = rng.choice(documents)
    templates = train_templates if split == "train" else test_templates
    values = {f: value_of(k, rng, split) for f, k in fields.items()}
    doc = rng.choice(templates).format(**values)
    names = list(fields)
    if rng.random() < 0.4 and len(names) > 2:  # sometimes ask for a subset, in the asked order
        names = rng.sample(names, rng.randint(2, len(names) - 1))
    wanted = {f: values[f] for f in names}
    field_list = ", ".join(names)
    request = rng.choice(requests).format(fields=field_list, kind=kind, doc=doc)
    answer = json.dumps(wanted)
    prompt = [{"role": "user", "content": request}]
    return {"messages": prompt + [{"role": "assistant", "content": answer}], "prompt": prompt, "answer": wanted}


# ---- arithmetic -------------------------------------------------------------------------------
OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}


def math_example(rng: random.Random, split: str, templates: list) -> dict:
    question, steps = rng.choice(templates)
    while True:
        v = {"a": rng.randint(2, 40), "b": rng.randint(2, 20), "c": rng.randint(1, 30)}
        if steps[0][0] == "*":
            v["a"], v["b"] = rng.randint(2, 12), rng.randint(2, 9)
        trace = []
        for op, left, right, out in steps:
            v[out] = OPS[op](v[left], v[right])
            trace.append(f"{v[left]} {op} {v[right]} = {v[out]}.")
        if all(v[out] > 0 for *_, out in steps):
            break
    p, q = rng.sample(pools.ENTITIES["person"][SPLIT[split]], 2)
    item = value_of("item", rng, split)
    text = question.format(p=p, q=q, item=item, **v)
    r = v[steps[-1][3]]
    prompt = [{"role": "user", "content": text}]
    reply = {"role": "assistant", "reasoning_content": " ".join(trace), "content": f"The answer is {r}."}
    return {"messages": prompt + [reply], "prompt": prompt, "answer": r, "question": text, "trace": trace}


# ---- instructions with constraints --------------------------------------------------------------
SENTENCES = [
    "{T} is a {adj} subject.",
    "Many people enjoy {topic} in their free time.",
    "Learning about {topic} takes patience, practice and curiosity.",
    "{T} has a long history.",
    "You can start with {topic} at any age.",
    "It is {adj} and {adj2}.",
    "Some say {topic} is {adj}, others disagree.",
    "A good book on {topic} is a fine start.",
]
FORMATS = [
    None,
    "detectable_format:number_bullet_lists",
    "detectable_format:title",
    "detectable_format:json_format",
    "startend:quotation",
]
MODIFIERS = [
    None,
    "change_case:english_lowercase",
    "change_case:english_capital",
    "punctuation:no_comma",
    "keywords:existence",
    "startend:end_checker",
    "detectable_content:postscript",
]


def _sentences(rng: random.Random, topic: str, n: int) -> list[str]:
    adj, adj2 = rng.sample(pools.ADJECTIVES, 2)
    picked = rng.sample(SENTENCES, n)
    return [s.format(T=topic.capitalize(), topic=topic, adj=adj, adj2=adj2) for s in picked]


def ifeval_example(rng: random.Random, split: str) -> dict:
    s = SPLIT[split]
    topic = rng.choice(pools.TOPICS[s])
    fmt = rng.choice(FORMATS)
    mod = rng.choice(MODIFIERS)
    if fmt in ("detectable_format:json_format", "startend:quotation") and mod in (
        "startend:end_checker",
        "detectable_content:postscript",
    ):
        mod = None
    if fmt is None and mod is None:
        mod = "change_case:english_lowercase"
    ids, kwargs, phrases = [], [], []
    n = rng.randint(2, 4)
    body = _sentences(rng, topic, n)
    fill = {}
    if mod == "keywords:existence":
        words = rng.sample(pools.KEYWORDS[s], 2)
        fill["words"] = f"'{words[0]}' and '{words[1]}'"
        body[-1] = body[-1] + f" It is about {words[0]} and {words[1]}."
        kwargs_mod = {"keywords": words}
    elif mod == "startend:end_checker":
        fill["phrase"] = rng.choice(pools.END_PHRASES[s])
        kwargs_mod = {"end_phrase": fill["phrase"]}
    elif mod == "detectable_content:postscript":
        kwargs_mod = {"postscript_marker": "P.S."}
    else:
        kwargs_mod = {}
    if fmt == "detectable_format:number_bullet_lists":
        fill["n"] = n
        text = "\n".join(f"* {x}" for x in body)
        kw_fmt = {"num_bullets": n}
    elif fmt == "detectable_format:title":
        text = f"<<{topic.capitalize()}>>\n\n" + " ".join(body)
        kw_fmt = {}
    elif fmt == "detectable_format:json_format":
        text = None  # built after the modifier, which may change the case of the text inside
        kw_fmt = {}
    elif fmt == "startend:quotation":
        text = None
        kw_fmt = {}
    else:
        text = " ".join(body)
        kw_fmt = {}
    plain = " ".join(body)
    if mod == "punctuation:no_comma":
        plain = plain.replace(",", "")
        text = text.replace(",", "") if text else None
    if fmt == "detectable_format:json_format":
        key = "TOPIC" if mod == "change_case:english_capital" else "topic"
        text = json.dumps(
            {key: topic, "text": plain}, separators=(", ", ": ") if mod != "punctuation:no_comma" else None
        )
        if mod == "punctuation:no_comma":  # JSON without commas needs a single key
            text = json.dumps({"text": plain})
    elif fmt == "startend:quotation":
        text = f'"{plain}"'
    if mod == "startend:end_checker":
        text = text + " " + fill["phrase"]
    elif mod == "detectable_content:postscript":
        text = text + f"\n\nP.S. I hope you like {topic}."
    if mod == "change_case:english_lowercase":
        text = text.lower()
    elif mod == "change_case:english_capital":
        text = text.upper()
    for instruction, kw in ((fmt, kw_fmt), (mod, kwargs_mod)):
        if instruction is None:
            continue
        ids.append(instruction)
        kwargs.append(kw)
        phrases.append(rng.choice(pools.CONSTRAINTS[instruction][s]).format(**fill))
    write = rng.choice(pools.TRAIN_WRITE if s == 0 else pools.TEST_WRITE).format(topic=topic)
    prompt_text = " ".join([write, *phrases])
    prompt = [{"role": "user", "content": prompt_text}]
    return {
        "messages": prompt + [{"role": "assistant", "content": text}],
        "prompt": prompt,
        "instruction_id_list": ids,
        "kwargs": kwargs,
    }


# ---- the files ----------------------------------------------------------------------------------
def make(task: str, rng: random.Random, split: str, unseen_tools: bool = False) -> dict:
    """One example of `task` from `split` ("train" or "test"); held-out tool prompts use the
    held-out tools when `unseen_tools`, else the training tools with held-out requests and values."""
    test = split == "test"
    if task == "tools":
        tools = pools.TEST_TOOLS if unseen_tools else pools.TRAIN_TOOLS
        requests = pools.TEST_REQUESTS if test else pools.TRAIN_REQUESTS
        systems = pools.TEST_SYSTEM_PROMPTS if test else pools.SYSTEM_PROMPTS
        return tool_example(rng, split, tools, requests, systems)
    if task == "extract":
        docs = pools.DOCUMENTS + (pools.TEST_DOCUMENTS if test else [])
        return extract_example(rng, split, docs, pools.TEST_EXTRACT_REQUESTS if test else pools.EXTRACT_REQUESTS)
    if task == "math":
        return math_example(rng, split, pools.MATH_TEST if test else pools.MATH_TRAIN)
    return ifeval_example(rng, split)


TASKS = ("tools", "extract", "math", "ifeval")


def sft_row(ex: dict) -> dict:
    return {k: ex[k] for k in ("messages", "tools") if k in ex}


def grpo_row(task: str, ex: dict) -> dict:
    row = {"prompt": ex["prompt"], "task": task}
    if task == "tools":
        row.update(tools=ex["tools"], tool_calls=ex["tool_calls"])
    elif task in ("extract", "math"):
        row["answer"] = ex["answer"]
    else:
        row.update(instruction_id_list=ex["instruction_id_list"], kwargs=ex["kwargs"])
    return row


def write_jsonl(path: Path, rows) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def unique(task: str, rng: random.Random, split: str, n: int, seen: set, **kw) -> list[dict]:
    """`n` examples whose prompts are not in `seen` (and are added to it): no duplicate prompts
    within or across the files that share `seen`."""
    out, tries = [], 0
    while len(out) < n and tries < n * 50:
        tries += 1
        ex = make(task, rng, split, **kw)
        key = json.dumps(ex["prompt"])
        if key not in seen:
            seen.add(key)
            out.append(ex)
    return out


def generate(out: Path, seed: int = 0, scale: float = 1.0) -> dict[str, int]:
    """Write every file into `out`; return the rows written per file."""
    counts = {}
    sizes = {"tools": 2500, "extract": 2000, "math": 3000, "ifeval": 2000}
    seen: set = set()
    for task in TASKS:
        rng = random.Random(f"{seed}-train-{task}")
        n = max(8, int(sizes[task] * scale))
        train = unique(task, rng, "train", n, seen)
        counts[f"train/{task}.jsonl"] = write_jsonl(out / "train" / f"{task}.jsonl", map(sft_row, train))
    prefs, key, grpo, grpo_eval = [], [], [], []
    for task in TASKS:
        rng = random.Random(f"{seed}-post-{task}")
        for ex in unique(task, rng, "train", max(4, int(24 * scale)), seen):
            # the reference answer is the last assistant turn: for tool use, the call itself
            prefs.append({**sft_row(ex), "messages": ex["messages"][:3]} if task == "tools" else sft_row(ex))
            key.append({"user": ex["prompt"][-1]["content"], **grpo_row(task, ex)})
        grpo += [grpo_row(task, ex) for ex in unique(task, rng, "train", max(4, int(64 * scale)), seen)]
        grpo_eval += [grpo_row(task, ex) for ex in unique(task, rng, "train", max(2, int(8 * scale)), seen)]
    counts["prefs/prompts.jsonl"] = write_jsonl(out / "prefs" / "prompts.jsonl", prefs)
    counts["answer_key.jsonl"] = write_jsonl(out / "answer_key.jsonl", key)
    counts["grpo/prompts.jsonl"] = write_jsonl(out / "grpo" / "prompts.jsonl", grpo)
    counts["grpo/eval.jsonl"] = write_jsonl(out / "grpo" / "eval.jsonl", grpo_eval)
    counts.update(write_test(out, seed, scale))
    return counts


def write_test(out: Path, seed: int, scale: float) -> dict[str, int]:
    """The held-out sets: only the `test` halves of the pools."""
    n = max(4, int(60 * scale))
    seen: set = set()
    rng = random.Random(f"{seed}-test")
    counts = {}
    math = unique("math", rng, "test", n, seen)
    rows = [{"question": ex["question"], "answer": " ".join(ex["trace"]) + f"\n#### {ex['answer']}"} for ex in math]
    counts["bench/gsm8k/test.jsonl"] = write_jsonl(out / "bench" / "gsm8k" / "test.jsonl", rows)
    ife = unique("ifeval", rng, "test", n, seen)
    rows = [
        {
            "key": i,
            "prompt": ex["prompt"][0]["content"],
            "instruction_id_list": ex["instruction_id_list"],
            "kwargs": ex["kwargs"],
        }
        for i, ex in enumerate(ife)
    ]
    counts["bench/ifeval/train.jsonl"] = write_jsonl(out / "bench" / "ifeval" / "train.jsonl", rows)
    sets = {
        "tools_seen": unique("tools", rng, "test", n, seen),
        "tools_unseen": unique("tools", rng, "test", n, seen, unseen_tools=True),
        "extract": unique("extract", rng, "test", n, seen),
    }
    for name, exs in sets.items():
        task = "tools" if name.startswith("tools") else "extract"
        counts[f"test/{name}.jsonl"] = write_jsonl(out / "test" / f"{name}.jsonl", (grpo_row(task, e) for e in exs))
    text = [sft_row(e) for e in math[:20] + ife[:20] + sets["tools_seen"][:20] + sets["extract"][:20]]
    counts["test/text.jsonl"] = write_jsonl(out / "test" / "text.jsonl", text)
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Generate the default model's training and held-out data.")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every set's size (tests use 0.01)")
    args = parser.parse_args(argv)
    for path, n in generate(Path(args.out), args.seed, args.scale).items():
        print(f"{n:6d}  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
