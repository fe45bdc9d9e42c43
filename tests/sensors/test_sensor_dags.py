"""
CerebraformTaskSensor through ``dag.test()`` in its three ways of waiting (deferred, which is the default;
``deferrable=False`` in poke mode; in reschedule mode), each on its own emulated job, with the same
outcomes: done, failed (-1) and timed out.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

import pytest
from cerebraform_dagtest import DagOutcome, run_dag

from airflow_provider_cerebraform.version_compat import AIRFLOW_V_3_3_PLUS

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

pytestmark = pytest.mark.usefixtures("airflow_db")

MODES = ("deferred", "poke", "reschedule")
FAIL_MESSAGE = "upstream model crashed (sensor test)"


def run_sensors(
    emulator: EmulatorHandle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    job_seconds: float,
    prompt: str,
) -> DagOutcome:
    # An image job lasts job_seconds real seconds (the emulator runs time_scale times faster).
    emulator.admin.configure(image_seconds=job_seconds * emulator.time_scale)
    return run_dag("cerebraform_test_sensors", tmp_path / "records", monkeypatch, prompt=prompt)


@contextlib.contextmanager
def jobs_done_after_first_poll(emulator: EmulatorHandle) -> Iterator[None]:
    """
    Finish each emulated job once its sensor has polled it (and seen it running), whatever the time:
    a job of a fixed length can end before a slow-starting sensor's first poll on a loaded machine.
    """
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            for task in emulator.admin.stats()["tasks"]:
                if task["polls"] >= 1 and task["status"] in (0, 1):
                    emulator.admin.complete_task(task["request_id"])

    watcher = threading.Thread(target=watch, name="complete-after-first-poll", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(timeout=10)


def polls_by_request(emulator: EmulatorHandle) -> dict[str, int]:
    return {task["request_id"]: task["polls"] for task in emulator.admin.stats()["tasks"]}


def test_done_returns_the_status_in_every_mode(
    cerebraform_emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with jobs_done_after_first_poll(cerebraform_emulator):
        run = run_sensors(
            cerebraform_emulator, tmp_path, monkeypatch, job_seconds=3600.0, prompt="a quiet harbour"
        )
    assert run.state == "success", run.failures
    polls = polls_by_request(cerebraform_emulator)
    for mode in MODES:
        request_id = run.task(f"submit_{mode}").return_value
        sensor = run.task(f"sensor_{mode}")
        assert sensor.state == "success" and sensor.try_number == 1
        assert sensor.return_value == {
            "request_id": request_id,
            "kind": "image",
            "message": "Task completed.",
            "status": "done",  # the trigger event's value, in every mode
            "task_status": 2,
        }
        # It really waited: the job was still running at the first poll.
        assert polls[request_id] >= 2, (mode, polls[request_id])
    assert run.task("sensor_reschedule").reschedules >= 1
    assert run.task("sensor_poke").reschedules == 0
    assert run.task("sensor_deferred").reschedules == 0
    stats = cerebraform_emulator.admin.stats()
    assert stats["submissions"]["total"] == 3
    assert stats["rate_limited"] == {}


def test_failed_job_fails_every_mode_with_the_api_message_and_no_retry(
    cerebraform_emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_sensors(
        cerebraform_emulator,
        tmp_path,
        monkeypatch,
        job_seconds=1.0,
        prompt=f"a harbour #cf-fail:{FAIL_MESSAGE}",
    )
    assert run.state == "failed"
    for mode in MODES:
        request_id = run.task(f"submit_{mode}").return_value
        sensor = run.task(f"sensor_{mode}")
        assert sensor.state == "failed"
        assert sensor.try_number == 1, f"{mode}: a failed job must not be retried (retries=1)"
        (failure,) = run.failures_of(f"sensor_{mode}")
        assert failure["type"] == "CerebraformTaskFailedError", failure
        assert "AirflowFailException" in failure["mro"]
        assert FAIL_MESSAGE in failure["message"] and request_id in failure["message"]
    assert cerebraform_emulator.admin.stats()["submissions"]["total"] == 3


def test_a_job_that_never_finishes_times_the_sensor_out_in_every_mode(
    cerebraform_emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_sensors(
        cerebraform_emulator, tmp_path, monkeypatch, job_seconds=3600.0, prompt="a slow harbour"
    )
    assert run.state == "failed"
    for mode in MODES:
        sensor = run.task(f"sensor_{mode}")
        assert sensor.state == "failed" and sensor.try_number == 1, mode
        (failure,) = run.failures_of(f"sensor_{mode}")
        assert failure["type"] == "AirflowSensorTimeout", failure
    (deferred,) = run.failures_of("sensor_deferred")
    assert "not done by the deadline" in deferred["message"]  # the trigger's own deadline fired
    assert run.task("sensor_reschedule").reschedules >= 1
    # The jobs are still queued or running: the sensors stopped waiting, the jobs did not end.
    assert [task["status"] in (0, 1) for task in cerebraform_emulator.admin.stats()["tasks"]] == [True] * 3


def test_the_error_budget_ends_the_wait_in_poke_and_reschedule_mode(
    cerebraform_emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Every status poll answers 503 and the client does not retry (retry_limit=0): with
    max_consecutive_errors=2 each sensor fails on its third poll with the server error, in
    reschedule mode too, where each poke is a new task run (the count lives in the task state store).
    """
    emulator = cerebraform_emulator
    monkeypatch.setenv("AIRFLOW_CONN_CEREBRAFORM_DEFAULT", emulator.connection_json(retry_limit=0))
    emulator.admin.configure(image_seconds=3600.0)
    from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook

    request_id = CerebraformHook().submit("image", "a harbour that never finishes")
    emulator.admin.set_faults({"endpoint": "status", "error_rate": 1.0, "status": 503})
    run = run_dag(
        "cerebraform_test_sensor_error_budget", tmp_path / "records", monkeypatch, request_id=request_id
    )
    assert run.state == "failed"
    (failure,) = run.failures_of("sensor_poke")
    assert failure["type"] == "CerebraformServerError", failure
    assert "503" in failure["message"]
    (failure,) = run.failures_of("sensor_reschedule")
    if not AIRFLOW_V_3_3_PLUS:
        # Before 3.3 there is no task_state_store: in reschedule mode the count lives within one poke
        # (the sensor warns; docs/installing.md), so the errors never add up and the timeout ends it.
        assert failure["type"] == "AirflowSensorTimeout", failure
        return
    assert failure["type"] == "CerebraformServerError", failure
    assert "503" in failure["message"]
    assert run.task("sensor_reschedule").reschedules == 2  # two tolerated errors, one reschedule each
    assert emulator.admin.task(request_id)["polls"] == 0  # every poll was refused by the fault
