"""One sweep cell as a submitit job, and what runs inside it (imported only where submitit is
installed: lnexp.experiments.sweep.slurm)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission


class CellJob(Checkpointable):
    """Trains one cell; after a time-out or pre-emption submitit requeues it, and the requeued job
    continues from the run's checkpoint as `lnexp train --resume` does, bit for bit."""

    def __call__(self, config: dict[str, Any], source: str, command: list[str], replace: bool
                 ) -> dict[str, Any]:
        from lnexp.experiments.sweep.pool import run_cell
        from lnexp.report.console import plain_progress
        from lnexp.run.train import Stop

        stop = Stop()
        hand_over = defer_preemption(stop)  # the step ends and the checkpoint is written first
        progress = plain_progress(config["log"].get("print_every"))  # the job's log: a line now and then
        result = run_cell(config, source, command, replace, stop=stop, resume=not replace, progress=progress)
        hand_over()
        return result

    def checkpoint(self, config: dict[str, Any], source: str, command: list[str], replace: bool
                   ) -> DelayedSubmission:
        """What the requeued job runs: this cell again, resuming its folder (never replacing it)."""
        return DelayedSubmission(self, config, source, command, False)


def preemption_signal() -> int:
    """The signal submitit's handler checkpoints and requeues on (SIGUSR2 unless configured)."""
    return submitit.JobEnvironment._usr_sig()


def defer_preemption(stop: Any) -> Callable[[], None]:
    """Route the pre-emption signal to `stop` (the run finishes its step and writes its checkpoint);
    returns a function that then hands the signal to submitit's handler (checkpoint(), requeue), or
    does nothing when no signal came."""
    sig = preemption_signal()
    requeue = signal.getsignal(sig)
    caught: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        caught.append(signum)
        stop.requested = True

    signal.signal(sig, handler)

    def hand_over() -> None:
        signal.signal(sig, requeue)
        if caught and callable(requeue):
            requeue(caught[0], None)  # does not return: the job exits to be requeued

    return hand_over
