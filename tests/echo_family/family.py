"""The echo family's declaration."""

from __future__ import annotations

from tests.echo_family.options import EchoRequest
from worker.family import BatchSpec, FamilySpec, ModelSpec, TaskSpec

FAMILY = FamilySpec(
    name="echo",
    queue="echo",
    tasks=(
        TaskSpec(
            name="tests.echo",
            handler="tests.echo_family.task:Echo",
            request=EchoRequest,
            time_limit_s=lambda s: 60,
            batch=BatchSpec(size=lambda s: 8, flush_interval_s=lambda s: 1.0),
        ),
        TaskSpec(
            name="tests.echo_plain",
            handler="tests.echo_family.task:Echo",
            request=EchoRequest,
            time_limit_s=lambda s: 60,
        ),
    ),
    models=(ModelSpec("echo-model", "tests.echo_family.task:load_model"),),
    lightweight="only the first 4 characters are echoed",
    client={"echo": "tests.echo_family.task:echo"},
)
