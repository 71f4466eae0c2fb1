"""Training data: every format reads to the same documents, the loss mask of a conversation is
exactly the assistant mask transformers computes from the chat template (tool calls in LFM2's
Pythonic format, reasoning included), and every bad file or row names its file and line."""

import json

import pytest
from train_helpers import CHATS, PROMPT_COMPLETIONS, TEXTS, write_jsonl

from lfmkit.errors import DataError
from lfmkit.train.batching import DataPlan
from lfmkit.train.data import IGNORE_INDEX, DataOptions, DataSource, RowEncoder, load_source, read_rows, to_document


@pytest.fixture(scope="module")
def encoder(tok):
    return RowEncoder(tok, DataOptions(max_length=4096))


def trained_text(tok, ids, trained):
    return tok.decode([i for i, t in zip(ids, trained) if t])


@pytest.mark.parametrize("row", CHATS, ids=["plain", "tools", "reasoning", "story"])
def test_chat_loss_mask_equals_transformers_assistant_mask(encoder, hf, row):
    kind, ids, trained = encoder.encode(row)
    want = hf.apply_chat_template(
        row["messages"], tools=row.get("tools"), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert kind == "chat"
    assert ids == want["input_ids"]
    assert trained == [bool(m) for m in want["assistant_masks"]]


def test_chat_trains_on_tool_calls_in_lfm2_format_and_not_on_prompts_or_tool_results(encoder, tok):
    _, ids, trained = encoder.encode(CHATS[1])
    text = trained_text(tok, ids, trained)
    assert '<|tool_call_start|>[get_weather(location="Paris")]<|tool_call_end|>' in text
    assert "It is sunny and 21 degrees.<|im_end|>" in text
    assert "weather like in Paris" not in text and "temperature" not in text and "List of tools" not in text


def test_reasoning_of_the_last_turn_is_trained_and_past_reasoning_dropped(encoder, tok):
    _, ids, trained = encoder.encode(CHATS[2])
    full, text = tok.decode(ids), trained_text(tok, ids, trained)
    assert "<think>Then 4 * 3 = 12.</think>So the answer is 12." in text
    assert "2 + 2 = 4</think>" not in full  # the template drops past reasoning
    assert "The answer is 4." in text


def test_assistant_only_loss_off_trains_every_token(tok):
    enc = RowEncoder(tok, DataOptions(assistant_only_loss=False))
    _, ids, trained = enc.encode(CHATS[0])
    assert all(trained) and ids[0] == tok.bos_token_id


def test_prompt_completion_trains_the_completion_and_eos(encoder, tok):
    _, ids, trained = encoder.encode(PROMPT_COMPLETIONS[0])
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert trained_text(tok, ids, trained) == " today? I am fine, thank you." + tok.eos_token
    assert tok.decode(ids[1:]) == "Hello! How are you today? I am fine, thank you." + tok.eos_token


def test_conversational_prompt_completion_trains_the_completion_turn(encoder, tok, hf):
    row = PROMPT_COMPLETIONS[1]
    _, ids, trained = encoder.encode(row)
    want = hf.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=True)
    assert ids == want["input_ids"]
    assert trained_text(tok, ids, trained) == "It's a tiny nematode that lives in temperate soil.<|im_end|>\n"


def test_text_trains_every_token_between_bos_and_eos(encoder, tok):
    _, ids, trained = encoder.encode(TEXTS[0])
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and all(trained)
    assert tok.decode(ids[1:-1]) == TEXTS[0]["text"]


def test_documents_are_shifted_and_truncated_from_the_end():
    doc, truncated = to_document([1, 2, 3, 4, 5], [False, False, True, True, True], max_length=4)
    assert truncated and doc.input_ids == [1, 2, 3, 4]
    assert doc.targets == [IGNORE_INDEX, 3, 4, IGNORE_INDEX]


def rows_of(path):
    return [row for _, row in read_rows(path)]


def test_every_format_reads_the_same_rows(tmp_path):
    rows = [{"text": "a b c"}, {"text": "d e"}, {"text": "f"}]
    jsonl = write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.txt").write_text("a b c\n\nd e\nf\n")
    assert rows_of(jsonl) == rows_of(tmp_path / "d.json") == rows_of(tmp_path / "d.txt") == rows


def test_parquet_rows_with_nested_messages_and_mixed_kinds(tmp_path, encoder):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    rows = [CHATS[0], CHATS[3], PROMPT_COMPLETIONS[0], TEXTS[0]]
    columns = sorted({k for r in rows for k in r})
    pq.write_table(pa.table({c: [r.get(c) for r in rows] for c in columns}), tmp_path / "d.parquet")
    got = rows_of(tmp_path / "d.parquet")
    assert [r["messages"] for r in got[:2]] == [r["messages"] for r in rows[:2]]
    assert [encoder.encode(r) for r in got] == [encoder.encode(r) for r in rows]


def test_datasets_directory_saved_to_disk(tmp_path, encoder):
    datasets = pytest.importorskip("datasets")
    rows = [CHATS[0], CHATS[3]]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "ds"))
    docs, stats = load_source(DataSource(str(tmp_path / "ds")), encoder)
    want = [to_document(*encoder.encode(r)[1:], 4096)[0] for r in rows]
    assert [d.input_ids for d in docs] == [d.input_ids for d in want]
    assert [d.targets for d in docs] == [d.targets for d in want]
    assert stats.kinds == {"chat": 2}


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"messages": [{"role": "user", "content": "hi"}', "not valid JSON"),
        ('{"question": "hi"}', "expected the fields 'messages', 'prompt' + 'completion', or 'text'"),
        ('{"messages": [{"role": "robot", "content": "hi"}]}', "messages'[0].role must be one of"),
        ('{"messages": []}', "non-empty list"),
        ('{"messages": [{"role": "user", "content": 5}]}', "content must be a string"),
        ('{"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}]}', "function name"),
        (
            '{"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", '
            '"arguments": "{oops"}}]}]}',
            "not valid JSON",
        ),
        ('{"prompt": "a", "completion": ["b"]}', "both be strings or both be message lists"),
        ('{"text": 3}', "'text' must be a string"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_a_bad_row_names_the_file_and_line(tmp_path, encoder, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(TEXTS[0]) + "\n\n" + line + "\n")
    with pytest.raises(DataError) as err:
        load_source(DataSource(str(path)), encoder)
    assert str(err.value).startswith(f"{path}:3: ")
    assert message in str(err.value)


def test_bad_files_and_data_specs_are_named(tmp_path, encoder):
    with pytest.raises(DataError, match="no such data file"):
        load_source(DataSource(str(tmp_path / "missing.jsonl")), encoder)
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"d\.csv: unknown data format"):
        list(read_rows(tmp_path / "d.csv"))
    (tmp_path / "d.json").write_text('{"text": "x"}')
    with pytest.raises(DataError, match="expected a JSON array"):
        list(read_rows(tmp_path / "d.json"))
    write_jsonl(tmp_path / "u.jsonl", [{"messages": [{"role": "user", "content": "no answer"}]}])
    with pytest.raises(DataError, match="no usable training documents"):
        load_source(DataSource(str(tmp_path / "u.jsonl")), encoder)
    with pytest.raises(DataError, match="mixing weight must be a positive number"):
        DataSource.parse("a.jsonl:-1")
    assert DataSource.parse("dir/a.jsonl:2.5") == DataSource("dir/a.jsonl", 2.5)
    assert DataSource.parse("C:/data/a.jsonl") == DataSource("C:/data/a.jsonl", 1.0)


def test_template_without_generation_blocks_cannot_mask_assistants(tok):
    enc = RowEncoder(tok, DataOptions(chat_template="{% for m in messages %}{{ m.content }}{% endfor %}"))
    with pytest.raises(DataError, match="no {% generation %} blocks"):
        enc.encode(CHATS[0])
    assert all(
        RowEncoder(
            tok,
            DataOptions(chat_template="{% for m in messages %}{{ m.content }}{% endfor %}", assistant_only_loss=False),
        ).encode(CHATS[0])[2]
    )


def docs_of(n, start=0):
    return [to_document([1] + [start + i + 2] * (i % 4 + 1), [True] * (i % 4 + 2), 64)[0] for i in range(n)]


def test_mixing_weights_are_passes_per_epoch_and_fixed_by_the_seed():
    a, b = docs_of(10), docs_of(6, start=100)
    plan = DataPlan([a, b], [2.0, 0.5], batch_size=4, max_length=64, packing=False, seed=3)
    for epoch in (0, 1):
        docs = plan.epoch_documents(epoch)
        assert sum(d in a for d in docs) == 20 and sum(d in b for d in docs) == 3
    assert plan.epoch_documents(0) != plan.epoch_documents(1)  # another half of b
    again = DataPlan([a, b], [2.0, 0.5], batch_size=4, max_length=64, packing=False, seed=3)
    assert again.epoch_rows(1) == plan.epoch_rows(1)
    assert plan.steps_in_epoch(0) == 6 and plan.total_steps(1.5) == 9
    assert plan.locate(7) == (1, 1)


def test_packed_plan_fills_rows_and_covers_each_document_once_per_epoch():
    docs = docs_of(30)
    plan = DataPlan([docs], [1.0], batch_size=2, max_length=8, packing=True, seed=0)
    rows = plan.epoch_rows(0)
    assert all(sum(len(d) for d in row) <= 8 for row in rows)
    assert sorted(id(d) for row in rows for d in row) == sorted(id(d) for d in docs)
    assert len(rows) < len(docs)
