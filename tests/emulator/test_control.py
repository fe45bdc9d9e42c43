"""The unauthenticated ``/_emulator/`` control surface and the EmulatorAdmin client."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
import requests

from airflow_provider_cerebraform.emulator import EmulatorAdmin, EmulatorAdminError, key_label

from .conftest import DEV_KEY, FREE_KEY, Api, assert_error

if TYPE_CHECKING:
    from airflow_provider_cerebraform.emulator import CerebraformEmulator


def test_health(emu: CerebraformEmulator) -> None:
    health = EmulatorAdmin(emu.url).health()
    assert health["status"] == "ok" and health["url"] == emu.url


def test_stats_counts_requests_responses_and_task_timings(api: Api, emu: CerebraformEmulator) -> None:
    emu.state.configure({"image_seconds": 4.0})  # 0.1 s real
    before = time.time()
    request_id = api.submit_id("image", prompt="stats please")
    api.wait_status("image", request_id, {2})
    api.result("image", request_id)
    api.get("/ai/v1/user/credits")
    api.get("/nowhere")
    stats = emu.admin.stats()
    label = key_label(DEV_KEY)
    assert stats["submissions"] == {"total": 1, "by_key": {label: 1}}
    assert stats["requests"]["submit"] == 1 and stats["requests"]["result"] == 1
    assert stats["requests"]["credits"] == 1 and stats["requests"]["other"] == 1
    assert stats["requests"]["status"] >= 1
    assert stats["responses"]["201"] == 1 and stats["responses"]["404"] == 1
    assert stats["credits"][label] == 999 and stats["credits"]["anonymous"] == 1000
    (task,) = stats["tasks"]
    assert task["request_id"] == request_id and task["kind"] == "image" and task["status"] == 2
    assert task["prompt"] == "stats please" and task["key"] == label
    assert task["polls"] == stats["requests"]["status"]
    assert before <= task["created_at"] < task["done_at"] <= task["first_terminal_poll_at"] <= time.time()
    assert task["done_at"] - task["created_at"] == pytest.approx(0.1, abs=0.01)
    assert task["first_terminal_poll_at"] - task["done_at"] < 0.5
    assert task["result_fetches"] == 1


def test_reset_restores_startup_state_and_applies_overrides(api: Api, emu: CerebraformEmulator) -> None:
    admin = emu.admin
    api.submit_id()
    admin.add_key("temporary-key", "free")
    admin.set_credits(DEV_KEY, 3)
    admin.configure(images_per_task=4)
    config = admin.reset(image_seconds=1.5)
    assert config["image_seconds"] == 1.5 and config["images_per_task"] == 1
    stats = admin.stats()
    assert stats["tasks"] == [] and stats["submissions"]["total"] == 0
    assert stats["credits"][key_label(DEV_KEY)] == 1000
    assert stats["requests"] == {  # only this stats call since the reset
        "submit": 0,
        "status": 0,
        "result": 0,
        "credits": 0,
        "media": 0,
        "control": 1,
    }
    assert_error(Api(emu.url, "temporary-key").get("/ai/v1/user/credits"), 401)
    assert admin.reset()["image_seconds"] == 12.0  # overrides last until the next reset


def test_configure_changes_values_and_refuses_bad_ones(emu: CerebraformEmulator) -> None:
    admin = emu.admin
    config = admin.configure(time_scale=100, media_bytes=None, url_ttl=60, failure_rate=0.25)
    assert config["time_scale"] == 100 and config["url_ttl"] == 60 and config["failure_rate"] == 0.25
    assert emu.config.time_scale == 100
    assert admin.config()["time_scale"] == 100
    for bad in (
        {"time_scale": 0},
        {"time_scale": "fast"},
        {"images_per_task": 0},
        {"failure_rate": 1.5},
        {"media_bytes": -1},
        {"no_such_field": 1},
        {"port": 1234},
        {"keys": []},
        {"credits": True},
    ):
        with pytest.raises(EmulatorAdminError) as raised:
            admin.configure(**bad)
        assert raised.value.status == 400 and raised.value.body["code"] == 400


def test_config_view_never_shows_keys(emu: CerebraformEmulator) -> None:
    text = requests.get(emu.url + "/_emulator/config", timeout=5).text
    assert DEV_KEY not in text and FREE_KEY not in text
    assert key_label(FREE_KEY) in text


def test_set_credits_by_key_label_or_anonymous(emu: CerebraformEmulator) -> None:
    admin = emu.admin
    assert admin.set_credits(DEV_KEY, 7) == {"key": key_label(DEV_KEY), "credits": 7}
    assert Api(emu.url).get("/ai/v1/user/credits").json() == {"credits": 7}
    admin.set_credits(key_label(FREE_KEY), 8)
    assert Api(emu.url, FREE_KEY).get("/ai/v1/user/credits").json() == {"credits": 8}
    admin.set_credits(None, 9)
    assert Api(emu.url, None).get("/ai/v1/user/credits").json() == {"credits": 9}
    with pytest.raises(EmulatorAdminError) as raised:
        admin.set_credits("unknown", 1)
    assert raised.value.status == 404
    with pytest.raises(EmulatorAdminError) as raised:
        admin.set_credits(DEV_KEY, -1)
    assert raised.value.status == 400


def test_add_key_with_tier_and_credits(emu: CerebraformEmulator) -> None:
    added = emu.admin.add_key("new-paid-key", tier="paid", credits=42)
    assert added == {"key": key_label("new-paid-key"), "tier": "paid", "credits": 42}
    assert Api(emu.url, "new-paid-key").get("/ai/v1/user/credits").json() == {"credits": 42}
    for tier, key in (("gold", "k"), ("free", ""), ("free", "has space")):
        with pytest.raises(EmulatorAdminError) as raised:
            emu.admin.add_key(key, tier=tier)
        assert raised.value.status == 400


def test_fail_and_complete_tasks(api: Api, emu: CerebraformEmulator) -> None:
    emu.state.configure({"image_seconds": 3600})
    first, second = api.submit_id(), api.submit_id()
    failed = emu.admin.fail_task(first, "out of GPUs")
    assert failed["status"] == -1 and failed["message"] == "out of GPUs"
    assert api.status("image", first).json() == {"status": -1, "message": "out of GPUs"}
    assert_error(api.result("image", first), 409, "task_failed")
    emu.admin.complete_task(second)
    assert api.status("image", second).json()["status"] == 2
    assert api.result("image", second).status_code == 200
    with pytest.raises(EmulatorAdminError) as raised:
        emu.admin.fail_task(second)
    assert raised.value.status == 409
    with pytest.raises(EmulatorAdminError) as raised:
        emu.admin.fail_task("unknown")
    assert raised.value.status == 404
    third = api.submit_id()
    assert emu.admin.fail_task(third)["message"].startswith("Generation failed")


def test_unknown_control_endpoint_and_wrong_method(emu: CerebraformEmulator) -> None:
    assert_error(requests.get(emu.url + "/_emulator/nothing", timeout=5), 404)
    response = requests.get(emu.url + "/_emulator/reset", timeout=5)
    assert_error(response, 405)
    assert response.headers["Allow"] == "POST"
    assert_error(requests.post(emu.url + "/_emulator/config", data=b"{", timeout=5), 400)
    assert_error(requests.post(emu.url + "/_emulator/config", json=[1], timeout=5), 400)


def test_in_process_state_is_directly_inspectable(api: Api, emu: CerebraformEmulator) -> None:
    request_id = api.submit_id("video", duration=10)
    task = emu.state.tasks[request_id]
    assert task.kind == "video" and task.cost == 10
    assert emu.state.credits_of(DEV_KEY) == 990
    assert emu.admin.task(request_id)["duration"] == 10
