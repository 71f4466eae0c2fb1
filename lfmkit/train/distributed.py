"""Training on several processes (torchrun): the process group, DDP and FSDP2, full tensors.

    torchrun --nproc_per_node 4 --no-python lfmkit train sft ... --distributed fsdp

`init_process_group()` joins the group torchrun describes in the environment (WORLD_SIZE,
RANK, LOCAL_RANK, MASTER_ADDR/PORT): gloo on CPU, NCCL on CUDA, each process on its own
GPU (`cuda:LOCAL_RANK`). `wrap(model, loss_fn, strategy)` returns the module the trainer calls
once per micro-batch, `LossStep`, whose forward is the whole loss (model forward, head and
cross-entropy), wrapped in

- `ddp`: `DistributedDataParallel`, every process holding the whole model; gradients are
  averaged over processes in the backward of the last micro-batch of a step (`no_sync` before);
- `fsdp`: FSDP2, `fully_shard` on every decoder block, then on the root (`LossStep`), whose
  group holds the rest: the tied embedding / head and the final norm. The loss reads the head's
  weight directly (the fused chunked cross-entropy), which is why it runs inside the root's
  forward: the root group stays gathered from its forward to its backward. Parameters,
  gradients and optimizer state are sharded (DTensors); each block is gathered for its forward
  and its backward only. LoRA works as is: FSDP2 shards a block's frozen base weights and its
  trainable adapters in the same group.

The trainer divides each micro-batch's summed loss by the global trained-token count and
multiplies by the world size, which DDP's and FSDP's gradient averaging undo, so a step's
gradient equals the one-process gradient of the same global batch.

`full_tensor`, `shard_like` turn sharded tensors into whole ones and back, for checkpoints
(every process takes part, process 0 writes); `meta_skeleton` / `whole_model` rebuild a plain
copy of a sharded model to save the final model from.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError


def world_size_from_env() -> int:
    """The number of processes torchrun started (1 when not run by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE: expected an integer, got {os.environ['WORLD_SIZE']!r}") from None


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Process 0 of torchrun's group (or the only process): the one that prints and writes."""
    return os.environ.get("RANK", "0") == "0"


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(rank, world_size) when torch.distributed is initialized, else (0, 1)."""
    if is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_process_group(device: torch.device) -> bool:
    """Join torchrun's process group when WORLD_SIZE > 1 and none is initialized yet: NCCL for
    CUDA, gloo otherwise. True when this call created it (the caller then destroys it)."""
    if world_size_from_env() <= 1 or is_initialized():
        return False
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1, but this torch build has no torch.distributed")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return True


def destroy_process_group() -> None:
    if is_initialized():
        dist.destroy_process_group()


def resolve_strategy(name: str | None, world: int) -> str | None:
    """The strategy a run uses: None in one process (nothing to distribute), else `name`
    (config.DISTRIBUTED: ddp or fsdp), ddp by default."""
    if world <= 1:
        return None
    return name or "ddp"


class LossStep(nn.Module):
    """forward(batch) = loss_fn(model, batch) as (total, parts): one module around the whole
    loss, so that DDP and FSDP see the head and the cross-entropy inside a forward. The loss
    function is kept out of the module tree (a teacher model inside it is not ours to shard)."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self._loss = (loss_fn,)

    def forward(self, batch):
        out = self._loss[0](self.model, batch)
        return out.total, out.parts


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks FSDP shards one by one (`model.model.layers` for LFM2)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ConfigError(f"distributed fsdp: {type(model).__name__} has no model.layers to shard")
    return list(layers)


def wrap(model: nn.Module, loss_fn: Callable, strategy: str | None) -> nn.Module:
    """The module the trainer calls per micro-batch: LossStep, wrapped for `strategy`
    (None: as is). FSDP shards `model`'s parameters in place, so build the optimizer after."""
    step = LossStep(model, loss_fn)
    if strategy is None:
        return step
    device = model.device
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = (
            [device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda"
            else None
        )
        return DistributedDataParallel(step, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in decoder_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(step, mesh=mesh)  # the root: embedding / head (tied), final norm
    return step


def sync_gradients(step_module: nn.Module, last: bool):
    """Context for one micro-batch's forward and backward: DDP skips its all-reduce except on
    the last micro-batch of a step (FSDP reduce-scatters every micro-batch: its gradients stay
    sharded, which is the memory it saves)."""
    from torch.nn.parallel import DistributedDataParallel

    if not last and isinstance(step_module, DistributedDataParallel):
        return step_module.no_sync()
    return contextlib.nullcontext()


# ---- whole tensors and shards -------------------------------------------------------------------
def is_sharded(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a sharded one: every process must call it, in order)."""
    return t.full_tensor() if is_sharded(t) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `like` (its shard of `full` when `like` is sharded; no communication:
    every process holds `full`), on `like`'s device and dtype."""
    full = full.to(device=like.device, dtype=like.dtype)
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with every sharded state tensor made whole (the same file as a
    one-process run writes). New dicts: the optimizer's own state is left as it is."""
    state = optimizer.state_dict()
    state["state"] = {
        i: {k: full_tensor(v) if torch.is_tensor(v) else v for k, v in s.items()} for i, s in state["state"].items()
    }
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full optimizer state (full_optimizer_state's) into an optimizer over sharded or
    whole parameters: each state tensor shaped like its parameter becomes that parameter's shard."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    fixed = {}
    for i, s in state["state"].items():
        p = params[int(i)]
        fixed[i] = {
            k: shard_like(v, p) if torch.is_tensor(v) and is_sharded(p) and v.shape == p.shape else v
            for k, v in s.items()
        }
    optimizer.load_state_dict({**state, "state": fixed})


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A copy of `model`'s module tree with every parameter and buffer on the meta device (no
    memory): taken before FSDP shards the model, filled by `whole_model` to save it."""
    memo = {}
    for t in (*model.parameters(), *model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def whole_model(model: nn.Module, skeleton: nn.Module, keep: bool) -> nn.Module | None:
    """`skeleton` holding `model`'s whole tensors (sharded ones gathered; a tied tensor once):
    a plain module that saves like the unsharded model. Every process must call it (the gathers
    are collectives); only where `keep` is the copy built, the others return None."""
    whole: dict[int, torch.Tensor] = {}
    state = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in whole:
            whole[id(t)] = full_tensor(t.detach())
        state[name] = whole[id(t)]
    if not keep:
        return None
    skeleton.load_state_dict(state, assign=True)
    return skeleton


def all_gather_objects(obj) -> list:
    """[obj of process 0, obj of process 1, ...] (just [obj] in one process)."""
    if not is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


__all__ = [
    "LossStep",
    "wrap",
    "sync_gradients",
    "init_process_group",
    "destroy_process_group",
    "resolve_strategy",
    "rank_and_world",
    "world_size_from_env",
    "local_rank",
    "is_main_process",
    "full_tensor",
    "shard_like",
    "full_optimizer_state",
    "load_optimizer_state",
    "meta_skeleton",
    "whole_model",
    "all_gather_objects",
    "barrier",
    "all_reduce_sum",
    "is_sharded",
    "decoder_blocks",
]
