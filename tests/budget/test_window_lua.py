"""
The ``redis`` budget's Lua script (``budget.WINDOW_LUA``) against the rules it copies
(``pacing.WindowRules``): the same steps at the same times on a real Redis server give the same
delays, admissions, slot times, pause and adaptive ceiling.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
import redis

from airflow_provider_cerebraform.budget import RedisStore, SharedWindow
from airflow_provider_cerebraform.pacing import WindowState, settled

if TYPE_CHECKING:
    from airflow_provider_cerebraform.budget.redis_server import RedisServer

LIMIT, PERIOD = 3, 10.0
# (time, operation, arguments): a queue forms, answers arrive late, a 429 halves the ceiling and
# pauses the window, successes win the ceiling back, a wait too long is refused (or its slot kept for
# the caller, who comes back for it: too early, then in time), slots expire.
STEPS: list[tuple[float, str, tuple[Any, ...]]] = [
    (0.0, "reserve", ("a", None)),
    (0.0, "reserve", ("b", None)),
    (0.0, "reserve", ("c", None)),
    (0.0, "reserve", ("d", None)),
    (0.0, "reserve", ("e", None)),
    (0.0, "reserve", ("x", 5.0)),
    (0.0, "reserve", ("k", 5.0, True)),
    (0.1, "reserve", ("k", 5.0, True)),
    (0.5, "settle", ("a",)),
    (0.6, "settle", ("b",)),
    (0.7, "settle", ("c",)),
    (10.1, "confirm", ("d",)),
    (10.6, "confirm", ("d",)),
    (10.7, "settle", ("d",)),
    (11.0, "on_rate_limited", (5.0,)),
    (11.2, "on_rate_limited", (2.0,)),
    (11.5, "reserve", ("f", None)),
    (11.6, "reserve", ("k", 8.0, True)),
    (12.0, "confirm", ("e",)),
    (12.5, "on_success", ()),
    (12.6, "on_success", ()),
    (12.7, "reserve", ("g", 1.0)),
    (13.0, "cancel", ("f",)),
    (13.1, "reserve", ("h", None)),
    (16.0, "reserve", ("k", 8.0, True)),
    (30.0, "on_rate_limited", (1.0,)),
    (30.5, "on_success", ()),
    (31.5, "reserve", ("i", None)),
    (60.0, "reserve", ("j", None)),
]

# Creations (not spread): a full window's queue is released as the slots free, in bursts, not spaced.
UNSPREAD_STEPS: list[tuple[float, str, tuple[Any, ...]]] = [
    (0.0, "reserve", ("a", None)),
    (0.0, "reserve", ("b", None)),
    (0.0, "reserve", ("c", None)),
    (0.0, "reserve", ("d", None)),
    (0.0, "reserve", ("e", 5.0, True)),
    (0.0, "reserve", ("x", 5.0)),
    (4.0, "reserve", ("e", 5.0, True)),
    (6.0, "reserve", ("e", 5.0, True)),
    (10.3, "confirm", ("d",)),
    (10.4, "settle", ("d",)),
    (10.5, "reserve", ("f", None)),
    (25.0, "reserve", ("g", None)),
]

# Requests in flight (sent, not answered yet) hold back the callers they bound until they are settled
# (or, never settled, until they leave the window a window after their bound): the caller is told to
# look again shortly, its slot moved to then; a reservation that would go at once is held back too.
IN_FLIGHT_STEPS: list[tuple[float, str, tuple[Any, ...]]] = [
    (0.0, "reserve", ("a", None)),
    (0.0, "reserve", ("b", None)),
    (0.0, "reserve", ("c", None)),
    (0.0, "reserve", ("d", None)),
    (0.0, "reserve", ("e", None)),
    (0.0, "reserve", ("k", 5.0, True)),
    (10.1, "confirm", ("d",)),  # "a" in flight
    (10.6, "confirm", ("d",)),
    (10.8, "settle", ("a",)),
    (10.9, "settle", ("b",)),
    (11.0, "settle", ("c",)),
    (11.05, "confirm", ("d",)),  # a window after the answer
    # Never settled: "p" holds "s" back until it leaves the window, a window after its bound.
    (100.0, "reserve", ("p", None)),
    (100.0, "reserve", ("q", None)),
    (100.0, "reserve", ("r", None)),
    (100.0, "reserve", ("s", None)),
    (110.1, "confirm", ("s",)),
    (115.0, "confirm", ("s",)),
    (119.5, "confirm", ("s",)),
    (120.0, "confirm", ("s",)),
    # A reservation that would go at once, behind a request in flight for more than a window.
    (200.0, "reserve", ("u", None)),
    (200.0, "reserve", ("v", None)),
    (200.0, "reserve", ("w", None)),
    (206.0, "settle", ("v",)),
    (207.0, "settle", ("w",)),
    (212.0, "reserve", ("x", None)),
    (215.0, "confirm", ("x",)),
    (220.0, "confirm", ("x",)),
]
# Callers that look late (a busy event loop): "x" and "y" are both due while "b" and "c", answered at
# 9.7, are still in the window. Each is ranked at the time it is sent, so "x", looking first, counts "y"
# (due, so maybe on its way) and waits for "b" to leave; "y" goes; "x" then counts "y". Ranked at their
# planned times instead, neither counted the other and both went at once: four requests in a window of
# three, the 429s of the polling benchmark with one redis budget.
LATE_STEPS: list[tuple[float, str, tuple[Any, ...]]] = [
    (0.0, "reserve", ("a", None)),
    (0.0, "settle", ("a",)),
    (9.0, "reserve", ("b", None)),
    (9.0, "reserve", ("c", None)),
    (9.0, "reserve", ("x", None)),
    (9.0, "reserve", ("y", None)),
    (9.7, "settle", ("b",)),
    (9.7, "settle", ("c",)),
    (19.5, "confirm", ("x",)),
    (19.6, "confirm", ("y",)),
    (19.65, "settle", ("y",)),
    (19.8, "confirm", ("x",)),
]
STEP_LISTS = {
    "spread": (STEPS, True),
    "unspread": (UNSPREAD_STEPS, False),
    "in-flight": (IN_FLIGHT_STEPS, True),
    "late": (LATE_STEPS, True),
}


def _window(redis_server: RedisServer, spread: bool = True) -> SharedWindow:
    # Spread: polls, queued callers spaced evenly; unspread: creations, each slot as soon as it frees.
    key = f"cerebraform:budget:{{lua-test-{spread}}}:create"
    return SharedWindow(RedisStore(redis_server.url), key, LIMIT, PERIOD, 1.0, spread=spread)


@pytest.fixture
def window(redis_server: RedisServer) -> SharedWindow:
    return _window(redis_server)


def _python_step(window: SharedWindow, state: WindowState, now: float, op: str, args: tuple[Any, ...]) -> Any:
    rules = window.rules
    if op == "reserve":
        delay, admitted = rules.reserve(state, now, args[0], args[1], *args[2:])
        # The Python rules drop expired slots only when reserving; the script on every step.
        return round(delay, 6), admitted
    if op == "confirm":
        return round(rules.confirm(state, now, args[0]), 6)
    if op == "settle":
        rules.settle(state, now, args[0])
    elif op == "cancel":
        rules.cancel(state, args[0])
    elif op == "on_success":
        rules.on_success(state)
    else:
        rules.on_rate_limited(state, now, args[0])
    return None


def _lua_step(window: SharedWindow, now: float, op: str, args: tuple[Any, ...]) -> Any:
    store = window.store
    assert isinstance(store, RedisStore)
    if op == "reserve":
        args = (*args, False)[:3]
    answer = store._script(keys=store.keys(window), args=store.script_args(window, op, args, now=now))
    result, _full = store.parse(op, answer)
    if op == "reserve":
        return round(result[0], 6), result[1]
    if op == "confirm":
        return round(result, 6)
    return result


@pytest.mark.parametrize("steps", list(STEP_LISTS))
def test_the_script_follows_the_window_rules_step_by_step(redis_server: RedisServer, steps: str) -> None:
    step_list, spread = STEP_LISTS[steps]
    window = _window(redis_server, spread)
    state = WindowState()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    slots_key, state_key, unsettled_key = RedisStore.keys(window)
    answers = []
    for now, op, args in step_list:
        expected = _python_step(window, state, now, op, args)
        assert _lua_step(window, now, op, args) == expected, (now, op, args)
        answers.append(expected)
        live = [slot for slot in state.slots if not window.rules.expired(slot, now)]
        stored = client.zrange(slots_key, 0, -1, withscores=True)
        assert sorted((round(slot[1], 6), slot[0]) for slot in live) == sorted(
            (round(at, 6), slot_id) for slot_id, at in stored
        ), (now, op, args)
        # The slots not settled yet (sent and not answered, or not sent yet), at the same times.
        unsettled = client.zrange(unsettled_key, 0, -1, withscores=True)
        assert sorted((round(slot[1], 6), slot[0]) for slot in live if not settled(slot)) == sorted(
            (round(at, 6), slot_id) for slot_id, at in unsettled
        ), (now, op, args)
        meta = client.hgetall(state_key)
        assert float(meta.get("paused", 0)) == pytest.approx(state.paused_until), (now, op)
        allowed = window.rules.allowed(state)
        assert float(meta.get("allowed", window.ceiling)) == pytest.approx(allowed), (now, op)
    # Nothing is kept longer than it matters: the keys expire a window after their last slot.
    assert 0 < client.pttl(slots_key) <= (PERIOD + 1) * 1000 + 40_000
    if steps == "in-flight":
        recheck, margin = window.rules.recheck, window.rules.margin
        confirms = [answer for answer, (_, op, _) in zip(answers, step_list, strict=True) if op == "confirm"]
        # "d": held twice, then a window after "a"'s answer; "s": held until "p" leaves, then sent;
        # "x": held at once (reserve), again, then sent when "u" leaves.
        assert confirms == pytest.approx(
            [recheck, recheck, 10.8 + PERIOD + margin - 11.05, recheck, recheck, 0.5, 0.0, recheck, 0.0]
        )
        assert answers[step_list.index((212.0, "reserve", ("x", None)))] == (pytest.approx(recheck), True)
        assert client.pttl(unsettled_key) > 0  # "x", sent and never settled, until it leaves the window
    if steps == "late":
        margin = window.rules.margin
        confirms = [answer for answer, (_, op, _) in zip(answers, step_list, strict=True) if op == "confirm"]
        assert confirms == pytest.approx([9.7 + PERIOD + margin - 19.5, 0.0, 0.0])


def test_one_reservation_is_one_round_trip(window: SharedWindow, redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)

    def sent() -> int:
        # Commands the clients sent (the script's own redis.call()s are counted in their own names).
        stats = client.info("commandstats")
        return sum(
            int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval", "script")
        )

    before = sent()
    reservations = [window.reserve() for _ in range(5)]
    # One EVALSHA each; the first may also be refused (NOSCRIPT) and the script loaded once.
    assert sent() - before <= 5 + 2
    assert [r.admitted for r in reservations] == [True] * 5
    delays = [r.delay for r in reservations]
    # 3 at once, then spaced: a window later, then a third of a window after that.
    assert delays[:3] == pytest.approx([0, 0, 0], abs=0.05)
    assert delays[3] == pytest.approx(PERIOD + window.rules.margin, abs=0.05)
    assert delays[4] == pytest.approx(delays[3] + PERIOD / LIMIT, abs=0.05)


async def test_a_thousand_waits_on_one_loop_stay_on_the_shared_budget(
    window: SharedWindow, caplog: pytest.LogCaptureFixture
) -> None:
    # A triggerer's loop with a thousand waits: the steps take turns on one connection, so the
    # budget never runs out of them (it did with a connection per call, and fell back to pacing alone).
    reservations = await asyncio.gather(*(window.areserve() for _ in range(1000)))
    assert [r.slot[0] for r in reservations] == ["shared"] * 1000
    assert not [r for r in caplog.records if r.name == "airflow_provider_cerebraform.budget"]
    delays = sorted(r.delay for r in reservations)
    # All of them queued in one window, a third of the period apart once the first 3 are taken.
    assert delays[-1] == pytest.approx(PERIOD + window.rules.margin + (1000 - 4) * PERIOD / LIMIT, rel=0.01)


def test_slots_stored_before_the_unsettled_set_count_as_settled(
    window: SharedWindow, redis_server: RedisServer
) -> None:
    # A window written by the script before it kept the unsettled slots: nothing holds the caller back.
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    slots_key, _state_key, unsettled_key = RedisStore.keys(window)
    client.zadd(slots_key, {"a": 0.0, "b": 0.5, "c": 1.0, "d": 10.1})
    assert _lua_step(window, 10.2, "confirm", ("d",)) == 0.0
    assert client.exists(unsettled_key) == 0
