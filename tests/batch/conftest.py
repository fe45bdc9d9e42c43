"""
Fixtures of the batch tests: the session emulator reset to a chosen time scale, ``cerebraform_default``
pointing at it with a paid key, and helpers that run the batch DAGs and read back what they wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from cerebraform_dagtest import run_dag as run_test_dag

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from cerebraform_dagtest import DagOutcome

    from airflow_provider_cerebraform.emulator import EmulatorAdmin
    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

BATCH_KEY = "cfk-batch-tests-3f9a61c2"
DAG_FILE = "test_dags/cerebraform_batch_dags.py"
RECORD_DIR_ENV = "CEREBRAFORM_BATCH_RECORD_DIR"
CONN_ENV = "AIRFLOW_CONN_CEREBRAFORM_DEFAULT"


@dataclass
class BatchEmulator:
    handle: EmulatorHandle
    monkeypatch: pytest.MonkeyPatch
    time_scale: float = 40.0

    @property
    def admin(self) -> EmulatorAdmin:
        return self.handle.admin

    def reset(self, time_scale: float = 40.0, credits: int = 1000, **config: Any) -> None:
        """Reset the emulator (time scale, config), add the batch key, point the connection at it."""
        self.time_scale = time_scale
        self.admin.reset(time_scale=time_scale, **config)
        self.admin.add_key(BATCH_KEY, "paid", credits)
        self.connect()

    def connect(self, **extra: Any) -> None:
        fields = {
            "tier": "paid",
            "time_scale": self.time_scale,
            "timeout": 5,
            "retry_limit": 3,
            "retry_backoff": 0.02,
            **extra,
        }
        conn = {"conn_type": "cerebraform", "host": self.handle.url, "password": BATCH_KEY, "extra": fields}
        self.monkeypatch.setenv(CONN_ENV, json.dumps(conn))

    def submissions(self) -> int:
        return len(self.admin.tasks())

    def duplicates(self) -> int:
        counts: dict[str, int] = {}
        for task in self.admin.tasks():
            counts[task["prompt"]] = counts.get(task["prompt"], 0) + 1
        return sum(count - 1 for count in counts.values() if count > 1)


@pytest.fixture
def batch_emulator(
    cerebraform_emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BatchEmulator]:
    emulator = BatchEmulator(cerebraform_emulator, monkeypatch)
    emulator.reset()
    yield emulator


def run_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dag_id: str = "cerebraform_batch", **conf: Any
) -> DagOutcome:
    """One ``dag.test()`` of a batch DAG with ``conf``."""
    return run_test_dag(
        dag_id, tmp_path / "records", monkeypatch, dag_file=DAG_FILE, record_env=RECORD_DIR_ENV, **conf
    )


def results(output: Path) -> list[dict[str, Any]]:
    """The rows of ``results.jsonl``."""
    text = (output / "_cerebraform" / "results.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def partial_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.endswith(".partial")] if folder.exists() else []
