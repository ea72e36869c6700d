"""The echo family's request model."""

from __future__ import annotations

from pydantic import Field

from worker.validation import RequestModel


class EchoRequest(RequestModel):
    """The kwargs of ``tests.echo`` / ``tests.echo_plain``."""

    text: str = Field(min_length=1)
    #: seconds the handler sleeps per call (lets a test see requests grouped)
    delay_s: float = Field(0.0, ge=0, le=5)
