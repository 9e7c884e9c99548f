"""The training loop: build the model, optimiser and schedule from a config, train, write the run.

Step s's metrics describe the model before update s: its training loss, the learning rate update s
uses and, on logging steps, the gradients of that loss (so step 0 is the initialisation profile).
Validation runs before update s every `eval_every` steps, and once more on the final model (step =
train.steps). Losses stay on the device and are read every `log.loss_every` steps in one transfer.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lnexp import __version__
from lnexp.config import Config, ConfigError, dump_yaml
from lnexp.data import Data, load_data
from lnexp.model import TransformerLM
from lnexp.probes import Probes, Reading
from lnexp.runs import RunWriter, check_target, now, write_json


def lr_factor(config: Config, step: int) -> float:
    """Multiplier of optim.lr at `step`: linear warm-up from 1/w (never 0), then the decay."""
    w, total = config.schedule.warmup_steps, config.train.steps
    floor = min(1.0, config.schedule.min_lr / config.optim.lr)
    if step < w:
        return (step + 1) / w
    decay = config.schedule.decay
    if decay == "constant":
        return 1.0
    if decay == "inverse_sqrt":  # fairseq's: lr * sqrt(w / (step + 1)) after warm-up
        return max(floor, math.sqrt(max(w, 1) / (step + 1)))
    progress = min(1.0, (step - w) / max(1, total - w))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
    return floor + (1 - floor) * shape


def build_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    o = config.optim
    params = model.parameters()
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}[o.name]
    return cls(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config) -> torch.optim.lr_scheduler.LambdaLR:
    # One LambdaLR with a closed form: exact at step 0 (SequentialLR has had bugs at milestone 0).
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


class Trainer:
    """The model, optimiser, schedule, data and probes of one run; `step()` is one update."""

    def __init__(self, config: Config, data: Data, device: torch.device) -> None:
        self.config, self.data, self.device = config, data, device
        t = config.train
        torch.manual_seed(t.seed)
        self.model = TransformerLM(config.model, data.vocab_size).to(device)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.probes = Probes(self.model, config.log.probes)
        self.params = list(self.model.parameters())
        self.batches = torch.Generator().manual_seed(t.seed)
        val_gen = torch.Generator().manual_seed(t.seed + 1)  # the same val batches at every eval
        self.val_batches = [self._to_device(data.batch("val", t.batch_size, t.seq_len, val_gen))
                            for _ in range(t.eval_batches)]

    def _to_device(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(x.to(self.device, non_blocking=True) for x in batch)

    def step(self, step: int) -> tuple[torch.Tensor, Reading | None, torch.Tensor | None]:
        """One update. Returns the loss, the probe reading (logging steps) and the pre-clip norm."""
        t, clip = self.config.train, self.config.optim.clip_grad_norm
        probing = self.probes.enabled and step % self.config.log.grad_every == 0
        x, y = self._to_device(self.data.batch("train", t.batch_size, t.seq_len, self.batches))
        if probing:
            self.probes.arm()
        _, loss = self.model(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        reading = self.probes.read(step) if probing else None
        total = None
        if clip is not None:
            total = reading.total_on_device if reading and reading.total_on_device is not None else \
                torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None],
                                              foreach=True)
            torch.nn.utils.clip_grads_with_norm_(self.params, clip, total, foreach=True)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), reading, total

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        losses = torch.stack([self.model(x, y)[1] for x, y in self.val_batches])
        self.model.train()
        return losses.mean().item()


@dataclass
class Outcome:
    status: str
    summary: dict[str, Any]
    path: Path


def run_meta(config: Config, source: str, command: list[str], device: torch.device, data: Data
             ) -> dict[str, Any]:
    return {
        "command": command,
        "config_file": source,
        "seed": config.train.seed,
        "versions": {"lnexp": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "data": data.description,
        "pid": os.getpid(),
    }


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def train(config: Config, source: str, command: list[str] | None = None, force: bool = False,
          progress: Any = None) -> Outcome:
    """Train one run and write its folder. Input faults raise before anything is written."""
    t = config.train
    if t.threads:
        torch.set_num_threads(t.threads)
    try:
        data = load_data(config.data)
        data.check(t.seq_len)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    device = resolve_device(t.device)
    name = config.run.name or f"{Path(source).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(config.run.dir) / name
    check_target(path, force)
    config = config.model_copy(deep=True)
    config.run.name = name
    trainer = Trainer(config, data, device)
    meta = run_meta(config, source, command or sys.argv, device, data)
    meta.update(started=now(), n_params=trainer.model.num_params(non_embedding=False))
    writer = RunWriter(path, dump_yaml(config), meta, force)
    status, summary = "failed", {}
    try:
        status, summary = _loop(trainer, writer, progress)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception as exc:
        writer.update_meta(error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        summary = {"status": status, **summary}
        if status != "failed":
            torch.save(trainer.model.state_dict(), path / "model.pt")
        write_json(path / "summary.json", summary)
        writer.update_meta(status=status, ended=now(), wall_time_s=summary.get("wall_time_s"))
        writer.close()
    return Outcome(status, summary, path)


def _loop(trainer: Trainer, writer: RunWriter, progress: Any) -> tuple[str, dict[str, Any]]:
    config = trainer.config
    t, log = config.train, config.log
    threshold = config.diverge_threshold(trainer.data.vocab_size)
    tokens_per_step = t.batch_size * t.seq_len
    pending: list[tuple[int, torch.Tensor, Reading | None, torch.Tensor | None]] = []
    history: list[dict[str, Any]] = []
    val_losses: dict[int, float] = {}
    diverged_step: int | None = None
    start = last_flush = time.perf_counter()
    steps_done = 0

    def flush(through: int) -> None:
        """Read the pending losses in one transfer, write their lines, check for divergence."""
        nonlocal last_flush, diverged_step
        if not pending:
            return
        tensors = [loss for _, loss, _, _ in pending] + [n for *_, n in pending if n is not None]
        host = torch.stack(tensors).float().tolist()  # the one transfer for these steps
        losses, clip_norms = host[: len(pending)], iter(host[len(pending):])
        elapsed = time.perf_counter() - last_flush
        last_flush = time.perf_counter()
        speed = len(pending) * tokens_per_step / max(elapsed, 1e-9)
        rows = []
        for (step, _, reading, norm), loss in zip(pending, losses):
            row = {"step": step, "lr": config.optim.lr * lr_factor(config, step), "loss": loss,
                   "val_loss": val_losses.get(step), "tokens_per_s": speed,
                   "grad_norm_total": reading.grad_norm_total if reading else None}
            if norm is not None:
                clip_norm = next(clip_norms)
                row.update(grad_norm_total=clip_norm, clipped=clip_norm > config.optim.clip_grad_norm)
            rows.append(row)
            if reading:
                writer.probes(reading.rows)
            if not math.isfinite(loss) or loss > threshold:
                diverged_step = step
                break
        writer.metrics(rows)
        history.extend(rows)
        pending.clear()
        if progress is not None:
            progress(through + 1, t.steps, rows[-1])

    for step in range(t.steps):
        if step % t.eval_every == 0:
            flush(step - 1)
            if diverged_step is not None:
                break
            val_losses[step] = trainer.evaluate()
        loss, reading, norm = trainer.step(step)
        pending.append((step, loss, reading, norm))
        steps_done = step + 1
        if len(pending) >= log.loss_every:
            flush(step)
        if diverged_step is not None:
            break
    flush(steps_done - 1)
    if diverged_step is None:
        final_val = trainer.evaluate()
        val_losses[t.steps] = final_val
        row = {"step": t.steps, "lr": None, "loss": None, "val_loss": final_val,
               "tokens_per_s": None, "grad_norm_total": None}
        writer.metrics([row])
        history.append(row)
    wall = time.perf_counter() - start
    status = "diverged" if diverged_step is not None else "completed"
    return status, _summarise(history, val_losses, diverged_step, steps_done, tokens_per_step, wall)


def _summarise(history: list[dict[str, Any]], val_losses: dict[int, float], diverged_step: int | None,
               steps_done: int, tokens_per_step: int, wall: float) -> dict[str, Any]:
    train_losses = [r["loss"] for r in history if r["loss"] is not None and math.isfinite(r["loss"])]
    finite_val = {s: v for s, v in val_losses.items() if math.isfinite(v)}
    best_val_step = min(finite_val, key=finite_val.get) if finite_val else None
    tail = train_losses[-10:]
    init_norm = next((r["grad_norm_total"] for r in history if r["step"] == 0), None)
    return {
        "steps_done": steps_done,
        "diverged_step": diverged_step,
        "final_train_loss": sum(tail) / len(tail) if tail else None,
        "best_train_loss": min(train_losses) if train_losses else None,
        "final_val_loss": val_losses[max(val_losses)] if val_losses else None,
        "best_val_loss": finite_val.get(best_val_step),
        "best_val_step": best_val_step,
        "grad_norm_total_init": init_norm,
        "tokens_per_s": steps_done * tokens_per_step / max(wall, 1e-9),
        "wall_time_s": round(wall, 3),
    }
