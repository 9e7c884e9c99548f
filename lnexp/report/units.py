"""The unit of runs' losses on one axis or in one column: each run's own (nats per byte for byte-level
text, nats per token otherwise: lnexp.core.data_sources.loss_unit), or bits per byte (`--unit bpb`),
in which runs of different tokenizers compare. Runs in different units never share an axis unconverted.

Bits per byte needs a run's bytes per token: its meta.json's `bytes_per_token` (validation bytes over
validation tokens, recorded when it started); for a run made before that was recorded, 1 when it is
byte-level, else what its summary's `final_val_bits_per_byte` and `final_val_loss` imply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lnexp.core.data_sources import loss_unit
from lnexp.core.errors import LnexpError
from lnexp.run.reader import Run

NATS, BPB = "nats", "bpb"  # lnexp.cli._options.Unit


def bytes_per_token(run: Run) -> float | None:
    """Validation bytes per token of the run's data; None without text (synthetic tasks, token ids)."""
    recorded = run.meta.get("bytes_per_token")
    if _positive(recorded):
        return float(recorded)
    if "bytes_per_token" in run.meta:  # recorded as null: not text
        return None
    if loss_unit(run.config.get("data", {})) == "byte":
        return 1.0
    bpb, loss = run.summary.get("final_val_bits_per_byte"), run.summary.get("final_val_loss")
    return loss / (bpb * math.log(2)) if _positive(bpb) and _positive(loss) else None


@dataclass(frozen=True)
class LossUnit:
    """`name`: what a loss is in ("nats per token", "bits per byte"); `factors`: by run folder, what
    turns that run's losses (nats per its own unit) into it."""

    name: str
    factors: dict[Path, float]

    def label(self, what: str = "loss") -> str:
        return f"{what} ({self.name})"

    def convert(self, run: Run, value: Any) -> Any:
        """The run's loss `value` in this unit (a value that is not a number stays as it is)."""
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return value * self.factors[run.path] if number else value


def own_units(runs: Sequence[Run]) -> list[str]:
    """Each run's own loss unit: "byte" or "token"."""
    return [loss_unit(run.config.get("data", {})) for run in runs]


def loss_units(runs: Sequence[Run], unit: str = NATS) -> LossUnit:
    """The unit runs' losses share on one axis. LnexpError, in one line, for runs in different units
    without `bpb`, or for `bpb` with a run that has no bytes (not text)."""
    if unit == BPB:
        per_token = [bytes_per_token(run) for run in runs]
        if None in per_token:
            run = runs[per_token.index(None)]
            source = run.config.get("data", {}).get("source")
            raise LnexpError(f"--unit bpb: {run.path} has no bytes to count (data.source {source} is not "
                             "text)")
        return LossUnit("bits per byte", {run.path: 1 / (b * math.log(2)) for run, b in zip(runs, per_token)})
    units = own_units(runs)
    if len(set(units)) > 1:
        per_byte, per_token = (runs[units.index(u)].path for u in ("byte", "token"))
        raise LnexpError(f"{per_byte} is in nats per byte, {per_token} in nats per token: give --unit bpb "
                         "to put them on one axis, in bits per byte")
    return LossUnit(f"nats per {units[0] if units else 'token'}", {run.path: 1.0 for run in runs})


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and value > 0
