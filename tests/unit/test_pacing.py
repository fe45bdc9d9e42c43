from __future__ import annotations

import itertools

import pytest

from airflow_provider_cerebraform.pacing import SlidingWindow, WindowRules, WindowState


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_admits_the_limit_then_spaces_by_the_period():
    clock = FakeClock()
    window = SlidingWindow(limit=3, period=60.0, clock=clock)
    delays = [window.reserve().delay for _ in range(5)]
    assert delays[:3] == [0.0, 0.0, 0.0]
    # The 4th and 5th wait for the 1st and 2nd to leave the window (plus the edge margin).
    assert 60.0 < delays[3] <= 60.5
    assert delays[4] >= delays[3]


def test_reservation_beyond_max_delay_is_refused_and_takes_nothing():
    clock = FakeClock()
    window = SlidingWindow(limit=1, period=60.0, clock=clock)
    assert window.reserve(max_delay=0).admitted
    refused = window.reserve(max_delay=10)
    assert not refused.admitted and refused.delay > 60
    clock.now += 61
    assert window.reserve(max_delay=0).delay == 0.0


def test_any_window_of_the_period_never_holds_more_than_the_limit():
    clock = FakeClock()
    window = SlidingWindow(limit=20, period=60.0, clock=clock)
    slots = [clock.now + window.reserve().delay for _ in range(200)]
    for start in slots:
        assert sum(1 for slot in slots if start <= slot < start + 60.0) <= 20


def test_share_takes_a_fraction_of_the_limit():
    window = SlidingWindow(limit=120, period=60.0, share=0.25, clock=FakeClock())
    assert window.ceiling == 30


def test_429_halves_the_rate_pauses_and_recovers_additively():
    clock = FakeClock()
    window = SlidingWindow(limit=20, period=60.0, clock=clock)
    window.on_rate_limited(retry_after=30)
    assert window.allowed == 10
    assert window.paused_until == clock.now + 30
    assert 29.9 < window.reserve().delay <= 30.0
    clock.now += 31
    for _ in range(20):
        window.on_success()
    assert 10 < window.allowed <= 11.01
    for _ in range(1000):
        window.on_success()
    assert window.allowed == 20


def test_a_late_answer_ahead_moves_the_next_windows_slot():
    clock = FakeClock()
    window = SlidingWindow(limit=2, period=10.0, clock=clock)
    first, second, third = (window.reserve() for _ in range(3))
    assert first.delay == second.delay == 0.0
    assert 10.0 < third.delay <= 10.11
    # The first request is answered 4 s after it was sent: the service may have counted it then.
    clock.now += 4.0
    window.settle(first)
    window.settle(second)
    clock.now += third.delay - 4.0
    extra = window.confirm(third)
    assert 3.9 < extra <= 4.1
    clock.now += extra
    assert window.confirm(third) == 0.0


def test_a_pause_after_reserving_delays_the_confirmed_slot():
    clock = FakeClock()
    window = SlidingWindow(limit=5, period=10.0, clock=clock)
    reservation = window.reserve()
    window.on_rate_limited(retry_after=7.0)
    assert 6.9 < window.confirm(reservation) <= 7.0


def test_a_cancelled_slot_is_given_back():
    clock = FakeClock()
    window = SlidingWindow(limit=1, period=10.0, clock=clock)
    taken = window.reserve()
    window.cancel(taken)
    assert window.reserve().delay == 0.0


def test_queued_creations_go_as_soon_as_the_window_frees_their_slot():
    # The creation window is not spread: spacing the queue after a burst left the next window
    # half used (the service's sliding window allows the next ten as soon as the first ten leave it).
    clock = FakeClock()
    window = SlidingWindow(limit=10, period=60.0, clock=clock, spread=False)
    slots = [clock.now + window.reserve().delay for _ in range(30)]
    margin = window.rules.margin
    start = clock.now
    assert slots == [start] * 10 + [start + 60.0 + margin] * 10 + [start + 120.0 + 2 * margin] * 10
    # Every 10 consecutive creations span one window (and its edge margin): the limit used in full.
    assert {round(slots[n] - slots[n - 10], 6) for n in range(10, 30)} == {60.0 + margin}


def test_a_kept_slot_is_the_callers_when_it_comes_back():
    rules = WindowRules(limit=2, period=10.0, spread=False)
    state = WindowState()
    assert rules.reserve(state, 0.0, "a", None) == (0.0, True)
    assert rules.reserve(state, 0.0, "b", None) == (0.0, True)
    assert rules.reserve(state, 0.0, "kept", 1.0, keep=True) == (10.0 + rules.margin, False)
    assert rules.reserve(state, 0.0, "refused", 1.0) == (10.0 + rules.margin, False)
    assert [slot[0] for slot in state.slots] == ["a", "b", "kept"]  # kept, the other not
    assert rules.reserve(state, 1.0, "late", None)[0] == 9.0 + rules.margin  # the one slot left
    # Its caller comes back: too early for its wait, then in time; the slot stays its own.
    assert rules.reserve(state, 2.0, "kept", 1.0, keep=True) == (8.0 + rules.margin, False)
    assert rules.reserve(state, 9.5, "kept", 1.0, keep=True) == (pytest.approx(0.5 + rules.margin), True)
    # Back more than a window after it, the slot has expired: the caller queues again.
    assert rules.reserve(state, 40.0, "kept", None) == (0.0, True)


def test_queued_callers_are_spaced_evenly_not_released_in_bursts():
    clock = FakeClock()
    window = SlidingWindow(limit=10, period=60.0, clock=clock)
    slots = [clock.now + window.reserve().delay for _ in range(40)]
    assert slots[:10] == [clock.now] * 10  # an idle key may burst up to its limit
    queued = slots[10:]
    gaps = [later - earlier for earlier, later in itertools.pairwise(queued)]
    assert min(gaps) >= 6.0 - 1e-9  # one window / limit apart
    # ...and the throughput stays at the limit: ten more every window.
    assert queued[-1] - queued[0] <= 3 * 60.0 + 1.0
