"""The provider's metrics reach a StatsD server: a UDP listener on loopback, started here, while a
user's project runs its DAG with ``dag.test()`` and StatsD configured the way a deployment would."""

from __future__ import annotations

import socket
import threading
from collections import defaultdict
from typing import TYPE_CHECKING

from emulator.test_pytest_plugin import SUBPROCESS_TIMEOUT, _user_pytest

if TYPE_CHECKING:
    from pathlib import Path

METRICS_DAG = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_cerebraform.operators.cerebraform import CerebraformGenerateOperator

with DAG("metrics_dag", schedule=None, start_date=datetime(2026, 1, 1)):
    CerebraformGenerateOperator(
        task_id="cat", prompt="a cat", poll_interval=0.2, min_credits=1, output="{{ var.value.out }}"
    )
"""

METRICS_TEST = """
def test_metrics_dag(cerebraform_emulator, cerebraform_airflow, monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_VAR_OUT", (tmp_path / "media").as_uri())
    fault = {"endpoint": "submit", "status": 429, "fail_next": 1, "retry_after": 1}
    cerebraform_emulator.admin.set_faults(fault)
    run = cerebraform_airflow.run_dag("dags/metrics_dag.py")
    assert run.states == {"cat": "success"}, run.states
    (entry,) = run.task("cat").return_value
    print("STORED_BYTES", entry["bytes"])
"""


class StatsdListener:
    """Collects StatsD datagrams (``name:value|type``, several per packet) sent to a loopback port."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.lines.extend(line for line in data.decode().splitlines() if line)

    def __enter__(self) -> StatsdListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def values(self, prefix: str = "airflow.cerebraform.") -> dict[str, list[tuple[float, str]]]:
        found: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for line in self.lines:
            name, _, rest = line.partition(":")
            if name.startswith(prefix):
                value, _, kind = rest.partition("|")
                found[name.removeprefix(prefix)].append((float(value), kind.split("|")[0]))
        return found


@SUBPROCESS_TIMEOUT
def test_a_dag_run_reports_submissions_throttling_waits_balance_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "metrics_dag.py").write_text(METRICS_DAG)
    (tmp_path / "test_metrics_dag.py").write_text(METRICS_TEST)
    with StatsdListener() as statsd:
        env = {
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port),
            "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        }
        done = _user_pytest(tmp_path, "-s", env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    stored = int(done.stdout.split("STORED_BYTES ", 1)[1].split()[0])

    metrics = statsd.values()
    assert metrics["submissions"] == [(1.0, "c")], statsd.lines[-50:]
    assert metrics["rate_limited"] == [(1.0, "c")]
    assert [kind for _, kind in metrics["credits_balance"]] == ["g"] and metrics["credits_balance"][0][0] > 0
    assert sum(value for value, _ in metrics["bytes_stored"]) == stored > 0
    assert metrics["files_stored"] == [(1.0, "c")]
    ((wait_ms, kind),) = metrics["generation_wait_time"]
    assert kind == "ms" and wait_ms > 0
    # The 429 paused the key for its Retry-After: the retried submission waited in the pacer.
    assert metrics["paced_waits"] == [(1.0, "c")]
    assert metrics["paced_wait_time"][0][1] == "ms" and metrics["paced_wait_time"][0][0] > 0
