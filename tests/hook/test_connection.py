"""
The ``cerebraform`` connection: reading it from ``AIRFLOW_CONN_*`` JSON, invalid extras, anonymous
use, ``test_connection()``, what goes on the wire (User-Agent) and that the key never shows.
"""

from __future__ import annotations

import json
import logging
import traceback
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import structlog

from airflow_provider_cerebraform.exceptions import (
    CerebraformError,
    CerebraformNotFoundError,
    CerebraformRateLimitError,
    CerebraformResultNotReadyError,
    CerebraformServerError,
    CerebraformSubmissionUncertainError,
    CerebraformValidationError,
)
from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook
from airflow_provider_cerebraform.models import Bucket, Tier

from .conftest import HookCalls, api_counts, balance, emulator_connection, set_connection

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

SECRET = "cfk-Sup3rS3cret-7c1e9a0b5d4f"
WRONG = "cfk-Wr0ngS3cret-00112233445566"


# -- test_connection ----------------------------------------------------------------------------------


def test_test_connection_reports_the_balance(emulator: EmulatorHandle) -> None:
    emulator.admin.set_credits(emulator.api_key, 321)

    assert CerebraformHook().test_connection() == (True, "Connected: 321 credits")
    assert api_counts(emulator)["credits"] == 1


def test_test_connection_with_a_wrong_key_shows_the_api_message(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator_connection(monkeypatch, emulator, key=WRONG)

    ok, message = CerebraformHook().test_connection()

    assert (ok, message) == (False, "Unknown API key.")
    assert api_counts(emulator)["credits"] == 1  # a 401 is not retried


def test_test_connection_to_nothing_fails_cleanly(monkeypatch: pytest.MonkeyPatch, closed_port: Any) -> None:
    port = closed_port.getsockname()[1]
    set_connection(
        monkeypatch, "cerebraform_default", host=f"http://127.0.0.1:{port}", password=SECRET, retry_limit=0
    )

    ok, message = CerebraformHook().test_connection()

    assert not ok and "connect error" in message and SECRET not in message


# -- anonymous use -----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["sync", "async"])
async def test_connection_without_a_key_runs_anonymously_and_warns(
    cerebraform_emulator: EmulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    transport: str,
) -> None:
    emulator = cerebraform_emulator
    emulator.admin.set_credits(None, 50)
    set_connection(
        monkeypatch, "cerebraform_anon", host=emulator.url, password=None, time_scale=emulator.time_scale
    )
    calls = HookCalls(CerebraformHook("cerebraform_anon"), transport)

    with structlog.testing.capture_logs() as logs:
        assert await calls.credits() == 50
        request_id = await calls.submit("image", "an anonymous cat")
        await calls.status("image", request_id)

    warnings = [entry["event"] for entry in logs if entry["log_level"] == "warning"]
    # Airflow 3.0's hooks log through the standard library's logging, not structlog.
    warnings += [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("no API key" in text and "anonymous quota" in text for text in warnings), logs
    stats = emulator.admin.stats()
    assert stats["submissions"]["by_key"] == {"anonymous": 1}
    assert stats["credits"]["anonymous"] == 49
    assert emulator.admin.task(request_id)["key"] == "anonymous"
    # Anonymous calls share one daily window for every kind of request.
    pacer = calls.hook.get_conn().protocol.pacer
    assert pacer.window(Bucket.POLL) is pacer.window(Bucket.CREATE)


# -- reading the connection ------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["sync", "async"])
async def test_connection_from_env_json_with_plain_and_prefixed_extras(
    cerebraform_emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    emulator = cerebraform_emulator
    emulator.admin.add_key(SECRET, "free")
    monkeypatch.setenv(
        "AIRFLOW_CONN_CEREBRAFORM_DEFAULT",
        json.dumps(
            {
                "conn_type": "cerebraform",
                "host": emulator.url + "/",
                "password": SECRET,
                "extra": {
                    "extra__cerebraform__tier": "free",
                    "time_scale": str(emulator.time_scale),
                    "extra__cerebraform__retry_limit": "1",
                    "retry_limit": "5",  # the prefixed form (what the UI stores) wins
                    "retry_backoff": 0.01,
                    "extra__cerebraform__timeout": "7.5",
                    "rate_share": "0.5",
                    "verify_ssl": "false",
                },
            }
        ),
    )
    hook = CerebraformHook()
    calls = HookCalls(hook, transport)

    assert await calls.credits() == 1000
    client = hook.get_conn() if transport == "sync" else await hook.aget_conn()
    settings = client.protocol.settings
    assert settings.base_url == emulator.url
    assert settings.api_key == SECRET
    assert (settings.tier, settings.max_retries, settings.timeout, settings.rate_share) == (
        Tier.FREE,
        1,
        7.5,
        0.5,
    )
    assert (settings.time_scale, settings.verify_ssl) == (emulator.time_scale, False)
    assert client.protocol.pacer.window(Bucket.POLL).ceiling == 10  # half of the free tier's 20

    # retry_limit=1 reached the wire: one retry of a 503, not three or five.
    emulator.admin.set_faults({"endpoint": "status", "status": 503, "fail_next": 10})
    with pytest.raises(CerebraformServerError, match="after 1 retries"):
        await calls.status("image", "0123456789abcdef")
    assert api_counts(emulator)["status"] == 2


def test_connection_with_host_port_and_schema_fields(
    cerebraform_emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = urlsplit(cerebraform_emulator.url)
    set_connection(
        monkeypatch,
        "cerebraform_split",
        host=url.hostname,
        port=url.port,
        schema="http",
        password=cerebraform_emulator.api_key,
        tier="paid",
    )

    hook = CerebraformHook("cerebraform_split")

    assert hook.get_credits() == 1000
    assert hook.get_conn().protocol.settings.base_url == cerebraform_emulator.url


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tier": "gold"}, "tier"),
        ({"extra__cerebraform__tier": "Gold"}, "tier"),
        ({"timeout": "abc"}, "timeout"),
        ({"extra__cerebraform__timeout": "-1"}, "timeout"),
        ({"retry_limit": "many"}, "retry_limit"),
        ({"rate_share": 2}, "rate_share"),
        ({"verify_ssl": "perhaps"}, "verify_ssl"),
    ],
)
async def test_invalid_extras_raise_a_validation_error_naming_the_field(
    cerebraform_emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], field: str
) -> None:
    set_connection(monkeypatch, "cerebraform_bad", host=cerebraform_emulator.url, password=SECRET, **extra)

    with pytest.raises(CerebraformValidationError, match=rf"Invalid connection field {field}="):
        CerebraformHook("cerebraform_bad").get_credits()
    with pytest.raises(CerebraformValidationError, match=rf"Invalid connection field {field}="):
        await CerebraformHook("cerebraform_bad").aget_credits()
    ok, message = CerebraformHook("cerebraform_bad").test_connection()
    assert not ok and f"Invalid connection field {field}=" in message

    assert api_counts(cerebraform_emulator)["credits"] == 0


# -- on the wire -----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["sync", "async"])
async def test_requests_carry_the_user_agent_and_bearer_key(
    cerebraform_emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    from importlib.metadata import version

    emulator = cerebraform_emulator
    emulator.admin.add_key(SECRET, "paid", 7)  # only this key's balance is 7: the bearer key was sent
    set_connection(monkeypatch, "cerebraform_rec", host=emulator.url, password=SECRET)

    assert await HookCalls(CerebraformHook("cerebraform_rec"), transport).credits() == 7

    headers = emulator.admin.stats()["client_headers"]
    ((agent, count),) = headers["User-Agent"].items()
    assert count == 1
    assert f"airflow-provider-cerebraform/{version('airflow-provider-cerebraform')}" in agent
    assert f"apache-airflow/{version('apache-airflow')}" in agent
    assert headers["Accept"] == {"application/json": 1}


# -- the key never shows ---------------------------------------------------------------------------


async def _provoke_everything(
    calls: HookCalls, emulator: EmulatorHandle, errors: list[BaseException]
) -> None:
    """Every endpoint, and one of each error the hook can raise against the emulator."""

    async def expect(error_type: type[CerebraformError], call: Callable[[], Any]) -> None:
        with pytest.raises(error_type) as caught:
            await call()
        errors.append(caught.value)

    admin = emulator.admin
    await calls.credits()
    request_id = await calls.submit("image", "a secret-keeping cat")
    await expect(CerebraformResultNotReadyError, lambda: calls.result("image", request_id))
    admin.complete_task(request_id)
    await calls.status("image", request_id)
    await calls.result("image", request_id)
    await expect(CerebraformNotFoundError, lambda: calls.status("video", request_id))
    await expect(CerebraformValidationError, lambda: calls.submit("video", "x", duration=7))
    await expect(
        CerebraformValidationError, lambda: calls.submit("image", "x", image_url="https://e.com/a b")
    )
    admin.set_faults({"endpoint": "submit", "status": 503, "fail_next": 1, "after_commit": True})
    await expect(CerebraformSubmissionUncertainError, lambda: calls.submit("image", "x"))
    admin.set_faults({"endpoint": "submit", "drop_next": 1})
    await expect(CerebraformSubmissionUncertainError, lambda: calls.submit("image", "x"))
    admin.set_faults({"endpoint": "status", "status": 500, "fail_next": 10, "message": "broken"})
    await expect(CerebraformServerError, lambda: calls.status("image", request_id))
    admin.set_faults({"endpoint": "credits", "status": 429, "fail_next": 1, "retry_after": 1})
    await calls.credits()  # waited out
    admin.clear_faults()


async def test_the_key_never_appears_in_logs_errors_or_reprs(
    cerebraform_emulator: EmulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emulator = cerebraform_emulator
    emulator.admin.add_key(SECRET, "paid")
    emulator_connection(monkeypatch, emulator, key=SECRET)
    emulator_connection(monkeypatch, emulator, "cerebraform_wrong", key=WRONG)
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    hook = CerebraformHook(max_rate_limit_wait=3)

    with structlog.testing.capture_logs() as structured:
        for transport in ("sync", "async"):
            await _provoke_everything(HookCalls(hook, transport), emulator, errors)
        assert hook.test_connection()[0]
        wrong = CerebraformHook("cerebraform_wrong")
        assert wrong.test_connection() == (False, "Unknown API key.")
        with pytest.raises(CerebraformError) as unauthorized:
            await wrong.aget_credits()
        errors.append(unauthorized.value)
        # Last: this pauses the key's pacing for a minute.
        emulator.admin.set_faults({"endpoint": "status", "status": 429, "fail_next": 1, "retry_after": 60})
        with pytest.raises(CerebraformRateLimitError) as rate_limited:
            hook.get_status("image", "0123456789abcdef")
        errors.append(rate_limited.value)

    assert balance(emulator, SECRET) < 1000  # the run did reach the service with the key
    assert len(errors) == 2 * 7 + 2
    texts = [
        caplog.text,
        "\n".join(record.getMessage() for record in caplog.records),
        repr(structured),
        capsys.readouterr().out,
        repr(hook),
        repr(hook.get_conn()),
        repr(hook._async_client),
        repr(hook.get_conn().protocol),
        repr(hook.get_conn().protocol.settings),
        str(hook.get_conn().protocol.settings),
    ]
    for error in errors:
        texts += [str(error), repr(error), repr(error.args), "".join(traceback.format_exception(error))]
        texts += [repr(vars(error))]
    # The capture was live: the HTTP libraries logged their requests at DEBUG.
    assert any(record.name.startswith(("urllib3", "httpcore", "httpx")) for record in caplog.records)
    for text in texts:
        assert SECRET not in text
        assert WRONG not in text
