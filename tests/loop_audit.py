"""
One asyncio event loop run as the triggerer runs its triggers, watched for what would stall it: the
blocking calls made on the loop's thread (found by an audit hook, timing-free) and, for the record,
asyncio debug mode's slow callbacks and the loop's worst wake-up lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator

    from airflow.triggers.base import TriggerEvent


class SlowCallbacks(logging.Handler):
    """Collects asyncio debug mode's "Executing <...> took N seconds" warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing"):
            self.messages.append(message)


class BlockingCalls:
    """
    Audit hook that records network calls that block a thread, made on the watched (event loop)
    thread: a connect on a blocking socket (what ``requests`` does) and name resolution (asyncio and
    anyio resolve in a worker thread), and ``time.sleep`` (no audit event before Python 3.12: it is
    wrapped while watched). Timing-free, so it holds on a busy machine too, where a slow-callback
    threshold fails on whatever callback the CPU was taken from.
    """

    thread: int | None = None
    calls: ClassVar[list[str]] = []
    installed = False

    @classmethod
    def audit(cls, event: str, args: tuple[Any, ...]) -> None:
        if cls.thread is None or threading.get_ident() != cls.thread:
            return
        if event == "socket.connect" and args[0].gettimeout() != 0.0:
            cls.calls.append(f"blocking socket.connect{args[1:]}")
        elif event == "socket.getaddrinfo":
            cls.calls.append(f"socket.getaddrinfo{args[:2]}")

    @classmethod
    @contextlib.contextmanager
    def watch(cls) -> Iterator[list[str]]:
        if not cls.installed:
            sys.addaudithook(cls.audit)  # cannot be removed; idle unless a thread is watched
            cls.installed = True
        cls.calls = []
        cls.thread = threading.get_ident()
        sleep = time.sleep

        def watched_sleep(seconds: float) -> None:
            if threading.get_ident() == cls.thread:
                cls.calls.append(f"time.sleep({seconds})")
            sleep(seconds)

        time.sleep = watched_sleep
        try:
            yield cls.calls
        finally:
            time.sleep = sleep
            cls.thread = None


@dataclass
class LoopRun:
    events: list[list[TriggerEvent]]
    seconds: float
    slow_callbacks: list[str]
    worst_lag: float
    blocking_calls: list[str]


def run_on_one_debug_loop(
    coroutines: list[Coroutine[Any, Any, Any]], *, slow: float = 0.1, tick: float = 0.01
) -> LoopRun:
    """
    Run the coroutines as tasks of ONE event loop in asyncio debug mode, as the triggerer runs its
    triggers, with a ticker measuring how late the loop wakes up and the blocking-call audit on.
    """
    # A triggerer process has imported the task SDK's supervisor long before it runs a trigger; the first
    # connection lookup of a bare test process would import it on the loop (about 50 ms of compiling).
    import airflow.sdk.execution_time.supervisor  # noqa: F401

    handler = SlowCallbacks()
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addHandler(handler)
    level = asyncio_log.level
    asyncio_log.setLevel(logging.WARNING)
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = slow

    async def main() -> tuple[list[Any], float]:
        worst = 0.0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal worst
            while not done.is_set():
                before = loop.time()
                await asyncio.sleep(tick)
                worst = max(worst, loop.time() - before - tick)

        ticking = asyncio.create_task(ticker())
        try:
            results = await asyncio.wait_for(asyncio.gather(*coroutines), timeout=120)
        finally:
            done.set()
            await ticking
        return results, worst

    # The test process holds ~200k objects (Airflow, pytest); a full garbage collection of them takes
    # 0.1-0.4 s and would show up as a "slow callback" of whichever trigger allocated last. Freeze them
    # so that what is measured is the triggers' own code.
    gc.collect()
    gc.freeze()
    started = time.monotonic()
    try:
        with BlockingCalls.watch() as blocking:
            results, worst = loop.run_until_complete(main())
            loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        gc.unfreeze()
        loop.close()
        asyncio_log.removeHandler(handler)
        asyncio_log.setLevel(level)
    return LoopRun(results, time.monotonic() - started, handler.messages, worst, list(blocking))
