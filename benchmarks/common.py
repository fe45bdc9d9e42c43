"""What every benchmark shares: statistics, memory probes, child processes, jobs on the emulator, tables."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
#: Loopback only: no proxy from the environment may see these calls.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- statistics ----------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.95 is p95)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


# -- memory and CPU of this process --------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Resident set size now."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # pragma: no cover - not Linux


class PeakRss:
    """
    The peak RSS of this process from now on, above the RSS it has now.

    On Linux, writing ``5`` to ``/proc/self/clear_refs`` resets the kernel's high-water mark
    (``VmHWM``) to the current RSS, so the peak is exact; a sampling thread (every 20 ms) backs it up.
    """

    def __init__(self) -> None:
        gc.collect()
        self.baseline = rss_bytes()
        self._exact = False
        with contextlib.suppress(OSError):
            with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
                refs.write("5")
            self._exact = _status_kib("VmHWM") is not None
        self._sampled = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._sampled = max(self._sampled, rss_bytes())

    def stop(self) -> dict[str, float]:
        """Stop sampling; ``peak_mb`` is the absolute peak, ``above_mb`` the peak above the baseline."""
        self._stop.set()
        self._thread.join()
        peak = self._sampled
        if self._exact:
            hwm = _status_kib("VmHWM")
            if hwm is not None:
                peak = max(peak, hwm * 1024)
        return {
            "baseline_mb": self.baseline / MIB,
            "peak_mb": peak / MIB,
            "above_mb": max(0, peak - self.baseline) / MIB,
            "exact": self._exact,
        }


def cpu_seconds() -> float:
    """User plus system CPU seconds of this process (all threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- the machine ---------------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.lower().startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    from importlib.metadata import PackageNotFoundError, version

    def package(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "nproc": str(os.cpu_count()),
        "memory": memory,
        "cpu": cpu_model,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "apache-airflow": package("apache-airflow"),
        "airflow-provider-cerebraform": package("airflow-provider-cerebraform"),
        "apache-airflow-providers-http": package("apache-airflow-providers-http"),
        "httpx": package("httpx"),
        "moto": package("moto"),
        "s3fs": package("s3fs"),
        "load average at start": " ".join(f"{value:.2f}" for value in os.getloadavg()),
    }


# -- child processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM by pid, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait()


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child that must import the benchmarks and the provider."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


class Worker:
    """
    A benchmark child process (``python -m benchmarks.<module>``) spoken to in JSON lines: each
    request is one line on its stdin, each answer one line on a private pipe. Its own stdout and
    stderr (logs) go to a file, so nothing it prints can break the protocol.
    """

    def __init__(self, module: str, log_path: Path, *, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        read_fd, write_fd = os.pipe()
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env or child_env(),
            cwd=str(REPO),
            pass_fds=(write_fd,),
        )
        os.close(write_fd)
        self._answers = os.fdopen(read_fd, "r", encoding="utf-8")

    def receive(self) -> dict[str, Any]:
        line = self._answers.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"benchmark worker {self.process.args} exited with {code}:\n{self.log_tail()}")
        return json.loads(line)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        self.process.stdin.flush()
        answer = self.receive()
        if "error" in answer:
            raise RuntimeError(f"benchmark worker failed: {answer['error']}\n{self.log_tail()}")
        return answer

    def log_tail(self, size: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-size:]
        return ""

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            stop_process(self.process)
        self._answers.close()
        self._log.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            stop_process(self.process)
        self.close()


def serve_requests(handle: Any) -> None:
    """
    The child's side of :class:`Worker`: answer each stdin line with ``handle(message)``.

    The answer pipe's fd is ``sys.argv[1]``; the child's own stdout is pointed at stderr first, so a
    library printing to stdout cannot break the protocol.
    """
    answers = os.fdopen(int(sys.argv[1]), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        try:
            answer = handle(message)
        except Exception as error:  # reported to the parent, which raises it
            import traceback

            traceback.print_exc()
            answer = {"error": f"{type(error).__name__}: {error}"}
        answers.write(json.dumps(answer) + "\n")


@contextlib.contextmanager
def moto_server(log_path: Path) -> Iterator[str]:
    """``python -m moto.server`` on 127.0.0.1, stopped by its pid; yields its URL."""
    port = free_port()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with _OPENER.open(f"{url}/moto-api/", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto server did not start:\n{log_path.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)
        yield url
    finally:
        stop_process(process)


@contextlib.contextmanager
def work_dir(prefix: str) -> Iterator[Path]:
    import shutil

    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- jobs on the emulator ------------------------------------------------------------------------------


def cerebraform_connection(url: str, key: str, tier: str, time_scale: float, **extra: Any) -> str:
    """The JSON of an ``AIRFLOW_CONN_*`` variable for a ``cerebraform`` connection to the emulator."""
    fields = {"tier": tier, "time_scale": time_scale, **extra}
    return json.dumps({"conn_type": "cerebraform", "host": url, "password": key, "extra": fields})


@dataclass(frozen=True)
class JobSpec:
    """One generation to wait for: its emulated duration, kind, key and whether it is meant to fail."""

    seconds: float
    kind: str
    tier: str
    fail: bool = False


@dataclass
class Job:
    request_id: str
    kind: str
    tier: str
    seconds: float
    prompt: str


def submit_jobs(url: str, keys: dict[str, str], specs: Sequence[JobSpec], admin: Any) -> list[Job]:
    """
    Create the jobs straight through HTTP (setup, not measured): jobs of one duration are submitted
    together after setting the emulator's image or video duration to it.
    """
    import requests

    session = requests.Session()
    session.trust_env = False
    jobs: list[Job] = []
    groups: dict[tuple[str, float], list[tuple[int, JobSpec]]] = {}
    for index, spec in enumerate(specs):
        groups.setdefault((spec.kind, spec.seconds), []).append((index, spec))
    for (kind, seconds), members in groups.items():
        admin.configure(**{f"{kind}_seconds": seconds})
        for index, spec in members:
            prompt = f"benchmark job {index} ({kind}, {seconds:g} s)" + (" #cf-fail" if spec.fail else "")
            body: dict[str, Any] = {"prompt": prompt}
            if kind == "video":
                body["duration"] = 5
            response = session.post(
                f"{url}/ai/v1/to-{kind}", json=body, headers={"Authorization": f"Bearer {keys[spec.tier]}"}
            )
            response.raise_for_status()
            jobs.append(Job(response.json()["request_id"], kind, spec.tier, seconds, prompt))
    session.close()
    return jobs


# -- the report ----------------------------------------------------------------------------------------


@dataclass
class Table:
    """A markdown table with a title and notes under it."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"**{self.title}**", ""] if self.title else []
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class Section:
    """What one benchmark reports: its tables, how it measured, and its headline figures."""

    number: int
    title: str
    method: list[str]
    tables: list[Table]
    headlines: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    #: Plain figures for machines (``--json``): what the smoke test checks.
    facts: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        parts = [f"## {self.number}. {self.title}", ""]
        parts += [" ".join(self.method), ""]
        for table in self.tables:
            parts += [table.markdown(), ""]
        if self.headlines:
            parts += ["Headline: " + "; ".join(self.headlines) + ".", ""]
        if self.misses:
            parts += ["Missed targets:", ""] + [f"- {miss}" for miss in self.misses] + [""]
        parts.append(f"_This benchmark took {self.wall_seconds:.0f} s of wall time._")
        return "\n".join(parts)
