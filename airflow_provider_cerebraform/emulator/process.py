"""Run the emulator as a subprocess, stopped by its pid: what tests, benchmarks and the demo use."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

from .admin import EmulatorAdmin

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .config import EmulatorConfig

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class EmulatorProcess:
    """``python -m airflow_provider_cerebraform.emulator`` in a child process.

    :param args: extra command-line flags (they override ``config``), e.g. ``["--time-scale", "50"]``.
    :param config: a full configuration, passed with ``--config``; its ``port`` is used (0 by default).
    :param python: interpreter (default: ``sys.executable``).
    :param startup_timeout: seconds to wait for readiness.
    :param env: environment of the child (default: this process's).
    :param log_path: file receiving the child's stdout and stderr (default: a temp file).
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        config: EmulatorConfig | None = None,
        *,
        python: str | None = None,
        startup_timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
        log_path: str | None = None,
    ) -> None:
        self.args = list(args)
        self.config = config
        self.python = python or sys.executable
        self.startup_timeout = startup_timeout
        self.env = env
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: str | None = None
        self._url: str | None = None

    def command(self, ready_file: str, config_file: str | None) -> list[str]:
        """Return the command line.

        :param ready_file: where the child writes its URL.
        :param config_file: JSON config file, if any.
        """
        port = self.config.port if self.config is not None else 0
        command = [self.python, "-m", "airflow_provider_cerebraform.emulator", "--port", str(port)]
        if config_file:
            command += ["--config", config_file]
        return [*command, "--ready-file", ready_file, *self.args]

    def start(self) -> EmulatorProcess:
        """Start the child and wait until it listens; return ``self``."""
        if self._proc is not None:
            return self
        self._tmpdir = tempfile.mkdtemp(prefix="cerebraform-emulator-")
        ready_file = os.path.join(self._tmpdir, "ready")
        config_file = None
        if self.config is not None:
            config_file = os.path.join(self._tmpdir, "config.json")
            with open(config_file, "w", encoding="utf-8") as handle:
                json.dump(self.config.to_dict(), handle)
        if self.log_path is None:
            self.log_path = os.path.join(self._tmpdir, "emulator.log")
        env = dict(os.environ if self.env is None else self.env)
        # The child must import this very package, wherever the caller runs from.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(ready_file, config_file),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if os.path.exists(ready_file):
                with open(ready_file, encoding="utf-8") as handle:
                    url = handle.read().strip()
                if url:
                    self._url = url
                    return self
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise RuntimeError(f"the emulator exited with status {code}:\n{self.log_text()[-4000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the emulator did not start within {self.startup_timeout} s")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT``."""
        if self._url is None:
            raise RuntimeError("the emulator process is not started")
        return self._url

    @property
    def pid(self) -> int:
        """The child's process id."""
        if self._proc is None:
            raise RuntimeError("the emulator process is not running")
        return self._proc.pid

    @property
    def admin(self) -> EmulatorAdmin:
        """An :class:`EmulatorAdmin` for the child."""
        return EmulatorAdmin(self.url)

    def is_running(self) -> bool:
        """Return whether the child is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Return what the child printed so far."""
        if self.log_path is None or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def stop(self, timeout: float = 10.0) -> int | None:
        """Send SIGTERM to the child's pid, wait, SIGKILL it if it lingers; return its exit status.

        :param timeout: seconds to wait after SIGTERM.
        """
        proc, self._proc = self._proc, None
        code: int | None = None
        crashed = False
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    code = proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, getattr(signal, "SIGKILL", signal.SIGTERM))
                    code = proc.wait()
            else:
                code = proc.returncode
                crashed = code != 0
        if self._tmpdir is not None and not crashed:
            # A crashed child's directory (and log) is kept for inspection.
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        return code

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
