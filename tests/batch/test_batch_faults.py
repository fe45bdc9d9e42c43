"""
Faults during a batch, injected by the emulator (``docs/faults.md``): for each, what the results file
says, 0 duplicate submissions (the emulator's tasks per prompt) and 0 partial files.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from conftest import DAGS_FOLDER
from faults.harness import rerun_tasks

from .conftest import DAG_FILE, RECORD_DIR_ENV, partial_files, results, run_batch

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import BatchEmulator

pytestmark = pytest.mark.usefixtures("airflow_db")


def by_status(output: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in results(output):
        found.setdefault(line["status"], []).append(line["id"])
    return found


def test_poll_faults_a_lost_submit_answer_and_truncated_media(
    batch_emulator: BatchEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Faults: the 3rd submit POST creates and charges its task, then answers 503 (``after_commit``);
    status polls answer 503 five times and time out twice; two media downloads are truncated.
    Expected: the lost answer's row is ``uncertain`` (not paid again), every other row ``stored``
    with complete files; with ``max_failed=1`` the task succeeds. A re-run submits nothing.
    """
    admin = batch_emulator.admin
    batch_emulator.connect(timeout=0.5)
    admin.set_faults(
        {"endpoint": "submit", "fail_next": 1, "after_commit": True, "status": 503},
        {"endpoint": "status", "fail_next": 5, "status": 503},
        {"endpoint": "status", "latency": 1.0, "latency_next": 2},
        {"endpoint": "media", "truncate_next": 2},
    )
    prompts = [f"faulty batch {n}" for n in range(8)]
    output = tmp_path / "out"

    first = run_batch(tmp_path, monkeypatch, prompts=prompts, output=f"file://{output}", max_failed=1)

    assert first.task("batch").state == "success", first.failures
    statuses = by_status(output)
    assert len(statuses["stored"]) == 7 and len(statuses["uncertain"]) == 1, statuses
    (uncertain,) = [line for line in results(output) if line["status"] == "uncertain"]
    assert "may have been created and charged" in uncertain["error"]
    assert batch_emulator.submissions() == 8 and batch_emulator.duplicates() == 0
    assert admin.stats()["faults_injected"], "the faults fired"
    assert not partial_files(output)
    for line in results(output):
        for stored in line["files"]:
            assert os.path.getsize(stored["path"].removeprefix("file://")) == stored["bytes"]

    admin.clear_faults()
    second = run_batch(tmp_path, monkeypatch, prompts=prompts, output=f"file://{output}", max_failed=1)
    assert second.task("batch").state == "success", second.failures
    assert batch_emulator.submissions() == 8  # the uncertain row is not paid again blindly
    assert by_status(output) == statuses


def test_credits_run_out_mid_batch_then_a_rerun_pays_only_for_the_rest(
    batch_emulator: BatchEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Fault: the key can pay for 5 of 8 images. Expected: 5 stored, the 6th ``refused`` with the 402,
    2 ``not_submitted`` saying why; the task fails (``max_failed=0``) after writing the results.
    Topped up, a re-run of the same output pays for exactly the 3 others.
    """
    from faults.harness import FAULT_KEY  # noqa: F401  (the fault suite's key is not used here)

    from .conftest import BATCH_KEY

    batch_emulator.admin.set_credits(BATCH_KEY, 5)
    prompts = [f"credits batch {n}" for n in range(8)]
    output = tmp_path / "out"

    first = run_batch(tmp_path, monkeypatch, prompts=prompts, output=f"file://{output}")

    assert first.task("batch").state == "failed"
    (failure,) = first.failures
    assert "3 of 8 rows have no media" in failure["message"], failure
    assert "ran out of credits" in failure["message"]
    statuses = by_status(output)
    assert len(statuses["stored"]) == 5 and len(statuses["refused"]) == 1, statuses
    assert len(statuses["not_submitted"]) == 2
    assert all("402" in line["error"] for line in results(output) if line["status"] != "stored")
    assert batch_emulator.submissions() == 5

    batch_emulator.admin.set_credits(BATCH_KEY, 100)
    second = run_batch(tmp_path, monkeypatch, prompts=prompts, output=f"file://{output}")

    assert second.task("batch").state == "success", second.failures
    assert batch_emulator.submissions() == 8 and batch_emulator.duplicates() == 0
    assert second.task("batch").xcom["return_value"]["credits_spent"] == 8
    assert not partial_files(output)


def test_max_credits_stops_before_the_cap_and_says_so(
    batch_emulator: BatchEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    ``max_credits=3``: an image (1 credit), then a 10 s video (10 credits) that would pass the cap:
    submitting stops before it, says so, and the other rows are ``not_submitted``.
    """
    prompts = [f"capped {n}" for n in range(4)]
    prompts.insert(1, {"prompt": "capped clip", "kind": "video", "duration": 10})
    output = tmp_path / "out"

    run = run_batch(
        tmp_path, monkeypatch, prompts=prompts, output=f"file://{output}", max_credits=3, max_failed=4
    )

    assert run.task("batch").state == "success", run.failures
    manifest = run.task("batch").xcom["return_value"]
    assert manifest["credits_spent"] == 1, manifest  # the clip (10) would pass the cap: stop there
    assert "max_credits=3 reached" in manifest["stopped"]
    assert manifest["counts"] == {"not_submitted": 4, "stored": 1}, manifest
    assert batch_emulator.submissions() == 1
    assert all(
        "max_credits=3 reached" in line["error"] for line in results(output) if line["status"] != "stored"
    )


def test_the_creation_window_is_waited_out_in_the_triggerer_without_429s(
    batch_emulator: BatchEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A key share of 10 submissions per window (the hour scaled to 1 s): 35 rows take 4 windows. The
    worker submits a burst, defers on a closed window and comes back when it opens: 0 429 answers.
    """
    batch_emulator.reset(time_scale=3600)
    batch_emulator.connect(rate_share=0.05)
    prompts = [f"windowed {n}" for n in range(35)]
    output = tmp_path / "out"

    run = run_batch(tmp_path, monkeypatch, prompts=prompts, output=f"file://{output}")

    assert run.task("batch").state == "success", run.failures
    stats = batch_emulator.admin.stats()
    assert stats["rate_limited"] == {}, stats["rate_limited"]
    assert batch_emulator.submissions() == 35 and batch_emulator.duplicates() == 0
    assert by_status(output).keys() == {"stored"}


KILLED_FIRST_TRY = """
import importlib.util, sys
from airflow_provider_cerebraform.emulator.airflow_home import make_dag_test_like_a_worker
make_dag_test_like_a_worker()  # before 3.3, dag.test()'s in-process API is otherwise collected mid-task
spec = importlib.util.spec_from_file_location("batch_dags", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.killed_dag.test(run_conf={"prompts": sys.argv[2].split("|"), "output": sys.argv[3]})
"""


def test_a_worker_killed_mid_batch_never_pays_twice(
    batch_emulator: BatchEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Fault: the worker is killed (SIGKILL) right after the 3rd submission was answered, before its
    request id was recorded. The next try of the same task instance: rows 1-2 are followed by their
    recorded ids, row 3 is ``uncertain`` (its intent has no answer), rows 4-6 are submitted. 6 tasks
    at the emulator, one per prompt; no partial file.
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    prompts = [f"killed batch {n}" for n in range(6)]
    output = tmp_path / "out"
    env = {**os.environ, "CEREBRAFORM_BATCH_KILL_AFTER": "3"}
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_FIRST_TRY,
            str(DAGS_FOLDER / DAG_FILE),
            "|".join(prompts),
            f"file://{output}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert batch_emulator.submissions() == 3
    with create_session() as session:
        (dag_run,) = session.scalars(select(DagRun).where(DagRun.dag_id == "cerebraform_batch_killed"))
        (ti,) = session.scalars(select(TaskInstance).where(TaskInstance.run_id == dag_run.run_id))
        ti.state = TaskInstanceState.FAILED  # what the scheduler does with a worker that stopped
        run_id = dag_run.run_id

    rerun = rerun_tasks(
        "cerebraform_batch_killed",
        run_id,
        tmp_path / "records",
        monkeypatch,
        select=lambda ti: True,
        dag_file=DAG_FILE,
        record_env=RECORD_DIR_ENV,
    )

    assert rerun.task("batch").state == "failed"  # max_failed=0 and one row is uncertain
    statuses = by_status(output)
    assert len(statuses["stored"]) == 5 and len(statuses["uncertain"]) == 1, statuses
    assert batch_emulator.submissions() == 6 and batch_emulator.duplicates() == 0
    assert not partial_files(output)


def test_a_new_trigger_from_the_serialized_kwargs_carries_on(batch_emulator: BatchEmulator) -> None:
    """
    Triggerer restart: a batch trigger watching 3 requests is cancelled mid-wait (its triggerer
    died); a new instance built from ``serialize()`` alone fires the event with all 3 finished.
    """
    from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook
    from airflow_provider_cerebraform.triggers.batch import CerebraformBatchTrigger

    batch_emulator.reset(time_scale=4)  # images take 3 s: the first trigger is cancelled before
    hook = CerebraformHook()
    ids = [hook.submit("image", f"trigger restart {n}") for n in range(3)]
    trigger = CerebraformBatchTrigger(
        pending=[["image", rid] for rid in ids], poll_interval=0.05, wake_after=3
    )

    async def cancelled_then_restarted() -> dict:
        first = asyncio.ensure_future(trigger.run().__anext__())
        await asyncio.sleep(0.5)
        assert not first.done()
        first.cancel()
        classpath, kwargs = trigger.serialize()
        assert classpath.endswith("CerebraformBatchTrigger") and "password" not in str(kwargs)
        restarted = CerebraformBatchTrigger(**kwargs)
        event = await asyncio.wait_for(restarted.run().__anext__(), timeout=30)
        return event.payload

    payload = asyncio.run(cancelled_then_restarted())
    assert sorted(item[0] for item in payload["finished"]) == sorted(ids)
    assert {item[1] for item in payload["finished"]} == {"done"}
    assert batch_emulator.submissions() == 3
