"""
Client-side pacing keeps bursts under the published limits: a free-tier key (20 polls a minute,
10 tasks an hour), windows compressed by the emulator's time scale. More polls than one window
allows are fired from threads, from coroutines on one loop and from two hooks; the emulator never
answers 429 and the calls spread over more than one window.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from airflow_provider_cerebraform.exceptions import CerebraformRateLimitError
from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook
from airflow_provider_cerebraform.models import PUBLISHED_LIMITS, Bucket, Tier

from .conftest import api_counts, emulator_connection

if TYPE_CHECKING:
    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

FREE_KEY = "cf-free-pacing-key-31337"
POLL_LIMIT = PUBLISHED_LIMITS[Tier.FREE][Bucket.POLL].limit  # 20
CREATE_LIMIT = PUBLISHED_LIMITS[Tier.FREE][Bucket.CREATE].limit  # 10
# Enough polls to need three windows: poll 41 may not be sent before two windows have passed.
POLLS = 2 * POLL_LIMIT + 5


def poll_window(emulator: EmulatorHandle) -> float:
    return PUBLISHED_LIMITS[Tier.FREE][Bucket.POLL].period / emulator.time_scale  # 1.5 s at scale 40


@pytest.fixture
def free_key(emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> str:
    """A free-tier key on the emulator behind two connections, ``cerebraform_free`` and ``_free2``."""
    emulator.admin.add_key(FREE_KEY, "free")
    for conn_id in ("cerebraform_free", "cerebraform_free2"):
        emulator_connection(monkeypatch, emulator, conn_id, key=FREE_KEY, tier="free")
    return FREE_KEY


def assert_never_rate_limited(emulator: EmulatorHandle, polls: int) -> None:
    stats = emulator.admin.stats()
    assert stats["rate_limited"] == {}
    assert "429" not in stats["responses"]
    assert api_counts(emulator)["status"] == polls


def assert_spread(starts: list[float], ends: list[float], emulator: EmulatorHandle) -> None:
    # Poll 41 cannot be admitted before two full windows after poll 1; and no window of the
    # completions may hold more than the limit (each completion follows its arrival).
    assert max(ends) - min(starts) >= 2 * poll_window(emulator)
    first_window = [end for end in ends if end < min(starts) + poll_window(emulator)]
    assert len(first_window) <= POLL_LIMIT


def test_polls_from_threads_stay_under_the_limit(emulator: EmulatorHandle, free_key: str) -> None:
    request_id = CerebraformHook("cerebraform_free").submit("image", "a paced cat")
    starts: list[float] = []
    ends: list[float] = []

    def poll_many(count: int) -> None:
        hook = CerebraformHook("cerebraform_free")  # one hook (and session) per thread
        for _ in range(count):
            starts.append(time.monotonic())
            hook.get_status("image", request_id)
            ends.append(time.monotonic())

    with ThreadPoolExecutor(max_workers=5) as pool:
        for future in [pool.submit(poll_many, POLLS // 5) for _ in range(5)]:
            future.result(timeout=60)

    assert len(ends) == POLLS
    assert_never_rate_limited(emulator, POLLS)
    assert_spread(starts, ends, emulator)


async def test_polls_from_coroutines_on_one_loop_stay_under_the_limit(
    emulator: EmulatorHandle, free_key: str
) -> None:
    hook = CerebraformHook("cerebraform_free")
    request_id = await hook.asubmit("image", "a paced cat")
    starts: list[float] = []
    ends: list[float] = []

    async def poll_once() -> None:
        starts.append(time.monotonic())
        await hook.aget_status("image", request_id)
        ends.append(time.monotonic())

    await asyncio.wait_for(asyncio.gather(*(poll_once() for _ in range(POLLS))), timeout=60)

    assert_never_rate_limited(emulator, POLLS)
    assert_spread(starts, ends, emulator)


def test_two_hook_instances_share_the_pacing_of_their_key(emulator: EmulatorHandle, free_key: str) -> None:
    first = CerebraformHook("cerebraform_free")
    second = CerebraformHook("cerebraform_free2")
    assert first.get_conn().protocol.pacer is second.get_conn().protocol.pacer
    request_id = first.submit("image", "a paced cat")
    starts: list[float] = []
    ends: list[float] = []

    def poll_many(hook: CerebraformHook, count: int) -> None:
        for _ in range(count):
            starts.append(time.monotonic())
            hook.get_status("image", request_id)
            ends.append(time.monotonic())

    # Each hook alone stays under the limit (POLLS/2 > POLL_LIMIT, so each needs two windows);
    # only a shared window keeps the two together under it.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(poll_many, hook, POLLS // 2 + 1) for hook in (first, second)]
        for future in futures:
            future.result(timeout=60)

    polls = 2 * (POLLS // 2 + 1)
    assert_never_rate_limited(emulator, polls)
    assert_spread(starts, ends, emulator)


def test_submissions_past_the_hourly_limit_are_refused_without_a_request(
    emulator: EmulatorHandle, free_key: str
) -> None:
    """The creation window (10 an hour, 90 s here) is used up: the 11th call would wait ~90 s,
    more than ``max_rate_limit_wait``, so it raises with ``retry_after`` instead of sending."""
    hook = CerebraformHook("cerebraform_free", max_rate_limit_wait=5)
    for number in range(CREATE_LIMIT):
        hook.submit("image", f"cat number {number}")

    with pytest.raises(CerebraformRateLimitError) as caught:
        hook.submit("image", "one cat too many")

    window = PUBLISHED_LIMITS[Tier.FREE][Bucket.CREATE].period / emulator.time_scale
    assert caught.value.error == "paced" and caught.value.http_status is None
    assert window * 0.8 < caught.value.retry_after <= window * 1.1
    stats = emulator.admin.stats()
    assert stats["requests"]["submit"] == CREATE_LIMIT and stats["rate_limited"] == {}
    assert stats["submissions"]["total"] == CREATE_LIMIT
