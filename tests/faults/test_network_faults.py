"""
Network and server faults through the real operators (``dag.test()``) against the emulator: status
polls that time out or answer 5xx, submissions whose fate is unknown, media downloads that break.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import requests

from .harness import (
    LEDGER,
    media_files,
    partial_files,
    record_emulator,
    run_dag,
    sha256,
    submissions_by_prompt,
    wait_for,
)

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import FaultEmulator

pytestmark = pytest.mark.usefixtures("airflow_db")


def test_status_5xx_bursts_and_timeouts_do_not_end_the_wait(
    fault_emulator: FaultEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Fault: on status polls, two answers 1 s late (the connection's ``timeout`` is 0.5 s) and then a
    burst of five 503s, armed before the generate operator (its trigger polls with the async client),
    again before a poke-mode sensor (blocking client), and again before a deferrable sensor (one
    blocking look, then its trigger).

    Expected: the client retries the poll (timeouts and 5xx of a GET are safe to repeat), the trigger
    and the sensor tolerate what is left after the client's retries, and both waits complete with the
    task done: every task succeeds, every armed fault fired, each prompt was submitted once.
    """
    fault_emulator.connect(timeout=0.5)
    run = run_dag("cerebraform_fault_status_polls", tmp_path / "records", monkeypatch)

    assert run.state == "success", run.failures
    assert run.task("generate").state == "success"
    assert len(run.task("generate").return_value) == 1  # the URLs of the finished task
    for sensor in ("sensor_poke", "sensor_deferred"):
        sensed = run.task(sensor).return_value
        assert sensed["status"] == "done" and sensed["request_id"] == run.task("submit").return_value
    stats = record_emulator(fault_emulator.admin)
    # Each arm's 503s all fired; its two late answers came first, on the same requests.
    assert stats["faults_injected"] == {"status:error": 15}
    assert [rule["latency_next"] for rule in fault_emulator.admin.faults()] == [0, None]
    LEDGER.faults_injected["status:latency"] += 6
    assert set(submissions_by_prompt(fault_emulator.admin).values()) == {1}
    # Polls that failed were repeated until an answer came: 15 faulted requests, then real answers.
    assert stats["requests"]["status"] >= 15 + 3


def test_submit_5xx_after_commit_and_read_timeout_never_pay_twice(
    fault_emulator: FaultEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Fault: the submit POST is answered 503 after the service created and charged the task; then the
    next submit POST is answered after 1 s, past the connection's 0.5 s timeout (the task is created
    all the same). Both submit tasks have ``retries=1``.

    Expected: no blind resubmission, neither by the client nor by an Airflow retry: each task fails
    at its first try with ``CerebraformSubmissionUncertainError`` and its message saying the task may
    have been created and charged and was not retried; the emulator holds exactly one submission per
    prompt and charged exactly once for each.
    """
    fault_emulator.connect(timeout=0.5)
    run = run_dag("cerebraform_fault_submit", tmp_path / "records", monkeypatch)

    assert run.state == "failed"
    for task_id, detail in (("submit_5xx", "HTTP 503"), ("submit_timeout", "timeout error")):
        assert run.task(task_id).state == "failed"
        failure = run.failure(task_id)  # one try only: the retry was not spent
        assert failure["type"] == "CerebraformSubmissionUncertainError", failure
        assert detail in failure["message"]
        assert "may have been created and charged" in failure["message"]
        assert "not retried, because a second submission could pay twice" in failure["message"]
        LEDGER.tasks_failed_as_expected += 1
    # The late answer's task is created when the emulator wakes up, after the client gave up.
    prompts = wait_for(
        lambda: (
            len(submissions_by_prompt(fault_emulator.admin)) == 2
            and submissions_by_prompt(fault_emulator.admin)
        )
    )
    assert prompts == {"submit faults: a 5xx after commit": 1, "submit faults: a read timeout": 1}
    stats = record_emulator(fault_emulator.admin)
    assert stats["requests"]["submit"] == 2
    assert stats["faults_injected"] == {"submit:error": 1}
    LEDGER.faults_injected["submit:latency"] += 1
    assert fault_emulator.credits() == 1000 - 2


def emulator_media(url: str) -> bytes:
    session = requests.Session()
    session.trust_env = False
    response = session.get(url, timeout=10)
    response.raise_for_status()
    return response.content


def test_media_reset_and_truncation_are_retried_complete_or_absent(
    fault_emulator: FaultEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Fault: media served as 3 MB PNGs; the first download of one task is cut by a TCP reset halfway
    through the body, the first download of the next is truncated (full Content-Length, half the
    body, then the connection closes), and every download of a third task is reset.

    Expected: the two cut downloads are retried and their files are complete (bytes and sha256 equal
    the emulator's media, manifest agrees); the third task fails with a clear
    ``CerebraformMediaError`` after the connection's retries and leaves no media file behind; no
    ``.partial`` file is left anywhere.
    """
    size = 3 * 1024 * 1024
    fault_emulator.admin.configure(media_bytes=size)
    output = tmp_path / "out"
    run = run_dag("cerebraform_fault_media", tmp_path / "records", monkeypatch, output=f"file://{output}")

    assert run.state == "failed"  # always_reset fails on purpose
    stats = record_emulator(fault_emulator.admin)
    assert stats["faults_injected"] == {"media:reset": 1 + 4, "media:truncate": 1}
    media = {task["prompt"]: task["media_fetches"] for task in stats["tasks"]}
    assert media == {
        "media faults: a reset download": 2,
        "media faults: a truncated download": 2,
        "media faults: a download that always breaks": 4,
    }
    fault_emulator.admin.clear_faults()  # to read the emulator's media directly below
    for task_id in ("reset_once", "truncated_once"):
        assert run.task(task_id).state == "success", run.failures
        (entry,) = run.task(task_id).return_value
        stored = output / task_id
        (path,) = media_files(stored)
        data = path.read_bytes()
        assert str(path) == entry["path"].removeprefix("file://")
        assert len(data) == entry["bytes"] == size
        assert sha256(data) == entry["sha256"] == sha256(emulator_media(entry["source_url"]))
        LEDGER.files_verified += 1
    broken = run.failure("always_reset")
    assert broken["type"] == "CerebraformMediaError", broken
    assert "failed 4 times" in broken["message"]
    assert media_files(output / "always_reset") == []
    LEDGER.tasks_failed_as_expected += 1
    assert partial_files(output) == []
