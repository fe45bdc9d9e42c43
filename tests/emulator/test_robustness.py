"""Malformed traffic always gets a documented status in the error shape, never a traceback."""

from __future__ import annotations

import copy
import http.client
import json
import socket
from typing import TYPE_CHECKING, Any

import jsonschema
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_cerebraform.emulator.openapi import openapi_document

from .conftest import DEV_KEY, Api, assert_error

if TYPE_CHECKING:
    from airflow_provider_cerebraform.emulator import CerebraformEmulator

DOCUMENTED = {200, 201, 400, 401, 402, 403, 404, 405, 409, 413, 429}


def raw_request(emu: CerebraformEmulator, data: bytes) -> tuple[int, dict[str, Any]]:
    with socket.create_connection(("127.0.0.1", emu.port), timeout=5) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /x HTTP/9.9\r\n\r\n", 505),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"POST /ai/v1/to-image HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400),
        (b"POST /ai/v1/to-image HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
        (b"POST /ai/v1/to-image HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"POST /ai/v1/to-image HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nabc", 400),
        (b"POST /ai/v1/to-image HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"GET /%ff%00/../..%2F HTTP/1.1\r\n\r\n", 404),
        (b"GET http://127.0.0.1/ai/v1/user/credits HTTP/1.1\r\n\r\n", 200),
    ],
)
def test_protocol_errors_use_the_error_shape(emu: CerebraformEmulator, data: bytes, status: int) -> None:
    code, body = raw_request(emu, data)
    assert code == status
    if status != 200:
        assert body["code"] == status and body["error"] and body["msg"]


def test_keep_alive_survives_errors(emu: CerebraformEmulator) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    headers = {"Authorization": f"Bearer {DEV_KEY}", "Content-Type": "application/json"}
    for method, path, body, status in [
        ("POST", "/ai/v1/to-image", b'{"prompt": "x"}', 201),
        ("POST", "/ai/v1/to-image", b"{", 400),
        ("GET", "/missing", None, 404),
        ("DELETE", "/ai/v1/user/credits", b"ignored body", 405),
        ("GET", "/ai/v1/user/credits", None, 200),
    ]:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        assert response.status == status
        assert int(response.getheader("Content-Length")) == len(response.read())
        assert response.getheader("Connection") != "close"
    assert connection.sock is not None  # still the same connection
    connection.close()


def test_chunked_request_body_is_accepted(emu: CerebraformEmulator) -> None:
    def body() -> Any:
        yield b'{"prompt": '
        yield b'"chunked"}'

    response = requests.post(
        emu.url + "/ai/v1/to-image", data=body(), headers={"Authorization": f"Bearer {DEV_KEY}"}, timeout=5
    )
    assert response.status_code == 201


def test_oversized_body_is_413(api: Api, emu: CerebraformEmulator) -> None:
    emu.state.configure({"max_body_bytes": 4096})
    assert_error(api.post("/ai/v1/to-image", data=b" " * 10_000), 413, "payload_too_large")
    assert api.submit().status_code == 201  # the connection was drained and stays usable


def openapi_request_schema(kind: str) -> dict[str, Any]:
    """The documented request schema as plain JSON Schema (OpenAPI's ``nullable`` made explicit)."""
    schemas = copy.deepcopy(openapi_document()["components"]["schemas"])
    schema = schemas["ImageRequest" if kind == "image" else "VideoRequest"]
    for prop in schema["properties"].values():
        if prop.pop("nullable", False) and "type" in prop:
            prop["type"] = [prop["type"], "null"]
    return schema


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
prompts = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=" \t\n\u3000\x1c\x85\ufeffab", max_size=5),
    st.sampled_from(["x" * 1000, "x" * 1001, "\U0001f600" * 1000]),
    json_values,
)
aspect_ratios = st.one_of(st.from_regex(r"\A-?[0-9]{0,3}[:x]?[0-9]{0,3}\n?\Z"), json_values)
image_urls = st.one_of(
    st.sampled_from(["http://a", "HTTPS://b/c?d#e", "ftp://a", "http:///x", "https://a b", "http://a\n"]),
    json_values,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "prompt": prompts,
        "aspect_ratio": aspect_ratios,
        "image_url": image_urls,
        "duration": json_values,
    },
)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(["image", "video"]), body=bodies | json_values)
def test_submissions_agree_with_the_openapi_schema(emu: CerebraformEmulator, kind: str, body: Any) -> None:
    emu.state.configure({"paid_tasks_per_hour": 10**9, "credits": 10**9, "image_credits": 0})
    emu.state.set_credits(DEV_KEY, 10**9)
    response = requests.post(
        f"{emu.url}/ai/v1/to-{kind}", json=body, headers={"Authorization": f"Bearer {DEV_KEY}"}, timeout=5
    )
    valid = jsonschema.Draft7Validator(openapi_request_schema(kind)).is_valid(body)
    assert response.status_code == (201 if valid else 400), (body, response.text)
    if response.status_code == 400:
        assert_error(response, 400)


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE"]),
    path=st.text(alphabet="/abcdefimostuvx-_.%0123456789?&=#", max_size=40),
    prefix=st.sampled_from(
        ["/", "/ai/v1/", "/ai/v1/to-image/", "/ai/v1/to-video/status/", "/media/", "/_emulator/"]
    ),
)
def test_odd_paths_get_documented_answers(
    emu: CerebraformEmulator, method: str, path: str, prefix: str
) -> None:
    emu.state.configure({"paid_polls_per_minute": 10**9, "paid_tasks_per_hour": 10**9})
    if prefix == "/_emulator/" and method == "POST":
        path = "stats"  # keep the fuzz away from reset/config
    response = requests.request(
        method, emu.url + prefix + path, headers={"Authorization": f"Bearer {DEV_KEY}"}, timeout=5
    )
    assert response.status_code in DOCUMENTED, response.text
    if response.status_code >= 400 and method != "HEAD":
        assert_error(response, response.status_code)
