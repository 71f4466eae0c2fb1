"""Training checkpoints, saved atomically: everything a resumed run needs to continue exactly.

A checkpoint is `<output>/checkpoints/step-<N>/` holding
- `trainable.safetensors`: the parameters that require grad (the whole model for full
  fine-tuning, the adapters for LoRA), by parameter name;
- `optimizer.pt`, `scheduler.pt`: their state dicts;
- `rng.pt`: Python's and torch's random states (CPU and CUDA); with several processes, process
  r > 0 has its own `rng-rank<r>.pt`;
- `trainer_state.json`: the step, the epoch, the number of processes and strategy, and the
  config the run was started with.

Under FSDP the parameters and optimizer state are gathered whole first (every process takes
part), so the files are the same as a one-process run's; process 0 writes them.

Under FSDP the parameters and optimizer state are gathered whole first (every process takes
part), so the files are the same as a one-process run's; process 0 writes them.

It is written under a temporary name (`.tmp-step-<N>-<pid>`) and renamed when complete, so a
run killed at any moment (SIGKILL included) leaves either the whole checkpoint or none;
`latest_checkpoint` ignores temporary directories and `clean_temporary` removes them.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .distributed import all_gather_objects, full_optimizer_state, full_tensor, load_optimizer_state, shard_like

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dir(output: str | Path) -> Path:
    return Path(output) / "checkpoints"


def latest_checkpoint(output: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under `output`, or None."""
    root = checkpoint_dir(output)
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return max(found)[1] if found else None


def clean_temporary(output: str | Path) -> None:
    """Remove half-written checkpoints left by a killed run."""
    root = checkpoint_dir(output)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> whole tensor of the parameters that require grad (a tied tensor once); gathers
    sharded parameters, so every process must call it."""
    return {n: full_tensor(p.detach()).to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_file(rank: int) -> str:
    """The RNG file of process `rank` in a checkpoint."""
    return "rng.pt" if rank == 0 else f"rng-rank{rank}.pt"


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output: str | Path,
    step: int,
    model: nn.Module,
    optimizer,
    scheduler,
    state: dict,
    keep: int | None = None,
    rank: int = 0,
) -> Path | None:
    """Write checkpoint `step` atomically; keep only the newest `keep` when set. Returns its path.

    With several processes every one calls this (the state is gathered); process 0 writes and
    the others return None."""
    from safetensors.torch import save_file

    tensors = trainable_state(model)
    optimizer_state = full_optimizer_state(optimizer)
    rngs = all_gather_objects(rng_state())
    if rank != 0:
        return None
    root = checkpoint_dir(output)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(tensors, str(tmp / "trainable.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    for r, rng in enumerate(rngs):
        torch.save(rng, tmp / rng_file(r))
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
    if final.exists():  # the same step saved again (a resumed run's last step)
        old = root / f".tmp-old-step-{step}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    if keep:
        steps = sorted(int(m.group(1)) for p in root.iterdir() if (m := _NAME.match(p.name)))
        for s in steps[:-keep]:
            shutil.rmtree(root / f"step-{s}", ignore_errors=True)
    return final


def checkpoint_state(path: Path) -> dict:
    """The trainer_state.json of checkpoint `path` (step, epoch, processes, config)."""
    try:
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read {STATE_FILE}: {exc}") from None


def load_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, rank: int = 0) -> dict:
    """Restore parameters, optimizer, scheduler and this process's RNG from checkpoint `path`
    (sharded parameters take their shard); return its state."""
    from safetensors.torch import load_file

    state = checkpoint_state(path)
    try:
        tensors = load_file(str(path / "trainable.safetensors"))
        optim_state = torch.load(path / "optimizer.pt", weights_only=True)
        sched_state = torch.load(path / "scheduler.pt", weights_only=True)
        rng = torch.load(path / rng_file(rank), weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {exc}") from None
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != set(params):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise CheckpointError(
            f"{path}: the checkpoint's trainable parameters do not match the model "
            f"(missing {missing[:3]}, unexpected {extra[:3]}); saved with other LoRA settings?"
        )
    with torch.no_grad():
        for name, p in params.items():
            if tensors[name].shape != p.shape:
                raise CheckpointError(
                    f"{path}: {name} has shape {tuple(tensors[name].shape)}, the model {tuple(p.shape)}"
                )
            p.copy_(shard_like(tensors[name], p))
    load_optimizer_state(optimizer, optim_state)
    scheduler.load_state_dict(sched_state)
    set_rng_state(rng)
    return state


__all__ = [
    "checkpoint_dir",
    "latest_checkpoint",
    "clean_temporary",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_state",
    "trainable_state",
    "STATE_FILE",
]
