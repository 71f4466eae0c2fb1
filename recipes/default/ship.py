"""Copy the recipe's final models into the package, in bfloat16: lfmkit/default_model/{teacher,student}.

    python recipes/default/ship.py RUN_DIR [--student-stage grpo]

The teacher is the output of --teacher-stage (default RUN_DIR/teacher-4, the teacher's last
stage); the student the output of --student-stage (the last stage that improved the held-out
sets; MODEL_CARD.md says which). Each gets config.json, a bfloat16 model.safetensors, the
tokenizer files (with LFM2's chat template) and generation_config.json.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from lfmkit import LFM2

PACKAGE = Path(__file__).resolve().parents[2] / "lfmkit" / "default_model"
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
STAGE_DIRS = {
    "distill-1": "student-kd1",
    "distill": "student-kd",
    "distill-2": "student-kd2",
    "sft": "student-sft",
    "dpo-b2": "dpo-b2",
    "merge": "merged",
    "grpo": "grpo",
}
TEACHER_STAGES = ("teacher", "teacher-2", "teacher-3", "teacher-4")  # each stage writes RUN_DIR/<stage>


def ship(source: Path, dest: Path, name: str) -> int:
    """Write `source` into `dest` in bfloat16; return the bytes written."""
    if dest.exists():
        shutil.rmtree(dest)
    model = LFM2.from_pretrained(str(source))
    model.config.name = name
    model.save_pretrained(str(dest), dtype=torch.bfloat16)
    for f in FILES:
        src = source / f
        if not src.exists():  # merge / GRPO outputs copy the tokenizer; generation_config from the init
            src = source.parent / "student-init" / f
        shutil.copy(src, dest / f)
    return sum(p.stat().st_size for p in dest.iterdir())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Ship the recipe's teacher and student into lfmkit/default_model.")
    parser.add_argument("run")
    parser.add_argument("--student-stage", default="grpo", choices=sorted(STAGE_DIRS))
    parser.add_argument("--teacher-stage", default="teacher-4", choices=TEACHER_STAGES)
    args = parser.parse_args(argv)
    run = Path(args.run)
    total = ship(run / args.teacher_stage, PACKAGE / "teacher", "lfmkit-default-teacher")
    total += ship(run / STAGE_DIRS[args.student_stage], PACKAGE / "student", "lfmkit-default-student")
    print(f"shipped {total / 1e6:.1f} MB into {PACKAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
