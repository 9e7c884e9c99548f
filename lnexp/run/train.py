"""The training loop: build the model, optimiser and schedule from a config, train, write the run.

Step s's metrics describe the model before update s: its training loss, the learning rate update s
uses and, on logging steps, the gradients of that loss (so step 0 is the initialisation profile).
Validation runs before update s every `eval_every` steps, and once more on the final model (step =
train.steps). Losses stay on the device and are read every `log.loss_every` steps in one transfer.

The batch of step s is a pure function of (seed, rank, s), so "where the data was" is the step
number: a run resumed from a checkpoint sees exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import errno
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function

from lnexp import __version__
from lnexp.core import plugins
from lnexp.core.config import Config, ConfigError, dump_yaml, validate
from lnexp.core.model import build_model, untapped
from lnexp.core.probe_kinds import PROBE_KINDS
from lnexp.core.recipes import recipe_meta
from lnexp.core.status import FINISHED, Status
from lnexp.data.sources import Data, bits_per_byte, load_data
from lnexp.data.tokenizers import TOKENIZER_FILE
from lnexp.decode.translate import training_scores
from lnexp.run import sinks
from lnexp.run.folder import RunWriter, check_target, now, stamped
from lnexp.run.hardware import (
    Dist,
    any_rank,
    flops_per_token,
    gather,
    init_distributed,
    memory_available,
    peak_tflops,
)
from lnexp.run.probes import Probes, Reading, radam_rho, split_name
from lnexp.run.reader import RunError, load_run, read_jsonl
from lnexp.run.rows import layer_profile, logged_steps, loss_summary

CHECKPOINT = "checkpoint.pt"
Progress = Callable[[int, int, dict], None]


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


def build_optimizer(model: torch.nn.Module, config: Config, fused: bool = False) -> torch.optim.Optimizer:
    o = config.optim
    named = list(model.named_parameters())
    # Admin's shortcut scales are not weights: decaying them would undo the layout.
    skips = [p for n, p in named if n.endswith("_skip")]
    params = [{"params": [p for n, p in named if not n.endswith("_skip")]}]
    params += [{"params": skips, "weight_decay": 0.0}] if skips else []
    # The foreach path (one call per op for all tensors; torch's default on CUDA only) gives the same
    # bits as the per-tensor loop for SGD, Adam and AdamW (a test checks), and on a CPU a tiny model's
    # step about 6% sooner. RAdam's rounds differently, so RAdam keeps torch's default. On CUDA Adam
    # and AdamW take the fused kernel; torch has no fused RAdam.
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               foreach=True)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}[o.name]
    extra = {} if o.name == "radam" else {"fused": True} if fused else {"foreach": True}
    return cls(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, **extra)


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config) -> torch.optim.lr_scheduler.LambdaLR:
    # One LambdaLR with a closed form: exact at step 0 (SequentialLR has had bugs at milestone 0).
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))


def uses_bf16(config: Config, device: torch.device) -> bool:
    """bf16 autocast: asked for, or `auto` on a GPU."""
    return config.train.precision == "bf16" or (config.train.precision == "auto" and device.type == "cuda")


class Trainer:
    """The model, optimiser, schedule, data and probes of one run; `step()` is one update."""

    def __init__(self, config: Config, data: Data, device: torch.device, dist: Dist = Dist()) -> None:
        self.config, self.data, self.device, self.dist = config, data, device, dist
        t = config.train
        torch.manual_seed(t.seed)
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        cuda = device.type == "cuda"
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.bf16 = uses_bf16(config, device)
        self.model = build_model(config.model, data.vocab_size).to(device)  # probes, checkpoints
        self.batches = torch.Generator()
        if config.model.admin_init == "profile":
            # Admin's profiled init, on this rank's step-0 batch; DDP then broadcasts rank 0's ω.
            self.model.admin_profile_(*self._batch(0)[:-1])
        wrapped = DistributedDataParallel(self.model, device_ids=[device.index] if cuda else None) \
            if dist.world_size > 1 else self.model
        self.forward = torch.compile(wrapped) if t.compile else wrapped  # traced at its first call
        self.optimizer = build_optimizer(self.model, config, fused=cuda)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.probes = Probes(self.model, config.log.probes, self.optimizer)
        self.params = list(self.model.parameters())
        # log.histograms_every: the weights' gradients, histogrammed on the device, kept for the flush
        self.histogram_every = config.log.histograms_every if config.log.tensorboard else None
        weights = [(name, p) for name, p in self.model.named_parameters() if p.ndim >= 2]
        self.histogram_tags = [sinks.probe_tag({"probe": "grad_hist", "layer": layer, "param": param})
                               for layer, param in (split_name(name) for name, _ in weights)]
        self.histogram_weights = [p for _, p in weights]
        self.histograms: list[tuple[int, torch.Tensor]] = []
        val_gen = torch.Generator().manual_seed(t.seed + 1)  # the same val batches at every eval
        self.val_batches = [self._to_device(data.batch("val", t.batch_size, t.seq_len, val_gen))
                            for _ in range(t.eval_batches)]

    def _to_device(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(x.to(self.device, non_blocking=True) for x in batch)

    def _batch(self, step: int) -> tuple[torch.Tensor, ...]:
        """The batch of `step` on this rank: a pure function of (seed, rank, step). It is the model's
        arguments, the targets last: (x, y) for the LM, (src, tgt_in, tgt_out) for seq2seq."""
        t = self.config.train
        self.batches.manual_seed(hash((t.seed, self.dist.rank, step)) & (2**63 - 1))
        return self._to_device(self.data.batch("train", t.batch_size, t.seq_len, self.batches))

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def probing(self, step: int) -> bool:
        """Whether `step` is a logging step of the probes that read the training step itself."""
        return self.probes.enabled and step % self.config.log.grad_every == 0

    def step(self, step: int) -> StepResult:
        """One update. Returns the loss, the probe reading (logging steps) and the pre-clip norm."""
        probing = self.probing(step)
        batch = self._batch(step)
        tap = self.probes.arm(batch[-1]) if probing else untapped  # through DDP and torch.compile
        with self._autocast():
            _, loss = self.forward(*batch, tap=tap)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP the gradients are all-reduced here, so every rank probes the same
        return self.update(step, loss, probing)

    def update(self, step: int, loss: torch.Tensor, probing: bool) -> StepResult:
        """The step after the backward pass (the gradients are in the parameters' .grad): read the
        probes, clip, update, advance the schedule (shared with packed training, lnexp.run.pack)."""
        clip = self.config.optim.clip_grad_norm
        if self.histogram_every and step % self.histogram_every == 0:
            self.histograms.append((step, sinks.grad_histograms([p.grad for p in self.histogram_weights])))
        reading = self.probes.read(step) if probing else None
        if reading and reading.total_on_device is not None and self.dist.world_size > 1:
            reading.ranks = gather(torch.stack([reading.total_on_device, loss.detach().float()]))
        total = None
        if clip is not None:
            total = reading.total_on_device if reading and reading.total_on_device is not None else \
                torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None],
                                              foreach=True)
            torch.nn.utils.clip_grads_with_norm_(self.params, clip, total, foreach=True)
        self.optimizer.step()
        self.scheduler.step()
        if reading:
            self.probes.after_update(reading)
        return loss.detach(), reading, total

    def val_probes(self, step: int) -> list[Reading]:
        """The readings due at `step` of the evaluation probes (lnexp/core/probe_kinds.py), which take
        forward passes of their own on the first validation batch."""
        log = self.config.log
        return [self.probes.evaluate(kind, self.val_batches[0], step, seed=self.config.train.seed, log=log)
                for kind in map(PROBE_KINDS.get, log.probes) if kind.evaluate and kind.due(log, step)]

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        with self._autocast():
            losses = torch.stack([self.model(*batch)[1] for batch in self.val_batches])
        self.model.train()
        return losses.mean().item()

    def checkpoint(self, step: int) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit for bit (weights_only-loadable)."""
        return {
            "step": step,
            "model": self.model.state_dict(),  # the uncompiled, unwrapped module's names
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "data_position": step,
            "config": self.config.to_dict(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load a checkpoint (validated by `checkpoint_problem`)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])


CHECKPOINT_KEYS = {"step": int, "model": dict, "optimizer": dict, "scheduler": dict, "rng": dict,
                   "data_position": int, "config": dict}


def checkpoint_problem(state: Any) -> str | None:
    """What is wrong with a loaded checkpoint's structure (None: nothing). Its config and weights are
    checked when they are used (validate, load_state_dict)."""
    if not isinstance(state, dict):
        return f"not a checkpoint (a {type(state).__name__}, not a mapping)"
    for key, kind in CHECKPOINT_KEYS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            return f"no {key}" if key not in state else f"{key} is not a {kind.__name__}"
    if state["step"] < 0 or not isinstance(state["rng"].get("torch"), torch.Tensor):
        return "step or rng state malformed"
    return None


def save_state(writer: RunWriter, name: str, state: dict[str, Any]) -> None:
    """Temp file + rename: a failed write (disk full) leaves the previous file in place."""
    writer.write_file(name, lambda f: torch.save(state, f))


def failure_message(exc: BaseException) -> str:
    """An error mid-run, in one line; a full disk is said in words (torch's message would not)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"disk full: no space left on the device writing {exc.filename or 'the run folder'}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Outcome:
    status: Status
    summary: dict[str, Any]
    path: Path
    main: bool = True  # False on torchrun ranks other than 0, which write and print nothing


@dataclass
class History:
    """What the run has logged so far (read back from the folder when resuming), and the updates made."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    val_losses: dict[int, float] = field(default_factory=dict)
    wall_before: float = 0.0
    steps_done: int = 0
    scores: dict[int, dict[str, float]] = field(default_factory=dict)  # train.eval_bleu_every's, by step


def prepare(config: Config, source: str) -> tuple[Data, Dist, torch.device]:
    """Everything that can fail on the user's input, before anything is built or written."""
    t = config.train
    if t.threads:
        torch.set_num_threads(t.threads)
    try:
        sinks.check(config)
        data = load_data(config.data, config.model.arch)
        data.check(t.seq_len)
        dist, device = init_distributed(t.device)
        _check_fits(config, data.vocab_size, device)
    except ConfigError as exc:  # named after what set the key: a --set, a base file, the file
        raise ConfigError(config.blame(str(exc), source)) from None
    return data, dist, device


# Values kept for the backward pass per token and layer, in units of d_model: the block's input,
# norms, q, k, v, attention output and projection, residuals, FFN input, dropout masks. A lower
# bound (implementations keep more), so a run that fits is never refused.
ACTIVATION_FACTOR = 12


def _check_fits(config: Config, vocab_size: int, device: torch.device) -> None:
    """Refuse a run whose weights, gradients and Adam moments (16 bytes a parameter), plus the
    activations one training step keeps (ACTIVATION_FACTOR x d_model, 2 x d_ff and the attention
    weights per token and layer, the logits per token) and the validation batches, exceed what the
    device can still give it (on a CPU the smallest of free memory, RLIMIT_AS and the cgroup's
    limit: lnexp.run.hardware.memory_available)."""
    m, t = config.model, config.train
    n_params = m.n_layers * (4 * m.d_model**2 + 2 * m.d_model * m.d_ff) \
        + (vocab_size + m.max_seq_len) * m.d_model
    per_token = m.n_layers * (ACTIVATION_FACTOR * m.d_model + 2 * m.d_ff + m.n_heads * t.seq_len) \
        + 2 * vocab_size
    activations = t.batch_size * t.seq_len * per_token * (2 if uses_bf16(config, device) else 4)
    val_batches = t.eval_batches * t.batch_size * t.seq_len * 8 * 3  # int64 tokens: inputs, targets
    weights, available = 16 * n_params, memory_available(device)
    if available is None:
        return
    room = f"the {available.bytes / 2**30:.1f} GiB of {available.what}"
    if weights > available.bytes:
        raise ConfigError(f"model: {n_params:,} parameters need at least {weights / 2**30:.1f} GiB, "
                          f"more than {room}")
    needed = weights + activations + val_batches
    if needed > available.bytes:
        raise ConfigError(f"train.batch_size: {t.batch_size} sequences of {t.seq_len} tokens need at "
                          f"least {needed / 2**30:.1f} GiB (weights, optimiser and activations), more than "
                          f"{room}")


def run_meta(config: Config, source: str, command: list[str], device: torch.device, data: Data,
             dist: Dist) -> dict[str, Any]:
    return {
        "command": command,
        "config_file": source,
        "seed": config.train.seed,
        "init_recipe": recipe_meta(config.model.init),
        "plugins": plugins.load_all(config.plugins),  # path and sha256 of each (loaded already)
        "versions": {"lnexp": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "threads": torch.get_num_threads(),
        "world_size": dist.world_size,
        "backend": dist.backend,
        "deterministic": config.train.deterministic,
        "host": platform.node(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "data": data.description,
        "vocab_size": data.vocab_size,
        "bytes_per_token": data.bytes_per_token,  # of the validation text (None: not text): bits per byte
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # a pool worker's or a job's GPU
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
          progress: Progress | None = None, stop: Stop | None = None,
          on_ready: Callable[[], None] | None = None) -> Outcome:
    """Train a new run and write its folder. Input faults raise before anything is written; then
    `on_ready` is called (the CLI's warnings: after the one line of an error, never before it).
    `stop` is set by a signal to end the run at the next step (a sweep worker's, maybe already)."""
    trainer, writer, path = new_run(config, source, command, force, on_ready)
    return train_runs([LiveRun.of(trainer, writer, path, History(), progress)], 0, stop)[0]


def new_run(config: Config, source: str, command: list[str] | None = None, force: bool = False,
            on_ready: Callable[[], None] | None = None) -> tuple[Trainer, RunWriter | None, Path]:
    """A new run's trainer and its freshly written folder (`train`'s setup, shared with lnexp.run.pack)."""
    data, dist, device = prepare(config, source)
    name = config.run.name or stamped(Path(source).stem)
    path = Path(config.run.dir) / name
    if dist.main:
        check_target(path, force)
        if on_ready:
            on_ready()
    config = config.model_copy(deep=True)
    config.run.name = name
    trainer = Trainer(config, data, device, dist)
    writer = None
    if dist.main:
        meta = run_meta(config, source, command or sys.argv, device, data, dist)
        meta.update(started=now(), n_params=trainer.model.num_params(non_embedding=False))
        writer = RunWriter(path, dump_yaml(config), meta, force)
        tokenizer = data.tokenizer.to_json()  # a trained tokenizer (bpe, word): decoding needs it
        if tokenizer is not None:
            try:
                writer.write_file(TOKENIZER_FILE, lambda f: f.write(tokenizer.encode()))
            except OSError as exc:
                writer.finish(Status.FAILED, {}, failure_message(exc))
                raise RunError(f"{path}: cannot write {TOKENIZER_FILE} ({exc.strerror})") from None
        try:
            writer.sinks = sinks.Sinks.open(config.to_dict(), path)
        except Exception as exc:  # W&B would not start (no login, no network): no run was made
            writer.close()
            shutil.rmtree(path, ignore_errors=True)
            raise sinks.start_error(exc, lambda fault: config.blame(fault, source)) from None
    return trainer, writer, path


def resume(path: Path, command: list[str] | None = None, progress: Progress | None = None,
           stop: Stop | None = None, trust: Sequence[str | Path] = ()) -> Outcome:
    """Continue an interrupted or failed run from its checkpoint; later lines are rewritten. Refused
    while another process holds the run. `trust`: the `--plugin` files trusted as the plugins its
    config names (lnexp.core.plugins.trusted)."""
    trainer, writer, step, history = reopen_run(path, command, trust)
    return train_runs([LiveRun.of(trainer, writer, path, history, progress)], step, stop)[0]


def reopen_run(path: Path, command: list[str] | None = None, trust: Sequence[str | Path] = ()
               ) -> tuple[Trainer, RunWriter | None, int, History]:
    """An interrupted run's trainer restored from its checkpoint, its folder reopened at the
    checkpoint's step, and what it had logged before (`resume`'s setup, shared with lnexp.run.pack)."""
    run = load_run(path)
    if run.status in FINISHED:
        raise RunError(f"{path}: the run is {run.status}; nothing to resume")
    file = path / CHECKPOINT
    if not file.exists():
        every = run.config.get("train", {}).get("checkpoint_every")
        why = f"it stopped before its first checkpoint, at step {every}" if every else \
            "set train.checkpoint_every to write one"
        raise RunError(f"{path}: no {CHECKPOINT} to resume from ({why})")
    try:
        with warnings.catch_warnings():  # torch warns before refusing a pickle: the one line says it
            warnings.simplefilter("ignore")
            state = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise RunError(f"{file}: unreadable checkpoint ({type(exc).__name__})") from None
    problem = checkpoint_problem(state)
    if problem:
        raise RunError(f"{file}: malformed checkpoint ({problem})")
    needed = plugins.trusted(state["config"].get("plugins", []), run.meta.get("plugins"), trust, path)
    config = validate({**state["config"], "plugins": needed}, source=str(file))
    data, dist, device = prepare(config, str(path / "config.yaml"))
    trainer = Trainer(config, data, device, dist)
    try:
        trainer.restore(state)
    except Exception as exc:  # weights of other shapes, an optimiser state of another model
        raise RunError(f"{file}: malformed checkpoint ({type(exc).__name__}: "
                       f"{str(exc).strip().splitlines()[0][:200]})") from None
    step = state["step"]
    writer = None
    if dist.main:
        writer = RunWriter.reopen(path, keep_before=step)
        resumes = writer.meta.get("resumes", []) + [{"from_step": step, "at": now(),
                                                     "command": command or sys.argv}]
        writer.update_meta(status=Status.RUNNING, resumes=resumes, pid=os.getpid(), host=platform.node())
        try:
            writer.sinks = sinks.Sinks.open(config.to_dict(), path, step)
        except Exception as exc:
            writer.finish(Status.FAILED, {}, failure_message(exc))
            raise sinks.start_error(exc, lambda fault: f"{path}: {fault}") from None
    kept = [r for r in run.metrics if r["step"] < step]
    wall = run.meta.get("wall_time_s")
    history = History(kept, {r["step"]: r["val_loss"] for r in kept if r.get("val_loss") is not None},
                      float(wall) if isinstance(wall, (int, float)) else 0.0, steps_done=step)
    return trainer, writer, step, history


@dataclass
class LiveRun:
    """A run being trained: its trainer, folder and log; its outcome once it has ended."""

    trainer: Trainer
    writer: RunWriter | None
    path: Path
    log: RunLog
    outcome: Outcome | None = None

    @classmethod
    def of(cls, trainer: Trainer, writer: RunWriter | None, path: Path, history: History,
           progress: Progress | None = None) -> LiveRun:
        return cls(trainer, writer, path, RunLog(trainer, writer, progress, history))

    @property
    def history(self) -> History:
        return self.log.history

    def close(self, status: Status, summary: dict[str, Any], error: str | None = None) -> None:
        self.outcome = close_run(self.trainer, self.writer, self.path, self.history, status, summary, error)


# One update of every live run's trainer (`Trainer.step` alone; `Pack.step` for a pack): what
# `Trainer.step` returns, per trainer.
StepResult = tuple[torch.Tensor, Reading | None, torch.Tensor | None]
StepAll = Callable[[list[Trainer], int], list[StepResult]]


def _step_alone(trainers: list[Trainer], step: int) -> list[StepResult]:
    return [trainer.step(step) for trainer in trainers]


def train_runs(runs: list[LiveRun], start: int, stop: Stop | None = None,
               step_all: StepAll = _step_alone) -> list[Outcome]:
    """Train runs from `start` (one alone, or a pack's cells together); every run's folder is closed
    however the loop ends: as its log says, or interrupted (a second signal) or failed (an error)."""
    live = list(runs)
    try:
        with _stop_on_signals(stop) as stop:
            _loop(live, start, stop, step_all)
    except KeyboardInterrupt:  # a second signal: stopped at once, without a checkpoint of this point
        for run in live:
            run.close(Status.INTERRUPTED, {})
        raise
    except BaseException as exc:  # SystemExit too (a plugin's, a progress callback's)
        for run in live:
            run.close(Status.FAILED, {}, failure_message(exc))
        raise
    return [run.outcome for run in runs]


def close_run(trainer: Trainer, writer: RunWriter | None, path: Path, history: History, status: Status,
              summary: dict[str, Any], error: str | None = None) -> Outcome:
    """Write a run's end: a finished run's final weights (model.pt, replacing the checkpoint), then its
    status and summary, whatever happened."""
    try:
        if writer and status in FINISHED:
            save_state(writer, "model.pt", trainer.model.state_dict())
            writer.remove(CHECKPOINT)  # model.pt holds the final weights; a finished run is not resumed
    except Exception as exc:
        status, error = Status.FAILED, failure_message(exc)
        raise
    finally:
        if writer:
            summary = summary or _summarise(history, None, history.steps_done, None)
            writer.finish(status, summary, error)
    return Outcome(status, {"status": status, **summary}, path, main=writer is not None)


class Stop:
    """Set by a signal: finish the current step, checkpoint, stop."""

    requested = False


@contextmanager
def on_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """SIGINT and SIGTERM go to `handler` inside the block (only the main thread can catch them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def _stop_on_signals(stop: Stop | None = None) -> Iterator[Stop]:
    """Ctrl-C or SIGTERM: finish the current step, checkpoint, stop. A second one stops at once."""
    stop = stop or Stop()

    def handler(signum: int, frame: Any) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True

    with on_signals(handler):
        yield stop


class RunLog:
    """One run's pending losses and readings, read in one transfer per flush and written as lines,
    and its divergence check (one per run in `_loop`, alone or in a pack)."""

    def __init__(self, trainer: Trainer, writer: RunWriter | None, progress: Progress | None,
                 history: History) -> None:
        self.trainer, self.writer, self.progress, self.history = trainer, writer, progress, history
        config = trainer.config
        t = config.train
        self.threshold = config.diverge_threshold(trainer.data.vocab_size)
        self.tokens_per_step = t.batch_size * t.seq_len * trainer.dist.world_size
        self.flops = flops_per_token(trainer.model.num_params(), config.model.n_layers, config.model.d_model,
                                     t.seq_len)
        self.peak = peak_tflops(trainer.device, t.peak_tflops)
        self.pending: list[tuple[int, torch.Tensor, Reading | None, torch.Tensor | None]] = []
        self.extra: list[Reading] = []  # readings taken outside a training step (Trainer.val_probes)
        self.diverged_step: int | None = None
        self.began = self.last_flush = time.perf_counter()

    @record_function("lnexp:flush")
    def flush(self, through: int) -> None:
        """Read pending losses and readings in one transfer, write their lines; a loss past the
        threshold sets `diverged_step` (and ends the lines there)."""
        pending, extra, writer, history = self.pending, self.extra, self.writer, self.history
        histograms = self.trainer.histograms
        if not (pending or extra):
            return
        config, dist = self.trainer.config, self.trainer.dist
        readings = [r for _, _, r, _ in pending if r] + extra
        clips = [n for *_, n in pending if n is not None]
        tensors = [loss for _, loss, _, _ in pending] + clips + [r.values() for r in readings] + \
            [h for _, h in histograms]
        host = torch.cat([x.float().flatten() for x in tensors]).tolist()  # the one transfer
        losses, clip_norms = host[: len(pending)], iter(host[len(pending): len(pending) + len(clips)])
        offset, values = len(pending) + len(clips), {}
        for r in readings:
            values[id(r)], offset = host[offset: offset + len(r.keys)], offset + len(r.keys)
        for step, h in histograms:
            width, block = h.shape[1], h.numel()
            if writer and writer.sinks:
                flat = host[offset: offset + block]
                writer.sinks.add_histograms(step, self.trainer.histogram_tags,
                                            [flat[i: i + width] for i in range(0, block, width)])
            offset += block
        histograms.clear()
        elapsed = time.perf_counter() - self.last_flush
        self.last_flush = time.perf_counter()
        speed = len(pending) * self.tokens_per_step / max(elapsed, 1e-9)
        rows = []
        for r in extra:
            if writer:
                writer.probes(r.rows(values[id(r)]))
        for (step, _, reading, norm), loss in zip(pending, losses):
            row = {"step": step, "lr": config.optim.lr * lr_factor(config, step), "loss": loss,
                   "val_loss": history.val_losses.get(step), "tokens_per_s": speed,
                   "grad_norm_total": reading.grad_norm_total(values[id(reading)]) if reading else None}
            row.update(history.scores.get(step, {}))
            if config.optim.name == "radam":
                row["radam_rho"] = radam_rho(step, config.optim.betas[1])
            if reading and reading.ranks:
                row["ranks"] = {"grad_norm_total": [r[0] for r in reading.ranks],
                                "loss": [r[1] for r in reading.ranks]}
            if self.peak:
                row["mfu"] = speed / dist.world_size * self.flops / (self.peak * 1e12)
            if norm is not None:
                clip_norm = next(clip_norms)
                row.update(grad_norm_total=clip_norm, clipped=clip_norm > config.optim.clip_grad_norm)
            rows.append(row)
            if writer and reading:
                writer.probes(reading.rows(values[id(reading)]))
            if not math.isfinite(loss) or loss > self.threshold:
                self.diverged_step = step
                break
        if writer:
            writer.metrics(rows)
        history.rows.extend(rows)
        pending.clear()
        extra.clear()
        if rows and through + 1 < config.train.steps:  # the last step's report waits for the final eval
            self.report(through + 1)

    def report(self, done: int) -> None:
        """Progress after `done` steps: the last row's numbers with the latest validation loss."""
        history = self.history
        if self.progress is None or not history.rows:
            return
        latest = history.val_losses[max(history.val_losses)] if history.val_losses else None
        last = next((r for r in reversed(history.rows) if r.get("loss") is not None), history.rows[-1])
        self.progress(done, self.trainer.config.train.steps, {**last, "val_loss": latest})

    def finish(self, start: int, halted: bool) -> tuple[str, dict[str, Any]]:
        """The run's status and summary once its loop has ended (`halted`: stopped before the last
        step); an interrupted run checkpoints, a completed one evaluates its final model."""
        trainer, writer, history = self.trainer, self.writer, self.history
        t, steps_done = trainer.config.train, history.steps_done
        if self.diverged_step is None and halted:  # interrupted (here or on another rank): keep the state
            if writer:
                save_state(writer, CHECKPOINT, trainer.checkpoint(steps_done))
            status = Status.INTERRUPTED
        elif self.diverged_step is None:
            status = Status.COMPLETED
            if trainer.dist.main:
                final_val = history.val_losses[t.steps] = trainer.evaluate()
                row = {"step": t.steps, "lr": None, "loss": None, "val_loss": final_val,
                       "tokens_per_s": None, "grad_norm_total": None}
                if t.eval_bleu_every:
                    history.scores[t.steps] = training_scores(trainer.model, trainer.data, t.seq_len)
                    row.update(history.scores[t.steps])
                if writer:
                    writer.metrics([row])
                history.rows.append(row)
        else:
            status = Status.DIVERGED
        segment = time.perf_counter() - self.began
        summary = _summarise(history, self.diverged_step, steps_done,
                             (steps_done - start) * self.tokens_per_step / segment)
        summary["wall_time_s"] = round(history.wall_before + segment, 3)
        if writer:
            probes = read_jsonl(writer.path / "probes.jsonl")
            summary.update(collapse_report(probes, trainer.data.unigram_entropy(), summary["final_val_loss"],
                                           history.rows))
        summary.update(final_measures(summary["final_val_loss"], trainer.data, history))
        if status != Status.INTERRUPTED:  # an interrupted run's flush has reported its last step
            self.report(steps_done)  # the last line: with the final validation loss, as in the summary
        return status, summary


def _loop(live: list[LiveRun], start: int, stop: Stop, step_all: StepAll) -> None:
    """Steps, evaluations, checkpoints and flushes of one run, or of a pack's runs in step (they share
    `train` and `log`). Each run keeps its own log; a run leaves `live` as it ends (a diverged one at
    once, the others at the end), its folder closed."""
    first = live[0].trainer
    t, dist, device = first.config.train, first.dist, first.device
    for run in live:  # the runs' clocks (wall time, tokens/s) start with the loop, not at their opening
        run.log.began = run.log.last_flush = time.perf_counter()

    def end(run: LiveRun, halted: bool) -> None:
        status, summary = run.log.finish(start, halted)
        live.remove(run)  # first: if closing fails, close_run has written the failure itself
        run.close(status, summary)

    def flush(through: int) -> bool:
        """Flush every run's log; True to stop: every run diverged, or a stop requested, on any
        rank. The ranks agree before a diverged run ends (closing it writes files, which may fail)."""
        for run in live:
            run.log.flush(through)
        diverged = [run for run in live if run.log.diverged_step is not None]
        halt = any_rank(len(diverged) == len(live) or stop.requested, dist, device)
        for run in diverged:
            end(run, halted=False)
        return halt

    halted = False
    for step in range(start, t.steps):
        # 1. checkpoint (after the steps before it are flushed: a diverged run writes none)
        if step > start and t.checkpoint_every and step % t.checkpoint_every == 0:
            if halted := flush(step - 1):
                break
            for run in live:
                if run.writer:
                    save_state(run.writer, CHECKPOINT, run.trainer.checkpoint(step))
        # 2. evaluate on the validation batches (and score translations), on the main rank
        if step % t.eval_every == 0:
            if halted := flush(step - 1):
                break
            if dist.main:
                for run in live:
                    run.history.val_losses[step] = run.trainer.evaluate()
        if t.eval_bleu_every and step % t.eval_bleu_every == 0 and dist.main:
            for run in live:
                run.history.scores[step] = training_scores(run.trainer.model, run.trainer.data, t.seq_len)
        # 3. the probes that take forward passes of their own on the validation batch
        if dist.main:
            for run in live:
                run.log.extra += run.trainer.val_probes(step)
        # 4. the training step; its loss and readings stay on the device until the flush
        for run, result in zip(live, step_all([run.trainer for run in live], step)):
            run.log.pending.append((step, *result))
            run.history.steps_done = step + 1
        # 5. flush every loss_every steps (under torchrun every rank reaches the same flushes and
        #    agrees there on stopping; alone, a stop request flushes at once)
        due = len(live[0].log.pending) >= first.config.log.loss_every or \
            (stop.requested and dist.world_size == 1)
        if due and (halted := flush(step)):
            break
    if not halted and live:
        halted = flush(live[0].history.steps_done - 1)
    for run in list(live):
        end(run, halted)


def final_measures(final_val_loss: float | None, data: Data, history: History) -> dict[str, Any]:
    """The final validation loss in bits per byte (text only: comparable across tokenizers), and the
    last translation scores (train.eval_bleu_every) as final_bleu, final_chrf, final_exact_match."""
    bpb = bits_per_byte(final_val_loss, data)
    last = history.scores[max(history.scores)] if history.scores else {}
    return {**({"final_val_bits_per_byte": bpb} if bpb is not None else {}),
            **{f"final_{key}": value for key, value in last.items()}}


COLLAPSE_MARGIN = 0.05  # nats: a model this close to the unigram entropy (either side) uses no context
DEAD_LAYER_RATIO = 1e-3  # a layer whose gradient fell below this fraction of its initial value
TOO_EARLY = "too early"  # summary.json's `collapsed` for a model still learning when the run ended


def collapse_report(probes: list[dict[str, Any]], unigram_entropy: float, final_val_loss: float | None,
                    rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The collapse detector: a validation loss within COLLAPSE_MARGIN of the corpus's unigram
    entropy (a model far above it, e.g. untrained, has not collapsed: it has not learnt even the
    unigram), and the layers whose gradient norm (all their weights) has fallen below 1e-3 of its
    value at the first log.

    Every model that learns passes through the unigram entropy on its way down (the quickstart
    model at about step 30 of 200), so a run that ends there while its loss is still falling is
    "too early" to judge, not collapsed. Still falling: the mean training loss of the last quarter of
    the steps is more than COLLAPSE_MARGIN below the quarter's before (measured on the stdlib corpus:
    0.25-0.3 nats for the quickstart model crossing the band, under 0.015 for runs on a plateau)."""
    steps = logged_steps(probes, "grad")
    first, last = (layer_profile(probes, "grad", "all", s) for s in (steps[0], steps[-1])) if steps \
        else ([], [])
    collapsed: bool | str = final_val_loss is not None and \
        abs(final_val_loss - unigram_entropy) <= COLLAPSE_MARGIN
    if collapsed and still_falling(rows):
        collapsed = TOO_EARLY
    return {"unigram_entropy": unigram_entropy, "collapsed": collapsed,
            "dead_layers": sum(b < DEAD_LAYER_RATIO * a for a, b in zip(first, last))}


def still_falling(rows: list[dict[str, Any]]) -> bool:
    """Whether the training loss fell by more than COLLAPSE_MARGIN from the third quarter of the
    steps to the last (too few steps to say: True, the run is too short to judge)."""
    losses = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None and math.isfinite(r["loss"])]
    if not losses:
        return True
    end = losses[-1][0] + 1
    third = [loss for step, loss in losses if end / 2 <= step < 3 * end / 4]
    fourth = [loss for step, loss in losses if step >= 3 * end / 4]
    if not third or not fourth:
        return True
    return sum(third) / len(third) - sum(fourth) / len(fourth) > COLLAPSE_MARGIN


def _summarise(history: History, diverged_step: int | None, steps_done: int, speed: float) -> dict[str, Any]:
    return {
        "steps_done": steps_done,
        "diverged_step": diverged_step,
        # the loss is read every log.loss_every steps (no host sync per step): updates made from the
        # diverged loss on, which model.pt includes
        **({"updates_past_divergence": steps_done - diverged_step} if diverged_step is not None else {}),
        **loss_summary(history.rows),
        "tokens_per_s": speed,
    }
