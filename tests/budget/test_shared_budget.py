"""
The ``host`` and ``redis`` rate budgets with real processes, a real Redis server and the emulator
over HTTP: worker processes on one free key share one creation budget (every prompt paid once, no
429 storm, the limit used in full), a 429's pause reaches every process, the async path never
blocks the event loop, and a Redis that stops or freezes mid-run leaves tasks pacing on their own
after one warning and a bounded delay.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
import redis
import requests
from loop_audit import run_on_one_debug_loop

from airflow_provider_cerebraform import budget
from airflow_provider_cerebraform.budget import SharedKeyPacer
from airflow_provider_cerebraform.client import CerebraformClient
from airflow_provider_cerebraform.models import Bucket, ConnectionSettings, Tier
from airflow_provider_cerebraform.triggers.cerebraform import CerebraformTaskTrigger

from .conftest import run_workers

if TYPE_CHECKING:
    from pathlib import Path

    from airflow_provider_cerebraform.budget.redis_server import RedisServer
    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

FREE_KEY = "cf-free-key-shared-budget"
CREATE_LIMIT = 10  # the free tier's creations per hour
# An emulated hour lasts 5 s: three windows of a burst take about 10 s.
BURST_SCALE = 720.0
WORKERS = 4


def free_settings(
    emulator: EmulatorHandle, budget_name: str, tmp_path: Path, redis_url: str | None, scale: float
) -> ConnectionSettings:
    return ConnectionSettings(
        base_url=emulator.url,
        api_key=FREE_KEY,
        tier=Tier.FREE,
        time_scale=scale,
        budget=budget_name,
        budget_dir=str(tmp_path / "budget") if budget_name == "host" else None,
        redis_url=redis_url if budget_name == "redis" else None,
    )


@pytest.fixture(params=["host", "redis"])
def shared_budget(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return "redis", server.url
    return "host", None


def windows_from_first(created: list[float], window: float, count: int) -> list[int]:
    counts = [0] * count
    for at in created:
        k = int((at - created[0]) // window)
        if k < count:
            counts[k] += 1
    return counts


@pytest.mark.timeout(600)
def test_worker_processes_share_one_creation_budget(
    cerebraform_emulator: EmulatorHandle, shared_budget: tuple[str, str | None], tmp_path: Path
) -> None:
    name, redis_url = shared_budget
    admin = cerebraform_emulator.admin
    admin.reset(time_scale=BURST_SCALE)
    admin.add_key(FREE_KEY, tier="free", credits=1000)
    settings = free_settings(cerebraform_emulator, name, tmp_path, redis_url, BURST_SCALE)
    count = 3 * CREATE_LIMIT
    prompts = [f"{name} burst prompt {n}" for n in range(count)]
    run = run_workers(settings, [prompts[n::WORKERS] for n in range(WORKERS)], tmp_path)

    outcomes = [result for results in run.results for result in results]
    assert [result for result in outcomes if "error" in result] == []
    stats = admin.stats()
    paid = Counter(task["prompt"] for task in stats["tasks"])
    assert paid == Counter(prompts)  # every prompt paid exactly once
    refused = int(stats["rate_limited"].get("submit", 0))
    assert refused / count <= 0.05, f"{refused} answers 429 for {count} submissions"
    window = 3600.0 / BURST_SCALE
    per_window = windows_from_first(sorted(task["created_at"] for task in stats["tasks"]), window, 3)
    share = sum(per_window) / (3 * CREATE_LIMIT)
    print(
        f"\n{name} budget, {WORKERS} processes, {count} prompts on a free key: per window {per_window} "
        f"(limit {CREATE_LIMIT}), share {share:.0%}, 429s {refused}, {run.seconds:.1f} s"
    )
    assert share >= 0.95, per_window


@pytest.mark.timeout(600)
def test_a_429_pause_is_seen_by_another_process(
    cerebraform_emulator: EmulatorHandle, shared_budget: tuple[str, str | None], tmp_path: Path
) -> None:
    name, redis_url = shared_budget
    admin = cerebraform_emulator.admin
    # An emulated hour lasts 6 minutes: the pause outlasts the worker's start (it imports Airflow).
    scale = 10.0
    admin.reset(time_scale=scale)
    admin.add_key(FREE_KEY, tier="free", credits=1000)
    # Someone else (outside any budget) uses the key's whole hour.
    session = requests.Session()
    session.trust_env = False
    for n in range(CREATE_LIMIT):
        answer = session.post(
            f"{cerebraform_emulator.url}/ai/v1/to-image",
            json={"prompt": f"outside {n}"},
            headers={"Authorization": f"Bearer {FREE_KEY}"},
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
    settings = free_settings(cerebraform_emulator, name, tmp_path, redis_url, scale)
    # One worker process submits, is refused with Retry-After, and gives up at once (max_wait 0).
    run = run_workers(settings, [["refused prompt"]], tmp_path, max_wait=0)
    (outcome,) = run.results[0]
    assert outcome["error"] == "rate_limited", outcome
    retry_after = outcome["retry_after"]
    assert retry_after >= 1

    # This process never saw that 429, yet its next creation waits for the pause.
    window = SharedKeyPacer(settings).window(Bucket.CREATE)
    reservation = window.reserve()
    assert retry_after - run.seconds - 0.5 <= reservation.delay <= retry_after + 0.1, reservation
    window.cancel(reservation)
    # An in-process pacer, the contrast: it knows nothing of the pause.
    alone = CerebraformClient(ConnectionSettings(**{**settings.__dict__, "budget": "process"}))
    assert alone.protocol.pacer.window(Bucket.CREATE).reserve().delay == 0.0
    assert admin.stats()["rate_limited"].get("submit", 0) == 1


def test_a_deferred_task_keeps_its_slot_in_the_shared_queue(
    shared_budget: tuple[str, str | None], tmp_path: Path
) -> None:
    # Three "processes" on one key, each with a store of its own: a worker refused a slot keeps it
    # while its task defers; another worker asks meanwhile and queues behind it; the task comes back
    # in a third process, ahead of its slot, and gets that slot, not one behind everyone else.
    name, redis_url = shared_budget
    WINDOW = 20.0  # seconds; long enough for a loaded machine's store calls
    settings = ConnectionSettings(
        base_url="http://127.0.0.1:9",
        api_key="cf-kept-slot-key",
        tier=Tier.FREE,
        time_scale=3600.0 / WINDOW,
        budget=name,
        budget_dir=str(tmp_path / "budget") if name == "host" else None,
        redis_url=redis_url,
    )

    def process() -> Any:
        if name == "host":
            return SharedKeyPacer(settings, store=budget.FileStore(tmp_path / "budget")).window(Bucket.CREATE)
        store = budget.RedisStore(redis_url or "")
        return SharedKeyPacer(settings, store=store).window(Bucket.CREATE)

    first, second, resumed = process(), process(), process()

    def slot_at(reservation: Any, asked: float) -> float:
        return asked + reservation.delay

    assert all(first.reserve(0.0).admitted for _ in range(CREATE_LIMIT))
    asked = time.monotonic()
    refused = first.reserve(1.0, hold="task-7")
    assert not refused.admitted and refused.slot is not None  # kept
    assert refused.delay == pytest.approx(WINDOW + first.rules.margin, abs=1.0)
    kept_at = slot_at(refused, asked)
    # Creations are not spaced: the next window's other 9 slots free at the same moment as the kept one.
    for _ in range(CREATE_LIMIT - 1):
        asked = time.monotonic()
        assert slot_at(second.reserve(None), asked) == pytest.approx(kept_at, abs=1.0)
    assert not second.reserve(1.0).admitted  # no slot kept without hold
    # That window is full with the kept slot: it was not given to anyone else.
    asked = time.monotonic()
    later = second.reserve(None)
    assert slot_at(later, asked) >= kept_at + WINDOW - 1.0
    # Back ahead of the slot (too early for this caller's in-process wait): still kept, not lost.
    assert not resumed.reserve(0.5, hold="task-7").admitted
    asked = time.monotonic()
    back = resumed.reserve(2 * WINDOW, hold="task-7")
    assert back.admitted
    assert slot_at(back, asked) == pytest.approx(kept_at, abs=1.0)  # the very slot it was kept


# -- the store fails mid-run --------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["stopped", "frozen"])
def test_redis_failing_mid_run_falls_back_with_one_warning_and_a_bounded_delay(
    cerebraform_emulator: EmulatorHandle,
    redis_server: RedisServer,
    failure: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = ConnectionSettings(
        base_url=cerebraform_emulator.url,
        api_key=cerebraform_emulator.api_key,
        tier=Tier.PAID,
        time_scale=cerebraform_emulator.time_scale,
        budget="redis",
        redis_url=redis_server.url,
    )
    client = CerebraformClient(settings)
    client.session.trust_env = False
    caplog.set_level(logging.WARNING, logger="airflow_provider_cerebraform.budget")
    before = [_timed(client.get_credits) for _ in range(10)]
    assert redis.Redis.from_url(redis_server.url).keys("cerebraform:budget:*")  # the budget is in Redis
    if failure == "stopped":
        redis_server.stop()
    else:
        redis_server.pause()
    try:
        after = [_timed(client.get_credits) for _ in range(30)]
    finally:
        if failure == "frozen":
            redis_server.resume()
    warnings = [r for r in caplog.records if r.name == "airflow_provider_cerebraform.budget"]
    print(
        f"\nredis {failure} mid-run: calls before {max(before) * 1000:.0f} ms at most; after, the first "
        f"{after[0] * 1000:.0f} ms, then at most {max(after[1:]) * 1000:.0f} ms; warnings {len(warnings)}"
    )
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert redis_server.url not in warnings[0].getMessage()
    # The delay is bounded by the socket timeout (plus the request itself), paid once, not per call.
    assert after[0] <= budget.STORE_TIMEOUT * 2 + 0.5
    assert max(after[1:]) < budget.STORE_TIMEOUT


def _timed(call: Any) -> float:
    began = time.monotonic()
    call()
    return time.monotonic() - began


# -- the async path ------------------------------------------------------------------------------


@pytest.mark.parametrize("redis_state", ["up", "frozen"])
def test_triggers_on_a_redis_budget_never_block_the_loop(
    cerebraform_emulator: EmulatorHandle,
    redis_server: RedisServer,
    redis_state: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = cerebraform_emulator.admin
    admin.configure(free_tasks_per_hour=100_000, image_seconds=cerebraform_emulator.time_scale * 0.5)
    admin.add_key(FREE_KEY, tier="free", credits=1000)
    monkeypatch.setenv(
        "AIRFLOW_CONN_CEREBRAFORM_SHARED",
        json.dumps(
            {
                "conn_type": "cerebraform",
                "host": cerebraform_emulator.url,
                "password": FREE_KEY,
                "extra": {
                    "tier": "free",
                    "time_scale": cerebraform_emulator.time_scale,
                    "budget": "redis",
                    "redis_url": redis_server.url,
                },
            }
        ),
    )
    session = requests.Session()
    session.trust_env = False
    request_ids = [
        session.post(
            f"{cerebraform_emulator.url}/ai/v1/to-image",
            json={"prompt": f"async budget {n}"},
            headers={"Authorization": f"Bearer {FREE_KEY}"},
            timeout=10,
        ).json()["request_id"]
        for n in range(16)
    ]
    triggers = [
        CerebraformTaskTrigger(rid, "image", cerebraform_conn_id="cerebraform_shared", poll_interval=0.1)
        for rid in request_ids
    ]

    async def drain(trigger: CerebraformTaskTrigger) -> list[Any]:
        return [event async for event in trigger.run()]

    caplog.set_level(logging.WARNING, logger="airflow_provider_cerebraform.budget")
    if redis_state == "frozen":
        redis_server.pause()
    try:
        run = run_on_one_debug_loop([drain(trigger) for trigger in triggers])
        events, blocking, worst = run.events, run.blocking_calls, run.worst_lag
    finally:
        if redis_state == "frozen":
            redis_server.resume()
    warnings = [r for r in caplog.records if r.name == "airflow_provider_cerebraform.budget"]
    lag = f"worst loop lag {worst * 1000:.1f} ms"
    print(f"\n16 triggers, redis {redis_state}: {lag}, {len(warnings)} warnings")
    assert [len(fired) for fired in events] == [1] * 16
    assert {fired[0].payload["status"] for fired in events} == {"done"}
    # Blocking calls are found by the audit; slow callbacks are not asserted (a busy machine makes them).
    assert blocking == []
    assert admin.stats()["rate_limited"].get("poll", 0) == 0
    if redis_state == "up":
        assert warnings == []
        assert redis.Redis.from_url(redis_server.url).keys("cerebraform:budget:*:poll:slots")
    else:
        assert len(warnings) == 1
