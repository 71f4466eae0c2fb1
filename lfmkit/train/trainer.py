"""The training loop: AdamW, warmup + decay, clipping, accumulation, autocast, checkpoints.

`Trainer(model, plan, config, pad_id, loss_fn=None, save_model=None).train()` runs optimizer
steps `plan` describes. It trains the parameters that require grad (an adapter's `prepare_model`
freezes the rest before the trainer sees the model), with any loss following the protocol of
`losses.py` (a sum over trained tokens); `save_model(model, output_dir)` writes the final
model (default: the caller's; the SFT recipe writes a Hugging Face directory, a LoRA recipe
the PEFT adapter); `progress_metrics` names record keys the progress bar shows besides the loss
(GRPO: the reward).

The loss of a step is the sum over every loss item of the step (a trained token; for a
preference loss, a pair: `Batch.loss_items`), divided by their number across all micro-batches
and processes (all-reduced when torch.distributed is initialized), so it is the mean over the
global batch whatever the micro-batching. Each micro-batch's backward runs on
sum * world_size / global_count: DDP and FSDP average gradients over processes, which the
world_size factor undoes (transformers' `average_tokens_across_devices` does the same). The plan
turns a micro-batch's rows into tensors (`DataPlan.collate`).

Several processes (torchrun, `distributed.py`): the model is wrapped in DDP or sharded with
FSDP2 (`config.distributed`, default ddp); each process collates only its share of a step's
rows, and every process runs the same number of micro-batches (one with no rows left runs the
plan's `empty_batch`, so the collectives line up). Process 0 alone writes metrics, the progress
bar, checkpoints and the final model (sharded tensors are gathered first).

With `bf16_weights` (mixed.py) the model's weights are bfloat16 and the optimizer steps their
float32 masters, writing the rounded values back in the same step; checkpoints and the final
model are saved from the masters. With `master_weights: kahan` there are no masters: the
optimizer steps the bfloat16 weights with Kahan compensation. `optim: adamw_8bit` keeps AdamW's
moments in 8 bits; both run on `compact_adamw.CompactAdamW` (one process only, for now).

Resume is exact: a step's rows are a function of (seed, step) alone (`DataPlan`), and a
checkpoint restores parameters, optimizer, scheduler and RNG, so a run resumed at step k
produces bit for bit the losses an uninterrupted run produces from step k on (same machine,
same thread count).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..kernels import gemm
from .batching import DataPlan, micro_batches
from .checkpoints import checkpoint_state, clean_temporary, latest_checkpoint, load_checkpoint, save_checkpoint
from .compact_adamw import CompactAdamW
from .config import SFTConfig
from .distributed import (
    all_reduce_sum,
    barrier,
    full_tensor,
    meta_skeleton,
    rank_and_world,
    resolve_strategy,
    sync_gradients,
    whole_model,
    wrap,
)
from .losses import CausalLMLoss, LossOutput
from .metrics import METRICS_FILE, MetricsLog, plot_loss
from .mixed import KahanWeights, MasterWeights

CONFIG_FILE = "train_config.json"
# Settings a resumed run may change without changing its losses.
# (`distributed` is compared as the strategy it resolves to, with the number of processes.)
RESUME_FREE = frozenset(
    {"resume", "output", "save_every", "save_limit", "progress", "device", "save_dtype", "distributed"}
)
distributed = rank_and_world  # (rank, world_size), under the trainer's earlier name


class Schedule:
    """Learning-rate multiplier of optimizer step `step`: linear warmup from 0 over `warmup`
    steps, then linear or cosine decay to 0 at `total` (or constant) — transformers'
    `get_linear_schedule_with_warmup` / `get_cosine_schedule_with_warmup` / constant_with_warmup."""

    def __init__(self, kind: str, warmup: int, total: int):
        self.kind, self.warmup, self.total = kind, warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        if self.kind == "constant":
            return 1.0
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        if self.kind == "cosine":
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        return max(0.0, 1.0 - progress)


def build_optimizer(model: nn.Module, config: SFTConfig, params: list | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (or `params`: bf16_weights' float32 masters); biases
    and norm weights (1-D) get no weight decay, as transformers' Trainer groups them. torch's
    fused AdamW by default; `CompactAdamW` for 8-bit moments (`optim: adamw_8bit`) or bfloat16
    weights without masters (`master_weights: kahan`)."""
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: no parameter of the model requires grad")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    hyper = dict(lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon)
    if config.optim == "adamw_8bit" or config.master_weights == "kahan":
        return CompactAdamW(groups, eight_bit=config.optim == "adamw_8bit", **hyper)
    # The fused kernel (one pass over each tensor; transformers' default `adamw_torch_fused`) is
    # ~9x faster than the multi-tensor one on CPU for float32 weights.
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, fused=fused, **hyper)


def check_output(config: SFTConfig) -> None:
    """Refuse to start a fresh run over an earlier one (its metrics and checkpoints would mix)."""
    out = Path(config.output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output: {out} exists and is not a directory")
    earlier = (out / CONFIG_FILE).exists() or (out / METRICS_FILE).exists() or latest_checkpoint(out)
    if earlier and not config.resume:
        raise ConfigError(f"{out}: holds an earlier run; pass --resume to continue it, or choose another --output")


@dataclass
class TrainResult:
    """What a finished run did: per-step losses of this invocation, where things are."""

    steps: int
    losses: list[float] = field(default_factory=list)
    output: Path | None = None
    checkpoint: Path | None = None
    resumed_from: int = 0


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        plan: DataPlan,
        config: SFTConfig,
        pad_id: int,
        loss_fn: Callable[[nn.Module, object], LossOutput] | None = None,
        save_model: Callable[[nn.Module, Path], None] | None = None,
        progress_metrics: tuple[str, ...] = (),
    ):
        self.model = model
        self.plan = plan
        self.config = config
        self.pad_id = pad_id
        self.loss_fn = loss_fn or CausalLMLoss(config.loss_chunk_size)
        self.save_model = save_model
        self.progress_metrics = progress_metrics  # more record keys the progress bar shows
        self.output = Path(config.output)
        self.rank, self.world = rank_and_world()
        if config.batch_size % (config.grad_accum * self.world):
            raise ConfigError(
                f"batch_size ({config.batch_size}) must be a multiple of grad_accum x processes "
                f"({config.grad_accum} x {self.world})"
            )
        if config.optim != "adamw" and self.world > 1:
            raise ConfigError(f"optim {config.optim}: not supported under torchrun yet (use --optim adamw there)")
        self.total_steps = config.max_steps or plan.total_steps(config.epochs)
        self.strategy = resolve_strategy(config.distributed, self.world)
        # FSDP shards the parameters in place; the final model is saved from a plain copy of the tree.
        self._skeleton = meta_skeleton(model) if self.strategy == "fsdp" else None
        self.step_module = wrap(model, self.loss_fn, self.strategy)
        self.mixed = self._mixed_precision()
        self._warn_slow_bf16()
        self.params = (
            self.mixed.masters if self.mixed is not None else [p for p in model.parameters() if p.requires_grad]
        )
        self.optimizer = build_optimizer(model, config, self.params)
        warmup = config.warmup_steps or math.ceil(config.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, Schedule(config.lr_scheduler, warmup, self.total_steps)
        )

    # ---- the run -------------------------------------------------------------------------
    def train(self) -> TrainResult:
        start = self._start()
        result = TrainResult(steps=self.total_steps, output=self.output, resumed_from=start)
        log = MetricsLog(self.output, resume_step=start) if self.rank == 0 else None
        bar = self._progress(start)
        self.model.train()
        began = time.perf_counter()
        try:
            for step in range(start, self.total_steps):
                record = self.step(step)
                record["elapsed_s"] = round(time.perf_counter() - began, 3)
                result.losses.append(record["loss"])
                if log is not None:
                    log.write(record)
                if bar is not None:
                    shown = {k: f"{record[k]:.4g}" for k in self.progress_metrics if record.get(k) is not None}
                    bar.set_postfix(
                        loss=f"{record['loss']:.4f}",
                        lr=f"{record['learning_rate']:.2e}",
                        tok_s=f"{record['tokens_per_s']:,.0f}",
                        **shown,
                        refresh=False,
                    )
                    bar.update(1)
                done = step + 1
                if self.config.save_every and (done % self.config.save_every == 0 or done == self.total_steps):
                    result.checkpoint = self.save(done)
        finally:
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
        self.model.eval()
        if self.save_model is not None:
            model = self.model if self._skeleton is None else whole_model(self.model, self._skeleton, self.rank == 0)
            if self.rank == 0:
                with self._masters():
                    self.save_model(model, self.output)
        if self.rank == 0:
            plot_loss(self.output)
        barrier()  # the output is complete when any process returns
        return result

    def step(self, step: int) -> dict:
        """One optimizer step over the global batch of `step`; its metrics record."""
        t0 = time.perf_counter()
        epoch, rows = self.plan.step_rows(step)
        batches = [
            (self.plan.collate(m, self.pad_id) if m else self._empty_batch(step)).to(self.model.device)
            for m in self._micro_batches(rows)
        ]
        counts = torch.tensor(
            [
                sum(b.loss_items for b in batches),
                sum(b.trained_tokens for b in batches),
                sum(b.tokens for b in batches),
            ],
            dtype=torch.float64,
            device=self.model.device,
        )
        n_items, n_trained, n_tokens = all_reduce_sum(counts).tolist()
        scale = self.world / max(n_items, 1.0)
        sums = {"loss": torch.zeros((), dtype=torch.float64, device=self.model.device)}
        for i, batch in enumerate(batches):
            with sync_gradients(self.step_module, last=i == len(batches) - 1):
                with self._autocast():
                    total, parts = self.step_module(batch)
                (total * scale).backward()
            if self.mixed is not None:
                self.mixed.fold_grads(last=i == len(batches) - 1)
            sums["loss"] += total.detach().double()
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + value.detach().double()
        names = sorted(sums)
        reduced = all_reduce_sum(
            torch.stack([torch.as_tensor(sums[n], dtype=torch.float64, device=self.model.device) for n in names])
        )
        means = {n: float(v) / max(n_items, 1.0) for n, v in zip(names, reduced.tolist())}
        clip = self.config.max_grad_norm if self.config.max_grad_norm > 0 else math.inf
        grad_norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(self.params, clip)))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        if self.mixed is not None:
            self.mixed.write_back()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        _, k = self.plan.locate(step)
        return {
            "step": step + 1,
            "epoch": round(epoch + (k + 1) / self.plan.steps_in_epoch(epoch), 4),
            **means,
            "learning_rate": lr,
            "grad_norm": grad_norm,
            "tokens": int(n_tokens),
            "trained_tokens": int(n_trained),
            "tokens_per_s": round(n_tokens / max(seconds, 1e-9), 1),
        }

    # ---- pieces --------------------------------------------------------------------------
    def _micro_batches(self, rows) -> list:
        """This process's micro-batches of a step, padded with empty ones to the count of the
        process with the most, so every process runs as many forwards and backwards."""
        mine = micro_batches(rows, self.config.grad_accum, self.rank, self.world)
        most = max(len(micro_batches(rows, self.config.grad_accum, r, self.world)) for r in range(self.world))
        return mine + [[]] * (most - len(mine))

    def _empty_batch(self, step: int):
        """The micro-batch a process with no rows left runs: the plan's `empty_batch` (nothing
        trained, but it reaches every parameter and logs the same metrics, so the collectives
        line up); a plan without one is refused with the step that needs it."""
        empty = getattr(self.plan, "empty_batch", None)
        if empty is None:
            raise ConfigError(
                f"step {step + 1} leaves process {self.rank} without a row, which this recipe cannot run "
                f"under torchrun; choose a batch_size the data fills on every process"
            )
        return empty(self.pad_id)

    def _mixed_precision(self) -> MasterWeights | KahanWeights | None:
        """bf16_weights: the model's weights in bfloat16, float32 masters in the optimizer, or
        none with master_weights kahan (mixed.py)."""
        if not self.config.bf16_weights:
            return None
        if self.world > 1:
            raise ConfigError("bf16_weights: not supported under torchrun yet (use --bf16 autocast there)")
        if self.config.master_weights == "kahan":
            return KahanWeights(self.model, accumulate=self.config.grad_accum > 1)
        return MasterWeights(self.model)

    def _masters(self):
        """The float32 masters in the parameters' place (bf16_weights), for saving and loading."""
        return self.mixed.master_view() if self.mixed is not None else contextlib.nullcontext()

    def _warn_slow_bf16(self) -> None:
        """One stderr line when bfloat16 training (bf16 or bf16_weights) is asked for on a CPU whose
        bfloat16 GEMMs are PyTorch's slow loops (no AVX-512 BF16 / AMX: kernels/gemm.py; on an AVX2
        EPYC a [256,1024]x[1024,4608] forward and backward took 38x float32's time)."""
        cfg = self.config
        if (cfg.bf16 or cfg.bf16_weights) and self.model.device.type == "cpu" and not gemm.bf16_gemm_fast():
            flag = "bf16_weights" if cfg.bf16_weights else "bf16"
            print(
                f"lfmkit train: warning: {flag} on a CPU without AVX-512 BF16 or AMX runs bfloat16 matrix "
                "products as slow loops (tens of times float32's time); leave it off on this machine",
                file=sys.stderr,
            )

    def _autocast(self):
        if self.config.bf16:
            return torch.autocast(self.model.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _progress(self, start: int):
        if not self.config.progress or self.rank != 0:
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.total_steps, initial=start, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True
        )

    def _start(self) -> int:
        """The step to start from: 0, or the last complete checkpoint's with --resume."""
        config_file = self.output / CONFIG_FILE
        check_output(self.config)
        barrier()  # every process has looked before process 0 writes
        if self.config.resume:
            if self.rank == 0:
                clean_temporary(self.output)
            barrier()
            path = latest_checkpoint(self.output)
            if path is not None:
                self._check_same_run(checkpoint_state(path), path)
                with self._masters():
                    state = load_checkpoint(path, self.model, self.optimizer, self.scheduler, self.rank)
                return int(state["step"])
        if self.rank == 0:
            self.output.mkdir(parents=True, exist_ok=True)
            config_file.write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        return 0

    def _check_same_run(self, state: dict, path: Path) -> None:
        """Refuse a resume that would not continue the same run: other settings, or another
        number of processes or strategy (each process's RNG and share of the data, and the order
        of the gradient sums, depend on them)."""
        saved, now = state.get("config", {}), self.config.to_dict()
        for key in sorted(set(saved) | set(now)):
            if key not in RESUME_FREE and saved.get(key) != now.get(key):
                raise ConfigError(
                    f"cannot resume from {path}: {key} was {saved.get(key)!r} there, "
                    f"now {now.get(key)!r} (resuming must not change the run)"
                )
        was = (state.get("world_size", 1), state.get("strategy"))
        if was != (self.world, self.strategy):
            raise ConfigError(
                f"cannot resume from {path}: it was saved by {_processes(*was)}, this run has "
                f"{_processes(self.world, self.strategy)}; resume with the same torchrun "
                f"--nproc_per_node and --distributed"
            )

    def save(self, step: int) -> Path | None:
        """Checkpoint `step` (every process takes part; process 0 writes and returns the path)."""
        epoch, _ = self.plan.locate(step - 1)
        state = {"epoch": epoch, "world_size": self.world, "strategy": self.strategy, "config": self.config.to_dict()}
        with self._masters():
            return save_checkpoint(
                self.output,
                step,
                self.model,
                self.optimizer,
                self.scheduler,
                state,
                keep=self.config.save_limit,
                rank=self.rank,
            )


def _processes(world: int, strategy: str | None) -> str:
    """'2 processes (fsdp)', '1 process': how a resume error names a run's layout."""
    return f"{world} process{'es' if world > 1 else ''}" + (f" ({strategy})" if strategy else "")


__all__ = [
    "Trainer",
    "TrainResult",
    "check_output",
    "Schedule",
    "build_optimizer",
    "distributed",
    "all_reduce_sum",
    "RESUME_FREE",
]
