"""Which Redis the CLI talks to: the configured URL, a running ``mlworker up``, or a new one."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import redis

from config import Settings
from worker.redis_server import EmbeddedRedis

URL_ENV = "MLWORKER_REDIS_URL"


def _marker(settings: Settings) -> Path:
    return settings.state_dir / "embedded-redis.json"


def running_embedded_url(settings: Settings) -> str | None:
    """The URL of an embedded Redis started by a live ``mlworker up``, if it answers."""
    marker = _marker(settings)
    try:
        info = json.loads(marker.read_text())
        if not psutil.pid_exists(int(info["pid"])):
            return None
        redis.Redis.from_url(info["url"], socket_connect_timeout=1).ping()
        return str(info["url"])
    except (OSError, ValueError, KeyError, redis.RedisError):
        return None


def resolve_url(settings: Settings) -> str | None:
    return settings.broker_url() or running_embedded_url(settings)


def require_broker() -> str:
    """The broker URL for a command that joins an existing stack, exported for Celery."""
    import typer

    from config import get_settings

    url = resolve_url(get_settings())
    if not url:
        typer.echo(
            f"no broker: set {URL_ENV} or start the local stack with `mlworker up`", err=True
        )
        raise typer.Exit(2)
    os.environ[URL_ENV] = url
    get_settings.cache_clear()
    return url


@contextlib.contextmanager
def broker_for_session(settings: Settings) -> Iterator[str]:
    """Yield a broker URL, starting a private redis-server when none is configured.

    The URL is exported as ``MLWORKER_REDIS_URL`` so that child processes (workers, Flower)
    use it; an embedded server is stopped when the block exits.
    """
    configured = settings.broker_url()
    if configured:
        yield configured
        return
    server = EmbeddedRedis(settings.state_dir / "redis").start()
    marker = _marker(settings)
    marker.write_text(json.dumps({"url": server.url, "pid": os.getpid()}))
    os.environ[URL_ENV] = server.url
    try:
        yield server.url
    finally:
        marker.unlink(missing_ok=True)
        server.stop()
