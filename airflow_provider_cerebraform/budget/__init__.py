"""
Rate budgets shared by several processes: the connection's ``budget`` extra.

``process`` (the default) is the in-process pacer of :mod:`~airflow_provider_cerebraform.pacing`.
``host`` keeps each window's state in a small file under a shared directory, updated under an
exclusive ``flock``: every process on the machine shares one budget. ``redis`` keeps it in Redis,
updated in a ``WATCH``/``MULTI`` transaction: every process on every host shares one budget.

Both apply the very rules of the in-process pacer (:class:`~airflow_provider_cerebraform.pacing.WindowRules`
on a :class:`~airflow_provider_cerebraform.pacing.WindowState`): sliding windows per tier and bucket,
reservations served in order and spaced evenly once callers queue, the pause a 429's ``Retry-After``
asks for, seen by every process, and the adaptive (AIMD) ceiling. That is why this is written here
rather than taken from the ``limits`` library: its moving window answers "may I hit now?", and has
no reservations for queued callers (so no even spacing nor a known wait), no shared pause and no
adaptive ceiling; only one copy of the rules in Python keeps the three backends alike. A Redis
transaction rather than a Lua script keeps that single copy; the transaction is retried when
another process changed the window in between.

Shared windows do I/O, so the protocol asks them through ``PacerCall`` steps: the blocking client
calls them, the async client awaits their ``a``-prefixed forms (``redis.asyncio``, or a thread for
the file lock), so a triggerer's event loop never blocks on the store.

When the store fails (Redis unreachable or slower than :data:`STORE_TIMEOUT`, the directory not
writable), pacing goes on in-process for :data:`RECHECK_AFTER` seconds before the store is tried
again; each process logs one warning the first time. Requests are never held up by the store for
longer than the socket timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from airflow_provider_cerebraform.models import ANONYMOUS_LIMIT, PUBLISHED_LIMITS, Bucket
from airflow_provider_cerebraform.pacing import Reservation, SlidingWindow, WindowRules, WindowState

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_cerebraform.models import ConnectionSettings, RateLimit

T = TypeVar("T")
log = logging.getLogger(__name__)

BUDGETS = ("process", "host", "redis")
#: Seconds a Redis connect or command may take before the process paces on its own.
STORE_TIMEOUT = 0.5
#: Seconds between attempts to go back to a store that failed.
RECHECK_AFTER = 30.0
DEFAULT_DIR = Path(tempfile.gettempdir()) / "cerebraform-budget"

_warned: set[str] = set()
_warned_lock = threading.Lock()


def budget_name(settings: ConnectionSettings) -> str:
    """The budget's name: a hash of base URL and key, never the key itself."""
    secret = f"{settings.base_url}\n{settings.api_key or ''}"
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


def store_secrets(settings: ConnectionSettings) -> list[str]:
    """Secrets of the budget's store to mask in logs: the password of the Redis URL, if any."""
    if not settings.redis_url:
        return []
    try:
        password = urlsplit(settings.redis_url).password
    except ValueError:
        return []
    return [password] if password else []


class StoreUnavailable(Exception):
    """The shared store did not answer in time, or refused; pace in-process instead."""


class _Store:
    """Where shared windows live; ``transact`` applies ``change(state, now)`` atomically."""

    description = "store"

    def __init__(self) -> None:
        self._down_until = 0.0
        self._lock = threading.Lock()

    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def failed(self, error: BaseException) -> None:
        with self._lock:
            self._down_until = time.monotonic() + RECHECK_AFTER
        with _warned_lock:
            first = self.description not in _warned
            _warned.add(self.description)
        if first:
            log.warning(
                "The shared rate budget (%s) failed (%s); this process paces on its own and tries the "
                "budget again every %.0f s. Other processes may then exceed the key's limit together, "
                "and the service's 429s guard it.",
                self.description,
                type(error).__name__,
                RECHECK_AFTER,
            )

    def transact(self, key: str, period: float, change: Callable[[WindowState, float], T]) -> T:
        raise NotImplementedError

    async def atransact(self, key: str, period: float, change: Callable[[WindowState, float], T]) -> T:
        raise NotImplementedError


def _ttl(state: WindowState, now: float, period: float) -> float:
    """How long the state matters: until its last slot and its pause have left the window."""
    last = max([slot[1] for slot in state.slots] + [state.paused_until, now])
    return max(1.0, last - now + period + 1.0)


class FileStore(_Store):
    """
    One small JSON file per window in a directory that every process on the host can write, changed
    under an exclusive ``flock`` on a lock file beside it and replaced atomically (rename).

    :param directory: the shared directory; created (mode 0700) when missing.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.description = f"host budget in {self.directory}"

    def transact(self, key: str, period: float, change: Callable[[WindowState, float], T]) -> T:
        import fcntl

        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self.directory / f"{key}.json"
            lock = os.open(self.directory / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    raw = path.read_bytes()
                except FileNotFoundError:
                    raw = b""
                state = _load(raw)
                result = change(state, time.time())
                temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                temporary.write_text(state.to_json())
                temporary.replace(path)
                return result
            finally:
                os.close(lock)  # also releases the flock
        except OSError as error:
            raise StoreUnavailable(str(error)) from error

    async def atransact(self, key: str, period: float, change: Callable[[WindowState, float], T]) -> T:
        # flock blocks while another process holds the lock: wait for it in a thread, off the loop.
        return await asyncio.to_thread(self.transact, key, period, change)


class RedisStore(_Store):
    """
    Windows as Redis strings, changed in a ``WATCH``/``MULTI`` transaction; the time is the Redis
    server's, so hosts whose clocks differ still agree on the windows.

    :param url: a ``redis://`` or ``rediss://`` URL (it may hold a password: it is never logged).
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        import redis

        self.url = url
        parts = urlsplit(url)
        self.description = f"redis budget at {parts.hostname}:{parts.port or 6379}{parts.path or ''}"
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client = redis.Redis.from_url(url, **self._options(redis.retry.Retry))
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    @staticmethod
    def _options(retry_class: Any) -> dict[str, Any]:
        from redis.backoff import NoBackoff

        # Fail fast: a budget that answers late is worse than pacing alone for a while.
        return {
            "socket_timeout": STORE_TIMEOUT,
            "socket_connect_timeout": STORE_TIMEOUT,
            "retry": retry_class(NoBackoff(), 0),
            "health_check_interval": 0,
        }

    def transact(self, key: str, period: float, change: Callable[[WindowState, float], T]) -> T:
        import redis

        try:
            with self._client.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(key)
                        raw, (seconds, micros) = pipe.eval(_READ, 1, key)
                        now = int(seconds) + int(micros) / 1e6
                        state = _load(raw)
                        result = change(state, now)
                        pipe.multi()
                        pipe.set(key, state.to_json(), px=int(_ttl(state, now, period) * 1000))
                        pipe.execute()
                        return result
                    except redis.WatchError:
                        continue
        except self._errors as error:
            raise StoreUnavailable(type(error).__name__) from error

    async def atransact(self, key: str, period: float, change: Callable[[WindowState, float], T]) -> T:
        import redis

        client = self._async_client()
        try:
            async with client.pipeline() as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        raw, (seconds, micros) = await pipe.eval(_READ, 1, key)
                        now = int(seconds) + int(micros) / 1e6
                        state = _load(raw)
                        result = change(state, now)
                        pipe.multi()
                        pipe.set(key, state.to_json(), px=int(_ttl(state, now, period) * 1000))
                        await pipe.execute()
                        return result
                    except redis.WatchError:
                        continue
        except (*self._errors, asyncio.TimeoutError) as error:
            raise StoreUnavailable(type(error).__name__) from error

    def _async_client(self) -> Any:
        """One client per event loop: a ``redis.asyncio`` connection belongs to the loop that made it."""
        import redis.asyncio

        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = self._async_clients[loop] = redis.asyncio.Redis.from_url(
                self.url, **self._options(redis.asyncio.retry.Retry)
            )
        return client


# The state and the server's clock in one round trip (read-only: the rules run in Python).
_READ = "return {redis.call('GET', KEYS[1]) or false, redis.call('TIME')}"


def _load(raw: bytes | str | None) -> WindowState:
    try:
        return WindowState.from_json(raw)
    except (ValueError, KeyError, TypeError):
        # A state nobody can read (a write cut short by a crash): start the window afresh.
        return WindowState()


class SharedWindow:
    """
    One bucket's window in a shared store, with the same interface as
    :class:`~airflow_provider_cerebraform.pacing.SlidingWindow`; while the store is down, the
    calls go to an in-process window of the same size.

    :param store: where the window lives.
    :param key: the window's name in the store.
    :param limit: the published number of requests per window.
    :param period: the window in seconds.
    :param share: the fraction of ``limit`` the whole deployment may use.
    """

    does_io = True

    def __init__(self, store: _Store, key: str, limit: int, period: float, share: float) -> None:
        self.store = store
        self.key = key
        self.period = period
        self.rules = WindowRules(limit, period, share)
        self.ceiling = self.rules.ceiling
        self.local = SlidingWindow(limit, period, share)
        self._full = False
        # One change at a time per process: concurrent transactions on one key would mostly abort
        # and retry (WATCH), which cost 10x the round trips with 40 triggers on a loop.
        self._thread_lock = threading.Lock()
        self._loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"SharedWindow({self.store.description}, period={self.period:g})"

    # Each call is a change to the shared state and what to do in-process instead.

    def _reserve(self, max_delay: float | None) -> tuple[Callable[..., Any], Callable[[], Any]]:
        slot_id = os.urandom(6).hex()

        def change(state: WindowState, now: float) -> Reservation:
            delay, admitted = self.rules.reserve(state, now, slot_id, max_delay)
            return Reservation(delay, admitted, ("shared", slot_id) if admitted else None)

        def local() -> Reservation:
            reservation = self.local.reserve(max_delay)
            return Reservation(reservation.delay, reservation.admitted, ("local", reservation))

        return change, local

    def _confirm(self, reservation: Reservation) -> tuple[Callable[..., Any], Callable[[], Any]]:
        where, slot = reservation.slot or ("local", Reservation(0.0, True))
        if where == "local":
            return None, lambda: self.local.confirm(slot)  # type: ignore[return-value]
        return (
            lambda state, now: self.rules.confirm(state, now, slot),
            lambda: self.local.confirm(Reservation(0.0, True)),
        )

    def _settle(self, reservation: Reservation) -> tuple[Callable[..., Any], Callable[[], Any]]:
        where, slot = reservation.slot or ("local", Reservation(0.0, True))
        if where == "local":
            return None, lambda: self.local.settle(slot)  # type: ignore[return-value]
        return lambda state, now: self.rules.settle(state, now, slot), lambda: None

    def _cancel(self, reservation: Reservation) -> tuple[Callable[..., Any], Callable[[], Any]]:
        where, slot = reservation.slot or ("local", Reservation(0.0, True))
        if where == "local":
            return None, lambda: self.local.cancel(slot)  # type: ignore[return-value]
        return lambda state, now: self.rules.cancel(state, slot), lambda: None

    def _on_success(self) -> tuple[Callable[..., Any], Callable[[], Any]]:
        if self._full:
            # The additive increase only matters after a 429 lowered the ceiling: skip the round trip.
            return None, lambda: None
        return lambda state, now: self.rules.on_success(state), self.local.on_success

    def _on_rate_limited(self, retry_after: float) -> tuple[Callable[..., Any], Callable[[], Any]]:
        return (
            lambda state, now: self.rules.on_rate_limited(state, now, retry_after),
            lambda: self.local.on_rate_limited(retry_after),
        )

    def _noting(self, change: Callable[[WindowState, float], T]) -> Callable[[WindowState, float], T]:
        """``change``, noting whether the shared ceiling is full afterwards."""

        def noted(state: WindowState, now: float) -> T:
            result = change(state, now)
            self._full = self.rules.allowed(state) >= self.ceiling
            return result

        return noted

    def _run(self, change: Callable[[WindowState, float], T] | None, local: Callable[[], T]) -> T:
        if change is not None and self.store.available():
            try:
                with self._thread_lock:
                    return self.store.transact(self.key, self.period, self._noting(change))
            except StoreUnavailable as error:
                self.store.failed(error.__cause__ or error)
        return local()

    async def _arun(self, change: Callable[[WindowState, float], T] | None, local: Callable[[], T]) -> T:
        if change is not None and self.store.available():
            loop = asyncio.get_running_loop()
            lock = self._loop_locks.get(loop)
            if lock is None:
                lock = self._loop_locks[loop] = asyncio.Lock()
            try:
                async with lock:
                    return await self.store.atransact(self.key, self.period, self._noting(change))
            except StoreUnavailable as error:
                self.store.failed(error.__cause__ or error)
        return local()

    def reserve(self, max_delay: float | None = None) -> Reservation:
        return self._run(*self._reserve(max_delay))

    def confirm(self, reservation: Reservation) -> float:
        return self._run(*self._confirm(reservation))

    def settle(self, reservation: Reservation) -> None:
        self._run(*self._settle(reservation))

    def cancel(self, reservation: Reservation) -> None:
        self._run(*self._cancel(reservation))

    def on_success(self) -> None:
        self._run(*self._on_success())

    def on_rate_limited(self, retry_after: float) -> None:
        self._run(*self._on_rate_limited(retry_after))

    async def areserve(self, max_delay: float | None = None) -> Reservation:
        return await self._arun(*self._reserve(max_delay))

    async def aconfirm(self, reservation: Reservation) -> float:
        return await self._arun(*self._confirm(reservation))

    async def asettle(self, reservation: Reservation) -> None:
        await self._arun(*self._settle(reservation))

    async def acancel(self, reservation: Reservation) -> None:
        await self._arun(*self._cancel(reservation))

    async def aon_success(self) -> None:
        await self._arun(*self._on_success())

    async def aon_rate_limited(self, retry_after: float) -> None:
        await self._arun(*self._on_rate_limited(retry_after))


class SharedKeyPacer:
    """
    The windows of one key in a shared store: creation and polling per tier, or the single
    anonymous window. Implements :class:`~airflow_provider_cerebraform.pacing.Pacer`.

    :param settings: the connection's settings; ``budget`` is ``host`` or ``redis``.
    :param store: the store to use instead of the one the settings name.
    """

    def __init__(self, settings: ConnectionSettings, store: _Store | None = None) -> None:
        self.store = store or store_for(settings)
        name = budget_name(settings)
        scale = settings.time_scale

        def window(bucket: str, rate: RateLimit) -> SharedWindow:
            key = f"cerebraform:budget:{name}:{bucket}"
            period = rate.period / scale
            return SharedWindow(self.store, key, rate.limit, period, settings.rate_share)

        if settings.api_key:
            limits = PUBLISHED_LIMITS[settings.tier]
            self._windows = {bucket: window(bucket.value, rate) for bucket, rate in limits.items()}
        else:
            anonymous = window("anonymous", ANONYMOUS_LIMIT)
            self._windows = dict.fromkeys(Bucket, anonymous)

    def window(self, bucket: Bucket) -> SharedWindow:
        return self._windows[bucket]


_stores: dict[tuple[str, str], _Store] = {}
_stores_lock = threading.Lock()


def store_for(settings: ConnectionSettings) -> _Store:
    """The process's store for these settings (one Redis connection pool per URL)."""
    if settings.budget == "host":
        identity = ("host", str(settings.budget_dir or DEFAULT_DIR))
    elif settings.budget == "redis" and settings.redis_url:
        identity = ("redis", settings.redis_url)
    else:
        raise ValueError(f"budget={settings.budget!r} has no shared store")
    with _stores_lock:
        store = _stores.get(identity)
        if store is None:
            store = FileStore(identity[1]) if identity[0] == "host" else RedisStore(identity[1])
            _stores[identity] = store
        return store


def shared_pacer(settings: ConnectionSettings) -> SharedKeyPacer:
    return SharedKeyPacer(settings)


def prepare(settings: ConnectionSettings) -> None:
    """
    Import the store's client library and make the store: for a trigger, run this in a thread before
    the first call, so that neither (``import redis.asyncio`` takes 0.1 s or more) runs on the loop.
    """
    if settings.budget == "process":
        return
    store = store_for(settings)
    if isinstance(store, RedisStore):
        import redis.asyncio  # noqa: F401


def reset_stores() -> None:
    """Forget every store and warning (tests start from a clean process state with it)."""
    with _stores_lock:
        _stores.clear()
    with _warned_lock:
        _warned.clear()
