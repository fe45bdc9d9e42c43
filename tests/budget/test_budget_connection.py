"""The connection's ``budget``, ``budget_dir`` and ``redis_url`` extras, read through the hook."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from airflow_provider_cerebraform.budget import SharedKeyPacer
from airflow_provider_cerebraform.exceptions import CerebraformValidationError
from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook
from airflow_provider_cerebraform.models import Bucket
from airflow_provider_cerebraform.pacing import KeyPacer

if TYPE_CHECKING:
    from pathlib import Path

    from airflow_provider_cerebraform.budget.redis_server import RedisServer
    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle


def _connect(monkeypatch: pytest.MonkeyPatch, emulator: EmulatorHandle, **extra: object) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CEREBRAFORM_DEFAULT", emulator.connection_json(**extra))


def test_the_default_budget_is_the_process(
    cerebraform_emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = CerebraformHook()
    assert hook.get_conn().protocol.settings.budget == "process"
    assert isinstance(hook.get_conn().protocol.pacer, KeyPacer)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"budget": "cluster"}, "budget='cluster': expected 'process', 'host' or 'redis'"),
        ({"budget": "redis"}, "redis_url: budget='redis' needs a redis://"),
        ({"budget": "redis", "redis_url": "http://127.0.0.1:6379"}, "redis_url: budget='redis' needs"),
    ],
)
def test_a_bad_budget_is_refused_before_any_request(
    cerebraform_emulator: EmulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    extra: dict[str, object],
    message: str,
) -> None:
    _connect(monkeypatch, cerebraform_emulator, **extra)
    with pytest.raises(CerebraformValidationError, match="Invalid connection field " + message):
        CerebraformHook().get_credits()
    assert cerebraform_emulator.admin.stats()["requests"].get("credits", 0) == 0


def test_host_budget_files_are_named_by_a_hash_never_the_key(
    cerebraform_emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _connect(monkeypatch, cerebraform_emulator, budget="host", budget_dir=str(tmp_path))
    hook = CerebraformHook()
    assert hook.get_credits() == 1000
    assert isinstance(hook.get_conn().protocol.pacer, SharedKeyPacer)
    files = sorted(path.name for path in tmp_path.iterdir())
    assert files and all(path.endswith((".json", ".lock")) for path in files)
    for path in tmp_path.iterdir():
        assert cerebraform_emulator.api_key not in path.name
        assert cerebraform_emulator.api_key not in path.read_text()
    (poll,) = [path for path in tmp_path.iterdir() if path.name.endswith("poll.json")]
    assert len(json.loads(poll.read_text())["s"]) == 1  # the credits GET took one polling slot


async def test_redis_budget_through_the_hook_sync_and_async(
    cerebraform_emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    _connect(monkeypatch, cerebraform_emulator, budget="redis", redis_url=redis_server.url)
    hook = CerebraformHook()
    assert hook.get_credits() == 1000
    assert await hook.aget_credits() == 1000
    settings = hook.get_conn().protocol.settings
    assert "redis_url" not in repr(settings)
    window = hook.get_conn().protocol.pacer.window(Bucket.POLL)
    assert window.does_io and window.key.startswith("cerebraform:budget:")
    assert cerebraform_emulator.api_key not in window.key
