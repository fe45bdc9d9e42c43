"""
Answers that are wrong rather than missing, through the real operators (``dag.test()``): malformed
JSON from every endpoint, 429 storms, result URLs that expire, and a job the service fails.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

from .harness import (
    LEDGER,
    UNTYPED,
    media_files,
    partial_files,
    record_emulator,
    run_dag,
    sha256,
    submissions_by_prompt,
)

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import FaultEmulator

pytestmark = pytest.mark.usefixtures("airflow_db")

#: The message the DAG's prompts ask the emulator to fail with (``#cf-fail:<message>``).
JOB_FAILURE_MESSAGE = "GPU 3 overheated while rendering frame 12 (fault test)"

#: task -> (endpoint the error must name, what the error must say)
MALFORMED = {
    "submit_not_json": ("submit image", "not a JSON object"),
    "submit_after_commit_wrong_types": ("submit image", "no request_id"),
    "submit_hostile_request_id": ("submit image", "request_id is not a usable id"),
    "status_array_in_trigger": ("status image", "not a JSON object"),
    "status_null_in_trigger": ("status image", "not a JSON object"),
    "result_missing_fields": ("result image", "'results' is missing or not a list"),
    "result_wrong_types": ("result image", "'results' is missing or not a list"),
    "credits_wrong_types": ("credits", "'credits' is missing or not an integer"),
    "credits_empty": ("credits", "not a JSON object"),
    "sensor_status_wrong_types": ("status image", "'status' is missing or not an integer"),
}


def test_malformed_answers_from_every_endpoint_are_typed_errors(
    fault_emulator: FaultEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Fault: one malformed success answer at a time, armed before each operator: a submit answer that
    is not JSON; a submit answer with the wrong types *after* the task was created; a submit answer
    whose request_id is ``../../x``; status answers that are a JSON array or ``null`` (read by the
    trigger); result answers without ``results`` or with ``results`` as an object; credit answers
    with ``credits: "plenty"`` or no body at all (``min_credits``); a status with ``status: "done"``
    (read by a sensor). Every task has ``retries=1``.

    Expected: every task's first try fails with ``CerebraformResponseError`` (never KeyError,
    TypeError, ...) whose message names the endpoint and what was wrong. A submit answer without a
    usable request_id is also a ``CerebraformSubmissionUncertainError`` (the task may exist): no retry
    is spent on it, so the task created before the wrong-types answer is paid for once, and the
    hostile id never reaches a URL or a file name. A malformed answer to a GET is retried by Airflow
    like any other error, and the retry (meeting real answers again) succeeds without submitting
    again: the generate operator reconnects through the task state store.
    """
    output = tmp_path / "out"
    run = run_dag("cerebraform_fault_malformed", tmp_path / "records", monkeypatch, output=f"file://{output}")

    for task_id, (endpoint, problem) in MALFORMED.items():
        failures = run.failures_of(task_id)
        assert failures, task_id
        first = failures[0]
        assert first["try_number"] == 1, first
        assert "CerebraformResponseError" in first["mro"], first
        assert not set(first["mro"]) & set(UNTYPED), first
        assert f"Cerebraform {endpoint}" in first["message"], first
        assert problem in first["message"], first
        if task_id.startswith("submit_"):
            assert first["type"] == "CerebraformSubmissionUnreadableError", first
            assert "CerebraformSubmissionUncertainError" in first["mro"]
            assert "may have been created and charged" in first["message"]
            assert len(failures) == 1, failures  # an AirflowFailException: the retry is not spent
            assert run.task(task_id).state == "failed"
        else:
            assert first["type"] == "CerebraformResponseError", first
            assert len(failures) == 1 and run.task(task_id).state == "success", failures
        LEDGER.tasks_failed_as_expected += 1
    stats = record_emulator(fault_emulator.admin)
    # Each arm's one malformed answer fired.
    assert stats["faults_injected"] == {
        "submit:malformed": 3,
        "status:malformed": 3,
        "result:malformed": 2,
        "credits:malformed": 2,
    }
    prompts = submissions_by_prompt(fault_emulator.admin)
    assert prompts["malformed: submit wrong types after commit"] == 1  # created once, never again
    assert "malformed: submit not json" not in prompts  # answered before the commit: nothing exists
    assert "malformed: hostile id" not in prompts
    assert max(prompts.values()) == 1  # retries reconnected, nothing was submitted twice
    assert not (output / "hostile").exists() and not (tmp_path / "x").exists()
    assert partial_files(output) == []


def test_429_storms_on_creation_and_polling_complete(
    fault_emulator: FaultEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Fault: a seeded storm where 60 % of submit and status requests answer 429 with
    ``Retry-After: 1``, during a mapped run of three generate tasks.

    Expected: the client honours Retry-After and queues behind it (the key's pacer pauses for
    everyone); every task completes with its media URLs; each prompt is submitted once. The storm
    halves the key's create rate at most once per window, so the run never falls back to deferring
    for a whole window (it did before: 9 short 429s took the paid tier to 1 task per window). The
    figure reported is the number of 429 answers per successful task.
    """
    from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook
    from airflow_provider_cerebraform.models import Bucket

    fault_emulator.reset(seed=20240601)
    fault_emulator.admin.set_faults(
        {"endpoint": ["submit", "status"], "error_rate": 0.6, "status": 429, "retry_after": 1}
    )
    run = run_dag("cerebraform_fault_rate_limit_storm", tmp_path / "records", monkeypatch)

    assert run.state == "success", run.failures
    mapped = run.mapped("generate")
    assert [task.state for task in mapped] == ["success"] * 3
    assert all(len(task.return_value) == 1 for task in mapped)
    stats = record_emulator(fault_emulator.admin)
    storms = stats["faults_injected"]
    assert set(storms) <= {"submit:error", "status:error"} and sum(storms.values()) >= 3
    assert stats["responses"]["429"] == sum(storms.values())
    assert set(submissions_by_prompt(fault_emulator.admin).values()) == {1}
    create = CerebraformHook().get_conn().protocol.pacer.window(Bucket.CREATE)  # the process-wide pacer
    assert create.allowed >= create.ceiling / 2
    assert all(task.try_number == 1 for task in mapped)
    LEDGER.rate_limited += stats["responses"]["429"]
    LEDGER.rate_limited_successes += len(mapped)
    print(
        f"429 storm: {stats['responses']['429']} answers 429 for {len(mapped)} successful tasks "
        f"({storms}); run took {run.seconds:.1f} s",
        file=sys.stderr,
    )


def test_expired_result_urls_are_fetched_again_once_then_fail_clearly(
    fault_emulator: FaultEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Fault: (1) the first media download answers 403 "expired"; (2) every media download answers 403;
    (3) signed result URLs with a 25 microsecond lifetime, expired before any download.

    Expected: (1) the result is fetched again once for a fresh URL and the file is stored;
    (2) and (3) the result is fetched again exactly once, then the task fails with a
    ``CerebraformMediaError`` saying the media is no longer available even after fetching the result
    again; nothing is left in their folders.
    """
    output = tmp_path / "out"
    run = run_dag(
        "cerebraform_fault_url_expiry", tmp_path / "records", monkeypatch, output=f"file://{output}"
    )

    assert run.task("expired_once").state == "success", run.failures
    (entry,) = run.task("expired_once").return_value
    (path,) = media_files(output / "expired_once")
    assert path.stat().st_size == entry["bytes"] and sha256(path.read_bytes()) == entry["sha256"]
    LEDGER.files_verified += 1
    for task_id in ("always_403", "tiny_ttl"):
        failure = run.failure(task_id)
        assert failure["type"] == "CerebraformMediaError", failure
        assert "no longer available (HTTP 403) even after fetching the result again" in failure["message"]
        assert media_files(output / task_id) == []
        LEDGER.tasks_failed_as_expected += 1
    assert partial_files(output) == []
    stats = record_emulator(fault_emulator.admin)
    fetches = {task["prompt"]: task["result_fetches"] for task in stats["tasks"]}
    assert fetches == {  # the result, then once more for fresh URLs
        "expiry: first url expired": 2,
        "expiry: every url refused": 2,
        "expiry: urls expire at once": 2,
    }
    assert stats["requests"]["media"] == 2 + 2 + 2
    assert stats["responses"]["403"] == 1 + 2 + 2
    assert stats["faults_injected"] == {"media:error": 3}
    LEDGER.faults_injected["media:url_expired"] += 2  # the tiny-TTL URLs, refused by the signature


def test_a_failed_job_reports_the_api_message_in_log_and_failure(
    fault_emulator: FaultEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """
    Fault: the service fails the job (status -1) with its own message, once for the generate operator
    (seen by its trigger) and once for a poke-mode sensor.

    Expected: both tasks fail at once (no retry: the same request stays failed) with
    ``CerebraformTaskFailedError`` whose message carries the API's message, and the task log shows
    the API's message too (``dag.test()`` writes task logs to stdout, not to files).
    """
    run = run_dag("cerebraform_fault_job_failure", tmp_path / "records", monkeypatch)
    captured = capsys.readouterr()
    sys.stdout.write(captured.out)  # give it back to pytest's report (and to the key scan)
    sys.stderr.write(captured.err)

    assert run.state == "failed"
    log = captured.out + captured.err
    for task_id in ("generate", "sensor_poke"):
        failure = run.failure(task_id)
        assert failure["type"] == "CerebraformTaskFailedError", failure
        assert JOB_FAILURE_MESSAGE in failure["message"]
        assert failure["message"] in log  # the task's error, as its log shows it
        LEDGER.tasks_failed_as_expected += 1
    # The trigger's status line: the status by name, the API's message quoted, no bare "(-1)".
    assert f'is failed ("{JOB_FAILURE_MESSAGE}")' in log and "(-1)" not in log
    record_emulator(fault_emulator.admin)
    LEDGER.faults_injected["job:failed"] += 2
