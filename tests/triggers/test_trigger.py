"""
CerebraformTaskTrigger against the emulator over real HTTP: it survives the trip through the metadata
database, fires exactly one event per outcome, shares one polling budget between many triggers of a
key on one event loop without a single 429, and never blocks that loop.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import statistics
import time
from typing import TYPE_CHECKING, Any

import pytest
import requests
from loop_audit import run_on_one_debug_loop

from airflow_provider_cerebraform.emulator import FaultRule
from airflow_provider_cerebraform.triggers.cerebraform import CerebraformTaskTrigger

if TYPE_CHECKING:
    from airflow.triggers.base import TriggerEvent

    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

FAIL_MESSAGE = "the renderer ran out of GPUs (trigger test)"
FREE_KEY = "cf-free-key-shared-budget"
SHARED_TRIGGERS = 64


def submit(emulator: EmulatorHandle, prompt: str, *, key: str | None = None, kind: str = "image") -> str:
    """Create a job straight over HTTP (not through the client: these tests are about polling)."""
    session = requests.Session()
    session.trust_env = False
    response = session.post(
        f"{emulator.url}/ai/v1/to-{kind}",
        json={"prompt": prompt},
        headers={"Authorization": f"Bearer {key or emulator.api_key}"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return response.json()["request_id"]


def run_to_exhaustion(trigger: CerebraformTaskTrigger) -> list[TriggerEvent]:
    async def drain() -> list[TriggerEvent]:
        return [event async for event in trigger.run()]

    return asyncio.run(drain())


def import_string(classpath: str) -> Any:
    """What the triggerer does with a classpath (Airflow's helper moved between 3.1 and 3.2)."""
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)


def through_the_database(trigger: CerebraformTaskTrigger) -> CerebraformTaskTrigger:
    """What the triggerer does: store classpath and kwargs in the metadata DB, import, rebuild."""
    from airflow.models.trigger import Trigger

    classpath, kwargs = trigger.serialize()
    stored = Trigger(classpath=classpath, kwargs=kwargs)
    return import_string(stored.classpath)(**stored.kwargs)


def test_serialize_round_trip_gives_an_equal_trigger_without_the_key(
    cerebraform_emulator: EmulatorHandle,
) -> None:
    trigger = CerebraformTaskTrigger(
        request_id="abc123",
        kind="video",
        cerebraform_conn_id="cerebraform_default",
        poll_interval=2.5,
        deadline=1_900_000_000.25,
        max_consecutive_errors=7,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_cerebraform.triggers.cerebraform.CerebraformTaskTrigger"
    rebuilt = import_string(classpath)(**kwargs)
    assert isinstance(rebuilt, CerebraformTaskTrigger)
    assert rebuilt.serialize() == (classpath, kwargs)
    stored = through_the_database(trigger)
    assert stored.serialize() == (classpath, kwargs)
    assert vars(stored).keys() >= set(kwargs)
    assert {name: getattr(stored, name) for name in kwargs} == kwargs
    # Plain data only, and no secret: the connection id goes to the database, never the key.
    text = json.dumps(kwargs)
    assert cerebraform_emulator.api_key not in text
    assert not {"api_key", "password", "key", "token", "headers"} & set(kwargs)


def test_done_fires_one_event(cerebraform_emulator: EmulatorHandle) -> None:
    request_id = submit(cerebraform_emulator, "a teapot")
    events = run_to_exhaustion(
        through_the_database(CerebraformTaskTrigger(request_id, "image", poll_interval=0.05))
    )
    assert [event.payload for event in events] == [
        {
            "status": "done",
            "request_id": request_id,
            "kind": "image",
            "message": "Task completed.",
            "task_status": 2,
        }
    ]


def test_failed_fires_one_event_with_the_api_message(cerebraform_emulator: EmulatorHandle) -> None:
    request_id = submit(cerebraform_emulator, f"a teapot #cf-fail:{FAIL_MESSAGE}", kind="video")
    events = run_to_exhaustion(CerebraformTaskTrigger(request_id, "video", poll_interval=0.05))
    assert len(events) == 1
    assert events[0].payload["status"] == "failed"
    assert events[0].payload["message"] == FAIL_MESSAGE
    assert events[0].payload["task_status"] == -1


@pytest.mark.parametrize("seconds_left", [-5.0, 0.3])
def test_a_past_or_near_deadline_fires_one_timeout_event(
    cerebraform_emulator: EmulatorHandle, seconds_left: float
) -> None:
    cerebraform_emulator.admin.configure(image_seconds=3600 * cerebraform_emulator.time_scale)
    request_id = submit(cerebraform_emulator, "a very slow teapot")
    trigger = CerebraformTaskTrigger(
        request_id, "image", poll_interval=0.05, deadline=time.time() + seconds_left
    )
    started = time.monotonic()
    events = run_to_exhaustion(trigger)
    assert time.monotonic() - started < max(0.0, seconds_left) + 5
    assert len(events) == 1
    assert events[0].payload["status"] == "timeout"
    assert "not done by the deadline" in events[0].payload["message"]
    if seconds_left > 0:
        assert cerebraform_emulator.admin.task(request_id)["polls"] >= 1  # it did wait until the deadline


def test_unknown_request_id_is_not_transient_and_fires_one_error_event(
    cerebraform_emulator: EmulatorHandle,
) -> None:
    events = run_to_exhaustion(CerebraformTaskTrigger("no-such-task-42", "image", poll_interval=0.05))
    assert len(events) == 1
    payload = events[0].payload
    assert payload["status"] == "error"
    assert payload["error_type"] == "CerebraformNotFoundError"
    assert "HTTP 404" in payload["message"]
    # Not retried: one request, one 404.
    assert cerebraform_emulator.admin.stats()["requests"]["status"] == 1


async def drain(trigger: CerebraformTaskTrigger) -> list[TriggerEvent]:
    return [event async for event in trigger.run()]


def test_the_loop_watch_catches_a_blocking_call(cerebraform_emulator: EmulatorHandle) -> None:
    async def blocking() -> None:
        time.sleep(0.15)
        session = requests.Session()
        session.trust_env = False
        session.get(f"{cerebraform_emulator.url}/_emulator/health", timeout=5)

    run = run_on_one_debug_loop([blocking()])
    assert "time.sleep(0.15)" in run.blocking_calls
    assert any(call.startswith("blocking socket.connect") for call in run.blocking_calls)
    assert any(call.startswith("socket.getaddrinfo") for call in run.blocking_calls)
    assert run.slow_callbacks and run.worst_lag >= 0.1  # a 0.15 s stall is seen, however busy the machine


def test_many_triggers_share_one_free_budget_on_one_loop_without_a_429(
    cerebraform_emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = cerebraform_emulator.admin
    # Only polling is under test: let the free key create its jobs at once; each job lasts 1 s real.
    admin.configure(free_tasks_per_hour=100_000, image_seconds=cerebraform_emulator.time_scale * 1.0)
    admin.add_key(FREE_KEY, tier="free", credits=1000)
    monkeypatch.setenv(
        "AIRFLOW_CONN_CEREBRAFORM_FREE",
        json.dumps(
            {
                "conn_type": "cerebraform",
                "host": cerebraform_emulator.url,
                "password": FREE_KEY,
                "extra": {"tier": "free", "time_scale": cerebraform_emulator.time_scale},
            }
        ),
    )
    request_ids = [
        submit(cerebraform_emulator, f"shared budget {n}", key=FREE_KEY) for n in range(SHARED_TRIGGERS)
    ]
    triggers = [
        CerebraformTaskTrigger(rid, "image", cerebraform_conn_id="cerebraform_free", poll_interval=0.1)
        for rid in request_ids
    ]
    run = run_on_one_debug_loop([drain(trigger) for trigger in triggers])

    assert [len(events) for events in run.events] == [1] * SHARED_TRIGGERS
    assert {events[0].payload["status"] for events in run.events} == {"done"}
    assert [events[0].payload["request_id"] for events in run.events] == request_ids
    stats = admin.stats()
    assert stats["rate_limited"].get("poll", 0) == 0, stats["rate_limited"]
    assert stats["responses"].get("429", 0) == 0
    polls = [task["polls"] for task in stats["tasks"]]
    # The free tier allows 20 polls a minute; at this time scale a "minute" lasts 60/time_scale s.
    window = 60 / cerebraform_emulator.time_scale
    ceiling = 20 * (run.seconds / window + 1)
    assert sum(polls) <= ceiling
    assert run.blocking_calls == []
    # Not a per-call measure: the lag adds up every trigger step of one loop iteration (a window's 20
    # polls are released together), so it is only reported here.
    print(
        f"\n{SHARED_TRIGGERS} triggers on one free key: {run.seconds:.1f} s, polls per trigger "
        f"min {min(polls)} mean {statistics.mean(polls):.2f} max {max(polls)} (total {sum(polls)}, "
        f"budget ceiling {ceiling:.0f}), 429s 0, worst loop lag {run.worst_lag * 1000:.1f} ms, "
        f"{len(run.slow_callbacks)} callbacks over 0.1 s"
    )


def test_slow_answers_do_not_block_the_loop(cerebraform_emulator: EmulatorHandle) -> None:
    # Every status answer takes 0.3 s: one blocking call in a trigger would stall the loop that long.
    cerebraform_emulator.admin.set_faults(FaultRule(endpoint="status", latency=0.3))
    request_ids = [submit(cerebraform_emulator, f"slow answers {n}") for n in range(10)]
    triggers = [CerebraformTaskTrigger(rid, "image", poll_interval=0.05) for rid in request_ids]
    run = run_on_one_debug_loop([drain(trigger) for trigger in triggers])
    assert [events[0].payload["status"] for events in run.events] == ["done"] * 10
    # Every poll waited 0.3 s for its answer: had one blocked, the audit would hold its connect or sleep.
    assert run.blocking_calls == []
    print(f"\nworst loop lag {run.worst_lag * 1000:.1f} ms, {len(run.slow_callbacks)} callbacks over 0.1 s")


#: Run in a fresh interpreter, as a triggerer runs a trigger: Airflow imports the trigger's class first
#: (on the loop; nothing to do about that), then the trigger runs. Prints the modules first imported on
#: the loop's thread while it ran.
_IMPORTS_ON_THE_LOOP = """
import asyncio, json, sys, threading
import airflow.sdk.execution_time.supervisor  # loaded long before any trigger in a triggerer
from airflow_provider_cerebraform.triggers.cerebraform import CerebraformTaskTrigger

loop_thread, imported = threading.get_ident(), []

def audit(event, args):
    if event == "import" and threading.get_ident() == loop_thread:
        imported.append(args[0])

async def main():
    sys.addaudithook(audit)
    return [e.payload async for e in CerebraformTaskTrigger(sys.argv[1], "image", poll_interval=0.1).run()]

events = asyncio.run(main())
print(json.dumps({"events": events, "imported": imported}))
"""


def test_the_trigger_imports_the_hook_off_the_loop(cerebraform_emulator: EmulatorHandle) -> None:
    """
    The first trigger of a triggerer imports the hook's module (requests, the media and budget code):
    in a worker thread, so the loop every trigger of the process shares goes on meanwhile.
    """
    import subprocess
    import sys

    request_id = submit(cerebraform_emulator, "imports off the loop")
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS_ON_THE_LOOP, request_id],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert [event["status"] for event in answer["events"]] == ["done"], answer["events"]
    heavy = [m for m in answer["imported"] if m.startswith(("airflow_provider_cerebraform", "requests"))]
    assert heavy == [], f"imported on the event loop: {heavy}"
