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
would otherwise let the next window's requests arrive too early).

Several processes on one key (HA triggerers, many workers) each take ``rate_share`` of the limit,
and every process adapts: a 429 halves its rate and pauses the bucket for ``Retry-After``
(multiplicative decrease); each admitted request wins back a little (additive increase, one slot
per window's worth of successes), so the processes settle under the shared limit.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING

from airflow_provider_cerebraform.models import (
    ANONYMOUS_LIMIT,
    PUBLISHED_LIMITS,
    Bucket,
    ConnectionSettings,
    RateLimit,
)

if TYPE_CHECKING:
    from collections.abc import Callable

# The service counts a request when it arrives; keep a small gap so that a slot released at the
# service's edge of the window is not used a hair too early.
_EDGE_MARGIN_FRACTION = 0.01
_EDGE_MARGIN_MAX = 0.5


class _Slot:
    """One request's place in a window: when it is (or was) sent, later when it was answered."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at


@dataclass(frozen=True)
class Reservation:
    """A slot in a window. ``delay`` is how long to wait before sending; 0 means now."""

    delay: float
    admitted: bool
    slot: _Slot | None = field(default=None, repr=False, compare=False)


class SlidingWindow:
    """
    A sliding-window limiter with reservations and an adaptive (AIMD) ceiling.

    :param limit: the published number of requests per window.
    :param period: the window in seconds.
    :param share: the fraction of ``limit`` this process may use.
    :param clock: a monotonic clock, replaceable in tests.
    """

    def __init__(
        self, limit: int, period: float, share: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.period = period
        self.ceiling = max(1.0, math.floor(limit * share))
        self.allowed = self.ceiling
        self.paused_until = 0.0
        self._decreased_at = -math.inf
        self._clock = clock
        self._slots: deque[_Slot] = deque()
        self._margin = min(_EDGE_MARGIN_MAX, period * _EDGE_MARGIN_FRACTION)
        self._lock = threading.Lock()

    def reserve(self, max_delay: float | None = None) -> Reservation:
        """
        Take the next free slot, unless waiting for it would exceed ``max_delay`` seconds; then
        nothing is taken and the reservation says how long the wait would have been.
        """
        with self._lock:
            now = self._clock()
            while self._slots and self._slots[0].at <= now - self.period:
                self._slots.popleft()
            allowed = int(self.allowed)
            at = max(now, self.paused_until)
            if self._slots:
                at = max(at, self._slots[-1].at)
            if len(self._slots) >= allowed:
                at = max(at, self._slots[-allowed].at + self.period + self._margin)
                # Once callers queue, space them evenly instead of releasing each window's budget
                # in one burst: many waiters then get polled in turn every K/B minutes, not once a
                # window all at its start (docs/benchmarks.md, triggerer scale).
                at = max(at, self._slots[-1].at + self.period / allowed)
            delay = at - now
            if max_delay is not None and delay > max_delay:
                return Reservation(delay=delay, admitted=False)
            slot = _Slot(at)
            self._slots.append(slot)
            return Reservation(delay=delay, admitted=True, slot=slot)

    def confirm(self, reservation: Reservation) -> float:
        """
        Right before sending on a reserved slot: how much longer to wait (0: send now). While the
        caller slept, requests ahead of it may have been answered later than planned (the service
        counts a request when it arrives, which can be any time until its answer) or a 429 paused
        the key; the slot then moves later.
        """
        slot = reservation.slot
        with self._lock:
            now = self._clock()
            need = max(now, self.paused_until)
            try:
                position = self._slots.index(slot) if slot is not None else -1
            except ValueError:
                position = -1
            allowed = int(self.allowed)
            if position >= allowed:
                # Latest time any request at least `allowed` places ahead may have been counted.
                ahead = max(other.at for other in islice(self._slots, 0, position - allowed + 1))
                need = max(need, ahead + self.period + self._margin)
            if slot is not None:
                slot.at = max(slot.at, need)
            return need - now

    def settle(self, reservation: Reservation) -> None:
        """The request was answered (or failed): the service counted it at the latest now."""
        if reservation.slot is not None:
            with self._lock:
                reservation.slot.at = max(reservation.slot.at, self._clock())

    def cancel(self, reservation: Reservation) -> None:
        """Give a reserved slot back unused."""
        with self._lock, contextlib.suppress(ValueError):
            self._slots.remove(reservation.slot)

    def on_success(self) -> None:
        with self._lock:
            self.allowed = min(self.ceiling, self.allowed + 1.0 / self.ceiling)

    def on_rate_limited(self, retry_after: float) -> None:
        with self._lock:
            now = self._clock()
            # Halve once per episode: the 429s of requests already in flight when the first one
            # arrived are the same congestion, not new evidence (compounding them took a key with
            # a few concurrent 429s down to 1 request per window for hours). And at most once per
            # window: a storm of 429s with short Retry-After answers otherwise halves the rate again
            # after every pause, down to 1 request per window (1 task an hour on the create bucket).
            if now >= self.paused_until and now >= self._decreased_at + self.period:
                self.allowed = max(1.0, self.allowed / 2)
                self._decreased_at = now
            self.paused_until = max(self.paused_until, now + retry_after)


class KeyPacer:
    """The windows of one key: creation and polling per tier, or the single anonymous window."""

    def __init__(self, settings: ConnectionSettings, clock: Callable[[], float] = time.monotonic) -> None:
        scale = settings.time_scale

        def window(rate: RateLimit) -> SlidingWindow:
            return SlidingWindow(rate.limit, rate.period / scale, settings.rate_share, clock)

        if settings.api_key:
            limits = PUBLISHED_LIMITS[settings.tier]
            self._windows = {bucket: window(rate) for bucket, rate in limits.items()}
        else:
            anonymous = window(ANONYMOUS_LIMIT)
            self._windows = dict.fromkeys(Bucket, anonymous)

    def window(self, bucket: Bucket) -> SlidingWindow:
        return self._windows[bucket]


_pacers: dict[tuple[str, str, str, float, float], KeyPacer] = {}
_pacers_lock = threading.Lock()


def pacer_for(settings: ConnectionSettings) -> KeyPacer:
    """The process-wide pacer of this key and service; created on first use."""
    identity = (
        settings.base_url,
        settings.key_id,
        settings.tier.value,
        settings.rate_share,
        settings.time_scale,
    )
    with _pacers_lock:
        pacer = _pacers.get(identity)
        if pacer is None:
            pacer = _pacers[identity] = KeyPacer(settings)
        return pacer


def reset_pacers() -> None:
    """Forget every pacer (tests start from a clean process state with it)."""
    with _pacers_lock:
        _pacers.clear()
