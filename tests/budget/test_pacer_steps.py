"""Sans-IO: a window that does I/O is asked through PacerCall steps; an in-memory one is not."""

from __future__ import annotations

from typing import Any

from airflow_provider_cerebraform.core import CerebraformProtocol, HttpResponse, PacerCall, Send, Sleep
from airflow_provider_cerebraform.models import Bucket, ConnectionSettings, Tier
from airflow_provider_cerebraform.pacing import KeyPacer, SlidingWindow

OK = HttpResponse(200, {}, b'{"credits": 7}')


class RecordingWindow(SlidingWindow):
    """An in-memory window that claims to do I/O, recording what it was asked."""

    does_io = True

    def __init__(self) -> None:
        super().__init__(limit=20, period=60.0)
        self.asked: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        if name in ("reserve", "confirm", "settle", "cancel", "on_success", "on_rate_limited"):
            object.__getattribute__(self, "asked").append(name)
        return object.__getattribute__(self, name)


class OnePacer:
    def __init__(self, window: Any) -> None:
        self._window = window

    def window(self, bucket: Bucket) -> Any:
        return self._window


def _drive(protocol: CerebraformProtocol) -> tuple[int, list[str]]:
    conversation = protocol.credits()
    kinds: list[str] = []
    outcome: Any = None
    while True:
        try:
            step = conversation.send(outcome)
        except StopIteration as done:
            return done.value, kinds
        kinds.append(type(step).__name__)
        if isinstance(step, PacerCall):
            outcome = step.call()
        elif isinstance(step, Sleep):
            outcome = None
        else:
            assert isinstance(step, Send)
            outcome = OK


def test_a_window_doing_io_is_asked_through_steps() -> None:
    settings = ConnectionSettings(base_url="http://127.0.0.1:1", api_key="cfk-test-key-123", tier=Tier.FREE)
    window = RecordingWindow()
    credits, kinds = _drive(CerebraformProtocol(settings, pacer=OnePacer(window)))
    assert credits == 7
    assert kinds == ["PacerCall", "Send", "PacerCall", "PacerCall"]
    assert window.asked == ["reserve", "settle", "on_success"]


def test_an_in_memory_window_is_asked_directly() -> None:
    settings = ConnectionSettings(base_url="http://127.0.0.1:1", api_key="cfk-test-key-123", tier=Tier.FREE)
    credits, kinds = _drive(CerebraformProtocol(settings, pacer=KeyPacer(settings)))
    assert credits == 7
    assert kinds == ["Send"]
