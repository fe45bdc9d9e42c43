"""The retry, pacing and parsing rules, driven step by step through the sans-IO protocol."""

from __future__ import annotations

import json

import pytest

from airflow_provider_cerebraform.core import (
    CerebraformProtocol,
    FailureKind,
    HttpResponse,
    Send,
    Sleep,
    TransportFailure,
)
from airflow_provider_cerebraform.exceptions import (
    CerebraformAuthError,
    CerebraformRateLimitError,
    CerebraformResponseError,
    CerebraformServerError,
    CerebraformSubmissionUncertainError,
    CerebraformTransportError,
)
from airflow_provider_cerebraform.models import Bucket, ConnectionSettings, TaskStatus, Tier
from airflow_provider_cerebraform.pacing import KeyPacer
from airflow_provider_cerebraform.validation import build_submission

KEY = "sk-test-protocol-secret"


class Clock:
    """Time that passes only when the conversation sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


#: The clock of the protocol a test builds last (tests build and drive one at a time).
CLOCK = Clock()


def protocol(max_wait: float | None = 60.0, **settings) -> CerebraformProtocol:
    values = {
        "base_url": "http://api.test",
        "api_key": KEY,
        "tier": Tier.PAID,
        "retry_backoff": 1.0,
        **settings,
    }
    config = ConnectionSettings(**values)
    CLOCK.now = 0.0
    return CerebraformProtocol(
        config, max_wait=max_wait, pacer=KeyPacer(config, clock=CLOCK), rng=lambda: 0.0
    )


def answer(status: int, body: object, headers: dict[str, str] | None = None) -> HttpResponse:
    return HttpResponse(status, headers or {}, json.dumps(body).encode())


def drive(conversation, outcomes):
    """Play the conversation: answer each Send with the next outcome, let each Sleep pass; record steps."""
    steps, outcomes = [], list(outcomes)
    reply = None
    while True:
        try:
            step = conversation.send(reply)
        except StopIteration as finished:
            return finished.value, steps
        steps.append(step)
        if isinstance(step, Sleep):
            CLOCK.now += step.seconds
        reply = outcomes.pop(0) if isinstance(step, Send) else None


def sends(steps):
    return [step for step in steps if isinstance(step, Send)]


def test_submit_sends_the_validated_body_and_returns_the_id():
    value, steps = drive(
        protocol().submit(build_submission("video", "river", duration=10)),
        [answer(201, {"request_id": "r1"})],
    )
    assert value == "r1"
    (send,) = sends(steps)
    assert send.request.method == "POST" and send.request.path == "/ai/v1/to-video"
    assert send.request.json == {"prompt": "river", "duration": 10}


def test_200_without_request_id_is_a_response_error():
    with pytest.raises(CerebraformResponseError, match=r"submit image.*no request_id"):
        drive(protocol().submit(build_submission("image", "x")), [answer(200, {"id": "r1"})])


@pytest.mark.parametrize("status", [500, 502, 503])
def test_submit_is_never_retried_after_a_5xx(status):
    with pytest.raises(CerebraformSubmissionUncertainError, match="may have been created") as raised:
        drive(
            protocol().submit(build_submission("image", "x")),
            [answer(status, {"code": status, "msg": "boom"})],
        )
    assert raised.value.http_status == status


@pytest.mark.parametrize("kind", [FailureKind.TIMEOUT, FailureKind.DISCONNECTED])
def test_submit_is_never_retried_after_the_request_may_have_arrived(kind):
    with pytest.raises(CerebraformSubmissionUncertainError):
        drive(protocol().submit(build_submission("image", "x")), [TransportFailure(kind, "read timed out")])


def test_submit_is_retried_after_a_connect_error():
    value, steps = drive(
        protocol().submit(build_submission("image", "x")),
        [TransportFailure(FailureKind.CONNECT, "refused"), answer(201, {"request_id": "r2"})],
    )
    assert value == "r2"
    assert len(sends(steps)) == 2
    assert any(isinstance(step, Sleep) for step in steps)


def test_get_retries_5xx_with_growing_backoff_then_gives_up():
    outcomes = [answer(503, {"msg": "busy"})] * 4
    with pytest.raises(CerebraformServerError, match="after 3 retries"):
        drive(protocol().status("image", "r1"), outcomes)


def test_get_backoff_doubles():
    outcomes = [answer(502, {})] * 3 + [answer(200, {"status": 1, "message": "running"})]
    state, steps = drive(protocol().status("image", "r1"), outcomes)
    assert state.status is TaskStatus.RUNNING
    assert [step.seconds for step in steps if isinstance(step, Sleep)] == [0.5, 1.0, 2.0]


def test_get_transport_failures_are_retried():
    outcomes = [TransportFailure(FailureKind.TIMEOUT, "t"), TransportFailure(FailureKind.DISCONNECTED, "r")]
    state, _ = drive(protocol().status("image", "r1"), [*outcomes, answer(200, {"status": 2})])
    assert state.is_done


def test_get_transport_failures_past_the_limit_raise():
    with pytest.raises(CerebraformTransportError):
        drive(protocol(max_retries=1).credits(), [TransportFailure(FailureKind.TIMEOUT, "t")] * 2)


def test_429_waits_retry_after_header_first():
    outcomes = [answer(429, {"retry_after": 50}, {"retry-after": "3"}), answer(200, {"credits": 7})]
    value, steps = drive(protocol().credits(), outcomes)
    assert value == 7
    sleeps = [step.seconds for step in steps if isinstance(step, Sleep)]
    assert len(sleeps) == 1 and 2.9 < sleeps[0] <= 3.0


def test_429_falls_back_to_the_body_then_to_backoff():
    p = protocol()
    _, steps = drive(p.credits(), [answer(429, {"retry_after": 4}), answer(200, {"credits": 1})])
    assert 3.9 < next(step.seconds for step in steps if isinstance(step, Sleep)) <= 4.0
    p = protocol()
    _, steps = drive(p.credits(), [answer(429, {"error": "too_many_requests"}), answer(200, {"credits": 1})])
    assert 0.4 < next(step.seconds for step in steps if isinstance(step, Sleep)) <= 0.5


def test_submit_is_retried_on_429():
    outcomes = [answer(429, {}, {"retry-after": "1"}), answer(201, {"request_id": "r9"})]
    assert drive(protocol().submit(build_submission("image", "x")), outcomes)[0] == "r9"


def test_429_longer_than_the_in_process_cap_raises_with_retry_after():
    with pytest.raises(CerebraformRateLimitError) as raised:
        drive(
            protocol(max_wait=60).submit(build_submission("image", "x")),
            [answer(429, {"msg": "slow down"}, {"retry-after": "52"})] * 2,
        )
    # 52 s fits in the 60 s cap once; the second 52 s would not.
    assert raised.value.retry_after == 52
    assert "slow down" in str(raised.value)


def test_a_429_names_the_wait_once_and_quotes_the_api():
    with pytest.raises(CerebraformRateLimitError) as raised:
        drive(
            protocol(max_wait=60).submit(build_submission("image", "x")),
            [answer(429, {"msg": "Try again in 158 seconds."}, {"retry-after": "158"})],
        )
    assert str(raised.value) == (
        "Cerebraform submit image was rate-limited (HTTP 429), retry after 158 s; "
        'the API said "Try again in 158 seconds."'
    )


def test_without_a_cap_the_trigger_waits_as_long_as_asked():
    outcomes = [answer(429, {}, {"retry-after": "500"}), answer(200, {"status": 0})]
    state, steps = drive(protocol(max_wait=None).status("video", "r1"), outcomes)
    assert state.status is TaskStatus.QUEUED
    assert any(isinstance(step, Sleep) and step.seconds > 499 for step in steps)


def test_pacing_refuses_before_sending_when_the_slot_is_too_far():
    p = protocol(max_wait=5.0, tier=Tier.FREE)
    for number in range(10):
        drive(p.submit(build_submission("image", f"p{number}")), [answer(201, {"request_id": f"r{number}"})])
    conversation = p.submit(build_submission("image", "eleventh"))
    with pytest.raises(CerebraformRateLimitError, match="free tier's create limit") as raised:
        drive(conversation, [])
    assert raised.value.retry_after > 3500


def test_an_abandoned_conversation_gives_its_slot_back_or_settles_it():
    """A trigger cancelled while it waits for its slot, or while its request is out, leaves no slot
    that would hold the callers behind it back (an unsettled slot in the past counts as in flight)."""
    p = protocol(max_wait=None, tier=Tier.FREE)
    window = p.pacer.window(Bucket.POLL)
    for number in range(20):  # the free tier's 20 polls a minute
        drive(p.status("image", f"r{number}"), [answer(200, {"status": 0})])
    waiting = p.status("image", "waiting")
    assert isinstance(waiting.send(None), Sleep)  # queued behind the full window
    assert len(window.state.slots) == 21
    waiting.close()  # cancelled while it sleeps: the slot is given back
    assert len(window.state.slots) == 20

    CLOCK.now += 61.0
    sending = p.status("image", "sending")
    assert isinstance(sending.send(None), Send)
    sending.close()  # cancelled while its request is out: it may have arrived, so it is settled
    (slot,) = [slot for slot in window.state.slots if slot[1] > CLOCK.now - 60]
    assert slot[2] is True and slot[1] == CLOCK.now


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, CerebraformAuthError), (403, CerebraformAuthError)],
)
def test_error_status_maps_to_its_type_and_shows_the_api_msg(status, error):
    body = {"code": status, "error": "unauthorized", "msg": "Unknown API key."}
    with pytest.raises(error, match="Unknown API key") as raised:
        drive(protocol().credits(), [answer(status, body)])
    assert raised.value.api_message == "Unknown API key."


def test_key_echoed_by_the_service_is_redacted():
    with pytest.raises(CerebraformAuthError) as raised:
        drive(protocol().credits(), [answer(401, {"msg": f"bad key {KEY}"})])
    assert KEY not in str(raised.value) and "***" in str(raised.value)


def test_unknown_status_code_counts_as_in_progress():
    state, _ = drive(protocol().status("image", "r1"), [answer(200, {"status": 7, "message": "upscaling"})])
    assert state.status.name == "UNKNOWN_7" and not state.status.is_terminal
    assert state.message == "upscaling"


def test_status_without_message_is_fine_and_extra_keys_are_ignored():
    state, _ = drive(protocol().status("image", "r1"), [answer(200, {"status": "2", "eta": 3})])
    assert state.is_done and state.message is None


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"status": "two"}', b'{"status": null}', b'{"status": true}', b"{}"],
)
def test_malformed_status_names_the_endpoint(body):
    with pytest.raises(CerebraformResponseError, match="status image"):
        drive(protocol().status("image", "r1"), [HttpResponse(200, {}, body)])


def test_result_keeps_extra_keys_and_refuses_an_empty_success():
    items = [{"url": "http://m/1.png", "content_type": "image/png", "width": 512}]
    result, _ = drive(protocol().result("image", "r1"), [answer(200, {"results": items})])
    assert result.urls == ["http://m/1.png"]
    assert result.items[0].extra == {"width": 512} and result.items[0].content_type == "image/png"
    with pytest.raises(CerebraformResponseError, match="no media"):
        drive(protocol().result("image", "r1"), [answer(200, {"results": []})])


def test_headers_carry_bearer_and_user_agent_but_repr_hides_the_key():
    p = protocol()
    assert p.headers["Authorization"] == f"Bearer {KEY}"
    assert p.headers["User-Agent"].startswith("airflow-provider-cerebraform/")
    assert "apache-airflow/" in p.headers["User-Agent"]
    assert KEY not in repr(p) and KEY not in repr(p.settings)
    anonymous = protocol(api_key=None)
    assert "Authorization" not in anonymous.headers
