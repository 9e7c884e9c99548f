"""One sweep cell as a submitit job (imported only where submitit is installed: lnexp.experiments.slurm)."""

from __future__ import annotations

from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission


class CellJob(Checkpointable):
    """Trains one cell; after a time-out or pre-emption submitit requeues it, and the requeued job
    continues from the run's checkpoint as `lnexp train --resume` does, bit for bit."""

    def __call__(self, config: dict[str, Any], source: str, command: list[str], replace: bool
                 ) -> dict[str, Any]:
        from lnexp.experiments.slurm import defer_preemption
        from lnexp.experiments.sweep import run_cell
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
