"""A run's status: the one vocabulary the writer records (meta.json, summary.json) and every reader,
table and launcher compares against."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """What a run folder says of its run. A str: it is written to JSON as its value and compares
    equal to the text read back."""

    RUNNING = "running"          # written when the run starts (a killed run keeps saying it: STALE)
    COMPLETED = "completed"      # every step done, the final model evaluated
    DIVERGED = "diverged"        # the loss exploded: a result, recorded as one
    INTERRUPTED = "interrupted"  # a signal stopped it after a checkpoint: `train --resume` continues it
    FAILED = "failed"            # an error stopped it; meta.json's `error` says which
    STALE = "stale"              # read, never written: marked running, but its process is gone
    UNKNOWN = "unknown"          # read, never written: no readable status

    def __str__(self) -> str:  # the value, in f-strings too (an Enum's default is `Status.RUNNING`)
        return self.value


# A run that ended as a result: never resumed, never trained again.
FINISHED = (Status.COMPLETED, Status.DIVERGED)
