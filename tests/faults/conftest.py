"""
Fixtures of the fault-injection suite.

- ``fault_emulator``: the session emulator, reset, with a distinctive paid key added through the
  control surface and ``cerebraform_default`` pointing at it with that key, short retry backoffs and a
  5 s request timeout. Client pacing starts clean.
- The key scan: every test of this package has its captured stdout, stderr and log records kept; at
  the end of the package they are scanned for the key, together with every file under AIRFLOW_HOME
  (the task logs that ``dag.test()`` writes, the metadata database with its XComs, trigger rows and
  task state store), every file the tests wrote under pytest's temporary folder (media, manifests,
  failure records) and the emulator's own log. One hit fails the package.
- The figures (faults injected, tasks completed, duplicates, partial files, key hits, wall time) are
  printed in the terminal summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from conftest import AIRFLOW_HOME

from .harness import FAULT_KEY, LEDGER

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

    from airflow_provider_cerebraform.emulator import EmulatorAdmin
    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

CONN_ENV = "AIRFLOW_CONN_CEREBRAFORM_DEFAULT"
_CAPTURED: list[tuple[str, str]] = []


@dataclass
class FaultEmulator:
    """What ``fault_emulator`` yields: the emulator handle and the connection it set."""

    handle: EmulatorHandle
    monkeypatch: pytest.MonkeyPatch

    @property
    def admin(self) -> EmulatorAdmin:
        return self.handle.admin

    @property
    def url(self) -> str:
        return self.handle.url

    def connect(self, **extra: Any) -> None:
        """(Re)define ``cerebraform_default``: the fault key, tier paid, the emulator's time scale, extra."""
        fields = {
            "tier": "paid",
            "time_scale": self.handle.time_scale,
            "timeout": 5,
            "retry_limit": 3,
            "retry_backoff": 0.05,
            **extra,
        }
        conn = {"conn_type": "cerebraform", "host": self.url, "password": FAULT_KEY, "extra": fields}
        self.monkeypatch.setenv(CONN_ENV, json.dumps(conn))

    def reset(self, **fields: Any) -> None:
        """Reset the emulator (``fields`` as in ``EmulatorAdmin.reset``) and add the fault key back."""
        self.admin.reset(**fields)
        self.admin.add_key(FAULT_KEY, "paid", 1000)

    def credits(self) -> int:
        """The fault key's balance."""
        return _balance(self.admin)


def _label() -> str:
    from airflow_provider_cerebraform.emulator import key_label

    return key_label(FAULT_KEY)


def _balance(admin: EmulatorAdmin) -> int:
    return int(admin.stats()["credits"][_label()])


@pytest.fixture
def fault_emulator(
    cerebraform_emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultEmulator]:
    cerebraform_emulator.admin.add_key(FAULT_KEY, "paid", 1000)
    emulator = FaultEmulator(cerebraform_emulator, monkeypatch)
    emulator.connect()
    yield emulator


# -- the key scan ---------------------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    text = "\n".join(part for part in (report.capstdout, report.capstderr, report.caplog) if part)
    if text:
        _CAPTURED.append((f"{item.nodeid} ({report.when})", text))


def key_hits(texts: Iterable[tuple[str, str]], key: str = FAULT_KEY) -> list[str]:
    """Where ``key`` occurs: the names of the texts that contain it."""
    return [name for name, text in texts if key in text]


def file_hits(folders: Iterable[Path], key: str = FAULT_KEY) -> tuple[list[str], int]:
    """Files under ``folders`` whose bytes contain ``key`` (binary files too); and how many were read."""
    needle, hits, scanned = key.encode(), [], 0
    for folder in folders:
        if not folder.exists():
            continue
        for path in folder.rglob("*"):
            try:
                if not path.is_file() or path.is_symlink():
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            scanned += 1
            if needle in data:
                hits.append(str(path))
    return hits, scanned


@pytest.fixture(scope="package", autouse=True)
def _no_key_anywhere(
    tmp_path_factory: pytest.TempPathFactory, cerebraform_emulator_process: Any
) -> Iterator[None]:
    """After the whole package: the fault key is nowhere in what the tests made Airflow write or print."""
    _CAPTURED.clear()
    yield
    texts = [*_CAPTURED, ("emulator log", cerebraform_emulator_process.log_text())]
    hits = key_hits(texts)
    found_files, scanned_files = file_hits([AIRFLOW_HOME, tmp_path_factory.getbasetemp()])
    LEDGER.scanned.update({"captured outputs": len(texts), "files": scanned_files})
    LEDGER.key_hits = len(hits) + len(found_files)
    assert not hits and not found_files, f"the API key leaked into: {hits + found_files}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not LEDGER.used:
        return
    terminalreporter.section("cerebraform fault injection")
    for line in LEDGER.lines():
        terminalreporter.write_line(line)
