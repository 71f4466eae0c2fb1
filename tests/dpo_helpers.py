"""Preference pairs in TRL's formats for the DPO tests, and TRL's DPOTrainer as the oracle."""

from __future__ import annotations

from pathlib import Path

from train_helpers import TOOLS

# (The row with tools first: `datasets.Dataset.from_list` takes its columns from the first row.)
CONVERSATIONAL = [
    {
        "prompt": [
            {"role": "system", "content": "You are a helpful assistant trained by Liquid AI."},
            {"role": "user", "content": "What is the weather like in Paris?"},
        ],
        "chosen": [
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"location": "Paris"}}}
                ],
            }
        ],
        "rejected": [{"role": "assistant", "content": "It is always raining in Paris."}],
        "tools": TOOLS,
    },
    {
        "prompt": [{"role": "user", "content": "What color is the sky?"}],
        "chosen": [{"role": "assistant", "content": "It is blue."}],
        "rejected": [{"role": "assistant", "content": "It is green, I think, or maybe purple."}],
    },
    {
        "prompt": [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 4 * 3?"},
        ],
        "chosen": [{"role": "assistant", "content": "<think>4 * 3 = 12</think>It is 12."}],
        "rejected": [{"role": "assistant", "content": "It is 7."}],
    },
    {
        "prompt": [{"role": "user", "content": "Tell me a story about a robot."}],
        "chosen": [{"role": "assistant", "content": "Once upon a time, a small robot learned to paint the sea."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    },
]
TEXT = [
    {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " a large city with many museums."},
    {"prompt": "Hello! How are you", "chosen": " today? I am fine, thank you.", "rejected": "?"},
    {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5, or so"},
    {"prompt": "Translate 'chat' to English:", "chosen": " cat", "rejected": " chat<|im_end|>"},
]
IMPLICIT = [
    {"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]}
    for r in CONVERSATIONAL
    if "tools" not in r
]
IMPLICIT_TEXT = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in TEXT]


def trl_tokenized(model_dir: Path, rows: list[dict], max_length: int = 1024) -> list[dict]:
    """TRL's own preprocessing of `rows` (DPOTrainer._prepare_dataset): prompt/chosen/rejected ids."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    class Owner:  # what _prepare_dataset reads from the trainer
        _tokenizer = tokenizer

    args = DPOConfig(
        output_dir=str(model_dir / "trl-tmp"), max_length=max_length, use_cpu=True, bf16=False, report_to=[]
    )
    data = DPOTrainer._prepare_dataset(Owner(), Dataset.from_list(rows), tokenizer, args, "train")
    return [{k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for row in data]


def trl_first_steps(
    model_dir: Path,
    ref_dir: Path | None,
    rows: list[dict],
    output: Path,
    loss: str,
    beta: float,
    learning_rate: float,
    steps: int = 2,
) -> list[dict]:
    """The logged metrics of TRL's DPOTrainer's first `steps` steps on `rows` (one batch of all of
    them per step) with transformers' Lfm2ForCausalLM, float32 on the CPU."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, Lfm2ForCausalLM
    from trl import DPOConfig, DPOTrainer

    model = Lfm2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref = Lfm2ForCausalLM.from_pretrained(ref_dir, dtype=torch.float32) if ref_dir else None
    args = DPOConfig(
        output_dir=str(output),
        per_device_train_batch_size=len(rows),
        max_steps=steps,
        logging_steps=1,
        learning_rate=learning_rate,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        loss_type=[loss],
        beta=beta,
        disable_tqdm=True,
        seed=0,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=ref,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    trainer.train()
    return [r for r in trainer.state.log_history if "rewards/chosen" in r]
