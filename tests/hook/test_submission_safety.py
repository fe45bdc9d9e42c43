"""
The POST rule: a submission is retried only where the request certainly never reached the service
(connect errors) or was certainly refused (429); anything after which the task may exist raises
``CerebraformSubmissionUncertainError`` after exactly one POST.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from airflow_provider_cerebraform.exceptions import (
    CerebraformSubmissionUncertainError,
    CerebraformTransportError,
)

from .conftest import Forwarder, api_counts, balance, emulator_connection, set_connection, wait_for

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

    from .conftest import ConnectCounter, HookCalls

PROMPT = "a lighthouse in a storm"


@pytest.mark.parametrize("status", [500, 503])
async def test_5xx_after_commit_is_uncertain_and_not_resubmitted(
    calls: HookCalls, emulator: EmulatorHandle, status: int
) -> None:
    emulator.admin.set_faults({"endpoint": "submit", "status": status, "fail_next": 1, "after_commit": True})

    with pytest.raises(CerebraformSubmissionUncertainError) as caught:
        await calls.submit("image", PROMPT)

    assert caught.value.http_status == status
    assert "may have been created and charged" in str(caught.value)
    stats = emulator.admin.stats()
    assert stats["requests"]["submit"] == 1
    assert stats["submissions"]["total"] == 1  # the service did create it: exactly once
    assert balance(emulator) == 999


async def test_5xx_before_commit_is_uncertain_too(calls: HookCalls, emulator: EmulatorHandle) -> None:
    # The client cannot tell where the service failed: it never retries a 5xx submission.
    emulator.admin.set_faults({"endpoint": "submit", "status": 503, "fail_next": 1})

    with pytest.raises(CerebraformSubmissionUncertainError):
        await calls.submit("image", PROMPT)

    assert api_counts(emulator)["submit"] == 1
    assert emulator.admin.stats()["submissions"]["total"] == 0


@pytest.mark.parametrize("after_commit", [True, False])
async def test_dropped_submission_is_uncertain_and_not_resubmitted(
    calls: HookCalls, emulator: EmulatorHandle, after_commit: bool
) -> None:
    emulator.admin.set_faults({"endpoint": "submit", "drop_next": 1, "after_commit": after_commit})

    with pytest.raises(CerebraformSubmissionUncertainError, match="disconnected error"):
        await calls.submit("image", PROMPT)

    stats = emulator.admin.stats()
    assert stats["requests"]["submit"] == 1 and stats["responses"]["dropped"] == 1
    assert stats["submissions"]["total"] == (1 if after_commit else 0)


async def test_read_timeout_on_submission_is_uncertain(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch, make_calls: Callable[..., HookCalls]
) -> None:
    emulator_connection(monkeypatch, emulator, "cerebraform_slow", timeout=0.3)
    emulator.admin.set_faults({"endpoint": "submit", "latency": 1.0})

    with pytest.raises(CerebraformSubmissionUncertainError, match="timeout error"):
        await make_calls("cerebraform_slow").submit("image", PROMPT)

    assert api_counts(emulator)["submit"] == 1
    # The service was only slow: the task the hook gave up on exists, which is why it is not retried.
    wait_for(lambda: emulator.admin.stats()["submissions"]["total"] == 1)
    assert api_counts(emulator)["submit"] == 1


async def test_429_on_submission_is_retried_into_exactly_one_task(
    calls: HookCalls, emulator: EmulatorHandle
) -> None:
    emulator.admin.set_faults({"endpoint": "submit", "status": 429, "fail_next": 1, "retry_after": 1})

    request_id = await calls.submit("image", PROMPT)

    stats = emulator.admin.stats()
    assert stats["requests"]["submit"] == 2
    assert stats["responses"]["429"] == 1
    assert [task["request_id"] for task in stats["tasks"]] == [request_id]
    assert balance(emulator) == 999


@pytest.mark.parametrize("retry_limit", [0, 2])
async def test_closed_port_is_a_transport_error_after_the_retry_limit(
    emulator: EmulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    make_calls: Callable[..., HookCalls],
    closed_port: socket.socket,
    connect_attempts: Callable[[int], ConnectCounter],
    retry_limit: int,
) -> None:
    port = closed_port.getsockname()[1]
    counter = connect_attempts(port)
    set_connection(
        monkeypatch,
        "cerebraform_closed",
        host=f"http://127.0.0.1:{port}",
        password=emulator.api_key,
        tier="paid",
        retry_limit=retry_limit,
        retry_backoff=0.01,
    )
    calls = make_calls("cerebraform_closed")

    # A refused connection sent nothing, so even the paid POST is retried, and it ends as a
    # transport error, not as an uncertain submission.
    with pytest.raises(CerebraformTransportError) as submit_error:
        await calls.submit("image", PROMPT)
    assert not isinstance(submit_error.value, CerebraformSubmissionUncertainError)
    assert "connect error" in str(submit_error.value)
    assert f"after {retry_limit} retries" in str(submit_error.value)
    assert counter.attempts == retry_limit + 1

    with pytest.raises(CerebraformTransportError):
        await calls.status("image", "0123456789abcdef")
    assert counter.attempts == 2 * (retry_limit + 1)
    assert api_counts(emulator) == dict.fromkeys(("submit", "status", "result", "credits", "media"), 0)


async def test_submission_retried_until_the_port_opens_creates_one_task(
    emulator: EmulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    make_calls: Callable[..., HookCalls],
    closed_port: socket.socket,
    connect_attempts: Callable[[int], ConnectCounter],
) -> None:
    """The service comes up while the hook retries a refused POST: one task, no duplicate."""
    port = closed_port.getsockname()[1]
    counter = connect_attempts(port)
    set_connection(
        monkeypatch,
        "cerebraform_late",
        host=f"http://127.0.0.1:{port}",
        password=emulator.api_key,
        tier="paid",
        retry_limit=8,
        retry_backoff=0.05,
    )
    calls = make_calls("cerebraform_late")
    target = urlsplit(emulator.url)
    forwarder = Forwarder(closed_port, (target.hostname or "127.0.0.1", target.port or 80))
    outcome: dict[str, object] = {}

    def open_port_after_two_refusals() -> None:
        # Two attempts seen means the first one was refused and the hook is retrying.
        while counter.attempts < 2:
            if "done" in outcome:
                return
            threading.Event().wait(0.001)
        outcome["refused_before_listening"] = counter.attempts
        closed_port.listen(8)
        forwarder.start()

    opener = threading.Thread(target=open_port_after_two_refusals, daemon=True)
    opener.start()
    try:
        if calls.transport == "sync":
            request_id = await calls.submit("image", PROMPT)
        else:
            request_id = await asyncio.wait_for(calls.submit("image", PROMPT), timeout=30)
    finally:
        outcome["done"] = True
        opener.join(timeout=10)
        forwarder.stop()

    assert outcome["refused_before_listening"] >= 2
    assert forwarder.accepted == 1
    stats = emulator.admin.stats()
    assert stats["requests"]["submit"] == 1
    assert [task["request_id"] for task in stats["tasks"]] == [request_id]
