"""Which Redis the CLI talks to: the configured URL, a running ``mlworker up``, or a new one.

The embedded server of ``mlworker up`` keeps everything in ``state_dir`` (0700): its data
directory ``redis/`` (the AOF the next start replays), the password made at the first start
(``redis.password``, 0600) and, while a session runs, the marker with its URL (0600) that
every other ``mlworker`` command on the machine reads. One session at a time owns it (a
lock file), so two servers never write one AOF.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

from config import Settings
from worker.redis_server import (
    CONFIG_FILE,
    EmbeddedRedis,
    free_port,
    port_is_free,
    stop_leftover_server,
    write_private,
)

URL_ENV = "MLWORKER_REDIS_URL"
MARKER_FILE = "embedded-redis.json"
PASSWORD_FILE = "redis.password"
LOCK_FILE = "embedded-redis.lock"
DATA_DIR = "redis"


@dataclass(frozen=True)
class Broker:
    """The broker of one CLI session; ``server`` is set when this session started it, and
    ``requeued`` counts the unacked messages of a dead session it put back on their queues."""

    url: str
    server: EmbeddedRedis | None = None
    requeued: int = 0


def _marker(settings: Settings) -> Path:
    return settings.state_dir / MARKER_FILE


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


def private_state_dir(settings: Settings) -> Path:
    """``state_dir``, created 0700, or tightened to 0700 when it is ours and not a shared
    sticky directory such as /tmp (the files in it are 0600 either way)."""
    path = settings.state_dir
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid == os.geteuid() and not info.st_mode & stat.S_ISVTX:
        os.chmod(path, 0o700)
    return path


def embedded_password(state_dir: Path) -> str:
    """The embedded Redis password: made at the first start, reused by every later one.

    A file that others could read (or an empty one) is replaced by a new password.
    """
    path = state_dir / PASSWORD_FILE
    with contextlib.suppress(FileNotFoundError):
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW)) as existing:
            info = os.fstat(existing.fileno())
            password = existing.read().strip()
        if password and info.st_uid == os.geteuid() and not info.st_mode & 0o077:
            return password
        path.unlink()
    password = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


@contextlib.contextmanager
def _session_lock(state_dir: Path) -> Iterator[None]:
    """Own the embedded Redis of ``state_dir`` for this process's lifetime (released by the
    kernel however the process ends), or exit naming the session that owns it."""
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = ""
            with contextlib.suppress(OSError, ValueError, KeyError):
                owner = f" (pid {json.loads((state_dir / MARKER_FILE).read_text())['pid']})"
            raise SystemExit(
                f"another mlworker session{owner} runs the embedded Redis of {state_dir}: "
                f"stop it, or join it (commands find it by themselves)"
            ) from None
        yield
    finally:
        os.close(fd)


def _previous_port(data_dir: Path) -> int:
    """The last server's port when it is free, so that a worker or app that kept the URL
    reconnects after a restart; else a new free port."""
    with contextlib.suppress(OSError):
        found = re.search(r"^port (\d+)$", (data_dir / CONFIG_FILE).read_text(), re.M)
        if found and port_is_free(int(found[1])):
            return int(found[1])
    return free_port()


def start_embedded(settings: Settings, state_dir: Path) -> EmbeddedRedis:
    """The ``mlworker up`` server: persistent, password, dangerous commands renamed away.

    The caller must own the session lock: any server still running on the data directory
    is a leftover of a dead session and is stopped first (it flushes its AOF on SIGTERM).
    """
    data_dir = state_dir / DATA_DIR
    stop_leftover_server(data_dir)
    server = EmbeddedRedis(
        data_dir,
        _previous_port(data_dir),
        persistence=True,
        password=embedded_password(state_dir),
        restrict_commands=True,
        appendfsync=settings.embedded_redis_fsync,
    )
    try:
        return server.start()
    except RuntimeError:  # the old port was taken between the check and the bind
        server.port = free_port()
        return server.start()


def requeue_unacked(url: str) -> int:
    """Put back on their queues the messages that a dead session's workers had fetched but
    not acked, now rather than after the visibility timeout; how many were left.

    Only for a server this session just started: no worker of ours can hold them then.
    """
    from kombu.connection import Connection
    from kombu.transport.redis import Channel

    client = redis.Redis.from_url(url)
    try:
        left = int(client.hlen(Channel.unacked_key))  # our app keeps kombu's key names
    finally:
        client.close()
    if left:
        with Connection(url, transport_options={"visibility_timeout": 0}) as conn:
            conn.default_channel.qos.restore_visible(num=None)
    return left


@contextlib.contextmanager
def broker_for_session(settings: Settings) -> Iterator[Broker]:
    """The session's broker, starting the embedded redis-server when none is configured.

    The URL is exported as ``MLWORKER_REDIS_URL`` so that child processes (workers, Flower)
    use it; an embedded server is stopped when the block exits.
    """
    configured = settings.broker_url()
    if configured:
        yield Broker(configured)
        return
    state_dir = private_state_dir(settings)
    with _session_lock(state_dir):
        server = start_embedded(settings, state_dir)
        marker = _marker(settings)
        try:
            write_private(marker, json.dumps({"url": server.url, "pid": os.getpid()}))
            os.environ[URL_ENV] = server.url
            yield Broker(server.url, server, requeue_unacked(server.url))
        finally:
            marker.unlink(missing_ok=True)
            server.stop()
