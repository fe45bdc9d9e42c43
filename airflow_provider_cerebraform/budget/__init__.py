"""
Rate budgets shared by several processes: the connection's ``budget`` extra.

``process`` (the default) is the in-process pacer of :mod:`~airflow_provider_cerebraform.pacing`.
``host`` keeps each window's state in a small file under a shared directory, updated under an
exclusive ``flock``: every process on the machine shares one budget. ``redis`` keeps it in Redis,
changed by one atomic Lua script per step: every process on every host shares one budget.

All follow the rules of the in-process pacer (:class:`~airflow_provider_cerebraform.pacing.WindowRules`):
sliding windows per tier and bucket, reservations of future slots spaced evenly once callers queue,
callers held back while a request that bounds them is in flight (sent by any process, not settled),
the pause a 429's ``Retry-After`` asks for, seen by every process, and the adaptive (AIMD) ceiling.
``host`` runs ``WindowRules`` itself on a :class:`~airflow_provider_cerebraform.pacing.WindowState`;
``redis`` runs the same rules in Lua (:data:`WINDOW_LUA`), so that a caller reserves its slot in one
round trip: the earlier design (the state read, changed in Python, and written back in a
``WATCH``/``MULTI`` transaction, retried on conflicts) took 3 round trips per step, serialised the
steps of a process and rewrote the whole queue each time, and it left 18% of the creation limit
unused and polled at half the speed of a static ``rate_share`` (``docs/benchmarks.md``, section 6).
The Lua is written here rather than taken from the ``limits`` library: its moving window answers
"may I hit now?" (``hit``/``test``/``get_window_stats``); it has no reservation of a future slot
(so no known wait and no even spacing of queued callers), no pause shared after a 429 and no
adaptive ceiling. A test (``tests/budget/test_window_lua.py``) runs the script and ``WindowRules``
side by side on the same steps, so the two copies cannot drift apart unnoticed.

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
#: Redis connections (and so steps at once) per event loop. One: a step takes a fraction of a
#: millisecond in Redis, and with several at once (8) a thousand triggers on one loop stalled in the
#: benchmark after a timeout, where one at a time (the earlier design's rule) never did.
ASYNC_CONNECTIONS = 1
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
    """
    Where shared windows live. ``call(window, op, *args)`` applies one rule of
    :class:`~airflow_provider_cerebraform.pacing.WindowRules` (``reserve``, ``confirm``, ``settle``,
    ``cancel``, ``on_success``, ``on_rate_limited``) to the window's shared state atomically, and
    answers ``(result, full)``: the rule's result and whether the adaptive ceiling is at its maximum.
    """

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

    def call(self, window: SharedWindow, op: str, *args: Any) -> tuple[Any, bool]:
        raise NotImplementedError

    async def acall(self, window: SharedWindow, op: str, *args: Any) -> tuple[Any, bool]:
        raise NotImplementedError


def _apply(rules: WindowRules, state: WindowState, now: float, op: str, args: tuple[Any, ...]) -> Any:
    """One rule on a state in Python (the ``host`` budget; the ``redis`` budget runs :data:`WINDOW_LUA`)."""
    if op == "reserve":
        slot_id, max_delay, keep = args
        return rules.reserve(state, now, slot_id, max_delay, keep)
    if op == "confirm":
        return rules.confirm(state, now, args[0])
    if op == "settle":
        return rules.settle(state, now, args[0])
    if op == "cancel":
        return rules.cancel(state, args[0])
    if op == "on_success":
        return rules.on_success(state)
    if op == "on_rate_limited":
        return rules.on_rate_limited(state, now, args[0])
    raise ValueError(f"unknown window operation {op!r}")


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

    def call(self, window: SharedWindow, op: str, *args: Any) -> tuple[Any, bool]:
        import fcntl

        rules = window.rules
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self.directory / f"{window.key}.json"
            lock = os.open(self.directory / f"{window.key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    raw = path.read_bytes()
                except FileNotFoundError:
                    raw = b""
                state = _load(raw)
                result = _apply(rules, state, time.time(), op, args)
                temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                temporary.write_text(state.to_json())
                temporary.replace(path)
                return result, rules.allowed(state) >= rules.ceiling
            finally:
                os.close(lock)  # also releases the flock
        except OSError as error:
            raise StoreUnavailable(str(error)) from error

    async def acall(self, window: SharedWindow, op: str, *args: Any) -> tuple[Any, bool]:
        # flock blocks while another process holds the lock: wait for it in a thread, off the loop.
        return await asyncio.to_thread(self.call, window, op, *args)


class RedisStore(_Store):
    """
    Windows in Redis, each changed by one call of a Lua script (:data:`WINDOW_LUA`), which Redis runs
    atomically: one round trip per rule, no transaction to retry, however many processes share the
    window. The time is the Redis server's, so hosts whose clocks differ still agree on the windows.

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
        self._script = self._client.register_script(WINDOW_LUA)
        self._async_scripts: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[Any, asyncio.Semaphore]
        ] = weakref.WeakKeyDictionary()

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

    @staticmethod
    def script_args(
        window: SharedWindow, op: str, args: tuple[Any, ...], now: float | None = None
    ) -> list[Any]:
        """The script's ARGV for one rule (``now``: a fixed clock for tests; None: the server's ``TIME``)."""
        rules = window.rules
        if op == "reserve":
            slot_id, max_delay, keep = args
            args = (slot_id, "" if max_delay is None else repr(float(max_delay)), "1" if keep else "0")
        head = [
            op,
            repr(rules.period),
            repr(rules.ceiling),
            repr(rules.margin),
            "" if now is None else repr(now),
            "1" if rules.spread else "0",
            repr(rules.bound),
            repr(rules.recheck),
        ]
        return head + [arg if isinstance(arg, str) else repr(arg) for arg in args]

    @staticmethod
    def keys(window: SharedWindow) -> list[str]:
        return [f"{window.key}:slots", window.key, f"{window.key}:unsettled"]

    @staticmethod
    def parse(op: str, answer: list[Any], slot_id: Any = None) -> tuple[Any, bool]:
        flag, number, full = int(answer[0]), float(answer[1]), bool(int(answer[2]))
        if op == "reserve":
            return (number, bool(flag)), full
        if op == "confirm":
            return number, full
        return None, full

    def call(self, window: SharedWindow, op: str, *args: Any) -> tuple[Any, bool]:
        try:
            answer = self._script(keys=self.keys(window), args=self.script_args(window, op, args))
        except self._errors as error:
            raise StoreUnavailable(type(error).__name__) from error
        return self.parse(op, answer)

    async def acall(self, window: SharedWindow, op: str, *args: Any) -> tuple[Any, bool]:
        script, calls = self._async_script()
        # A thousand triggers on one loop would each open a connection (and run out of them: the
        # budget then failed over to per-process pacing in the benchmark): they take turns instead.
        async with calls:
            if not self.available():  # it failed while this call waited its turn
                raise StoreUnavailable("down")
            try:
                answer = await script(keys=self.keys(window), args=self.script_args(window, op, args))
            except (*self._errors, asyncio.TimeoutError) as error:
                raise StoreUnavailable(type(error).__name__) from error
        return self.parse(op, answer)

    def _async_script(self) -> tuple[Any, asyncio.Semaphore]:
        """One client per event loop: a ``redis.asyncio`` connection belongs to the loop that made it."""
        import redis.asyncio

        loop = asyncio.get_running_loop()
        entry = self._async_scripts.get(loop)
        if entry is None:
            client = redis.asyncio.Redis.from_url(
                self.url, max_connections=ASYNC_CONNECTIONS, **self._options(redis.asyncio.retry.Retry)
            )
            entry = self._async_scripts[loop] = (
                client.register_script(WINDOW_LUA),
                asyncio.Semaphore(ASYNC_CONNECTIONS),
            )
        return entry


# The rules of WindowRules (pacing.py) as one atomic step in Redis. KEYS[1]: the window's reservations,
# a sorted set of slot id -> time (sent, or answered); KEYS[2]: a hash of the adaptive ceiling
# ('allowed'), the Retry-After pause ('paused') and the last halving ('decreased'); KEYS[3]: the slots
# not settled yet (not answered, nor failed), a sorted set of slot id -> the same time as in KEYS[1]
# (a slot missing from it is settled: so are those of a window stored before it existed). ARGV:
# operation, period, ceiling, edge margin, now ('' for the server's TIME), spread ('1': space queued
# callers evenly), the bound of a request in flight and the re-check delay (WindowRules.bound and
# .recheck), then the operation's arguments. It answers {flag, number, full}: reserve {admitted,
# delay}, confirm {1, delay}, the others {1, 0}; full is 1 when the ceiling is at its maximum (no
# additive increase to send). Numbers go back as strings: Redis would truncate Lua numbers to
# integers. Sorted by time rather than by reservation order, the n-th latest slot is exactly what
# bounds the window, so a slot moved later by a late answer is counted where it lands.
# tests/budget/test_window_lua.py checks it against WindowRules step by step.
WINDOW_LUA = """
local slots, state, unsettled = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
local period, ceiling, margin = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = tonumber(ARGV[5])
local spread = ARGV[6] == '1'
local bound, recheck = tonumber(ARGV[7]), tonumber(ARGV[8])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function num(x) return string.format('%.17g', x) end
local allowed = math.min(ceiling, tonumber(redis.call('HGET', state, 'allowed')) or ceiling)
local paused = tonumber(redis.call('HGET', state, 'paused')) or 0
-- slots leave the window a period after their time; those in flight (unsettled, their time past), a
-- period after their bound (WindowRules.leaves_at)
local lingering = redis.call('ZRANGEBYSCORE', unsettled, '(' .. num(now - period - bound), num(now - period),
  'WITHSCORES')
redis.call('ZREMRANGEBYSCORE', slots, '-inf', num(now - period))
redis.call('ZREMRANGEBYSCORE', unsettled, '-inf', num(now - period - bound))
for i = 1, #lingering, 2 do redis.call('ZADD', slots, lingering[i + 1], lingering[i]) end
-- what the slots of ranks 0..last ask of a caller they bound (WindowRules._bounded_by): the earliest
-- time it may send as far as is known or, when one of them is in flight (its time past, not settled),
-- the time it looks again if later, as that one is counted when it arrives: by its answer, unknown yet
local function bounded_by(last, skip)
  local need, again = -math.huge, nil
  -- ranks 0..last, not counting the caller's own slot (skip) should a tie rank it among them
  local ahead = redis.call('ZRANGE', slots, 0, skip and last + 1 or last, 'WITHSCORES')
  local taken = 0
  for i = 1, #ahead, 2 do
    if taken > last then break end
    if ahead[i] ~= skip then
      taken = taken + 1
      local at = tonumber(ahead[i + 1])
      if at <= now and redis.call('ZSCORE', unsettled, ahead[i]) then
        -- look again until it is settled or leaves the window (WindowRules.leaves_at)
        local wait = math.min(recheck, at + bound + period - now)
        if not again or wait < again then again = wait end
      end
      need = math.max(need, at + period + margin)
    end
  end
  if again then need = math.max(need, now + again) end
  return need
end
local function move(id, at)
  redis.call('ZADD', slots, num(at), id)
  redis.call('ZADD', unsettled, 'XX', num(at), id)
end
local function confirm(id)
  local need = math.max(now, paused)
  local at = tonumber(redis.call('ZSCORE', slots, id))
  if at then
    -- it is sent no earlier than now, and ranked there: see WindowRules.confirm
    if at < now then
      at = now
      move(id, at)
    end
    -- how many slots are no later than it (ties included), but itself
    local earlier = redis.call('ZCOUNT', slots, '-inf', num(at)) - 1
    local whole = math.floor(allowed)
    if earlier >= whole then
      -- while it waits, its slot is when it looks again: requests answered meanwhile count ahead of it
      need = math.max(need, bounded_by(earlier - whole, id))
    end
    if need > at then move(id, need) end
  end
  return need - now
end
local flag, answer = 1, 0
if op == 'reserve' then
  local max_delay = tonumber(ARGV[10])
  if redis.call('ZSCORE', slots, ARGV[9]) then
    -- the caller's own slot, kept while it deferred: confirm it rather than queue again
    local confirmed = confirm(ARGV[9])
    answer = math.max(tonumber(redis.call('ZSCORE', slots, ARGV[9])) - now, confirmed)
    if max_delay and answer > max_delay then flag = 0 end
  else
    local whole = math.floor(allowed)
    local at = math.max(now, paused)
    local count = redis.call('ZCARD', slots)
    if count > 0 then
      local last = tonumber(redis.call('ZRANGE', slots, -1, -1, 'WITHSCORES')[2])
      at = math.max(at, last)
      if count >= whole then
        local nth = tonumber(redis.call('ZRANGE', slots, -whole, -whole, 'WITHSCORES')[2])
        at = math.max(at, nth + period + margin)
        -- polls: once callers queue, space them evenly rather than a window's budget in one burst
        if spread then at = math.max(at, last + period / whole) end
        if at <= now then
          -- sent at once, it is not confirmed first: requests in flight ahead of it hold it back here
          at = math.max(at, bounded_by(count - whole))
        end
      end
    end
    answer = at - now
    local take = true
    if max_delay and answer > max_delay then
      flag = 0
      -- kept: the caller defers and comes back for it
      take = ARGV[11] == '1'
    end
    if take then
      redis.call('ZADD', slots, num(at), ARGV[9])
      redis.call('ZADD', unsettled, num(at), ARGV[9])
    end
  end
elseif op == 'confirm' then
  answer = confirm(ARGV[9])
elseif op == 'settle' then
  local at = redis.call('ZSCORE', slots, ARGV[9])
  if at and now > tonumber(at) then
    redis.call('ZADD', slots, num(now), ARGV[9])
  end
  redis.call('ZREM', unsettled, ARGV[9])
elseif op == 'cancel' then
  redis.call('ZREM', slots, ARGV[9])
  redis.call('ZREM', unsettled, ARGV[9])
elseif op == 'on_success' then
  allowed = math.min(ceiling, allowed + 1 / ceiling)
  if allowed >= ceiling then
    redis.call('HDEL', state, 'allowed')
  else
    redis.call('HSET', state, 'allowed', num(allowed))
  end
elseif op == 'on_rate_limited' then
  -- halve once per episode and at most once per window (see WindowRules.on_rate_limited)
  local decreased = tonumber(redis.call('HGET', state, 'decreased')) or -math.huge
  if now >= paused and now >= decreased + period then
    allowed = math.max(1, allowed / 2)
    redis.call('HSET', state, 'allowed', num(allowed), 'decreased', num(now))
  end
  paused = math.max(paused, now + tonumber(ARGV[9]))
  redis.call('HSET', state, 'paused', num(paused))
else
  return redis.error_reply('unknown window operation ' .. tostring(op))
end
-- the state matters until its last slot and its pause have left the window (an unsettled slot, its bound)
local last = math.max(now, paused)
local top = redis.call('ZRANGE', slots, -1, -1, 'WITHSCORES')
if top[2] then last = math.max(last, tonumber(top[2])) end
local pending = redis.call('ZRANGE', unsettled, -1, -1, 'WITHSCORES')
if pending[2] then last = math.max(last, tonumber(pending[2]) + bound) end
local ttl = math.ceil((last - now + period + 1) * 1000)
redis.call('PEXPIRE', slots, ttl)
redis.call('PEXPIRE', state, ttl)
redis.call('PEXPIRE', unsettled, ttl)
local full = 0
if allowed >= ceiling then full = 1 end
return {flag, num(answer), full}
"""


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
    :param spread: space queued callers evenly (see ``WindowRules`` in ``pacing.py``).
    """

    does_io = True

    def __init__(
        self, store: _Store, key: str, limit: int, period: float, share: float, spread: bool = True
    ) -> None:
        self.store = store
        self.key = key
        self.period = period
        self.rules = WindowRules(limit, period, share, spread)
        self.ceiling = self.rules.ceiling
        self.local = SlidingWindow(limit, period, share, spread=spread)
        self._full = False

    def __repr__(self) -> str:
        return f"SharedWindow({self.store.description}, period={self.period:g})"

    # Each call is an operation on the shared state, its arguments, and what to do in-process instead.

    def _reserve(
        self, max_delay: float | None, hold: str | None
    ) -> tuple[str | None, tuple[Any, ...], Callable[[], Any]]:
        def local() -> Reservation:
            reservation = self.local.reserve(max_delay)
            slot = ("local", reservation) if reservation.admitted else None
            return Reservation(reservation.delay, reservation.admitted, slot)

        # With ``hold``, a wait too long keeps the slot under that id for the caller's return.
        return "reserve", (hold or os.urandom(6).hex(), max_delay, hold is not None), local

    def _confirm(self, reservation: Reservation) -> tuple[str | None, tuple[Any, ...], Callable[[], Any]]:
        where, slot = reservation.slot or ("local", Reservation(0.0, True))
        if where == "local":
            return None, (), lambda: self.local.confirm(slot)
        return "confirm", (slot,), lambda: self.local.confirm(Reservation(0.0, True))

    def _settle(self, reservation: Reservation) -> tuple[str | None, tuple[Any, ...], Callable[[], Any]]:
        where, slot = reservation.slot or ("local", Reservation(0.0, True))
        if where == "local":
            return None, (), lambda: self.local.settle(slot)
        return "settle", (slot,), lambda: None

    def _cancel(self, reservation: Reservation) -> tuple[str | None, tuple[Any, ...], Callable[[], Any]]:
        where, slot = reservation.slot or ("local", Reservation(0.0, True))
        if where == "local":
            return None, (), lambda: self.local.cancel(slot)
        return "cancel", (slot,), lambda: None

    def _on_success(self) -> tuple[str | None, tuple[Any, ...], Callable[[], Any]]:
        if self._full:
            # The additive increase only matters after a 429 lowered the ceiling: skip the round trip.
            return None, (), lambda: None
        return "on_success", (), self.local.on_success

    def _on_rate_limited(self, retry_after: float) -> tuple[str | None, tuple[Any, ...], Callable[[], Any]]:
        return "on_rate_limited", (retry_after,), lambda: self.local.on_rate_limited(retry_after)

    def _answer(self, op: str, args: tuple[Any, ...], answer: tuple[Any, bool]) -> Any:
        result, self._full = answer
        if op == "reserve":
            delay, admitted = result
            kept = admitted or bool(args[2])
            return Reservation(delay, admitted, ("shared", args[0]) if kept else None)
        return result

    def _run(self, op: str | None, args: tuple[Any, ...], local: Callable[[], T]) -> T:
        if op is not None and self.store.available():
            try:
                return self._answer(op, args, self.store.call(self, op, *args))
            except StoreUnavailable as error:
                if self.store.available():
                    self.store.failed(error.__cause__ or error)
        return local()

    async def _arun(self, op: str | None, args: tuple[Any, ...], local: Callable[[], T]) -> T:
        if op is not None and self.store.available():
            try:
                return self._answer(op, args, await self.store.acall(self, op, *args))
            except StoreUnavailable as error:
                if self.store.available():
                    self.store.failed(error.__cause__ or error)
        return local()

    def reserve(self, max_delay: float | None = None, hold: str | None = None) -> Reservation:
        return self._run(*self._reserve(max_delay, hold))

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

    async def areserve(self, max_delay: float | None = None, hold: str | None = None) -> Reservation:
        return await self._arun(*self._reserve(max_delay, hold))

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
            key = f"cerebraform:budget:{{{name}}}:{bucket}"
            period = rate.period / scale
            spread = bucket != Bucket.CREATE.value
            return SharedWindow(self.store, key, rate.limit, period, settings.rate_share, spread)

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
