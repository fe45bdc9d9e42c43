"""
The ``redis`` budget's cost per step, for sizing Redis (``docs/scaling.md``): a real redis-server on
loopback, one paid-tier polling window compressed 20x, 1,000 reservations queued in it, then 500
settled. Prints the latency of each step and the memory the queue takes.

    .venv/bin/python -m benchmarks.redis_ops
"""

from __future__ import annotations

import statistics
import time


def main() -> None:
    import redis

    from airflow_provider_cerebraform.budget import RedisStore, SharedWindow
    from airflow_provider_cerebraform.budget.redis_server import RedisServer

    with RedisServer() as server:
        window = SharedWindow(RedisStore(server.url), "cerebraform:budget:{sizing}:poll", 120, 3.0, 1.0)
        reserve_times, settle_times, reservations = [], [], []
        for _ in range(1000):
            began = time.perf_counter()
            reservations.append(window.reserve())
            reserve_times.append(time.perf_counter() - began)
        memory = redis.Redis.from_url(server.url).memory_usage("cerebraform:budget:{sizing}:poll:slots")
        for reservation in reservations[:500]:
            began = time.perf_counter()
            window.settle(reservation)
            settle_times.append(time.perf_counter() - began)
    reserve_times.sort()
    print(
        f"reserve, up to 1,000 queued: median {statistics.median(reserve_times) * 1000:.2f} ms, "
        f"p95 {reserve_times[949] * 1000:.2f} ms; "
        f"settle: median {statistics.median(settle_times) * 1000:.2f} ms; "
        f"1,000 reservations take {memory:,} bytes ({memory / 1000:.0f} B each); "
        f"the last is {reservations[-1].delay:.1f} s ahead"
    )


if __name__ == "__main__":
    main()
