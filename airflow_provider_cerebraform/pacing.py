"""
Client-side pacing: keep each API key under its tier's published limits before the service has to
say 429.

One :class:`KeyPacer` per (base URL, key) lives in the process and is shared by every hook and
every trigger in it, sync and async alike; its state is guarded by a plain lock held for
microseconds, so it never blocks an event loop. Requests reserve a slot in a sliding window the
way the service counts them (``api-open-questions.md`` #7 and #8): slots are handed out in order,
so waiting callers are served round-robin. The service counts a request when it arrives, which
may be any time until its answer, so an answered slot moves to the time of its answer and a
waiting caller re-checks its slot right before sending (a burst whose first requests arrive late
would otherwise let the next window's requests arrive too early). A caller whose slot is bounded by a
request still in flight (its time is past and it is not settled: not answered, nor failed) does not
send until that request is settled: when the service counted it is unknown until then, and may be
well after its slot's time (on a loaded event loop or against a slow service that was common, and
the next window's request then arrived less than a window after it: a 429). A request never settled
(its process died, its trigger was cancelled, a deferred task never came back for its kept slot) is
taken to have arrived at most ``WindowRules.bound`` after its slot's time, so that it holds the
window back for a while, never for good. Slots are ranked by time, not by when they were reserved, and
a caller that looks late is ranked at the time it looks: ranked at its planned time, it did not count
the requests sent meanwhile by callers planned before it but sent late too, and on a busy event loop
(a thousand waits, one ``redis`` budget) the window took more than its limit.

Several processes on one key (HA triggerers, many workers) each take ``rate_share`` of the limit,
and every process adapts: a 429 halves its rate and pauses the bucket for ``Retry-After``
(multiplicative decrease); each admitted request wins back a little (additive increase, one slot
per window's worth of successes), so the processes settle under the shared limit.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_cerebraform.models import (
    ANONYMOUS_LIMIT,
    PUBLISHED_LIMITS,
    Bucket,
    ConnectionSettings,
    RateLimit,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Generator

# The service counts a request when it arrives; keep a small gap so that a slot released at the
# service's edge of the window is not used a hair too early.
_EDGE_MARGIN_FRACTION = 0.01
_EDGE_MARGIN_MAX = 0.5
# How long after its slot's time a request not settled may still arrive, at most: see WindowRules.bound.
_IN_FLIGHT_BOUND_MAX = 60.0
# A caller held back by a request in flight looks again this often: a quarter of the spacing of a full
# window's requests (it is then sent at most that long after the request ahead is settled), kept within
# 10 ms (each look is a round trip to a shared budget) and 1 s.
_RECHECK_FRACTION = 0.25
_RECHECK_MIN = 0.01
_RECHECK_MAX = 1.0


def settled(slot: list[Any]) -> bool:
    """Whether a slot's request was answered (or failed); a slot stored without the flag was."""
    return len(slot) < 3 or bool(slot[2])


@dataclass
class WindowState:
    """
    What a window remembers, as plain data so that a shared store can keep it (``budget``).

    :param slots: ``[slot id, time, settled]`` of each reserved request (the rules rank them by
        time); the time is when it is (or was) sent, later when it was answered; ``settled`` is
        whether it was answered (or failed). A slot without the flag (a state stored before it, a
        request remembered from another process) was.
    :param allowed: the adaptive ceiling (None: the full ceiling).
    :param paused_until: the end of the pause a 429's ``Retry-After`` asked for.
    :param decreased_at: when the ceiling was last halved (None: never).
    """

    slots: list[list[Any]] = field(default_factory=list)
    allowed: float | None = None
    paused_until: float = 0.0
    decreased_at: float | None = None

    def to_json(self) -> str:
        return json.dumps(
            {"s": self.slots, "a": self.allowed, "p": self.paused_until, "d": self.decreased_at},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes | None) -> WindowState:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(data["s"], data["a"], data["p"], data["d"])


class WindowRules:
    """
    The rules of a sliding window with reservations and an adaptive (AIMD) ceiling, applied to a
    :class:`WindowState` at a given time. No I/O and no clock: the in-process window and the shared
    budgets (``budget``) both call these, so every backend follows the same rules.

    :param limit: the published number of requests per window.
    :param period: the window in seconds.
    :param share: the fraction of ``limit`` this process (or, with a shared budget, the deployment) may use.
    :param spread: space callers that queue behind a full window evenly over the next one (polls: many
        waits then take turns). False releases each slot as soon as the window frees it (creations:
        spacing them after a burst left most of the next window unused, ``docs/scaling.md``).
    """

    def __init__(self, limit: int, period: float, share: float = 1.0, spread: bool = True) -> None:
        self.period = period
        self.spread = spread
        self.ceiling = max(1.0, math.floor(limit * share))
        self.margin = min(_EDGE_MARGIN_MAX, period * _EDGE_MARGIN_FRACTION)
        # A request never settled is taken to have arrived at most `bound` after its slot's time: one
        # window, and no more than a minute. A live caller sends at its slot's time and its request
        # connects (so arrives) within the client's timeout (30 s by default) or fails and is settled;
        # one unsettled longer than that belongs to a caller that is gone (a process that died, a
        # trigger cancelled, a deferred task that never came back for its kept slot). It leaves the
        # window a window after its bound, so the callers it bounds wait at most a minute longer than
        # had it been answered at once (an hour's window would otherwise stall its queue for an hour
        # more). The emulator's compressed windows keep the bound as short as their window.
        self.bound = min(period, _IN_FLIGHT_BOUND_MAX)
        self.recheck = min(_RECHECK_MAX, max(_RECHECK_MIN, period / self.ceiling * _RECHECK_FRACTION))

    def allowed(self, state: WindowState) -> float:
        return self.ceiling if state.allowed is None else min(self.ceiling, state.allowed)

    def in_flight(self, slot: list[Any], now: float) -> bool:
        """
        Whether the slot's request may be on its way: its time is past and it is not settled. The
        service counts it when it arrives, by its answer at the latest: unknown until then.
        """
        return not settled(slot) and slot[1] <= now

    def leaves_at(self, slot: list[Any], now: float) -> float:
        """
        When the slot's request leaves the window: a window after its time (a settled one: its
        answer's), or for one in flight, a window after its :attr:`bound`, by which it is taken to
        have arrived if it is never settled.
        """
        return slot[1] + (self.bound if self.in_flight(slot, now) else 0.0) + self.period

    def expired(self, slot: list[Any], now: float) -> bool:
        # As the store computes it (now - period - bound), so the two agree to the last bit.
        edge = now - self.period
        return slot[1] <= (edge - self.bound if self.in_flight(slot, now) else edge)

    def _expire(self, state: WindowState, now: float) -> None:
        state.slots[:] = [slot for slot in state.slots if not self.expired(slot, now)]

    def _bounded_by(self, earlier: list[list[Any]], allowed: int, now: float) -> float:
        """
        What the slots ``earlier`` (those sent, or due, before a caller, ordered by time) ask of it: all
        but the latest ``allowed - 1`` of them must have left the window. The earliest time it may send
        as far as is known or, while one of those is in flight, the time it looks again if that is later.
        The one in flight arrived no earlier than its slot's time, so the caller waits at least a window
        after that, and looks again until it is settled or leaves the window.
        """
        need = -math.inf
        again: float | None = None
        for slot in earlier[: max(0, len(earlier) - allowed + 1)]:
            if self.in_flight(slot, now):
                wait = min(self.recheck, self.leaves_at(slot, now) - now)
                again = wait if again is None else min(again, wait)
            need = max(need, slot[1] + self.period + self.margin)
        return need if again is None else max(need, now + again)

    def reserve(
        self, state: WindowState, now: float, slot_id: Any, max_delay: float | None, keep: bool = False
    ) -> tuple[float, bool]:
        """
        Take the next free slot as ``slot_id`` unless the wait exceeds ``max_delay``: (delay, admitted).
        With ``keep``, a wait too long takes the slot all the same (not admitted): the caller defers
        and comes back for it by reserving the same ``slot_id``, which then finds its own slot (and
        confirms it, see :meth:`confirm`) instead of queueing again behind everyone who asked since.
        """
        slots = state.slots
        self._expire(state, now)
        mine = next((slot for slot in slots if slot[0] == slot_id), None)
        if mine is not None:
            # Confirmed: no earlier than planned, later if the window needs it (or a request in
            # flight ahead holds it back: it looks again after the confirmation's delay).
            delay = max(mine[1] - now, self.confirm(state, now, slot_id))
            return delay, max_delay is None or delay <= max_delay
        allowed = int(self.allowed(state))
        at = max(now, state.paused_until)
        # No earlier than the latest slot (the last reserved, or one moved later since: a caller that
        # looked late, a late answer).
        last = max((slot[1] for slot in slots), default=-math.inf)
        at = max(at, last)
        if len(slots) >= allowed:
            # The window counts requests by when they are sent, so slots are ranked by time, not by
            # when they were reserved.
            by_time = sorted(slots, key=lambda slot: slot[1])
            at = max(at, by_time[-allowed][1] + self.period + self.margin)
            if self.spread:
                # Once callers queue, space them evenly instead of releasing each window's budget
                # in one burst: many waiters then get polled in turn every K/B minutes, not once a
                # window all at its start (docs/benchmarks.md, triggerer scale).
                at = max(at, last + self.period / allowed)
            if at <= now:
                # Sent at once, it is not confirmed first: the requests in flight ahead of it (for more
                # than a window: rare) hold it back here, and its caller confirms after the delay.
                at = max(at, self._bounded_by(by_time, allowed, now))
        delay = at - now
        if max_delay is not None and delay > max_delay:
            if keep:
                slots.append([slot_id, at, False])
            return delay, False
        slots.append([slot_id, at, False])
        return delay, True

    def confirm(self, state: WindowState, now: float, slot_id: Any) -> float:
        """
        How much longer the holder of ``slot_id`` waits before sending (0: now); moves the slot. The
        requests at least ``allowed`` places ahead must have been counted a window (and the edge
        margin) before it is sent. While one of them is in flight, when the service counts it is
        unknown until it is answered: the caller is asked to look again shortly (:attr:`recheck`), and
        its slot moves to then, not a window later. Slots that left the window no longer count.
        """
        self._expire(state, now)
        need = max(now, state.paused_until)
        mine = next((slot for slot in state.slots if slot[0] == slot_id), None)
        if mine is not None:
            # It is sent no earlier than now, so it is ranked there. Ranked at its planned time, a caller
            # that looks late (a busy event loop) missed the requests that other late callers, planned
            # before it, sent meanwhile (their slots moved past its planned time): neither counted the
            # other, and the window took more than its limit.
            mine[1] = max(mine[1], now)
            earlier = sorted(
                (slot for slot in state.slots if slot is not mine and slot[1] <= mine[1]),
                key=lambda slot: slot[1],
            )
            # While it waits, its slot is when it looks again: requests answered meanwhile are then
            # counted ahead of it.
            need = max(need, self._bounded_by(earlier, int(self.allowed(state)), now))
            mine[1] = max(mine[1], need)
        return need - now

    def settle(self, state: WindowState, now: float, slot_id: Any) -> None:
        for slot in state.slots:
            if slot[0] == slot_id:
                slot[1] = max(slot[1], now)
                if len(slot) >= 3:
                    slot[2] = True
                return

    def cancel(self, state: WindowState, slot_id: Any) -> None:
        state.slots[:] = [slot for slot in state.slots if slot[0] != slot_id]

    def free_at(self, state: WindowState, now: float, count: int) -> float:
        """
        When ``count`` requests in a row may be sent at once, without the even spacing that
        :meth:`reserve` gives callers queueing behind a full window (a batch sends in bursts, so that
        its worker comes back once per burst rather than once per slot).
        """
        slots = [slot for slot in state.slots if slot[1] > now - self.period]
        allowed = int(self.allowed(state))
        count = max(1, min(count, allowed))
        at = max(now, state.paused_until)
        excess = len(slots) + count - allowed
        if excess > 0:
            at = max(at, sorted(slot[1] for slot in slots)[excess - 1] + self.period + self.margin)
        return at

    def on_success(self, state: WindowState) -> None:
        state.allowed = min(self.ceiling, self.allowed(state) + 1.0 / self.ceiling)

    def on_rate_limited(self, state: WindowState, now: float, retry_after: float) -> None:
        # Halve once per episode: the 429s of requests already in flight when the first one
        # arrived are the same congestion, not new evidence (compounding them took a key with
        # a few concurrent 429s down to 1 request per window for hours). And at most once per
        # window: a storm of 429s with short Retry-After answers otherwise halves the rate again
        # after every pause, down to 1 request per window (1 task an hour on the create bucket).
        decreased_at = -math.inf if state.decreased_at is None else state.decreased_at
        if now >= state.paused_until and now >= decreased_at + self.period:
            state.allowed = max(1.0, self.allowed(state) / 2)
            state.decreased_at = now
        state.paused_until = max(state.paused_until, now + retry_after)


@dataclass(frozen=True)
class Reservation:
    """
    A slot in a window. ``delay`` is how long to wait before sending; 0 means now. A reservation
    not ``admitted`` that has a ``slot`` is kept for a caller that defers and comes back for it
    (``reserve(hold=...)``).
    """

    delay: float
    admitted: bool
    slot: Any = field(default=None, repr=False, compare=False)


class Window(Protocol):
    """
    What :class:`~airflow_provider_cerebraform.core.CerebraformProtocol` asks of a bucket's window.
    Windows whose ``does_io`` is true (shared budgets) are asked through :class:`PacerCall` steps,
    so that the async client awaits their ``a``-prefixed forms and never blocks its event loop.
    """

    period: float
    does_io: bool

    def reserve(self, max_delay: float | None = None, hold: str | None = None) -> Reservation: ...
    def confirm(self, reservation: Reservation) -> float: ...
    def settle(self, reservation: Reservation) -> None: ...
    def cancel(self, reservation: Reservation) -> None: ...
    def on_success(self) -> None: ...
    def on_rate_limited(self, retry_after: float) -> None: ...


class Pacer(Protocol):
    """The pacing of one key: a window per bucket. Inject one into the protocol to replace the default."""

    def window(self, bucket: Bucket) -> Window: ...


@dataclass(frozen=True)
class PacerCall:
    """
    A conversation step: call ``window.<method>(*args)`` and send back its answer. The sync client
    calls the method; the async client awaits ``a<method>`` (shared budgets talk to their store).
    """

    window: Window
    method: str
    args: tuple[Any, ...] = ()

    def call(self) -> Any:
        return getattr(self.window, self.method)(*self.args)

    async def acall(self) -> Any:
        return await getattr(self.window, "a" + self.method)(*self.args)


def pace(window: Window, method: str, *args: Any) -> Generator[PacerCall, Any, Any]:
    """Ask ``window``: directly when it is in memory, through a :class:`PacerCall` step when it does I/O."""
    if window.does_io:
        return (yield PacerCall(window, method, args))
    return getattr(window, method)(*args)


class SlidingWindow:
    """
    The in-process window (``budget`` ``process``): :class:`WindowRules` over a state in memory.

    :param limit: the published number of requests per window.
    :param period: the window in seconds.
    :param share: the fraction of ``limit`` this process may use.
    :param clock: a monotonic clock, replaceable in tests.
    :param spread: space queued callers evenly (see :class:`WindowRules`).
    """

    does_io = False

    def __init__(
        self,
        limit: int,
        period: float,
        share: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        spread: bool = True,
    ) -> None:
        self.rules = WindowRules(limit, period, share, spread)
        self.period = period
        self.ceiling = self.rules.ceiling
        self.state = WindowState()
        self._clock = clock
        self._ids = itertools.count()
        self._lock = threading.Lock()

    @property
    def allowed(self) -> float:
        return self.rules.allowed(self.state)

    @property
    def paused_until(self) -> float:
        return self.state.paused_until

    def reserve(self, max_delay: float | None = None, hold: str | None = None) -> Reservation:
        """
        Take the next free slot, unless waiting for it would exceed ``max_delay`` seconds; then
        nothing is taken and the reservation says how long the wait would have been. ``hold`` is
        ignored: a slot kept for a caller that defers only makes sense in a budget that outlives
        this process (``budget``: ``host`` or ``redis``).
        """
        with self._lock:
            slot_id = next(self._ids)
            delay, admitted = self.rules.reserve(self.state, self._clock(), slot_id, max_delay)
            return Reservation(delay, admitted, slot_id if admitted else None)

    def confirm(self, reservation: Reservation) -> float:
        """
        Right before sending on a reserved slot: how much longer to wait (0: send now). While the
        caller slept, requests ahead of it may have been answered later than planned (the service
        counts a request when it arrives, which can be any time until its answer) or a 429 paused
        the key; the slot then moves later. A request ahead still in flight holds it back until it
        is settled: the caller is asked to look again shortly.
        """
        with self._lock:
            return self.rules.confirm(self.state, self._clock(), reservation.slot)

    def settle(self, reservation: Reservation) -> None:
        """The request was answered (or failed): the service counted it at the latest now."""
        if reservation.slot is not None:
            with self._lock:
                self.rules.settle(self.state, self._clock(), reservation.slot)

    def cancel(self, reservation: Reservation) -> None:
        """Give a reserved slot back unused."""
        with self._lock:
            self.rules.cancel(self.state, reservation.slot)

    def on_success(self) -> None:
        with self._lock:
            self.rules.on_success(self.state)

    def remember(self, ages: list[float]) -> None:
        """
        Count requests that another process sent on this key ``ages`` seconds ago and that this
        window does not know of: a batch task's worker resumes in a new process, and without them
        its first burst would be refused with 429s. Requests the window already holds are assumed
        to be the newest of them, so only the oldest ``len(ages) - held`` are added.
        """
        with self._lock:
            now = self._clock()
            recent = sorted(age for age in ages if age < self.period)
            held = sum(1 for slot in self.state.slots if slot[1] > now - self.period)
            missing = recent[held:] if held else recent
            seeded = [[("remembered", next(self._ids)), now - age] for age in missing]
            self.state.slots[:] = sorted(seeded + self.state.slots, key=lambda slot: slot[1])

    def on_rate_limited(self, retry_after: float) -> None:
        with self._lock:
            self.rules.on_rate_limited(self.state, self._clock(), retry_after)


class KeyPacer:
    """The windows of one key: creation and polling per tier, or the single anonymous window."""

    def __init__(self, settings: ConnectionSettings, clock: Callable[[], float] = time.monotonic) -> None:
        scale = settings.time_scale

        def window(rate: RateLimit, spread: bool = True) -> SlidingWindow:
            return SlidingWindow(rate.limit, rate.period / scale, settings.rate_share, clock, spread=spread)

        if settings.api_key:
            limits = PUBLISHED_LIMITS[settings.tier]
            self._windows = {
                bucket: window(rate, spread=bucket is not Bucket.CREATE) for bucket, rate in limits.items()
            }
        else:
            anonymous = window(ANONYMOUS_LIMIT)
            self._windows = dict.fromkeys(Bucket, anonymous)

    def window(self, bucket: Bucket) -> SlidingWindow:
        return self._windows[bucket]


_pacers: dict[tuple[Any, ...], Pacer] = {}
_pacers_lock = threading.Lock()


def pacer_for(settings: ConnectionSettings) -> Pacer:
    """
    The process-wide pacer of this key and service, created on first use: in memory for the
    ``process`` budget, else a handle on the budget shared with other processes (``budget``).
    """
    identity = (
        settings.base_url,
        settings.key_id,
        settings.tier.value,
        settings.rate_share,
        settings.time_scale,
        settings.budget,
        settings.budget_dir,
        settings.redis_url,
    )
    with _pacers_lock:
        pacer = _pacers.get(identity)
        if pacer is None:
            if settings.budget == "process":
                pacer = KeyPacer(settings)
            else:
                from airflow_provider_cerebraform.budget import shared_pacer

                pacer = shared_pacer(settings)
            _pacers[identity] = pacer
        return pacer


def reset_pacers() -> None:
    """Forget every pacer (tests start from a clean process state with it)."""
    with _pacers_lock:
        _pacers.clear()
