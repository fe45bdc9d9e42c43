"""The public API over real HTTP: every endpoint, auth, validation, credits, status progression, failures."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
import requests

from airflow_provider_cerebraform.emulator import FAIL_MARKER, key_label
from airflow_provider_cerebraform.emulator.state import DEFAULT_FAIL_MESSAGE

from .conftest import DEV_KEY, FREE_KEY, PAID_KEY, Api, assert_error

if TYPE_CHECKING:
    from airflow_provider_cerebraform.emulator import CerebraformEmulator


def test_image_flow_submit_status_result(api: Api, emu: CerebraformEmulator) -> None:
    submitted = api.submit("image", aspect_ratio="1:1")
    assert submitted.status_code == 201
    assert submitted.headers["Content-Type"] == "application/json"
    request_id = submitted.json()["request_id"]
    assert set(submitted.json()) == {"request_id"}

    status = api.status("image", request_id)
    assert status.status_code == 200
    assert set(status.json()) == {"status", "message"}
    done = api.wait_status("image", request_id, {2})
    assert done == {"status": 2, "message": "Task completed."}

    result = api.result("image", request_id)
    assert result.status_code == 200
    (item,) = result.json()["results"]
    assert item["url"].startswith(emu.url + "/media/")
    assert item["content_type"] == "image/png"
    assert (item["width"], item["height"]) == (512, 512)


def test_video_flow_and_result_fields(api: Api) -> None:
    request_id = api.submit_id("video", prompt="a river", duration=10, aspect_ratio="16:9")
    api.wait_status("video", request_id, {2})
    (item,) = api.result("video", request_id).json()["results"]
    assert item["content_type"] == "video/mp4"
    assert item["duration"] == 10
    assert (item["width"], item["height"]) == (320, 180)


def test_status_goes_queued_running_done_in_scaled_time(api: Api, emu: CerebraformEmulator) -> None:
    emu.state.configure({"image_seconds": 20.0, "time_scale": 40.0})  # 0.5 s real
    started = time.monotonic()
    request_id = api.submit_id("image")
    seen: list[int] = []
    while not seen or seen[-1] != 2:
        status = api.status("image", request_id).json()["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        assert time.monotonic() - started < 5
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    assert seen == [0, 1, 2]
    assert 0.45 <= elapsed < 1.5
    task = emu.state.tasks[request_id]
    assert task.finished - task.created == pytest.approx(0.5)


def test_credits_endpoint_and_debits(api: Api) -> None:
    assert api.get("/ai/v1/user/credits").json() == {"credits": 1000}
    api.submit_id("image")
    api.submit_id("video", duration=5)
    api.submit_id("video", duration=10)
    assert api.get("/ai/v1/user/credits").json() == {"credits": 1000 - 1 - 5 - 10}


def test_images_per_task_charges_per_image(api: Api, emu: CerebraformEmulator) -> None:
    emu.state.configure({"images_per_task": 3, "image_seconds": 0})
    request_id = api.submit_id("image")
    results = api.result("image", request_id).json()["results"]
    assert len(results) == 3 and len({r["url"] for r in results}) == 3
    assert api.get("/ai/v1/user/credits").json() == {"credits": 997}


@pytest.mark.parametrize(
    ("duration", "expected"),
    [(5, 5), (10, 10), (10.0, 10), (7, 5), ("10", 5), (None, 5), (True, 5), (-10, 5), ([10], 5)],
)
def test_invalid_duration_silently_becomes_5(api: Api, emu: CerebraformEmulator, duration, expected) -> None:
    request_id = api.submit_id("video", duration=duration)
    task = emu.state.tasks[request_id]
    assert task.submission.duration == expected
    assert task.cost == expected  # 5 credits per 5 seconds


def test_omitted_duration_is_5_and_default_aspect_is_9_16(api: Api, emu: CerebraformEmulator) -> None:
    response = api.post("/ai/v1/to-video", json={"prompt": "x"})
    task = emu.state.tasks[response.json()["request_id"]]
    assert task.submission.duration == 5
    assert task.submission.aspect_ratio == "9:16"
    assert (task.width, task.height) == (180, 320)


def test_missing_auth_header_is_anonymous_with_its_own_balance(emu: CerebraformEmulator) -> None:
    anonymous = Api(emu.url, key=None)
    assert anonymous.get("/ai/v1/user/credits").json() == {"credits": 1000}
    request_id = anonymous.submit_id("image")
    assert anonymous.get("/ai/v1/user/credits").json() == {"credits": 999}
    assert Api(emu.url).get("/ai/v1/user/credits").json() == {"credits": 1000}
    assert anonymous.status("image", request_id).status_code == 200
    # Another key cannot see the anonymous task.
    assert_error(Api(emu.url).status("image", request_id), 404, "task_not_found")


@pytest.mark.parametrize(
    "header",
    ["Bearer nope", "Bearer", "Basic Y2YtZGV2LWtleTo=", "cf-dev-key", "", "Bearer  "],
)
def test_unknown_key_or_malformed_header_is_401(emu: CerebraformEmulator, header: str) -> None:
    for method, path in [
        ("POST", "/ai/v1/to-image"),
        ("GET", "/ai/v1/user/credits"),
        ("GET", "/ai/v1/to-image/status/abc"),
        ("GET", "/ai/v1/to-video/result/abc"),
    ]:
        response = requests.request(
            method, emu.url + path, headers={"Authorization": header}, json={"prompt": "x"}, timeout=5
        )
        assert_error(response, 401)


def test_bearer_scheme_is_case_insensitive(emu: CerebraformEmulator) -> None:
    response = requests.get(
        emu.url + "/ai/v1/user/credits", headers={"Authorization": f"bearer {DEV_KEY}"}, timeout=5
    )
    assert response.status_code == 200


def test_default_key_can_be_disabled(emu: CerebraformEmulator) -> None:
    emu.state.startup_config = emu.state.startup_config.updated({"default_key": False})
    try:
        emu.state.reset()
        assert_error(Api(emu.url).get("/ai/v1/user/credits"), 401, "invalid_api_key")
        assert Api(emu.url, FREE_KEY).get("/ai/v1/user/credits").status_code == 200
    finally:
        emu.state.startup_config = emu.state.startup_config.updated({"default_key": True})


def test_per_key_starting_credits(emu: CerebraformEmulator) -> None:
    assert Api(emu.url, PAID_KEY).get("/ai/v1/user/credits").json() == {"credits": 50}
    assert Api(emu.url, FREE_KEY).get("/ai/v1/user/credits").json() == {"credits": 1000}


def test_402_when_short_creates_and_debits_nothing(emu: CerebraformEmulator) -> None:
    client = Api(emu.url, PAID_KEY)
    emu.state.set_credits(PAID_KEY, 9)
    body = assert_error(client.submit("video", duration=10), 402, "insufficient_credits")
    assert "10" in body["msg"] and "9" in body["msg"]
    assert client.get("/ai/v1/user/credits").json() == {"credits": 9}
    assert emu.state.tasks == {}
    assert client.submit("video", duration=5).status_code == 201
    assert client.get("/ai/v1/user/credits").json() == {"credits": 4}


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({}, "prompt is required"),
        ({"prompt": None}, "prompt is required"),
        ({"prompt": 5}, "prompt must be a string"),
        ({"prompt": ["a"]}, "prompt must be a string"),
        ({"prompt": ""}, "empty"),
        ({"prompt": " \t\n\u3000"}, "empty"),
        ({"prompt": "x" * 1001}, "too long"),
        ({"prompt": "x", "aspect_ratio": "16x9"}, "aspect_ratio"),
        ({"prompt": "x", "aspect_ratio": "0:1"}, "aspect_ratio"),
        ({"prompt": "x", "aspect_ratio": "-1:1"}, "aspect_ratio"),
        ({"prompt": "x", "aspect_ratio": "1.5:1"}, "aspect_ratio"),
        ({"prompt": "x", "aspect_ratio": 1.5}, "aspect_ratio"),
        ({"prompt": "x", "aspect_ratio": "\u0661:\u0661"}, "aspect_ratio"),
        ({"prompt": "x", "image_url": "ftp://example.com/a.png"}, "image_url"),
        ({"prompt": "x", "image_url": "/relative.png"}, "image_url"),
        ({"prompt": "x", "image_url": "https://"}, "image_url"),
        ({"prompt": "x", "image_url": "https://exa mple.com/"}, "image_url"),
        ({"prompt": "x", "image_url": 3}, "image_url"),
    ],
)
@pytest.mark.parametrize("kind", ["image", "video"])
def test_bad_parameters_are_400(api: Api, emu: CerebraformEmulator, kind: str, payload, fragment) -> None:
    body = assert_error(api.post(f"/ai/v1/to-{kind}", json=payload), 400)
    assert fragment in body["msg"]
    assert emu.state.tasks == {}
    assert api.get("/ai/v1/user/credits").json() == {"credits": 1000}


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"[1, 2]", b'"prompt"', b"null", b"\xff\xfe", b"[" * 100_000, b'{"prompt": "x"'],
)
def test_non_json_or_non_object_body_is_400(api: Api, raw: bytes) -> None:
    response = api.post("/ai/v1/to-image", data=raw, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_request")


def test_prompt_length_counts_python_characters(api: Api) -> None:
    assert api.submit(prompt="\U0001f600" * 1000).status_code == 201  # 1000 chars, 4000 UTF-8 bytes
    assert api.submit(prompt="x" * 1000).status_code == 201
    assert_error(api.submit(prompt="\U0001f600" * 1001), 400)


@pytest.mark.parametrize(
    "payload",
    [
        {"prompt": "x", "aspect_ratio": "16:9"},
        {"prompt": "x", "aspect_ratio": "007:3"},
        {"prompt": "x", "aspect_ratio": "1" * 60 + ":3"},
        {"prompt": "x", "aspect_ratio": None, "image_url": None},
        {"prompt": "x", "image_url": "HTTPS://example.com/a.png?x=1#f"},
        {"prompt": "x", "image_url": "http://127.0.0.1:9/a"},
        {"prompt": "  x  ", "unknown_field": {"ignored": True}},
    ],
)
def test_valid_parameters_are_accepted(api: Api, payload) -> None:
    assert api.post("/ai/v1/to-image", json=payload).status_code == 201


def test_auth_is_checked_before_validation(emu: CerebraformEmulator) -> None:
    response = requests.post(
        emu.url + "/ai/v1/to-image", data=b"garbage", headers={"Authorization": "Bearer wrong"}, timeout=5
    )
    assert_error(response, 401)


def test_validation_is_checked_before_credits(api: Api, emu: CerebraformEmulator) -> None:
    emu.state.set_credits(DEV_KEY, 0)
    assert_error(api.submit(prompt=""), 400)
    assert_error(api.submit(), 402)


@pytest.mark.parametrize("what", ["status", "result"])
def test_unknown_other_kind_or_other_key_request_id_is_404(emu: CerebraformEmulator, what: str) -> None:
    owner, other = Api(emu.url), Api(emu.url, FREE_KEY)
    request_id = owner.submit_id("image")
    assert_error(owner.get(f"/ai/v1/to-image/{what}/does-not-exist"), 404, "task_not_found")
    assert_error(owner.get(f"/ai/v1/to-video/{what}/{request_id}"), 404, "task_not_found")
    assert_error(other.get(f"/ai/v1/to-image/{what}/{request_id}"), 404, "task_not_found")


def test_result_before_done_is_409(api: Api, emu: CerebraformEmulator) -> None:
    emu.state.configure({"image_seconds": 3600})
    request_id = api.submit_id("image")
    body = assert_error(api.result("image", request_id), 409, "result_not_ready")
    assert "not finished" in body["msg"]


def test_fail_marker_fails_the_task_when_it_would_finish(api: Api) -> None:
    request_id = api.submit_id("image", prompt=f"a cat {FAIL_MARKER}")
    assert api.status("image", request_id).json()["status"] in (0, 1)
    body = api.wait_status("image", request_id, {-1, 2})
    assert body == {"status": -1, "message": DEFAULT_FAIL_MESSAGE}
    error = assert_error(api.result("image", request_id), 409, "task_failed")
    assert DEFAULT_FAIL_MESSAGE in error["msg"]


def test_fail_marker_with_custom_message(api: Api) -> None:
    request_id = api.submit_id("video", prompt=f"river {FAIL_MARKER}:GPU melted  \nmore text")
    body = api.wait_status("video", request_id, {-1, 2})
    assert body == {"status": -1, "message": "GPU melted"}


def test_failure_rate_is_seeded_and_reproducible(emu: CerebraformEmulator) -> None:
    def outcomes() -> list[bool]:
        emu.state.reset({"failure_rate": 0.5, "seed": 7, "image_seconds": 0})
        client = Api(emu.url)
        ids = [client.submit_id("image") for _ in range(16)]
        return [client.status("image", rid).json()["status"] == -1 for rid in ids]

    first = outcomes()
    assert first == outcomes()
    assert 0 < sum(first) < 16


def test_credits_check_order_auth_then_rate_limit(emu: CerebraformEmulator) -> None:
    emu.state.configure({"free_polls_per_minute": 1, "time_scale": 1})
    client = Api(emu.url, FREE_KEY)
    assert client.get("/ai/v1/user/credits").status_code == 200
    assert_error(client.get("/ai/v1/user/credits"), 429)
    # A bad key is refused before any limit is looked at.
    assert_error(Api(emu.url, "bad").get("/ai/v1/user/credits"), 401)


def test_openapi_describes_the_public_api(emu: CerebraformEmulator) -> None:
    response = requests.get(emu.url + "/openapi.json", timeout=5)
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.0")
    paths = document["paths"]
    for path in [
        "/ai/v1/to-image",
        "/ai/v1/to-video",
        "/ai/v1/to-image/status/{request_id}",
        "/ai/v1/to-image/result/{request_id}",
        "/ai/v1/to-video/status/{request_id}",
        "/ai/v1/to-video/result/{request_id}",
        "/ai/v1/user/credits",
    ]:
        assert path in paths
    assert not any(p.startswith("/_emulator") for p in paths)
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["code", "error", "msg"]
    responses = paths["/ai/v1/to-image"]["post"]["responses"]
    assert {"201", "400", "401", "402", "429", "5XX"} <= set(responses)
    assert "Retry-After" in responses["429"]["headers"]
    assert paths["/ai/v1/to-image/result/{request_id}"]["get"]["responses"]["409"]


def test_unknown_path_is_404_and_wrong_method_405(api: Api, emu: CerebraformEmulator) -> None:
    assert_error(api.get("/ai/v1/to-audio"), 404, "not_found")
    assert_error(api.get("/"), 404, "not_found")
    assert_error(api.get("/ai/v1/to-image/status/"), 404, "not_found")
    response = api.get("/ai/v1/to-image")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "POST"
    assert_error(api.post("/ai/v1/user/credits"), 405)
    for method in ("DELETE", "PUT", "PATCH", "OPTIONS", "PROPFIND"):
        assert_error(requests.request(method, emu.url + "/ai/v1/to-video", timeout=5), 405)


def test_stats_name_keys_only_by_label(api: Api, emu: CerebraformEmulator) -> None:
    api.submit_id("image")
    text = requests.get(emu.url + "/_emulator/stats", timeout=5).text
    assert DEV_KEY not in text and FREE_KEY not in text and PAID_KEY not in text
    assert key_label(DEV_KEY) in text
    assert key_label(DEV_KEY) == "key#" + __import__("hashlib").sha256(DEV_KEY.encode()).hexdigest()[:8]
