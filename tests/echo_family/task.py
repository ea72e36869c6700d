"""The echo family's handler, model loader and client helper."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from config import Settings
from tests.echo_family.options import EchoRequest
from worker.handler import Outcome, Produced, RunContext, RunMode
from worker.registry import Loaded, registry

if TYPE_CHECKING:
    from worker.client import Job, MLClient

LIGHT_CHARS = 4


def load_model(settings: Settings) -> Loaded:
    return Loaded(model=None, model_id=f"echo-{os.getpid()}", backend="python")


class Echo:
    """Handler: reverse each text, in one call per group."""

    def parse(self, kwargs: dict[str, Any], settings: Settings) -> EchoRequest:
        return EchoRequest.parse(kwargs)

    def run(
        self, items: Sequence[EchoRequest], mode: RunMode, context: RunContext
    ) -> list[Outcome]:
        registry.get("echo-model")
        time.sleep(max((item.delay_s for item in items), default=0.0))
        out: list[Outcome] = []
        for item in items:
            text = item.text[:LIGHT_CHARS] if mode.lightweight else item.text
            out.append(Produced({"echo": text[::-1], "group": len(items)}, "echo-model", mode))
        return out


def echo(client: MLClient, text: str, *, job_id: str | None = None, **options: Any) -> Job:
    return client.send(EchoRequest.parse({"text": text, **options}), job_id=job_id)
