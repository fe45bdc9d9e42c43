"""Sliding-window rate limits under time scaling: 429 header and body, Retry-After, what counts."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .conftest import FREE_KEY, Api, ManualClock, assert_error

if TYPE_CHECKING:
    import requests

    from airflow_provider_cerebraform.emulator import CerebraformEmulator


def assert_429(response: requests.Response) -> int:
    body = assert_error(response, 429, "too_many_requests")
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    assert body == {
        "code": 429,
        "error": "too_many_requests",
        "msg": f"Rate limit exceeded. Try again in {retry_after} seconds.",
        "retry_after": retry_after,
    }
    return retry_after


def test_free_task_creation_limit_retry_after_and_refusals_not_counted(
    emu: CerebraformEmulator, clock: ManualClock
) -> None:
    emu.state.configure({"time_scale": 1800.0})  # the hour window lasts 2 real seconds
    client = Api(emu.url, FREE_KEY)
    for index in range(10):
        kind = "image" if index % 2 else "video"  # image and video count together
        assert client.submit(kind).status_code == 201
        clock.advance(0.1)  # the first submission leaves the window 2.0 s after it was made
    retry_after = assert_429(client.submit("image"))
    assert retry_after == math.ceil(2.0 - 1.0)
    for _ in range(20):  # hammering while refused must not extend the wait
        assert assert_429(client.submit("image")) <= retry_after
    assert emu.state.rate_limited["submit"] == 21

    clock.advance(0.99)  # 1.99 s after the first submission: still inside the window
    assert_429(client.submit("image"))
    clock.advance(0.01)  # exactly when the first admitted request leaves the window
    assert client.submit("image").status_code == 201
    assert_429(client.submit("image"))  # only one slot came free
    stats = emu.admin.stats()
    assert stats["rate_limited"]["submit"] == 23
    assert stats["responses"]["429"] == 23


def test_paid_task_creation_limit_is_200(emu: CerebraformEmulator, clock: ManualClock) -> None:
    emu.state.configure({"time_scale": 3600.0, "image_credits": 0})
    client = Api(emu.url)
    statuses = [client.submit("image").status_code for _ in range(201)]
    assert statuses[:200] == [201] * 200
    assert_429(client.submit("image"))


def test_every_get_counts_against_the_polling_limit(emu: CerebraformEmulator, clock: ManualClock) -> None:
    emu.state.configure({"time_scale": 60.0, "image_seconds": 0})  # the minute window lasts 1 s
    client = Api(emu.url, FREE_KEY)
    request_id = client.submit_id("image")
    for _ in range(7):
        assert client.status("image", request_id).status_code == 200
        assert client.result("image", request_id).status_code == 200
    for _ in range(6):
        assert client.get("/ai/v1/user/credits").status_code == 200
    assert assert_429(client.get("/ai/v1/user/credits")) == 1
    assert_429(client.status("image", request_id))
    assert_429(client.result("image", request_id))
    # Task creation has its own bucket, and other keys are not affected.
    assert client.submit("image").status_code == 201
    assert Api(emu.url).get("/ai/v1/user/credits").status_code == 200
    assert emu.state.rate_limited["poll"] == 3
    clock.advance(1.0)  # the minute, scaled, has passed
    assert client.get("/ai/v1/user/credits").status_code == 200


def test_paid_polling_limit_is_120_per_minute(emu: CerebraformEmulator, clock: ManualClock) -> None:
    emu.state.configure({"time_scale": 30.0})
    client = Api(emu.url)
    assert [client.get("/ai/v1/user/credits").status_code for _ in range(120)] == [200] * 120
    retry_after = assert_429(client.get("/ai/v1/user/credits"))
    assert retry_after == 2  # a 60 s window scaled by 30


def test_keys_have_separate_windows(emu: CerebraformEmulator) -> None:
    emu.state.configure({"time_scale": 1.0})
    emu.admin.add_key("second-free-key", tier="free")
    first, second = Api(emu.url, FREE_KEY), Api(emu.url, "second-free-key")
    for _ in range(10):
        assert first.submit().status_code == 201
    assert assert_429(first.submit()) > 3500  # about an hour, unscaled
    assert second.submit().status_code == 201


def test_anonymous_global_limit_is_shared_by_all_requests_without_a_key(
    emu: CerebraformEmulator, clock: ManualClock
) -> None:
    emu.state.configure({"time_scale": 43200.0, "image_credits": 0})  # the day lasts 2 real seconds
    one, two = Api(emu.url, key=None), Api(emu.url, key=None)
    codes = []
    for index in range(200):
        client = one if index % 2 else two
        response = client.submit("image") if index % 3 == 0 else client.get("/ai/v1/user/credits")
        codes.append(response.status_code)
    assert set(codes) == {200, 201}
    assert assert_429(one.get("/ai/v1/user/credits")) == 2
    assert_429(two.submit("image"))
    assert emu.state.rate_limited["anonymous"] == 2
    # Keyed callers are not part of the anonymous quota.
    assert Api(emu.url).get("/ai/v1/user/credits").status_code == 200
    clock.advance(2.0)  # the day, scaled, has passed
    assert one.get("/ai/v1/user/credits").status_code == 200


def test_rate_limit_comes_before_validation(emu: CerebraformEmulator) -> None:
    emu.state.configure({"time_scale": 1.0})
    client = Api(emu.url, FREE_KEY)
    for _ in range(10):
        assert_error(client.submit(prompt=""), 400)  # admitted, so counted, then refused by validation
    assert_429(client.submit(prompt=""))
