"""
Media downloads follow the protocol's one retry policy: a 429 waits its ``Retry-After`` (not the
short backoff of a transient failure), through the hook's ``store_media`` that the operators use, over
real HTTP.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from airflow_provider_cerebraform.emulator import EmulatorAdminError
from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook

if TYPE_CHECKING:
    from pathlib import Path

    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

RETRY_AFTER = 2


def finished_image(emulator: EmulatorHandle) -> str:
    request_id = CerebraformHook().submit("image", "a lighthouse, media retry test")
    try:
        emulator.admin.complete_task(request_id)
    except EmulatorAdminError as error:
        if error.status != 409:  # 409: it had already finished on its own
            raise
    return request_id


def test_a_429_on_a_media_download_waits_retry_after(emulator: EmulatorHandle, tmp_path: Path) -> None:
    """The connection's backoff is 0.02 s (``emulator`` fixture): only Retry-After explains 2 s."""
    from airflow.sdk import ObjectStoragePath

    request_id = finished_image(emulator)
    hook = CerebraformHook()
    result = hook.get_result("image", request_id)
    # A first download without faults: imports and the emulator's rendering are out of the timing.
    hook.store_media(result, ObjectStoragePath(f"file://{tmp_path / 'warm'}"))
    emulator.admin.set_faults(
        {"endpoint": "media", "status": 429, "fail_next": 1, "retry_after": RETRY_AFTER}
    )
    started = time.monotonic()
    (entry,) = hook.store_media(result, ObjectStoragePath(f"file://{tmp_path / 'out'}"))
    waited = time.monotonic() - started
    assert waited >= RETRY_AFTER, f"retried after {waited:.2f} s, before Retry-After: {RETRY_AFTER} s"
    assert (tmp_path / "out" / entry.path.rsplit("/", 1)[-1]).stat().st_size == entry.bytes > 0
    stats = emulator.admin.stats()
    assert stats["requests"]["media"] == 3  # the warm-up, the 429, the retry
    assert stats["responses"]["429"] == 1


def test_a_429_asking_for_more_than_the_in_process_wait_fails_at_once(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    request_id = finished_image(emulator)
    emulator.admin.set_faults({"endpoint": "media", "status": 429, "fail_next": 1, "retry_after": 3600})
    hook = CerebraformHook(max_rate_limit_wait=5)
    result = hook.get_result("image", request_id)
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cerebraform.exceptions import CerebraformMediaError

    started = time.monotonic()
    try:
        hook.store_media(result, ObjectStoragePath(f"file://{tmp_path}"))
    except CerebraformMediaError as error:
        assert "rate-limited 1 times" in str(error) and "3600 s" in str(error)
    else:
        raise AssertionError("a one-hour Retry-After was waited out in-process")
    assert time.monotonic() - started < 5
    assert list(tmp_path.iterdir()) == []  # nothing half-written
