"""Fault injection: errors, after-commit errors, latency, dropped connections, broken media downloads."""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING

import pytest
import requests

from airflow_provider_cerebraform.emulator import EmulatorAdminError

from .conftest import Api, assert_error

if TYPE_CHECKING:
    from airflow_provider_cerebraform.emulator import CerebraformEmulator


@pytest.fixture(autouse=True)
def instant_jobs(emu: CerebraformEmulator) -> None:
    emu.state.configure({"image_seconds": 0, "video_seconds": 0})


def credits(emu: CerebraformEmulator) -> int:
    return emu.state.credits_of("cf-dev-key")


def test_fail_next_answers_the_status_then_recovers(api: Api, emu: CerebraformEmulator) -> None:
    emu.admin.set_faults({"endpoint": "submit", "fail_next": 2, "status": 500})
    assert_error(api.submit(), 500, "internal_server_error")
    assert_error(api.submit("video"), 500)
    assert api.submit().status_code == 201
    assert len(emu.state.tasks) == 1 and credits(emu) == 999  # refused submissions did nothing
    assert emu.admin.faults()[0]["fail_next"] == 0
    assert emu.admin.stats()["faults_injected"] == {"submit:error": 2}


def test_error_rate_with_default_503_and_retry_after(api: Api, emu: CerebraformEmulator) -> None:
    emu.admin.set_faults({"endpoint": "status", "error_rate": 1.0, "retry_after": 7, "message": "overloaded"})
    request_id = api.submit_id()
    response = api.status("image", request_id)
    body = assert_error(response, 503, "service_unavailable")
    assert body["msg"] == "overloaded" and response.headers["Retry-After"] == "7"
    assert api.result("image", request_id).status_code == 200  # other groups untouched


def test_error_rate_is_reproducible_with_a_seed(emu: CerebraformEmulator) -> None:
    def run() -> list[int]:
        emu.state.reset({"seed": 42})
        emu.admin.set_faults({"endpoint": "credits", "error_rate": 0.5})
        client = Api(emu.url)
        return [client.get("/ai/v1/user/credits").status_code for _ in range(20)]

    first = run()
    assert first == run() and {200, 503} == set(first)


def test_after_commit_creates_and_charges_then_errors(api: Api, emu: CerebraformEmulator) -> None:
    emu.admin.set_faults({"endpoint": "submit", "fail_next": 1, "after_commit": True, "status": 502})
    assert_error(api.submit("video", duration=10), 502, "bad_gateway")
    (task,) = emu.admin.tasks()
    assert task["kind"] == "video" and task["cost"] == 10
    assert credits(emu) == 990
    assert emu.admin.stats()["submissions"]["total"] == 1


def test_latency_is_added_before_the_response(api: Api, emu: CerebraformEmulator) -> None:
    emu.admin.set_faults({"endpoint": ["credits", "status"], "latency": 0.3})
    started = time.monotonic()
    assert api.get("/ai/v1/user/credits").status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    api.submit_id()
    assert time.monotonic() - started < 0.25


@pytest.mark.parametrize("after_commit", [False, True])
def test_drop_next_closes_without_a_response(api: Api, emu: CerebraformEmulator, after_commit: bool) -> None:
    emu.admin.set_faults({"endpoint": "submit", "drop_next": 1, "after_commit": after_commit})
    with pytest.raises(requests.exceptions.ConnectionError):
        api.submit()
    assert len(emu.state.tasks) == (1 if after_commit else 0)
    assert credits(emu) == (999 if after_commit else 1000)
    assert api.submit().status_code == 201  # the next request (new connection) is answered
    assert emu.admin.stats()["responses"]["dropped"] == 1


def test_drop_rate_on_result(api: Api, emu: CerebraformEmulator) -> None:
    request_id = api.submit_id()
    emu.admin.set_faults({"endpoint": "result", "drop_rate": 1.0})
    with pytest.raises(requests.exceptions.ConnectionError):
        api.result("image", request_id)
    assert api.status("image", request_id).status_code == 200


def raw_media(url: str) -> tuple[int, bytes, BaseException | None]:
    """GET ``url`` over a bare socket; return (Content-Length, body bytes received, error raised)."""
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\n\r\n".encode())
        data, error = b"", None
        try:
            while True:
                piece = sock.recv(65536)
                if not piece:
                    break
                data += piece
        except OSError as exc:
            error = exc
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return length, body, error


def test_media_truncate_sends_full_length_then_half_the_body(api: Api, emu: CerebraformEmulator) -> None:
    request_id = api.submit_id()
    url = api.result("image", request_id).json()["results"][0]["url"]
    emu.admin.set_faults({"endpoint": "media", "truncate_next": 1})
    length, body, error = raw_media(url)
    assert error is None and len(body) == length // 2
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        emu.admin.set_faults({"endpoint": "media", "truncate_next": 1})
        requests.get(url, timeout=5)
    assert len(requests.get(url, timeout=5).content) == length


def test_media_reset_breaks_the_connection_mid_body(api: Api, emu: CerebraformEmulator) -> None:
    emu.state.configure({"media_bytes": 4 * 1024 * 1024})
    request_id = api.submit_id()
    url = api.result("image", request_id).json()["results"][0]["url"]
    emu.admin.set_faults({"endpoint": "media", "reset_next": 1})
    length, body, error = raw_media(url)
    assert isinstance(error, ConnectionResetError)
    assert length == 4 * 1024 * 1024 and len(body) < length
    emu.admin.set_faults({"endpoint": "media", "reset_next": 1})
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url, timeout=5)


def test_media_error_and_video_group_targeting(api: Api, emu: CerebraformEmulator) -> None:
    request_id = api.submit_id()
    url = api.result("image", request_id).json()["results"][0]["url"]
    emu.admin.set_faults({"endpoint": "*", "fail_next": 1, "status": 504})
    assert_error(requests.get(url, timeout=5), 504, "gateway_timeout")
    assert requests.get(url, timeout=5).status_code == 200


def test_faults_are_validated_and_cleared_by_reset(emu: CerebraformEmulator) -> None:
    for bad in (
        {"endpoint": "upload", "fail_next": 1},
        {"endpoint": "submit", "explode": True},
        {"endpoint": "submit", "status": 200},
        {"endpoint": "submit", "error_rate": 2},
        {"endpoint": "submit", "fail_next": -1},
        {"endpoint": "submit", "after_commit": "yes"},
    ):
        with pytest.raises(EmulatorAdminError) as raised:
            emu.admin.set_faults(bad)
        assert raised.value.status == 400
    emu.admin.set_faults({"endpoint": "submit", "fail_next": 3})
    assert len(emu.admin.faults()) == 1
    emu.admin.reset()
    assert emu.admin.faults() == []
    emu.admin.set_faults({"endpoint": "submit", "fail_next": 3})
    assert emu.admin.clear_faults() == []


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("not_json", None),
        ("array", list),
        ("missing_fields", dict),
        ("wrong_types", dict),
        ("empty", None),
        ("null", type(None)),
    ],
)
def test_malformed_next_answers_success_with_a_broken_body(
    api: Api, emu: CerebraformEmulator, kind: str, expected: type | None
) -> None:
    request_id = api.submit_id()
    emu.admin.set_faults(
        {"endpoint": ["status", "result", "credits", "media"], "malformed_next": 3, "malformed": kind}
    )
    answers = [
        api.status("image", request_id),
        api.result("image", request_id),
        api.get("/ai/v1/user/credits"),
    ]
    for response, field in zip(answers, ("status", "results", "credits"), strict=True):
        assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
        if expected is None:
            with pytest.raises(ValueError):
                response.json()
        else:
            body = response.json()
            assert isinstance(body, expected)
            if kind == "missing_fields":
                assert field not in body
            if kind == "wrong_types":
                assert field in body and not isinstance(body[field], int if field != "results" else list)
    assert emu.admin.faults()[0]["malformed_next"] == 0
    assert emu.admin.stats()["faults_injected"] == {
        "status:malformed": 1,
        "result:malformed": 1,
        "credits:malformed": 1,
    }
    assert api.status("image", request_id).json()["status"] in (0, 1, 2)  # used up: real answers again


def test_malformed_never_touches_media(api: Api, emu: CerebraformEmulator) -> None:
    request_id = api.submit_id()
    url = api.result("image", request_id).json()["results"][0]["url"]
    emu.admin.set_faults({"endpoint": "media", "malformed_next": 1})
    media = requests.get(url, timeout=5)
    assert media.status_code == 200 and media.content.startswith(b"\x89PNG")
    assert emu.admin.faults()[0]["malformed_next"] == 1


@pytest.mark.parametrize("after_commit", [False, True])
def test_malformed_submit_custom_body_before_or_after_commit(
    api: Api, emu: CerebraformEmulator, after_commit: bool
) -> None:
    emu.admin.set_faults(
        {
            "endpoint": "submit",
            "malformed_next": 1,
            "body": '{"request_id": "../../x"}',
            "after_commit": after_commit,
        }
    )
    response = api.submit()
    assert response.status_code == 201 and response.json() == {"request_id": "../../x"}
    assert len(emu.state.tasks) == (1 if after_commit else 0)
    assert credits(emu) == (999 if after_commit else 1000)


def test_latency_next_delays_only_the_next_requests(api: Api, emu: CerebraformEmulator) -> None:
    emu.admin.set_faults({"endpoint": "credits", "latency": 0.3, "latency_next": 2})
    for _ in range(2):
        started = time.monotonic()
        assert api.get("/ai/v1/user/credits").status_code == 200
        assert time.monotonic() - started >= 0.3
    assert emu.admin.faults()[0]["latency_next"] == 0
    started = time.monotonic()
    assert api.get("/ai/v1/user/credits").status_code == 200
    assert time.monotonic() - started < 0.25


def test_new_fault_options_are_validated(emu: CerebraformEmulator) -> None:
    for bad in (
        {"endpoint": "status", "malformed_next": -1},
        {"endpoint": "status", "malformed_next": 1, "malformed": "garbage"},
        {"endpoint": "status", "malformed_next": 1, "body": 5},
        {"endpoint": "status", "latency": 1, "latency_next": -2},
        {"endpoint": "status", "latency": 1, "latency_next": True},
    ):
        with pytest.raises(EmulatorAdminError) as raised:
            emu.admin.set_faults(bad)
        assert raised.value.status == 400
