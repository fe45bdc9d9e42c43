"""
The provider in a real Airflow 3.3 on loopback: api-server, scheduler (LocalExecutor), dag-processor
and triggerer as separate processes on a PostgreSQL metadata database, with the emulator beside them.

- The example DAG ``example_cerebraform_scheduled`` runs end to end; its waits really defer to the
  triggerer and real PNG and MP4 files land under the ``cerebraform_output`` Variable.
- The triggerer is stopped (SIGTERM) while tasks are deferred and a new one started: every wait
  resumes in the new triggerer and nothing is submitted twice.
- A worker killed (SIGKILL) right after a submission: the retry reconnects to the same request
  through the task state store, and the emulator counts one submission.
- ``airflow backfill create`` of ``example_cerebraform_backfill`` over three days: each prompt is
  submitted once by one batch task per day; a second backfill re-running the completed days pays for
  nothing.
- In Chromium (Playwright driving the system browser, ``browser.py``): the connection form shows the
  provider's fields with help text and keeps timeout and share within the schema's bounds; the Test
  button fails for a connection with no port (an Airflow 3.3 limit) and works with port 0; a finished
  task's extra links open the media and the request. Screenshots go to ``$CEREBRAFORM_SCREENSHOTS``.
- At the end, no log file of any process (nor the metadata database) contains the API key.

One stack serves the module (about half a minute to start here); each test resets the emulator.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from airflow_provider_cerebraform.emulator import key_label
from airflow_provider_cerebraform.get_provider_info import get_provider_info
from airflow_provider_cerebraform.state_storage import STATE_FOLDER
from airflow_provider_cerebraform.version_compat import AIRFLOW_V_3_3_PLUS

from .browser import DOCS_SCREENSHOTS, SCREENSHOTS_ENV, chromium, require_chromium, screenshot
from .harness import (
    EXAMPLE_DAGS,
    AirflowApiError,
    AirflowStack,
    assert_secret_not_in_files,
    find_secret_in_files,
    new_api_key,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    import psutil
    from playwright.sync_api import Browser, BrowserContext, Page

    from airflow_provider_cerebraform.emulator import EmulatorAdmin

    from .postgres import PostgresServer

pytestmark = pytest.mark.timeout(420)

#: Emulator and connection time scale: an emulated second lasts 0.1 s.
TIME_SCALE = 10.0
SUBMISSION_KEY = "cerebraform_submission"
_MODULE_STARTED = time.monotonic()


def _real_seconds(seconds: float) -> float:
    """Emulated seconds for a job that lasts ``seconds`` of real time."""
    return seconds * TIME_SCALE


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, metadata_database: Callable[[], tuple[str, str]]
) -> Iterator[AirflowStack]:
    root = tmp_path_factory.mktemp("real-airflow")
    _name, url = metadata_database()
    with AirflowStack(
        root,
        api_key=new_api_key(),
        time_scale=TIME_SCALE,
        database_url=url,
        # The connection list's Test button (the browser checks below); Airflow's default hides it.
        extra_env={"AIRFLOW__CORE__TEST_CONNECTION": "Enabled"},
    ) as airflow:
        print(f"\n[real-airflow] stack ready in {airflow.startup_seconds:.1f} s under {root}")
        yield airflow
    print(f"\n[real-airflow] module wall time {time.monotonic() - _MODULE_STARTED:.1f} s")


@pytest.fixture
def emulator(stack: AirflowStack) -> EmulatorAdmin:
    """The stack's emulator, reset (tasks, counters, faults, config) for this test."""
    assert stack.emulator is not None, "the stack was stopped by an earlier test"
    admin = stack.emulator.admin
    admin.reset()
    return admin


def _ready(stack: AirflowStack, dag_id: str, file_name: str) -> None:
    stack.wait_for_dag(dag_id, file_name)
    stack.unpause(dag_id)


def _assert_png(path: Path, *, landscape: bool) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert (width > height) is landscape, (path, image.size)


def _assert_mp4(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[4:8] == b"ftyp", path
    assert b"moov" in data and b"mdat" in data, f"{path} lacks the moov/mdat boxes of a playable MP4"


def _manifest(folder: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.manifest.json")):
        entries.extend(json.loads(path.read_text()))
    return entries


def _submissions(admin: EmulatorAdmin) -> int:
    return int(admin.stats()["submissions"]["total"])


# --------------------------------------------------------------------------------------- issue 4


@pytest.mark.real_airflow
def test_example_scheduled_dag_defers_and_stores_media(stack: AirflowStack, emulator: EmulatorAdmin) -> None:
    dag_id, run_id = "example_cerebraform_scheduled", "rt_example"
    _ready(stack, dag_id, "example_cerebraform_scheduled.py")
    # Long enough that each wait is seen deferred, and that the trigger fires well after the task
    # that deferred has been reported done (see AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL in the harness).
    emulator.configure(image_seconds=_real_seconds(6), video_seconds=_real_seconds(10))
    # A logical date, as a scheduled run has: the output folder and the prompt come from it.
    stack.trigger(dag_id, run_id, logical_date="2025-06-01T00:00:00+00:00")

    run = stack.wait_for_run(dag_id, run_id, timeout=240)

    runs = stack.api("GET", f"/dags/{dag_id}/dagRuns")["dag_runs"]
    assert [r["dag_run_id"] for r in runs] == [run_id], "the schedule must not add runs to this test"
    assert run.state == "success", run.states_seen
    assert set(run.task_states().values()) == {"success"}, run.states_seen
    assert "deferred" in run.states_seen["generate_image"], run.states_seen
    assert "deferred" in run.states_seen["wait_for_video"], run.states_seen
    assert {ti["try_number"] for ti in run.task_instances.values()} == {1}, "a retry hid a failure"

    stats = emulator.stats()
    assert stats["submissions"]["by_key"] == {key_label(stack.api_key): 2}
    image_task, video_task = sorted(stats["tasks"], key=lambda task: task["kind"])
    assert (image_task["kind"], video_task["kind"]) == ("image", "video")
    assert "Sunday 01 June 2025" in image_task["prompt"]
    assert image_task["status"] == video_task["status"] == 2

    day = stack.output / "scheduled" / "2025-06-01"
    _assert_png(day / "image_0.png", landscape=True)
    _assert_mp4(day / "video_0.mp4")
    manifest = _manifest(day)
    assert {entry["request_id"] for entry in manifest} == {image_task["request_id"], video_task["request_id"]}
    assert {os.path.basename(entry["path"]) for entry in manifest} == {"image_0.png", "video_0.mp4"}


# --------------------------------------------------------------------------------------- issue 6


@pytest.mark.real_airflow
def test_triggerer_restart_resumes_deferred_tasks_without_resubmitting(
    stack: AirflowStack, emulator: EmulatorAdmin
) -> None:
    dag_id, run_id = "cf_real_pipeline", "rt_triggerer_restart"
    waits = ("generate_image", "wait_video")
    _ready(stack, dag_id, "cf_real_pipeline.py")
    # The jobs never finish on their own: the test completes them once the new triggerer has them.
    emulator.configure(image_seconds=_real_seconds(3600), video_seconds=_real_seconds(3600))
    stack.trigger(dag_id, run_id)

    stack.watch_run(
        dag_id,
        run_id,
        lambda tis: all(tis[task]["state"] == "deferred" for task in waits),
        timeout=120,
        what="both waits to be deferred",
    )

    def polled_by_first_triggerer() -> bool:
        # The sensor polls once itself before deferring; a second poll comes from the triggerer.
        tasks = emulator.tasks()
        return len(tasks) == 2 and all(task["polls"] >= 2 for task in tasks)

    wait_until(polled_by_first_triggerer, timeout=60, what="the first triggerer polling both jobs")
    assert _submissions(emulator) == 2, emulator.stats()
    first_triggerers = stack.alive_triggerer_ids()

    exit_code = stack.stop_triggerer()
    assert exit_code == 0, stack.logs.joinpath("triggerer-1.log").read_text()[-3000:]
    polls_after_stop = {t["request_id"]: t["polls"] for t in emulator.tasks()}
    tis = stack.task_instances(dag_id, run_id)
    assert all(tis[task]["state"] == "deferred" for task in waits), "a wait did not survive the stop"

    stack.start_triggerer()

    def resumed_by_new_triggerer() -> bool:
        polls = {t["request_id"]: t["polls"] for t in emulator.tasks()}
        new_ids = stack.alive_triggerer_ids() - first_triggerers
        tis = stack.task_instances(dag_id, run_id)
        owners = {(tis[task]["trigger"] or {}).get("triggerer_id") for task in waits}
        return bool(new_ids) and owners <= new_ids and all(polls[r] > polls_after_stop[r] for r in polls)

    wait_until(
        resumed_by_new_triggerer, timeout=120, what="the new triggerer to poll both jobs", check=stack.check
    )
    for request_id in polls_after_stop:
        emulator.complete_task(request_id)

    run = stack.wait_for_run(dag_id, run_id, timeout=180)

    assert run.state == "success", run.states_seen
    assert set(run.task_states().values()) == {"success"}, run.states_seen
    assert {ti["try_number"] for ti in run.task_instances.values()} == {1}, run.task_instances
    stats = emulator.stats()
    assert stats["submissions"]["total"] == 2, "a restart must never submit again"
    folder = stack.output / dag_id / run_id
    stored = {entry["request_id"]: entry for entry in _manifest(folder)}
    assert set(stored) == set(polls_after_stop)
    for entry in stored.values():
        path = folder / os.path.basename(entry["path"])
        if entry["kind"] == "image":
            _assert_png(path, landscape=True)
        else:
            _assert_mp4(path)


@pytest.mark.real_airflow
def test_worker_killed_after_submit_retry_reconnects(stack: AirflowStack, emulator: EmulatorAdmin) -> None:
    def kill(runner: psutil.Process, run_id: str) -> None:
        os.kill(runner.pid, signal.SIGKILL)

    assert_a_retry_after_submit_reconnects(stack, emulator, "rt_worker_kill", kill)


def assert_a_retry_after_submit_reconnects(
    stack: AirflowStack,
    emulator: EmulatorAdmin,
    run_id: str,
    end_first_try: Callable[[psutil.Process, str], None],
) -> None:
    """
    Runs ``cf_real_worker_kill``, whose submit task holds after its submission (and after remembering
    it); ``end_first_try`` ends that try there. The retry must reconnect: one submission, and the media.
    """
    dag_id, task_id = "cf_real_worker_kill", "submit_image"
    _ready(stack, dag_id, "cf_real_pipeline.py")
    emulator.configure(image_seconds=_real_seconds(4))
    holding = stack.signals / f"{run_id}.holding"
    stack.trigger(dag_id, run_id)

    wait_until(
        lambda: _submissions(emulator) == 1 and holding.exists(),
        timeout=120,
        what="the submission and the task holding",
        check=stack.check,
    )
    task_pid, request_id = holding.read_text().split()
    ti = stack.task_instances(dag_id, run_id)[task_id]
    runner = stack.task_runner(ti["id"])
    assert runner is not None, "no task runner process under the scheduler"
    assert runner.pid == int(task_pid) == ti["pid"], (runner.pid, task_pid, ti["pid"])
    if AIRFLOW_V_3_3_PLUS:
        remembered = stack.state_store(dag_id, run_id, task_id, SUBMISSION_KEY)
        assert remembered is not None and request_id in json.dumps(remembered["value"]), remembered
    else:  # no task state store: the record is in object storage under the task's state_location
        (record,) = (stack.output / dag_id / run_id / STATE_FOLDER).rglob(f"{SUBMISSION_KEY}.json")
        assert request_id in record.read_text()
    end_first_try(runner, run_id)

    run = stack.wait_for_run(dag_id, run_id, timeout=180)

    assert run.state == "success", run.states_seen
    assert run.task_instances[task_id]["try_number"] == 2
    tries = stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries")
    # The first try is archived as failed (a killed one too: the scheduler saw it die), and the task retried.
    assert [(t["try_number"], t["state"]) for t in tries["task_instances"]] == [
        (1, "failed"),
        (2, "success"),
    ], tries
    assert _submissions(emulator) == 1, "the retry paid for a second generation"
    assert [task["request_id"] for task in emulator.tasks()] == [request_id]
    assert not (stack.signals / f"{run_id}.release").exists()
    retry_log = "".join(
        p.read_text() for p in stack.task_log_files(dag_id, run_id, task_id) if "attempt=2" in p.name
    )
    assert "Reconnecting" in retry_log, retry_log[-3000:]
    _assert_png(stack.output / dag_id / run_id / f"{request_id}_0.png", landscape=False)


# ------------------------------------------------------------------------------------ backfill

BACKFILL_DAYS = ("2025-06-05", "2025-06-06", "2025-06-07")


def _daily_prompts(day: str) -> list[dict[str, Any]]:
    source = EXAMPLE_DAGS / "data" / "daily_prompts" / f"{day}.jsonl"
    return [json.loads(line) for line in source.read_text().splitlines() if line.strip()]


def _file_snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` by relative path: its sha256 and mtime (ns)."""
    return {
        str(path.relative_to(folder)): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _media_snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """:func:`_file_snapshot` without the batches' state folders (``_cerebraform``, rewritten by each try)."""
    return {name: value for name, value in _file_snapshot(folder).items() if "_cerebraform" not in name}


def _backfill_runs(stack: AirflowStack, dag_id: str) -> dict[str, dict[str, Any]]:
    """The DAG's backfill runs by logical day."""
    runs = stack.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]
    return {run["logical_date"][:10]: run for run in runs if run["run_type"] == "backfill"}


def _wait_backfill(
    stack: AirflowStack, dag_id: str, *, after: dict[str, str], timeout: float
) -> dict[str, dict[str, Any]]:
    """
    Wait until a run of every backfill day has ended after ``after`` (day -> the end_date of its
    previous run, "" for none).
    """

    def ended() -> dict[str, dict[str, Any]] | None:
        runs = _backfill_runs(stack, dag_id)
        done = {
            day: run
            for day, run in runs.items()
            if run["state"] in ("success", "failed") and (run["end_date"] or "") > after.get(day, "")
        }
        return runs if set(done) == set(BACKFILL_DAYS) and len(runs) == len(BACKFILL_DAYS) else None

    return wait_until(
        ended, timeout=timeout, what="every backfill run to end", interval=0.3, check=stack.check
    )


@pytest.mark.real_airflow
@pytest.mark.timeout(720)
def test_example_backfill_generates_each_partition_once(stack: AirflowStack, emulator: EmulatorAdmin) -> None:
    """
    ``airflow backfill create`` of the example over three days (5 prompts), one batch task per day:
    every run succeeds, each prompt is submitted once, the files and results land; a second backfill with
    ``--reprocess-behavior completed`` re-runs every day and submits nothing, touching no file.
    """
    dag_id = "example_cerebraform_backfill"
    began = time.monotonic()
    _ready(stack, dag_id, "example_cerebraform_backfill.py")
    emulator.configure(image_seconds=_real_seconds(6))
    expected = {day: _daily_prompts(day) for day in BACKFILL_DAYS}
    range_args = ("--dag-id", dag_id, "--from-date", BACKFILL_DAYS[0], "--to-date", BACKFILL_DAYS[-1])

    stack.triggered_runs.append((dag_id, "backfill"))
    stack.airflow_cli("backfill", "create", *range_args, "--max-active-runs", "2")
    # 3 batch tasks (one per day, two runs at a time), each a worker process of its own.
    runs = _wait_backfill(stack, dag_id, after={}, timeout=360)
    first_seconds = time.monotonic() - began

    assert {day: run["state"] for day, run in runs.items()} == dict.fromkeys(BACKFILL_DAYS, "success"), runs
    for day, run in runs.items():
        tis = stack.api("GET", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances")["task_instances"]
        states = {(ti["task_id"], ti["map_index"]): (ti["state"], ti["try_number"]) for ti in tis}
        # One batch task per partition, whatever the number of prompts.
        assert states == {("generate_partition", -1): ("success", 1)}, (day, states)

    submitted = Counter(task["prompt"] for task in emulator.tasks())
    per_day = {day: [submitted[p["prompt"]] for p in prompts] for day, prompts in expected.items()}
    assert per_day == {day: [1] * len(prompts) for day, prompts in expected.items()}, submitted
    assert _submissions(emulator) == sum(len(prompts) for prompts in expected.values())
    request_ids = {task["prompt"]: task["request_id"] for task in emulator.tasks()}

    backfill = stack.output / "backfill"
    for day, prompts in expected.items():
        partition = backfill / f"dt={day}"
        results = (partition / "_cerebraform" / "results.jsonl").read_text().splitlines()
        lines = [json.loads(line) for line in results]
        assert [line["id"] for line in lines] == [p["id"] for p in prompts]
        for prompt, line in zip(prompts, lines, strict=True):
            folder = partition / prompt["id"]
            image = folder / "image_0.png"
            assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image
            with Image.open(image) as png:
                png.verify()
            request_id = request_ids[prompt["prompt"]]
            assert [p.name for p in folder.glob("*.manifest.json")] == [f"{request_id}.manifest.json"]
            assert line["status"] == "stored" and line["request_id"] == request_id, line
            assert [os.path.basename(f["path"]) for f in line["files"]] == ["image_0.png"]
    files = _media_snapshot(backfill)
    assert len(files) == 2 * len(request_ids), sorted(files)

    # Airflow allows one running backfill per DAG, and the scheduler marks a backfill complete only on
    # a 30 s timer once its runs have ended: until then a second ``backfill create`` is refused.
    def first_backfill_completed() -> dict[str, Any] | None:
        backfills = stack.api("GET", "/backfills", params={"dag_id": dag_id})["backfills"]
        assert len(backfills) == 1, backfills
        return backfills[0] if backfills[0]["completed_at"] else None

    completed_wait = time.monotonic()
    wait_until(
        first_backfill_completed, timeout=60, what="the backfill to be marked complete", check=stack.check
    )
    completed_wait = time.monotonic() - completed_wait

    # Again over the same range, re-running the completed runs: nothing is paid for, nothing is written.
    again_began = time.monotonic()
    stack.airflow_cli("backfill", "create", *range_args, "--reprocess-behavior", "completed")
    ended = {day: run["end_date"] for day, run in runs.items()}
    rerun = _wait_backfill(stack, dag_id, after=ended, timeout=240)
    again_seconds = time.monotonic() - again_began
    second = stack.api("GET", "/backfills", params={"dag_id": dag_id})["backfills"]
    assert [b["reprocess_behavior"] for b in second] == ["none", "completed"], second

    assert {day: run["dag_run_id"] for day, run in rerun.items()} == {
        day: run["dag_run_id"] for day, run in runs.items()
    }, "the re-run must clear the same runs, not add any"
    assert {day: run["state"] for day, run in rerun.items()} == dict.fromkeys(BACKFILL_DAYS, "success")
    for run in rerun.values():
        tis = stack.task_instances(dag_id, run["dag_run_id"])
        assert tis["generate_partition"]["try_number"] == 2, tis
    assert _submissions(emulator) == len(request_ids), "a re-run paid for a generation again"
    assert _media_snapshot(backfill) == files, "a re-run changed or added media"
    print(
        f"\n[real-airflow] backfill of {len(BACKFILL_DAYS)} days, {len(request_ids)} prompts: "
        f"{first_seconds:.1f} s; marked complete after {completed_wait:.1f} s more; "
        f"reprocess {again_seconds:.1f} s; "
        f"submissions by day {per_day}"
    )


# ------------------------------------------------------------------------------- the UI, in Chromium


@pytest.fixture(scope="module")
def browser(stack: AirflowStack) -> Iterator[Browser]:
    """One headless Chromium for the module's UI checks (skips when none is installed)."""
    binary = require_chromium()
    with chromium(binary) as launched:
        yield launched


@pytest.fixture(scope="module")
def browser_context(browser: Browser) -> Iterator[BrowserContext]:
    """One context for the module, so the UI's scripts are fetched and compiled once (its cache)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # Playwright's 30 s default is too short for one click on a machine at a load average of 20.
    context.set_default_timeout(120_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(browser_context: BrowserContext) -> Iterator[Page]:
    page = browser_context.new_page()
    try:
        yield page
    finally:
        page.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the UI checks' screenshots go: ``$CEREBRAFORM_SCREENSHOTS``, else a temporary directory."""
    from pathlib import Path  # the module imports it for type hints only

    named = os.environ.get(SCREENSHOTS_ENV)
    return Path(named) if named else tmp_path_factory.mktemp("screenshots")


def _shot(page: Page, folder: Path, name: str) -> None:
    path = screenshot(page, folder, name)
    print(f"\n[real-airflow] screenshot {path}")
    if os.environ.get("CEREBRAFORM_UPDATE_DOCS_SCREENSHOTS"):
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (DOCS_SCREENSHOTS / path.name).write_bytes(path.read_bytes())


def _store_connection(stack: AirflowStack, conn_id: str, **fields: Any) -> None:
    assert stack.emulator is not None
    with contextlib.suppress(AirflowApiError):
        stack.api("DELETE", f"/connections/{conn_id}")
    stack.api(
        "POST",
        "/connections",
        json={
            "connection_id": conn_id,
            "conn_type": "cerebraform",
            "host": stack.emulator.url,
            "password": stack.api_key,
            "extra": json.dumps({"tier": "paid", "time_scale": TIME_SCALE}),
            **fields,
        },
    )


#: The form's number fields and the bounds the provider info's schema gives them.
FORM_BOUNDS = {"timeout": ("0.1", "3600"), "retry_limit": ("0", "20"), "rate_share": ("0.01", "1")}


@pytest.mark.real_airflow
def test_connection_form_in_chromium(
    stack: AirflowStack, emulator: EmulatorAdmin, page: Page, screenshots: Path
) -> None:
    """
    The Add Connection form for Cerebraform shows the provider's fields with their help text and the
    schema's bounds, and a timeout of -5 and a share of 5 do not reach the database: the form's number
    fields hold them to the bounds (0.1 and 1) before saving.
    """
    conn_id = "cf_ui_form"
    with contextlib.suppress(AirflowApiError):
        stack.api("DELETE", f"/connections/{conn_id}")
    page.goto(f"{stack.api_url}/connections", wait_until="networkidle")
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("input[name=connection_id]").fill(conn_id)
    dialog.get_by_role("combobox").fill("Cerebraform")
    page.keyboard.press("Enter")
    assert dialog.get_by_text("Base URL", exact=True).is_visible()
    assert dialog.locator("input[name=host]").get_attribute("placeholder", timeout=10_000) == (
        "Base URL; empty means https://cerebraform.com"
    )
    assert dialog.get_by_text("API key", exact=True).is_visible()
    assert dialog.locator("input[name=port]").count() == 0, "port and login are hidden for Cerebraform"
    dialog.locator("input[name=host]").fill(stack.emulator.url if stack.emulator else "")
    dialog.locator("input[name=password]").fill(stack.api_key)
    dialog.get_by_role("button", name="Extra Fields", exact=True).click()

    fields = get_provider_info()["connection-types"][0]["conn-fields"]
    for name, field in fields.items():
        assert dialog.get_by_text(field["label"], exact=True).is_visible(), name
        assert dialog.get_by_text(field["description"], exact=True).is_visible(), name
    for name, (low, high) in FORM_BOUNDS.items():
        spin = dialog.locator(f"input[name=element_{name}]")
        assert (spin.get_attribute("aria-valuemin"), spin.get_attribute("aria-valuemax")) == (low, high), name
    dialog.locator("input[name=element_timeout]").fill("-5")
    dialog.locator("input[name=element_rate_share]").fill("5")
    dialog.locator("input[name=element_retry_limit]").click()  # leaving a field applies its bounds
    _shot(page, screenshots, "connection-form")
    with page.expect_response(lambda r: r.url.endswith("/api/v2/connections") and r.request.method == "POST"):
        dialog.get_by_role("button", name="Save").click()

    stored = json.loads(stack.api("GET", f"/connections/{conn_id}")["extra"])
    assert stored["timeout"] == 0.1 and stored["rate_share"] == 1, stored
    assert stored["retry_limit"] == 3 and stored["tier"] == "free", stored


def _click_test(page: Page, conn_id: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Press the Test button of a connection's row; return the API's status, answer and the request."""
    row = page.get_by_role("row").filter(has_text=conn_id)
    with page.expect_response(lambda r: r.url.endswith("/api/v2/connections/test")) as answer:
        row.get_by_label("Test Connection").click()
    response = answer.value
    return response.status, response.json(), json.loads(response.request.post_data or "{}")


@pytest.mark.real_airflow
def test_connection_test_button_in_chromium(
    stack: AirflowStack, emulator: EmulatorAdmin, page: Page, screenshots: Path
) -> None:
    """
    Airflow 3.3's connection list sends ``port: Number(port)``, 0 for a connection stored without a
    port, and its API refuses a test whose port differs from the stored one (400). A Cerebraform
    connection has no port (the form hides it), so its Test button fails; stored with port 0 it works.
    The provider cannot change what the UI sends (see docs/connection.md).
    """
    _store_connection(stack, "cf_ui_no_port", port=None)
    _store_connection(stack, "cf_ui_port_0", port=0)
    page.goto(f"{stack.api_url}/connections", wait_until="networkidle")

    status, answer, sent = _click_test(page, "cf_ui_no_port")
    assert sent["port"] == 0 and sent["password"] == "***", sent
    assert status == 400, answer
    assert "differs from the stored connection" in answer["detail"], answer
    page.get_by_text("Test Connection Failed").wait_for()
    _shot(page, screenshots, "connection-test-no-port")
    page.mouse.move(0, 0)  # the first button's tooltip would take the second click

    status, answer, sent = _click_test(page, "cf_ui_port_0")
    assert status == 200 and answer["status"] is True, answer
    assert re.fullmatch(r"Connected: \d+ credits", answer["message"]), answer
    page.get_by_text("Test Connection Successful").wait_for()
    _shot(page, screenshots, "connection-test-port-0")
    assert stack.api_key not in page.content()


@pytest.mark.real_airflow
def test_extra_links_in_chromium(
    stack: AirflowStack, emulator: EmulatorAdmin, page: Page, screenshots: Path
) -> None:
    """A finished generation's task instance shows the media and request links, pointing at them."""
    dag_id, run_id, task_id = "example_cerebraform_scheduled", "rt_example", "generate_image"
    try:
        run = stack.dag_run(dag_id, run_id)
    except AirflowApiError:  # run alone: make the run the example test makes
        _ready(stack, dag_id, "example_cerebraform_scheduled.py")
        stack.trigger(dag_id, run_id, logical_date="2025-06-01T00:00:00+00:00")
        run = stack.wait_for_run(dag_id, run_id, timeout=240).__dict__
    assert run["state"] == "success", run
    links = stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/links")["extra_links"]
    assert stack.emulator is not None
    base = stack.emulator.url
    request_id = links["Cerebraform request"].rsplit("/", 1)[-1]
    assert links["Cerebraform request"] == f"{base}/ai/v1/to-image/status/{request_id}", links
    assert links["Cerebraform media"].startswith(f"{base}/media/{request_id}"), links
    stored = _manifest(stack.output / "scheduled" / "2025-06-01")
    assert request_id in {entry["request_id"] for entry in stored}, stored

    page.goto(
        f"{stack.api_url}/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/details", wait_until="networkidle"
    )
    shown = {}
    for name in links:
        button = page.get_by_role("link", name=name, exact=True)
        button.wait_for()
        shown[name] = (button.get_attribute("href"), button.get_attribute("target"))
    assert shown == {name: (url, "_blank") for name, url in links.items()}, shown
    _shot(page, screenshots, "extra-links")


@pytest.mark.real_airflow
def test_metadata_database_is_postgresql(stack: AirflowStack, postgres: PostgresServer) -> None:
    """Every component of the stack wrote its runs into the PostgreSQL database, not a sqlite file."""
    assert stack.database_url.startswith("postgresql+psycopg2://"), stack.database_url
    database = stack.database_url.rsplit("/", 1)[1]
    [(version,)] = postgres.execute("SELECT version()", database)
    assert str(version).startswith("PostgreSQL "), version
    runs = dict(postgres.execute("SELECT state, count(*) FROM dag_run GROUP BY state", database))
    assert runs.get("success", 0) >= 1, runs  # the tests above ran DAGs through this database
    assert not list(stack.home.glob("*.db")), "a sqlite database appeared in AIRFLOW_HOME"


# ------------------------------------------------------------------------------------ key scan


def test_secret_scan_finds_a_planted_key(tmp_path: Path) -> None:
    key = new_api_key()
    (tmp_path / "clean.log").write_text("nothing to see\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "leak.log").write_text(f"line one\nAuthorization: Bearer {key}\n")
    assert find_secret_in_files([tmp_path], key) == [f"{tmp_path / 'sub' / 'leak.log'}:2"]
    with pytest.raises(AssertionError, match="1 file"):
        assert_secret_not_in_files([tmp_path], key)
    assert assert_secret_not_in_files([tmp_path / "clean.log"], key) == 1


@pytest.mark.real_airflow
def test_api_key_appears_in_no_log_file(stack: AirflowStack, postgres: PostgresServer) -> None:
    """Runs last: stops the stack so every log is complete, then scans all of them and the database."""
    stack.stop()
    print(f"\n[real-airflow] stopped in {', '.join(f'{k} {v:.1f} s' for k, v in stack.stop_seconds.items())}")
    logs = stack.log_files()
    names = {path.name for path in logs}
    components = {"api-server.log", "scheduler.log", "dag-processor.log", "triggerer-1.log", "emulator.log"}
    assert components <= names, sorted(names)
    if stack.triggered_runs:  # the tests above ran DAGs: their task and trigger logs are scanned too
        assert any(name.startswith("attempt=") and ".trigger." in name for name in names), sorted(names)
        assert any(re.fullmatch(r"attempt=\d+\.log", name) for name in names), sorted(names)
    database = stack.database_url.rsplit("/", 1)[1]
    dump = postgres.dump(database, stack.root / "metadata-dump.sql")
    assert b"CREATE TABLE public.task_instance" in dump.read_bytes()  # the dump holds the database
    scanned = assert_secret_not_in_files([*logs, dump], stack.api_key)
    assert scanned == len(logs) + 1
