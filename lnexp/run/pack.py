"""Packed training: cells of one model structure train together, one `torch.func.vmap` over their weights.

A pack is up to N cells whose configs share a structure key (`structure_key`): everything but what
each cell keeps for itself. Each cell is a whole `Trainer` (lnexp.run.train), so it keeps its own leaf
parameters, `torch.optim` optimiser and schedule (Adam and RAdam cells can share a pack), batches
(the same f(seed, rank, step) as alone), probes, divergence check (`RunLog`) and run folder, written
exactly as alone. Only the forward and backward pass are shared: the cells' weights are stacked
(`torch.stack` of the leaves, so the backward pass puts every cell's gradient in its own `.grad`),
and one `vmap(functional_call)` of a weightless template model on the meta device runs every cell's
batch through its own weights. Then each cell reads its probes, clips, steps its optimiser and
schedule (`Trainer.update`), as alone. Validation, `rank`, `output_change` and the noise ablation
take forward passes of their own: each cell runs them on its own model, as alone.

The residual-stream probes (`act`, `sensitivity`) tap the stream where a cell alone does (the
model's `forward(..., tap=)`), but cannot keep the tap's tensors from inside `vmap` (they would be
batched tensors, meaningless outside it). The pack's tap instead makes the forward return them: the
RMS and the norm of the stream entering each block and leaving the last are outputs of the vmapped
function, and ||∂loss/∂x|| comes from a zero tensor the tap adds to the stream there, an input of the vmapped
function whose gradient is ∂loss/∂x. Each cell's values go to its own probes
(`Probes.record_stream`), which read them as their own tap would have.

A diverged cell leaves the pack (its folder says `diverged` at its step); the others go on. Cells
checkpoint one by one in today's format, so any cell resumes alone (`lnexp train --resume`) or in a
pack (`resume_pack`). Packed and alone agree to float tolerance, not bit for bit: batched matmuls
reduce in another order.

The structure key is derived from the config: the whole config without the sections a cell's own
optimiser, schedule and folder read (`optim`, `schedule`, `run`) and its seed, and with the model's
init-only keys (flagged `INIT_ONLY` in lnexp.core.config) replaced by what the init recipe changes in the
forward pass (its boolean flags: embedding scale, padding row). The whole `train` and `log` sections
are in it, so a pack's cells evaluate, log and checkpoint at the same steps. Cells with dropout
(vmap would draw other masks than alone), `train.compile` or several ranks do not pack: they train
as today.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from lnexp.core.config import Config, ModelConfig
from lnexp.core.model import build_model, untapped
from lnexp.core.recipes import RECIPES, InitRecipe
from lnexp.core.status import Status
from lnexp.run.probes import StreamTap, dloss_dx, zero_deltas
from lnexp.run.train import (
    History,
    LiveRun,
    Outcome,
    StepAll,
    StepResult,
    Stop,
    Trainer,
    failure_message,
    new_run,
    reopen_run,
    train_runs,
)

PER_CELL = ("optim", "schedule", "run")  # the sections only a cell's own Trainer and folder read
INIT_ONLY = [k for k, f in ModelConfig.model_fields.items() if (f.json_schema_extra or {}).get("init_only")]
# What an init recipe changes in the forward pass: its boolean flags (embed_scale, padding_row).
RECIPE_FLAGS = [f.name for f in dataclasses.fields(InitRecipe) if f.type in (bool, "bool")]


def structure_key(config: Config) -> str:
    """Cells with equal keys may train in one pack (see the module docstring)."""
    raw = config.to_dict()
    for section in PER_CELL:
        del raw[section]
    del raw["train"]["seed"]
    recipe = RECIPES[config.model.init]
    raw["model"].update({flag: getattr(recipe, flag) for flag in RECIPE_FLAGS})
    for key in INIT_ONLY:
        del raw["model"][key]
    return json.dumps(raw, sort_keys=True)


def unpackable(config: Config) -> str | None:
    """Why a cell cannot train in a pack (None: it can)."""
    if config.model.dropout:
        return "model.dropout: vmap would draw other dropout masks than the cell alone"
    if config.train.compile:
        return "train.compile"
    return None


def packs(configs: list[Config], size: int) -> list[list[int]]:
    """Indices of `configs` in packs of at most `size`, in order of first appearance; a cell that
    cannot pack is a pack of one."""
    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        key = structure_key(config) if size > 1 and unpackable(config) is None else f"alone {i}"
        groups.setdefault(key, []).append(i)
    return [members[i: i + size] for members in groups.values() for i in range(0, len(members), size)]


class Pack:
    """The shared forward and backward pass of a pack's trainers (all of one structure key)."""

    def __init__(self, trainers: list[Trainer]) -> None:
        first = trainers[0]  # each cell's optimiser steps as alone (build_optimizer's path)
        with torch.device("meta"):  # weightless: every parameter comes from the cells
            self.template = build_model(first.config.model, first.data.vocab_size)
        self.names = [name for name, _ in first.model.named_parameters()]
        self.buffers = dict(first.model.named_buffers())  # fixed tables (sinusoids): the same in every cell
        self.kinds = first.probes.kinds
        self.boundaries = len(self.template.residual_blocks()) + 1  # the tap's (entering each, leaving)

    def _forward(self, act: bool, params: dict[str, torch.Tensor], deltas: tuple[torch.Tensor, ...],
                 *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One cell's loss, stream RMS (empty unless `act`) and stream norm (empty without deltas),
        inside vmap."""
        tap = StreamTap(act, deltas)
        _, loss = functional_call(self.template, (params, self.buffers), batch,
                                  {"tap": tap if act or deltas else untapped})
        return loss, *(torch.stack(kept) if kept else loss.new_zeros(0) for kept in (tap.acts, tap.norms))

    def step(self, trainers: list[Trainer], step: int) -> list[StepResult]:
        """One update of every trainer; what `Trainer.step` returns, per trainer."""
        probing = trainers[0].probing(step)
        batch = tuple(torch.stack(parts) for parts in zip(*(t._batch(step) for t in trainers)))
        params = {name: torch.stack(leaves)
                  for name, *leaves in zip(self.names, *(t.params for t in trainers))}
        deltas: tuple[torch.Tensor, ...] = ()
        if probing and "sensitivity" in self.kinds:  # the (decoder's) stream: (cells, batch, positions, d)
            targets = batch[-1]
            deltas = zero_deltas(self.boundaries, (*targets.shape, self.template.cfg.d_model), targets.device)
        # SDPA's fused kernels have no batching rule (vmap would loop over the cells): the math one.
        # Folding the cells into the batch axis to reach the fused kernel was measured slower on a
        # CPU at the tiny and cpu shapes (benchmarks/RESULTS.md).
        with trainers[0]._autocast(), sdpa_kernel(SDPBackend.MATH):
            loss, acts, norms = vmap(partial(self._forward, probing and "act" in self.kinds))(
                params, deltas, *batch)
        for trainer in trainers:
            trainer.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # the cells share no weight: each leaf gets its own cell's gradient
        grad_norms = dloss_dx(deltas, start_dim=1) if deltas else None
        results = []
        for i, trainer in enumerate(trainers):
            if probing:
                sensed = (None, None) if grad_norms is None else (grad_norms[i], norms[i])
                trainer.probes.record_stream(acts[i] if acts.shape[-1] else None, *sensed)
            results.append(trainer.update(step, loss[i], probing))
        return results


def train_pack(configs: list[Config], sources: list[str], commands: list[list[str]],
               force: list[bool] | None = None, stop: Stop | None = None) -> list[Outcome]:
    """Train new runs of one structure key together; one Outcome per config, in order."""
    force = force or [False] * len(configs)
    runs: list[LiveRun] = []
    with _closed_on_failure(runs):
        for config, source, command, replace in zip(configs, sources, commands, force):
            runs.append(LiveRun.of(*new_run(config, source, command, replace), History()))
        step_all = _packed(runs, 0)
    return train_runs(runs, 0, stop, step_all)


def resume_pack(paths: list[Path], command: list[str] | None = None, stop: Stop | None = None
                ) -> list[Outcome]:
    """Resume interrupted runs of one structure key, checkpointed at the same step, together."""
    runs: list[LiveRun] = []
    with _closed_on_failure(runs, Status.INTERRUPTED):  # another's failure to reopen is not theirs
        for path in paths:
            trainer, writer, _, history = reopen_run(path, command)
            runs.append(LiveRun.of(trainer, writer, path, history))
    steps = {run.history.steps_done for run in runs}
    if len(steps) > 1 or len({structure_key(run.trainer.config) for run in runs}) > 1:
        for run in runs:  # as they were: each can still be resumed, alone or in a pack of its own kind
            run.close(Status.INTERRUPTED, {})
        raise ValueError("a pack resumes runs of one structure checkpointed at one step")
    start = steps.pop()
    with _closed_on_failure(runs):
        step_all = _packed(runs, start)
    return train_runs(runs, start, stop, step_all)


@contextmanager
def _closed_on_failure(runs: list[LiveRun], status: Status = Status.FAILED) -> Iterator[None]:
    """While a pack opens: if anything fails, the runs already open are closed, so that no folder is
    left saying it is running: `status` (failed: with why; interrupted: resumable as they were), or
    interrupted on Ctrl-C."""
    try:
        yield
    except KeyboardInterrupt:
        for run in runs:
            run.close(Status.INTERRUPTED, {})
        raise
    except BaseException as exc:
        for run in runs:
            run.close(status, {}, failure_message(exc) if status == Status.FAILED else None)
        raise


def _packed(runs: list[LiveRun], start: int) -> StepAll:
    """The pack's step, once each run's meta.json records that it trains in this pack from `start`
    (`packs`: the step and the cells' folder names): packed and alone differ at float rounding, and
    over many steps such differences grow, so a run's record says how it was trained."""
    cells = [run.path.name for run in runs]
    for run in runs:
        if run.writer:
            packs = run.writer.meta.get("packs", []) + [{"from_step": start, "cells": cells}]
            run.writer.update_meta(packs=packs)
    return Pack([run.trainer for run in runs]).step


# --- is packing faster here? -----------------------------------------------------------------------

AUTO_PACK = 8  # the pack size `reproduce` tries when it decides by measuring
MEASURED_STEPS = 3  # steps timed each way (after one warm-up step)
# Packing must measure this much faster in its steps to pay in a whole reproduction: on 2 CPU cores,
# tiny packs of 8 measuring 1.2-1.3x in their steps made `reproduce all --scale tiny` 4-6% slower
# end to end (a pack is one long unit for one worker; evaluations and probes stay per cell), and 3
# steps' timings vary by about ±10%. A packed run's numbers also differ from alone at rounding level
# (docs/packing.md), worth it only for a clear gain.
PACK_MARGIN = 1.5


def timed_steps(configs: list[Config], packed: bool, steps: int = MEASURED_STEPS) -> float:
    """Seconds per step of every config's model (throwaway trainers, nothing written), after one
    warm-up step: all in one pack, or one after another."""
    from lnexp.data.sources import load_data

    data = load_data(configs[0].data, configs[0].model.arch)
    device = torch.device("cuda" if configs[0].train.device != "cpu" and torch.cuda.is_available() else "cpu")
    with torch.random.fork_rng(devices=[]):
        trainers = [Trainer(c, data, device) for c in configs]
    pack = Pack(trainers) if packed else None
    began = 0.0
    for step in range(steps + 1):
        if step == 1:
            _sync(device)
            began = time.perf_counter()
        if pack:
            pack.step(trainers, step)
        else:
            for trainer in trainers:
                trainer.step(step)
    _sync(device)
    return (time.perf_counter() - began) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def packs_that_pay(configs: list[Config], size: int) -> list[list[int]]:
    """`packs`, except that cells train packed only where packing is measured faster on this machine:
    a unit's cells (throwaway copies, nothing written) take MEASURED_STEPS steps in one pack and one
    after another, side by side in this process, and they pack if that was PACK_MARGIN times faster.
    One measurement serves every unit of the same shape (`_shape`) and size. Cells of fewer than 10 x
    that many steps (the one-step initialisation cells) train alone: measuring would cost more than
    packing could save."""
    decided: dict[tuple, bool] = {}
    units = []
    for unit in packs(configs, size):
        cells = [configs[i] for i in unit]
        if len(unit) > 1 and cells[0].train.steps >= 10 * (MEASURED_STEPS + 1):
            shape = _shape(cells[0], len(unit))
            if shape not in decided:
                packed = timed_steps(cells, packed=True)
                decided[shape] = PACK_MARGIN * packed < timed_steps(cells, packed=False)
            if decided[shape]:
                units.append(unit)
                continue
        units += [[i] for i in unit]
    return units


def _shape(config: Config, cells: int) -> tuple:
    """What a step's speed depends on, packed or not (layouts and optimisers change it little)."""
    m, t = config.model, config.train
    return (m.arch, m.n_layers, m.d_model, m.n_heads, m.d_ff, t.batch_size, t.seq_len, t.device,
            t.precision, cells)
