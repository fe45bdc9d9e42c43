"""
The two transports that carry out :class:`~airflow_provider_cerebraform.core.CerebraformProtocol`
conversations: :class:`CerebraformClient` over a pooled ``requests.Session`` for hooks in workers,
and :class:`CerebraformAsyncClient` over an ``httpx.AsyncClient`` shared per running event loop
for triggers. Neither decides anything: requests, parsing, errors, retries and pacing are the
protocol's.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import weakref
from typing import TYPE_CHECKING, TypeVar

import httpx
import requests
from urllib3.exceptions import NameResolutionError, NewConnectionError

from airflow_provider_cerebraform.core import (
    ApiRequest,
    CerebraformProtocol,
    Conversation,
    FailureKind,
    HttpResponse,
    Outcome,
    PacerCall,
    Sleep,
    TransportFailure,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from airflow_provider_cerebraform.models import (
        ConnectionSettings,
        GenerationKind,
        Submission,
        TaskResult,
        TaskState,
    )
    from airflow_provider_cerebraform.pacing import Pacer

T = TypeVar("T")


class CerebraformClient:
    """
    Blocking client over a pooled ``requests.Session``.

    :param settings: the connection's settings.
    :param max_wait: the most seconds a call waits in-process for pacing and 429s (see the protocol).
    :param session: a session to use instead of a new one.
    :param pacer: the key's pacer; by default the process-wide one for these settings.
    :param rng: a source of floats in [0, 1) for the retry jitter.
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        max_wait: float | None = 60.0,
        session: requests.Session | None = None,
        pacer: Pacer | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.protocol = CerebraformProtocol(settings, max_wait=max_wait, pacer=pacer, rng=rng)
        self.session = session or requests.Session()

    def __repr__(self) -> str:
        return f"CerebraformClient({self.protocol!r})"

    def close(self) -> None:
        self.session.close()

    def submit(self, submission: Submission, hold: str | None = None) -> str:
        return self._run(self.protocol.submit(submission, hold))

    def open_media(self, url: str) -> requests.Response:
        """Start streaming a media URL: no API key (it may point anywhere); the connection's TLS, timeout."""
        settings = self.protocol.settings
        return self.session.get(url, stream=True, timeout=settings.timeout, verify=settings.verify_ssl)

    def get_status(self, kind: GenerationKind | str, request_id: str) -> TaskState:
        return self._run(self.protocol.status(kind, request_id))

    def get_result(self, kind: GenerationKind | str, request_id: str) -> TaskResult:
        return self._run(self.protocol.result(kind, request_id))

    def get_credits(self) -> int:
        return self._run(self.protocol.credits())

    def _run(self, conversation: Conversation[T]) -> T:
        outcome: Outcome = None
        while True:
            try:
                step = conversation.send(outcome)
            except StopIteration as finished:
                return finished.value
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                outcome = None
            elif isinstance(step, PacerCall):
                outcome = step.call()
            else:
                outcome = self._send(step.request)

    def _send(self, request: ApiRequest) -> HttpResponse | TransportFailure:
        settings = self.protocol.settings
        try:
            response = self.session.request(
                request.method,
                self.protocol.url(request),
                json=request.json,
                headers=self.protocol.headers,
                timeout=settings.timeout,
                verify=settings.verify_ssl,
            )
        except requests.ConnectTimeout as error:
            return TransportFailure(FailureKind.CONNECT, type(error).__name__)
        except requests.ReadTimeout as error:
            return TransportFailure(FailureKind.TIMEOUT, type(error).__name__)
        except requests.ConnectionError as error:
            kind = FailureKind.CONNECT if _never_connected(error) else FailureKind.DISCONNECTED
            return TransportFailure(kind, _describe(error))
        except requests.RequestException as error:
            return TransportFailure(FailureKind.DISCONNECTED, _describe(error))
        return HttpResponse(
            response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content
        )


class CerebraformAsyncClient:
    """
    Non-blocking client for triggers, over one ``httpx.AsyncClient`` per running event loop (a
    client is bound to the loop it was made on; the triggerer runs one loop, tests start many).

    :param settings: the connection's settings.
    :param max_wait: in-process wait cap; None (the default) waits as long as the service asks,
        which costs nothing in a trigger.
    :param pacer: the key's pacer; by default the process-wide one for these settings.
    :param rng: a source of floats in [0, 1) for the retry jitter.
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        max_wait: float | None = None,
        pacer: Pacer | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.protocol = CerebraformProtocol(settings, max_wait=max_wait, pacer=pacer, rng=rng)

    def __repr__(self) -> str:
        return f"CerebraformAsyncClient({self.protocol!r})"

    async def submit(self, submission: Submission, hold: str | None = None) -> str:
        return await self._run(self.protocol.submit(submission, hold))

    async def get_status(self, kind: GenerationKind | str, request_id: str) -> TaskState:
        return await self._run(self.protocol.status(kind, request_id))

    async def get_result(self, kind: GenerationKind | str, request_id: str) -> TaskResult:
        return await self._run(self.protocol.result(kind, request_id))

    async def get_credits(self) -> int:
        return await self._run(self.protocol.credits())

    async def _run(self, conversation: Conversation[T]) -> T:
        outcome: Outcome = None
        while True:
            try:
                step = conversation.send(outcome)
            except StopIteration as finished:
                return finished.value
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                outcome = None
            elif isinstance(step, PacerCall):
                outcome = await step.acall()
            else:
                outcome = await self._send(step.request)

    async def _send(self, request: ApiRequest) -> HttpResponse | TransportFailure:
        settings = self.protocol.settings
        client = await ashared_async_client(settings.verify_ssl)
        try:
            response = await client.request(
                request.method,
                self.protocol.url(request),
                json=request.json,
                headers=self.protocol.headers,
                timeout=settings.timeout,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            return TransportFailure(FailureKind.CONNECT, _describe(error))
        except (httpx.ReadTimeout, httpx.WriteTimeout) as error:
            return TransportFailure(FailureKind.TIMEOUT, type(error).__name__)
        except httpx.TransportError as error:
            return TransportFailure(FailureKind.DISCONNECTED, _describe(error))
        return HttpResponse(
            response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content
        )


_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[bool, httpx.AsyncClient]] = (
    weakref.WeakKeyDictionary()
)


_ssl_contexts: dict[bool, ssl.SSLContext] = {}
_ssl_contexts_lock = threading.Lock()


def _ssl_context(verify_ssl: bool) -> ssl.SSLContext:
    """One TLS context per process: building it reads and parses the CA bundle (tens of ms)."""
    with _ssl_contexts_lock:
        context = _ssl_contexts.get(verify_ssl)
        if context is None:
            context = _ssl_contexts[verify_ssl] = httpx.create_ssl_context(verify=verify_ssl)
        return context


def shared_async_client(verify_ssl: bool) -> httpx.AsyncClient:
    """The running loop's pooled client; every trigger on that loop shares its connections."""
    loop = asyncio.get_running_loop()
    clients = _async_clients.setdefault(loop, {})
    client = clients.get(verify_ssl)
    if client is None or client.is_closed:
        client = clients[verify_ssl] = httpx.AsyncClient(
            verify=_ssl_context(verify_ssl),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
    return client


async def ashared_async_client(verify_ssl: bool) -> httpx.AsyncClient:
    """:func:`shared_async_client`, building the process's TLS context in a thread, off the event loop."""
    if verify_ssl not in _ssl_contexts:
        await asyncio.to_thread(_ssl_context, verify_ssl)
    return shared_async_client(verify_ssl)


def _never_connected(error: BaseException) -> bool:
    """True when requests failed while opening the connection, so nothing was sent."""
    seen: set[int] = set()
    stack: list[object] = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen or current is None:
            continue
        seen.add(id(current))
        if isinstance(current, (NewConnectionError, NameResolutionError)):
            return True
        if isinstance(current, BaseException):
            stack.extend(current.args)
            stack.extend([current.__cause__, current.__context__, getattr(current, "reason", None)])
    return False


def _describe(error: BaseException) -> str:
    # Connection errors can quote the URL but never headers, so the key cannot appear here.
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text[:300]}"
