from __future__ import annotations

import itertools

import pytest

from airflow_provider_cerebraform.pacing import Reservation, SlidingWindow, WindowRules, WindowState, settled


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
    sent = window.reserve(max_delay=0)
    assert sent.admitted
    window.settle(sent)  # answered at once (a slot never settled would hold the window longer)
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
    rules.settle(state, 0.0, "a")  # both answered at once
    rules.settle(state, 0.0, "b")
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


# A request is counted when it arrives, which may be any time until its answer: while the request that
# bounds a caller (``allowed`` places ahead) is in flight, the caller does not send (issue 9: on a
# loaded machine the request ahead arrived late and the next window's request got a 429).


def _two_sent_one_queued(clock: FakeClock) -> tuple[SlidingWindow, list[Reservation]]:
    window = SlidingWindow(limit=2, period=10.0, clock=clock)
    reservations = [window.reserve() for _ in range(3)]
    assert [r.delay for r in reservations[:2]] == [0.0, 0.0]
    return window, reservations


def test_a_request_in_flight_ahead_holds_the_caller_until_it_is_settled():
    clock = FakeClock()
    start = clock.now
    window, (first, second, third) = _two_sent_one_queued(clock)
    margin, recheck = window.rules.margin, window.rules.recheck
    clock.now += 2.0
    window.settle(second)  # the second is answered 2 s later (in the window at the third's turn)
    second_at = clock.now
    assert 0 < recheck <= 1.0
    clock.now = start + third.delay  # the third's turn: a window after the first was sent
    # The first may arrive any time until its answer: the third looks again shortly...
    assert window.confirm(third) == pytest.approx(recheck)
    clock.now += 0.5
    assert window.confirm(third) == pytest.approx(recheck)
    # ...and its slot moves to when it looks again, not a window out.
    assert window.state.slots[2][1] == pytest.approx(clock.now + recheck)
    # Answered 0.7 s late, the first is counted by its answer, after the second: the window then holds
    # two requests until the second leaves it, and the third goes a window (and the margin) after that.
    clock.now += 0.2
    window.settle(first)
    clock.now += 0.1
    assert window.confirm(third) == pytest.approx(second_at + 10.0 + margin - clock.now)
    clock.now = second_at + 10.0 + margin
    assert window.confirm(third) == 0.0


def test_a_request_never_settled_stops_holding_the_window_after_its_bound():
    # Its caller is gone (a process that died mid-request): taken to have arrived `bound` after it
    # was sent, it holds the callers behind it a window after that, not for good.
    clock = FakeClock()
    start = clock.now
    window, (_first, _second, third) = _two_sent_one_queued(clock)  # neither is ever settled
    rules = window.rules
    assert rules.bound == 10.0  # one window, for a window of up to a minute
    gone = start + rules.bound + 10.0  # they leave the window a window after their bound
    first = window.state.slots[0]
    assert not rules.expired(first, gone - 0.01) and rules.expired(first, gone)
    clock.now = start + third.delay
    waits = 0
    while (delay := window.confirm(third)) > 0:
        assert delay <= rules.recheck + 1e-9
        clock.now += delay
        waits += 1
    assert clock.now == pytest.approx(gone)
    assert waits >= (gone - start - third.delay) / rules.recheck - 1
    # For an hour's window, the bound is a minute: a caller gone stalls its queue a minute, not an hour.
    assert WindowRules(limit=10, period=3600.0).bound == 60.0


def test_a_request_in_flight_for_more_than_a_window_holds_a_reservation_that_would_go_at_once():
    # Such a reservation is not confirmed before sending, so the reservation itself holds it back.
    rules = WindowRules(limit=2, period=10.0)
    state = WindowState()
    assert rules.reserve(state, 0.0, "a", None) == (0.0, True)
    assert rules.reserve(state, 0.0, "b", None) == (0.0, True)
    rules.settle(state, 2.5, "b")  # answered late: still in the window
    delay, admitted = rules.reserve(state, 12.0, "c", None)  # "a" still in flight
    assert admitted and delay == pytest.approx(rules.recheck)
    rules.settle(state, 12.1, "a")  # counted by its answer: after "b", which now bounds "c"
    assert rules.confirm(state, 12.4, "c") == pytest.approx(2.5 + 10.0 + rules.margin - 12.4)


def test_a_kept_slot_not_sent_yet_bounds_the_callers_behind_it_by_its_time():
    # A deferred task's kept slot in the future is not in flight: it bounds as planned (no re-checks).
    rules = WindowRules(limit=2, period=10.0, spread=False)
    state = WindowState()
    for slot_id in ("a", "b"):
        rules.reserve(state, 0.0, slot_id, None)
        rules.settle(state, 0.1, slot_id)
    planned = 10.1 + rules.margin
    assert rules.reserve(state, 0.2, "kept", 1.0, keep=True) == (pytest.approx(planned - 0.2), False)
    assert rules.reserve(state, 0.2, "c", None) == (pytest.approx(planned - 0.2), True)
    behind = planned + 10.0 + rules.margin
    assert rules.reserve(state, 0.2, "later", 1.0, keep=True) == (pytest.approx(behind - 0.2), False)
    # Back early, the later task's slot is bounded by the kept slot's time: it waits for exactly that.
    assert rules.reserve(state, 5.0, "later", 1.0, keep=True) == (pytest.approx(behind - 5.0), False)
    assert rules.confirm(state, 5.0, "later") == pytest.approx(behind - 5.0)
    assert state.slots[-1][1] == pytest.approx(behind)


def test_slots_stored_without_the_settled_flag_count_as_settled():
    old = WindowState.from_json('{"s":[["a",0.0],["b",0.5]],"a":null,"p":0.0,"d":null}')
    rules = WindowRules(limit=2, period=10.0)
    # As before: the third goes a window after the first, without waiting for answers.
    assert rules.reserve(old, 5.0, "c", None) == (pytest.approx(5.0 + rules.margin), True)
    assert rules.confirm(old, 10.0 + rules.margin, "c") == 0.0
    assert [settled(slot) for slot in old.slots] == [True, False]  # "a" has left the window
    rules.settle(old, 10.3, "c")
    assert WindowState.from_json(old.to_json()).slots == [["b", 0.5], ["c", 10.3, True]]
