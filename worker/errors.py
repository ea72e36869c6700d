"""Exception types a job fails with. They travel as JSON (``exc_type`` + ``exc_message``).

Tasks list these in ``throws=`` so a bad request fails once, cleanly, with no retry and no
traceback noise, and the worker goes on to the next job.
"""

from __future__ import annotations


class JobError(Exception):
    """Base class for errors that fail one job and never the worker."""


class InvalidInput(JobError, ValueError):
    """A request field is missing, has the wrong type, or holds a value the job refuses.

    ``args`` is ``(field, problem)`` so Celery can rebuild it from the stored JSON.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.field = field
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


class InputTooLarge(InvalidInput):
    """A payload, text, file or audio duration exceeds a configured limit."""


class PathOutsideRoot(InvalidInput):
    """A path argument resolves outside ``MLWORKER_INPUT_ROOT``."""


class UnreadableInput(InvalidInput):
    """A file exists but cannot be decoded (corrupt, empty, wrong format)."""


class InsufficientMemory(JobError):
    """Even the lightweight configuration does not fit in the memory available."""
