"""Every endpoint and every error type, over real HTTP to the emulator, through both transports."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
import requests

from airflow_provider_cerebraform.core import ApiRequest
from airflow_provider_cerebraform.exceptions import (
    CerebraformAuthError,
    CerebraformInsufficientCreditsError,
    CerebraformNotFoundError,
    CerebraformRateLimitError,
    CerebraformResultNotReadyError,
    CerebraformServerError,
    CerebraformSubmissionUncertainError,
    CerebraformValidationError,
)
from airflow_provider_cerebraform.models import Bucket, GenerationKind, TaskState, TaskStatus

from .conftest import api_counts, balance, emulator_connection

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

    from .conftest import HookCalls

PROMPT = "a cinematic photo of a cat wearing a wizard hat"
UNKNOWN_ID = "0123456789abcdef0123456789abcdef"


async def poll_until_terminal(
    calls: HookCalls, kind: str, request_id: str, timeout: float = 15.0
) -> list[TaskState]:
    """Poll the status endpoint until the task ends; returns every state seen."""
    deadline = time.monotonic() + timeout
    seen: list[TaskState] = []
    while True:
        state = await calls.status(kind, request_id)
        seen.append(state)
        if state.status.is_terminal:
            return seen
        assert time.monotonic() < deadline, f"task never finished: {seen[-1]}"
        await asyncio.sleep(0.05)


def assert_progression(states: list[TaskState]) -> None:
    """Statuses only move forward through queued, running, done."""
    codes = [int(state.status) for state in states]
    assert set(codes) <= {0, 1, 2}, codes
    assert codes == sorted(codes), codes
    assert codes[-1] == 2, codes


# -- endpoints -------------------------------------------------------------------------------------


async def test_image_submit_status_result_and_credits(calls: HookCalls, emulator: EmulatorHandle) -> None:
    before = await calls.credits()
    assert before == balance(emulator) == 1000

    request_id = await calls.submit(
        "image", PROMPT, image_url="https://example.com/start.png", aspect_ratio="1:1"
    )

    task = emulator.admin.task(request_id)
    assert (task["kind"], task["prompt"], task["aspect_ratio"], task["image_url"]) == (
        "image",
        PROMPT,
        "1:1",
        "https://example.com/start.png",
    )
    states = await poll_until_terminal(calls, "image", request_id)
    assert_progression(states)
    assert all(state.kind is GenerationKind.IMAGE and state.request_id == request_id for state in states)
    assert states[-1].is_done and states[-1].message
    assert emulator.admin.task(request_id)["polls"] == len(states)

    result = await calls.result("image", request_id)
    assert (result.kind, result.request_id, len(result.items)) == (GenerationKind.IMAGE, request_id, 1)
    item = result.items[0]
    assert item.url.startswith(f"{emulator.url}/media/{request_id}")
    assert item.content_type == "image/png"
    # Keys beyond url and content_type are kept, with the values the API sent.
    assert item.extra == {"width": task["width"], "height": task["height"]} == {"width": 512, "height": 512}
    assert item.to_dict() == {"url": item.url, "content_type": "image/png", "width": 512, "height": 512}

    after = await calls.credits()
    assert before - after == task["cost"] == 1
    assert after == balance(emulator)


@pytest.mark.parametrize(("duration", "cost"), [(10, 10), (None, 5)])
async def test_video_submit_status_result_and_credits(
    calls: HookCalls, emulator: EmulatorHandle, duration: int | None, cost: int
) -> None:
    before = await calls.credits()
    request_id = await calls.submit(
        GenerationKind.VIDEO,
        "a river through a forest",
        image_url="https://example.com/frame.png",
        aspect_ratio="16:9",
        duration=duration,
    )

    task = emulator.admin.task(request_id)
    assert (task["kind"], task["aspect_ratio"], task["duration"], task["cost"]) == (
        "video",
        "16:9",
        duration or 5,
        cost,
    )
    assert task["image_url"] == "https://example.com/frame.png"
    assert await calls.credits() == before - cost

    states = await poll_until_terminal(calls, "video", request_id)
    assert_progression(states)
    result = await calls.result("video", request_id)
    assert [item.content_type for item in result.items] == ["video/mp4"]
    item = result.items[0]
    assert item.url.startswith(f"{emulator.url}/media/{request_id}")
    assert item.extra == {"width": task["width"], "height": task["height"], "duration": duration or 5}
    assert item.extra["width"] > item.extra["height"]


async def test_status_reports_queued_running_done_and_failed(
    calls: HookCalls, emulator: EmulatorHandle
) -> None:
    # Long jobs so that nothing moves unless the test says so.
    emulator.admin.configure(image_seconds=4000, queue_fraction=0.5)
    queued = await calls.submit("image", PROMPT)
    emulator.admin.configure(queue_fraction=0.0)
    running = await calls.submit("image", PROMPT)
    failing = await calls.submit("image", PROMPT)

    assert (await calls.status("image", queued)).status is TaskStatus.QUEUED
    state = await calls.status("image", running)
    assert state.status is TaskStatus.RUNNING and not state.status.is_terminal
    assert "%" in (state.message or "")

    emulator.admin.complete_task(queued)
    emulator.admin.fail_task(failing, "Generation failed: the wizard hat melted")
    done = await calls.status("image", queued)
    assert done.is_done and done.status is TaskStatus.DONE
    failed = await calls.status("image", failing)
    assert failed.is_failed and failed.message == "Generation failed: the wizard hat melted"
    assert failed.to_dict()["status_name"] == "failed"


# -- errors ----------------------------------------------------------------------------------------


async def test_400_from_the_service_is_a_validation_error(calls: HookCalls, emulator: EmulatorHandle) -> None:
    # The client validates everything it sends, so a real 400 needs a body it would never build:
    # the same protocol and transport carry a hand-made request with a bad image_url.
    client = calls.hook.get_conn()
    protocol = client.protocol
    request = ApiRequest(
        "POST", GenerationKind.IMAGE.path, "submit image", Bucket.CREATE, {"prompt": PROMPT, "image_url": "x"}
    )
    conversation = protocol._exchange(request, lambda response: protocol._parse_submit(request, response))
    with pytest.raises(CerebraformValidationError) as caught:
        if calls.transport == "sync":
            client._run(conversation)
        else:
            await (await calls.hook.aget_conn())._run(conversation)

    error = caught.value
    assert (error.http_status, error.error) == (400, "invalid_parameter")
    assert error.api_message == "image_url must be an absolute http(s) URL."
    assert error.api_message in str(error)
    stats = emulator.admin.stats()
    assert stats["requests"]["submit"] == 1 and stats["responses"]["400"] == 1
    assert stats["submissions"]["total"] == 0 and balance(emulator) == 1000


async def test_injected_400_is_a_validation_error_with_the_api_message(
    calls: HookCalls, emulator: EmulatorHandle
) -> None:
    emulator.admin.set_faults({"endpoint": "submit", "status": 400, "fail_next": 1, "message": "bad knob"})

    with pytest.raises(CerebraformValidationError, match="HTTP 400: bad knob") as caught:
        await calls.submit("image", PROMPT)

    assert caught.value.api_message == "bad knob"
    assert api_counts(emulator)["submit"] == 1  # a 400 is final: no retry
    assert emulator.admin.stats()["submissions"]["total"] == 0


async def test_401_unknown_key(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch, make_calls: Callable[..., HookCalls]
) -> None:
    emulator_connection(monkeypatch, emulator, "cerebraform_wrong", key="cf-not-a-real-key-1234")
    calls = make_calls("cerebraform_wrong")
    raw = requests.get(
        f"{emulator.url}/ai/v1/user/credits",
        headers={"Authorization": "Bearer cf-not-a-real-key-1234"},
        timeout=10,
    )

    with pytest.raises(CerebraformAuthError) as caught:
        await calls.credits()

    error = caught.value
    assert (error.http_status, error.error) == (401, "invalid_api_key")
    assert error.api_message == raw.json()["msg"] == "Unknown API key."
    assert "Unknown API key." in str(error)
    assert "cf-not-a-real-key-1234" not in str(error)
    assert api_counts(emulator)["credits"] == 2  # the raw one and the hook's: 401 is not retried


async def test_402_insufficient_credits_charges_nothing(calls: HookCalls, emulator: EmulatorHandle) -> None:
    emulator.admin.set_credits(emulator.api_key, 4)

    with pytest.raises(CerebraformInsufficientCreditsError) as caught:
        await calls.submit("video", "a river", duration=5)  # costs 5

    assert (caught.value.http_status, caught.value.error) == (402, "insufficient_credits")
    assert caught.value.api_message and caught.value.api_message in str(caught.value)
    assert await calls.credits() == 4 == balance(emulator)
    assert emulator.admin.stats()["submissions"]["total"] == 0
    assert api_counts(emulator)["submit"] == 1  # not retried

    # What the balance does cover still goes through.
    await calls.submit("image", PROMPT)
    assert await calls.credits() == 3


async def test_404_unknown_request_id(calls: HookCalls, emulator: EmulatorHandle) -> None:
    with pytest.raises(CerebraformNotFoundError) as status_error:
        await calls.status("image", UNKNOWN_ID)
    with pytest.raises(CerebraformNotFoundError) as result_error:
        await calls.result("video", UNKNOWN_ID)
    # An id of the other kind is unknown too.
    image_id = await calls.submit("image", PROMPT)
    with pytest.raises(CerebraformNotFoundError):
        await calls.status("video", image_id)

    for caught in (status_error, result_error):
        assert caught.value.http_status == 404
        assert caught.value.api_message and caught.value.api_message in str(caught.value)
    assert status_error.value.endpoint == "status image"
    assert result_error.value.endpoint == "result video"
    counts = api_counts(emulator)
    assert (counts["status"], counts["result"]) == (2, 1)  # 404 is not retried


async def test_409_result_before_done(calls: HookCalls, emulator: EmulatorHandle) -> None:
    emulator.admin.configure(image_seconds=4000)
    pending = await calls.submit("image", PROMPT)
    failed = await calls.submit("image", PROMPT)
    emulator.admin.fail_task(failed, "no wizards today")

    with pytest.raises(CerebraformResultNotReadyError) as not_ready:
        await calls.result("image", pending)
    with pytest.raises(CerebraformResultNotReadyError) as of_failed:
        await calls.result("image", failed)

    assert (not_ready.value.http_status, not_ready.value.error) == (409, "result_not_ready")
    assert (of_failed.value.http_status, of_failed.value.error) == (409, "task_failed")
    assert api_counts(emulator)["result"] == 2

    emulator.admin.complete_task(pending)
    assert len((await calls.result("image", pending)).items) == 1


async def test_429_waits_retry_after_and_succeeds(calls: HookCalls, emulator: EmulatorHandle) -> None:
    emulator.admin.set_faults({"endpoint": "credits", "status": 429, "fail_next": 1, "retry_after": 1})

    started = time.monotonic()
    assert await calls.credits() == 1000
    waited = time.monotonic() - started

    assert waited >= 1.0  # the Retry-After of the answer
    stats = emulator.admin.stats()
    assert stats["requests"]["credits"] == 2
    assert stats["responses"]["429"] == 1 and stats["faults_injected"]


async def test_real_429_of_the_service_is_waited_out(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch, make_calls: Callable[..., HookCalls]
) -> None:
    """Another client (not paced by this process) uses up a free key's polls; the hook waits."""
    key = "cf-free-429-key-5555"
    emulator.admin.add_key(key, "free")
    emulator_connection(monkeypatch, emulator, "cerebraform_free", key=key, tier="free")
    with requests.Session() as other:
        other.headers["Authorization"] = f"Bearer {key}"
        answers = [other.get(f"{emulator.url}/ai/v1/user/credits", timeout=10).status_code for _ in range(20)]
    assert answers == [200] * 20

    assert await make_calls("cerebraform_free").credits() == 1000

    stats = emulator.admin.stats()
    assert stats["rate_limited"] == {"poll": 1}
    assert stats["responses"]["429"] == 1
    assert stats["requests"]["credits"] == 22  # 20 others, the hook's 429 and its retry


def test_429_longer_than_max_rate_limit_wait_raises_with_retry_after(emulator: EmulatorHandle) -> None:
    from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook

    emulator.admin.set_faults({"endpoint": "status", "status": 429, "fail_next": 5, "retry_after": 30})
    hook = CerebraformHook(max_rate_limit_wait=2)

    started = time.monotonic()
    with pytest.raises(CerebraformRateLimitError) as caught:
        hook.get_status("image", UNKNOWN_ID)

    assert time.monotonic() - started < 20
    error = caught.value
    assert (error.retry_after, error.http_status, error.error) == (30, 429, "too_many_requests")
    assert "retry after 30 s" in str(error)
    assert api_counts(emulator)["status"] == 1


@pytest.mark.parametrize("endpoint", ["status", "result", "credits"])
async def test_5xx_on_a_get_is_retried(calls: HookCalls, emulator: EmulatorHandle, endpoint: str) -> None:
    request_id = await calls.submit("image", PROMPT)
    emulator.admin.complete_task(request_id)
    emulator.admin.set_faults({"endpoint": endpoint, "status": 503, "fail_next": 2})

    if endpoint == "status":
        assert (await calls.status("image", request_id)).is_done
    elif endpoint == "result":
        assert len((await calls.result("image", request_id)).items) == 1
    else:
        assert await calls.credits() == 999

    stats = emulator.admin.stats()
    assert stats["requests"][endpoint] == 3
    assert stats["responses"]["503"] == 2


async def test_5xx_beyond_the_retry_limit_is_a_server_error(
    calls: HookCalls, emulator: EmulatorHandle
) -> None:
    emulator.admin.set_faults(
        {"endpoint": "status", "status": 502, "fail_next": 100, "message": "gateway down"}
    )

    with pytest.raises(CerebraformServerError) as caught:
        await calls.status("image", UNKNOWN_ID)

    assert not isinstance(caught.value, CerebraformSubmissionUncertainError)
    assert (caught.value.http_status, caught.value.api_message) == (502, "gateway down")
    assert "after 3 retries" in str(caught.value)
    assert api_counts(emulator)["status"] == 4  # the first try and retry_limit (3) retries


async def test_dropped_connection_on_a_get_is_retried(calls: HookCalls, emulator: EmulatorHandle) -> None:
    emulator.admin.set_faults({"endpoint": "credits", "drop_next": 1})

    assert await calls.credits() == 1000

    stats = emulator.admin.stats()
    assert stats["requests"]["credits"] == 2 and stats["responses"]["dropped"] == 1
