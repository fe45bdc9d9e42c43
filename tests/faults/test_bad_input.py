"""
Bad input from both sides.

- Property-based: whatever the service answers (any status, any headers, any bytes, any JSON), every
  conversation of the sans-IO protocol ends in a value of the right type or in a typed
  ``CerebraformError``, and never asks to sleep for an unbounded time.
- Schemathesis: the emulator's own ``/openapi.json`` drives generated requests, valid and invalid,
  against an emulator with raised rate limits; every answer matches the schema, and every error
  answer has the documented shape ``{"code", "error", "msg"}``.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from airflow_provider_cerebraform.core import CerebraformProtocol, HttpResponse, Send, Sleep, TransportFailure
from airflow_provider_cerebraform.exceptions import CerebraformError
from airflow_provider_cerebraform.models import ConnectionSettings, TaskResult, TaskState, Tier
from airflow_provider_cerebraform.pacing import KeyPacer
from airflow_provider_cerebraform.validation import build_submission

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow_provider_cerebraform.core import Conversation
    from airflow_provider_cerebraform.emulator import EmulatorProcess

KEY = "cfk-property-test-key-0123456789"
#: A conversation may ask to wait, but never longer than this in one step.
LONGEST_SLEEP = 24 * 3600.0


class Clock:
    """Time that passes only when a conversation sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def protocol(max_wait: float | None) -> tuple[CerebraformProtocol, Clock]:
    settings_ = ConnectionSettings(base_url="http://api.test", api_key=KEY, tier=Tier.PAID, max_retries=2)
    clock = Clock()
    return CerebraformProtocol(settings_, max_wait=max_wait, pacer=KeyPacer(settings_, clock=clock)), clock


def play(conversation: Conversation[Any], clock: Clock, answer: HttpResponse) -> Any:
    """Answer every request of ``conversation`` with ``answer``; return its value."""
    reply: HttpResponse | TransportFailure | None = None
    for _ in range(200):
        try:
            step = conversation.send(reply)
        except StopIteration as finished:
            return finished.value
        if isinstance(step, Sleep):
            assert math.isfinite(step.seconds) and 0 <= step.seconds <= LONGEST_SLEEP, step
            clock.now += step.seconds
            reply = None
        else:
            assert isinstance(step, Send)
            reply = answer
    raise AssertionError("the conversation never ended")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = (
    "request_id",
    "status",
    "message",
    "results",
    "url",
    "content_type",
    "credits",
    "retry_after",
    "msg",
)
shaped = st.dictionaries(
    st.sampled_from(FIELDS),
    json_values
    | st.lists(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4), max_size=3)
    | st.sampled_from([0, 1, 2, -1, 7, "2", " -1 ", True, 2.0, 1e308, math.nan]),
    max_size=4,
)
bodies = (
    st.binary(max_size=64)
    | json_values.map(lambda value: json.dumps(value).encode())
    | shaped.map(lambda value: json.dumps(value).encode())
)
statuses = st.sampled_from([200, 201, 204, 301, 400, 401, 402, 403, 404, 409, 418, 422, 429, 500, 502, 503])
retry_after = st.one_of(
    st.none(),
    st.sampled_from(
        ["1", "0", "-5", "nan", "inf", "-inf", "1e400", "1e9", "Wed, 21 Oct 2015 07:28:00 GMT", ""]
    ),
    st.text(max_size=8),
)


def conversations(proto: CerebraformProtocol) -> dict[str, tuple[Conversation[Any], type | tuple[type, ...]]]:
    return {
        "submit": (proto.submit(build_submission("image", "a prompt")), str),
        "status": (proto.status("video", "abc123"), TaskState),
        "result": (proto.result("image", "abc123"), TaskResult),
        "credits": (proto.credits(), int),
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A Retry-After of inf, 1e400 or 1e9 parked a trigger (max_wait None) for ever before it was bounded.
@example(endpoint="status", status=429, body=b"{}", header="inf", max_wait=None)
@example(endpoint="status", status=429, body=b"{}", header="1e400", max_wait=None)
@example(endpoint="result", status=429, body=b'{"retry_after": 1e308}', header="nan", max_wait=None)
@example(endpoint="submit", status=429, body=b"{}", header="1e9", max_wait=None)
@given(
    endpoint=st.sampled_from(["submit", "status", "result", "credits"]),
    status=statuses,
    body=bodies,
    header=retry_after,
    max_wait=st.sampled_from([None, 0.0, 60.0]),
)
def test_any_answer_gives_a_value_or_a_typed_error(
    endpoint: str, status: int, body: bytes, header: str | None, max_wait: float | None
) -> None:
    proto, clock = protocol(max_wait)
    conversation, expected = conversations(proto)[endpoint]
    headers = {} if header is None else {"retry-after": header}
    try:
        value = play(conversation, clock, HttpResponse(status, headers, body))
    except CerebraformError as error:
        assert KEY not in str(error)
        assert error.endpoint is None or endpoint.split()[0] in error.endpoint
        return
    assert 200 <= status < 300
    assert isinstance(value, expected)
    if isinstance(value, TaskResult):
        assert value.items and all(item.url.strip() for item in value.items)


@settings(max_examples=100, deadline=None)
@given(status=statuses, body=bodies)
def test_an_echoed_key_is_redacted_from_every_error(status: int, body: bytes) -> None:
    proto, clock = protocol(60.0)
    echo = body + json.dumps({"msg": f"bad key {KEY}", "error": KEY}).encode()
    for conversation, _ in conversations(proto).values():
        try:
            play(conversation, clock, HttpResponse(status, {}, echo))
        except CerebraformError as error:
            assert KEY not in str(error) and KEY not in repr(error)
            assert KEY not in (error.api_message or "")


# -- schemathesis against the emulator's published schema ----------------------------------------------

#: Rate limits out of the way (every generated request is admitted) and credits for every submission.
SCHEMA_EMULATOR_ARGS = [
    "--credits",
    "1000000000",
    "--anonymous-credits",
    "1000000000",
    "--time-scale",
    "40",
    "--log-level",
    "WARNING",
    "--set",
    "paid_tasks_per_hour=100000000",
    "--set",
    "paid_polls_per_minute=100000000",
    "--set",
    "free_tasks_per_hour=100000000",
    "--set",
    "free_polls_per_minute=100000000",
    "--set",
    "anonymous_requests_per_day=100000000",
]


@pytest.fixture(scope="module")
def schema_emulator() -> Iterator[EmulatorProcess]:
    from airflow_provider_cerebraform.emulator import EmulatorProcess

    process = EmulatorProcess(SCHEMA_EMULATOR_ARGS)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _published_schema() -> Any:
    """The emulator's OpenAPI document, as ``GET /openapi.json`` serves it (compared in a test below)."""
    from airflow_provider_cerebraform.emulator.openapi import openapi_document

    # Built from the function that serves it, so the operations are known at collection time; every
    # call goes to the emulator process. (schemathesis' lazy ``from_fixture`` loader sets
    # ``node._nodeid``, which pytest 9 no longer has.)
    return schemathesis.openapi.from_dict(openapi_document("http://127.0.0.1"))


schema = _published_schema()
OPERATIONS = {
    f"{op.method.upper()} {op.path}": op for op in (result.ok() for result in schema.get_all_operations())
}
ERROR_FIELDS = {"code", "error", "msg"}
EXAMPLES_PER_OPERATION = 8


def test_the_schema_under_test_is_the_one_the_emulator_serves(schema_emulator: EmulatorProcess) -> None:
    import requests

    from airflow_provider_cerebraform.emulator.openapi import openapi_document

    session = requests.Session()
    session.trust_env = False
    served = session.get(f"{schema_emulator.url}/openapi.json", timeout=10).json()
    assert served["paths"] == openapi_document("http://127.0.0.1")["paths"]
    assert len(OPERATIONS) == 8  # the 7 API paths and /media/{file}


#: Every operation with valid input; the two submissions (JSON bodies) with invalid input too. For the
#: GETs, whose only input is a string path parameter, schemathesis cannot generate invalid values.
CASES = [(name, "positive") for name in sorted(OPERATIONS)] + [
    (name, "negative") for name in sorted(OPERATIONS) if name.startswith("POST ")
]


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_emulator_conforms_to_its_openapi_and_error_shape(
    schema_emulator: EmulatorProcess, name: str, mode: str
) -> None:
    """
    Generated requests for one operation, valid (positive) or not (negative), with the dev key:
    every answer passes schemathesis' checks against the schema (status documented, body and
    headers conformant, invalid input rejected), none is a 5xx, and every error has the documented
    shape. Bounded to a few examples per operation and mode.
    """
    from schemathesis import GenerationMode

    strategy = OPERATIONS[name].as_strategy(generation_mode=GenerationMode(mode))
    statuses: list[int] = []

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: Any) -> None:
        response = case.call_and_validate(
            base_url=schema_emulator.url, headers={"Authorization": "Bearer cf-dev-key"}
        )
        statuses.append(response.status_code)
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            body = response.json()
            assert isinstance(body, dict) and set(body) >= ERROR_FIELDS, body
            assert body["code"] == response.status_code
            assert isinstance(body["error"], str) and body["error"]
            assert isinstance(body["msg"], str) and body["msg"]

    check()
    assert statuses, "no request was generated"
    if mode == "negative":
        assert any(400 <= status < 500 for status in statuses), statuses
