"""
Fixtures of the hook tests: every test talks real HTTP to the session emulator (or to a closed or
forwarding port on 127.0.0.1), through the blocking hook methods and the ``a``-prefixed async ones.

- ``calls`` runs each test twice, once per transport, through one awaitable interface.
- ``emulator`` is ``cerebraform_emulator`` with a quick retry backoff on ``cerebraform_default``.
- ``connect_attempts`` counts TCP connect attempts to a port with an audit hook (``socket.connect``),
  which sees both ``requests`` and ``httpx`` without patching either.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any

import pytest
from conftest import wait_for as shared_wait_for

from airflow_provider_cerebraform.emulator import key_label
from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle
    from airflow_provider_cerebraform.models import TaskResult, TaskState

#: Backoff base for the hook tests: retries stay real but take milliseconds.
FAST_BACKOFF = 0.02
TRANSPORTS = ("sync", "async")


def conn_env(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def set_connection(
    monkeypatch: pytest.MonkeyPatch,
    conn_id: str,
    *,
    host: str | None,
    password: str | None,
    port: int | None = None,
    schema: str | None = None,
    **extra: Any,
) -> None:
    """Define an Airflow connection through its ``AIRFLOW_CONN_<ID>`` JSON environment variable."""
    fields: dict[str, Any] = {"conn_type": "cerebraform", "extra": extra}
    for name, value in (("host", host), ("password", password), ("port", port), ("schema", schema)):
        if value is not None:
            fields[name] = value
    monkeypatch.setenv(conn_env(conn_id), json.dumps(fields))


def emulator_connection(
    monkeypatch: pytest.MonkeyPatch,
    emulator: EmulatorHandle,
    conn_id: str = "cerebraform_default",
    *,
    key: str | None = None,
    tier: str = "paid",
    **extra: Any,
) -> None:
    """A connection to the emulator with the emulator's time scale and a quick backoff."""
    extra = {"tier": tier, "time_scale": emulator.time_scale, "retry_backoff": FAST_BACKOFF, **extra}
    set_connection(monkeypatch, conn_id, host=emulator.url, password=key or emulator.api_key, **extra)


@pytest.fixture
def emulator(cerebraform_emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> EmulatorHandle:
    """The reset session emulator; ``cerebraform_default`` points at it with a quick backoff."""
    emulator_connection(monkeypatch, cerebraform_emulator)
    return cerebraform_emulator


class HookCalls:
    """
    The hook's four calls behind one awaitable interface, carried out by the blocking methods
    (``sync``) or the async ones (``async``), so one test body checks both transports.
    """

    def __init__(self, hook: CerebraformHook, transport: str) -> None:
        self.hook = hook
        self.transport = transport

    def __repr__(self) -> str:
        return f"HookCalls({self.hook!r}, {self.transport})"

    async def submit(self, kind: str, prompt: str, **params: Any) -> str:
        if self.transport == "sync":
            return self.hook.submit(kind, prompt, **params)
        return await self.hook.asubmit(kind, prompt, **params)

    async def status(self, kind: str, request_id: str) -> TaskState:
        if self.transport == "sync":
            return self.hook.get_status(kind, request_id)
        return await self.hook.aget_status(kind, request_id)

    async def result(self, kind: str, request_id: str) -> TaskResult:
        if self.transport == "sync":
            return self.hook.get_result(kind, request_id)
        return await self.hook.aget_result(kind, request_id)

    async def credits(self) -> int:
        if self.transport == "sync":
            return self.hook.get_credits()
        return await self.hook.aget_credits()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_calls(transport: str) -> Callable[..., HookCalls]:
    """Build a :class:`HookCalls` for a connection id, with the test's transport."""

    def make(conn_id: str = "cerebraform_default", **hook_kwargs: Any) -> HookCalls:
        return HookCalls(CerebraformHook(conn_id, **hook_kwargs), transport)

    return make


@pytest.fixture
def calls(emulator: EmulatorHandle, make_calls: Callable[..., HookCalls]) -> HookCalls:
    """The default connection (dev key, tier paid) through the test's transport."""
    return make_calls()


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.005) -> Any:
    """:func:`conftest.wait_for` with this suite's defaults."""
    return shared_wait_for(condition, timeout, interval)


def api_counts(emulator: EmulatorHandle) -> dict[str, int]:
    """Requests that reached the emulator's API, per endpoint group (control calls left out)."""
    requests = emulator.admin.stats()["requests"]
    return {group: requests.get(group, 0) for group in ("submit", "status", "result", "credits", "media")}


def balance(emulator: EmulatorHandle, key: str | None = None) -> int:
    """A key's credit balance as the emulator holds it (default: the dev key)."""
    return emulator.admin.stats()["credits"][key_label(key or emulator.api_key)]


# -- counting connect attempts ---------------------------------------------------------------------

_watched_ports: dict[int, int] = {}
_watch_lock = threading.Lock()
_audit_installed = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "socket.connect" or not _watched_ports:
        return
    address = args[1] if len(args) > 1 else None
    if isinstance(address, tuple) and len(address) >= 2 and address[1] in _watched_ports:
        with _watch_lock:
            _watched_ports[address[1]] += 1


class ConnectCounter:
    """Counts ``socket.connect`` calls to one port in this process."""

    def __init__(self, port: int) -> None:
        self.port = port

    @property
    def attempts(self) -> int:
        with _watch_lock:
            return _watched_ports.get(self.port, 0)


@pytest.fixture
def connect_attempts() -> Iterator[Callable[[int], ConnectCounter]]:
    """Start counting connect attempts to a port; audit hooks cannot be removed, so it is installed once."""
    global _audit_installed
    if not _audit_installed:
        sys.addaudithook(_audit)
        _audit_installed = True
    watched: list[int] = []

    def watch(port: int) -> ConnectCounter:
        with _watch_lock:
            _watched_ports[port] = 0
        watched.append(port)
        return ConnectCounter(port)

    yield watch
    with _watch_lock:
        for port in watched:
            _watched_ports.pop(port, None)


@pytest.fixture
def closed_port() -> Iterator[socket.socket]:
    """A socket bound on 127.0.0.1 but not listening: every connect to it is refused, and no other
    process can take the port meanwhile. Call ``listen()`` on it to open it later."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


class Forwarder:
    """Accepts on a listening socket and pipes every connection to ``target`` (a loopback TCP relay)."""

    def __init__(self, listener: socket.socket, target: tuple[str, int]) -> None:
        self.listener = listener
        self.target = target
        self.accepted = 0
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.listener.settimeout(0.05)
        self._spawn(self._accept_loop)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            upstream = socket.create_connection(self.target, timeout=10)
            client.settimeout(None)
            self._sockets += [client, upstream]
            self._spawn(self._pipe, client, upstream)
            self._spawn(self._pipe, upstream, client)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._closing.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a pipe blocked in recv(); close() would not
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)
