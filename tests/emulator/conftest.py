"""Shared fixtures: an in-process emulator per module (reset before every test) and a small HTTP client."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest
import requests
from conftest import wait_for as shared_wait_for

from airflow_provider_cerebraform.emulator import CerebraformEmulator, EmulatorConfig

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

DEV_KEY = "cf-dev-key"
FREE_KEY = "free-key-0123456789"
PAID_KEY = "paid-key-9876543210"


class Api:
    """A requests session bound to the emulator and a key (``None``: anonymous).

    :param base_url: the emulator.
    :param key: API key or ``None``.
    """

    def __init__(self, base_url: str, key: str | None = DEV_KEY) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.trust_env = False
        if key is not None:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.post(self.base_url + path, timeout=10, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.base_url + path, timeout=10, **kwargs)

    def submit(self, kind: str = "image", **payload: Any) -> requests.Response:
        payload.setdefault("prompt", "a cinematic photo of a cat wearing a wizard hat")
        return self.post(f"/ai/v1/to-{kind}", json=payload)

    def submit_id(self, kind: str = "image", **payload: Any) -> str:
        response = self.submit(kind, **payload)
        assert response.status_code == 201, response.text
        return response.json()["request_id"]

    def status(self, kind: str, request_id: str) -> requests.Response:
        return self.get(f"/ai/v1/to-{kind}/status/{request_id}")

    def result(self, kind: str, request_id: str) -> requests.Response:
        return self.get(f"/ai/v1/to-{kind}/result/{request_id}")

    def wait_status(self, kind: str, request_id: str, want: set[int], timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = self.status(kind, request_id).json()
            if body["status"] in want:
                return body
            assert time.monotonic() < deadline, f"status stuck at {body}"
            time.sleep(0.03)


def assert_error(response: requests.Response, code: int, error: str | None = None) -> dict[str, Any]:
    """Check the reference's error shape and return the body."""
    assert response.status_code == code, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["msg"], str) and body["msg"]
    if error is not None:
        assert body["error"] == error
    return body


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """:func:`conftest.wait_for` with this suite's defaults."""
    return shared_wait_for(condition, timeout, interval)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CerebraformEmulator]:
    """One in-process emulator per test module; extra keys of each tier; a private video cache."""
    config = EmulatorConfig(
        keys=[{"key": FREE_KEY, "tier": "free"}, {"key": PAID_KEY, "tier": "paid", "credits": 50}],
        time_scale=40.0,
        video_seconds=20.0,
        media_dir=str(tmp_path_factory.getbasetemp() / "videos"),
    )
    with CerebraformEmulator(config) as emulator:
        yield emulator


@pytest.fixture
def emu(server: CerebraformEmulator) -> CerebraformEmulator:
    """The module's emulator, reset to its startup configuration."""
    server.state.reset()
    return server


@pytest.fixture
def api(emu: CerebraformEmulator) -> Api:
    """A client with the dev key (tier paid)."""
    return Api(emu.url)


class ManualClock:
    """A monotonic clock that moves only when told: rate windows that do not slide while a busy machine
    is slow to send a burst of requests."""

    # Whole microseconds from a whole-second start: ten advances of 0.1 s must land exactly on 1.0 s, or a
    # test stepping to a window's edge would be a float rounding away from it, one way or the other
    # depending on where time.monotonic() happened to start.
    def __init__(self) -> None:
        self._start = float(int(time.monotonic()))
        self._micros = 0

    def __call__(self) -> float:
        return self._start + self._micros / 1_000_000

    def advance(self, seconds: float) -> None:
        self._micros += round(seconds * 1_000_000)


@pytest.fixture
def clock(emu: CerebraformEmulator) -> Iterator[ManualClock]:
    """Stops the emulator's clock for the test (it reads ``state.clock`` on every request)."""
    manual, real = ManualClock(), emu.state.clock
    emu.state.clock = manual
    try:
        yield manual
    finally:
        emu.state.clock = real
