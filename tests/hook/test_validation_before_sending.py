"""Invalid parameters are refused by the hook before any request: nothing arrives, nothing is charged."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_cerebraform.exceptions import CerebraformValidationError

from .conftest import api_counts, balance

if TYPE_CHECKING:
    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

    from .conftest import HookCalls

SUBMISSIONS: list[tuple[str, dict[str, Any], str]] = [
    ("", {"kind": "image"}, "prompt"),
    ("   \n\t", {"kind": "image"}, "prompt"),
    ("x" * 1001, {"kind": "image"}, "prompt"),
    ("a cat", {"kind": "audio"}, "kind"),
    ("a cat", {"kind": "video", "duration": 7}, "duration"),
    ("a cat", {"kind": "video", "duration": "10s"}, "duration"),
    ("a cat", {"kind": "image", "duration": 5}, "duration"),
    ("a cat", {"kind": "image", "aspect_ratio": "wide"}, "aspect_ratio"),
    ("a cat", {"kind": "image", "aspect_ratio": "0:1"}, "aspect_ratio"),
    ("a cat", {"kind": "image", "image_url": "ftp://example.com/cat.png"}, "image_url"),
    ("a cat", {"kind": "video", "image_url": "/local/cat.png"}, "image_url"),
]


def assert_nothing_sent(emulator: EmulatorHandle) -> None:
    assert api_counts(emulator) == dict.fromkeys(("submit", "status", "result", "credits", "media"), 0)
    stats = emulator.admin.stats()
    assert stats["submissions"]["total"] == 0 and stats["tasks"] == []
    assert balance(emulator) == 1000


@pytest.mark.parametrize(
    ("prompt", "params", "field"), SUBMISSIONS, ids=[f"{case[2]}-{n}" for n, case in enumerate(SUBMISSIONS)]
)
async def test_invalid_submission_is_refused_before_any_request(
    calls: HookCalls, emulator: EmulatorHandle, prompt: str, params: dict[str, Any], field: str
) -> None:
    params = dict(params)
    kind = params.pop("kind")

    with pytest.raises(CerebraformValidationError, match=rf"Invalid {field}\b") as caught:
        await calls.submit(kind, prompt, **params)

    assert caught.value.http_status is None
    assert_nothing_sent(emulator)


@pytest.mark.parametrize(
    ("kind", "request_id", "field"),
    [
        ("image", "../../_emulator/reset", "request_id"),
        ("image", "", "request_id"),
        ("video", "x" * 200, "request_id"),
        ("gif", "0123456789abcdef", "kind"),
    ],
)
async def test_invalid_status_or_result_call_is_refused_before_any_request(
    calls: HookCalls, emulator: EmulatorHandle, kind: str, request_id: str, field: str
) -> None:
    with pytest.raises(CerebraformValidationError, match=rf"Invalid {field}\b"):
        await calls.status(kind, request_id)
    with pytest.raises(CerebraformValidationError, match=rf"Invalid {field}\b"):
        await calls.result(kind, request_id)

    assert_nothing_sent(emulator)
