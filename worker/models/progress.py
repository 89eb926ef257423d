"""How far a running job says it is: the shape a job's progress line becomes.

A job reports progress on its progress descriptor (``SANDRUN_PROGRESS_FD``; the line
protocol is parsed by :mod:`worker.sandbox.progress`). The worker stores the latest
report as the task's ``PROGRESS`` state, which ``JobExecution.progress()``, ``sandrun
status`` and Flower read back. Every field is bounded, since the job wrote it.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from worker.models.limits import FROZEN

#: Longest message kept from a progress line (characters).
MAX_PROGRESS_MESSAGE = 120
#: Largest step count a job may report (an integer JSON and every reader keep exactly).
MAX_PROGRESS_STEPS = 10**12


class Progress(BaseModel):
    """The latest progress a running job reported: a percentage, the step counts it came
    from (when it reported ``done/total``), and a short message."""

    model_config = FROZEN
    percent: float = Field(ge=0, le=100, allow_inf_nan=False)
    done: int | None = Field(default=None, ge=0, le=MAX_PROGRESS_STEPS)
    total: int | None = Field(default=None, ge=1, le=MAX_PROGRESS_STEPS)
    message: str = Field(default="", max_length=MAX_PROGRESS_MESSAGE)

    @model_validator(mode="after")
    def _steps_fit(self) -> Progress:
        """``done`` and ``total`` come together, and ``done`` is at most ``total``."""
        if (self.done is None) != (self.total is None):
            raise ValueError("progress steps need both done and total")
        if self.done is not None and self.total is not None and self.done > self.total:
            raise ValueError(f"progress step {self.done} is past the total {self.total}")
        return self

    def describe(self) -> str:
        """One line for people: ``40% (step 4/10: "training")``."""
        text = f"{self.percent:.0f}%"
        detail = f"step {self.done}/{self.total}" if self.done is not None else ""
        if self.message:
            detail = f"{detail}: {self.message!r}" if detail else repr(self.message)
        return f'{text} ({detail})' if detail else text
