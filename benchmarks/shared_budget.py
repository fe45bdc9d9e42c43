"""
Benchmark 6: one key, many processes, and the budget that the connection's ``budget`` extra shares.

The burst: section 2's three times the tier's hourly creation limit, now submitted by several worker
processes at once (one slot each, every try with the pacing state of a new process, as Airflow 3
runs each try), once per budget: ``process`` (each process paces alone; the service's 429s are the
only coordination), ``host`` (a locked file shared by the processes) and ``redis`` (a real
redis-server on loopback).

The polling row: many waits on one paid key split over two triggerer-like processes (each one event
loop of ``CerebraformTaskTrigger``s, ``benchmarks/watchers.py``), with the static split of today
(``rate_share`` 0.5 each) against one ``redis`` budget for both. The delay of a wait is the end of
the wait minus the job's ``done_at``; the ideal is one perfect round-robin poller with the key's
whole budget (``benchmarks/triggerer.py``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from benchmarks.common import JobSpec, Section, Table, Worker, cerebraform_connection, fmt, mean, submit_jobs
from benchmarks.profiles import spread
from benchmarks.submission import CREATIONS_PER_HOUR, IN_PROCESS_WAIT, window_counts
from benchmarks.triggerer import INTERVAL, POLLS_PER_MINUTE, ideal_delays

if TYPE_CHECKING:
    from pathlib import Path

BUDGETS = ("process", "host", "redis")


def _in_parallel(calls: list[Any]) -> list[Any]:
    """Run the blocking calls in threads at once; their answers in order (an exception re-raised)."""
    answers: list[Any] = [None] * len(calls)

    def one(position: int) -> None:
        try:
            answers[position] = calls[position]()
        except Exception as error:  # re-raised in the caller's thread
            answers[position] = error

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
    return answers


def _burst_row(
    budget: str, emulator: Any, redis_url: str, work: Path, workers: list[Worker], tier: str, scale: float
) -> dict[str, Any]:
    admin = emulator.admin
    admin.reset(time_scale=scale)
    key = f"cf-bench-budget-{budget}"
    admin.add_key(key, tier, credits=10**9)
    extra: dict[str, Any] = {"budget": budget}
    if budget == "host":
        extra["budget_dir"] = str(work / "host-budget")
    elif budget == "redis":
        extra["redis_url"] = redis_url
    conn_id = f"cf_bench_budget_{budget}"
    env = {f"AIRFLOW_CONN_{conn_id.upper()}": cerebraform_connection(emulator.url, key, tier, scale, **extra)}
    limit = CREATIONS_PER_HOUR[tier]
    count = 3 * limit
    prompts = [f"{budget} burst prompt {n}" for n in range(count)]
    start_at = time.time() + 1.0
    answers = _in_parallel(
        [
            lambda n=n: workers[n].request(
                {
                    "op": "burst",
                    "env": env,
                    "conn_id": conn_id,
                    "prompts": prompts[n :: len(workers)],
                    "in_process_wait": IN_PROCESS_WAIT / scale,
                    "start_at": start_at,
                }
            )
            for n in range(len(workers))
        ]
    )
    wall = time.time() - start_at
    stats = admin.stats()
    created = sorted(task["created_at"] for task in stats["tasks"])
    paid = Counter(task["prompt"] for task in stats["tasks"])
    return {
        "budget": budget,
        "tier": tier,
        "scale": scale,
        "limit": limit,
        "count": count,
        "processes": len(workers),
        "window": 3600.0 / scale,
        "created": created,
        "succeeded": sum(len(answer["request_ids"]) for answer in answers),
        "errors": [error for answer in answers for error in answer["errors"]],
        "refused": int(stats["rate_limited"].get("submit", 0)),
        "duplicates": sum(n - 1 for n in paid.values() if n > 1),
        "unpaid": sum(1 for prompt in prompts if prompt not in paid),
        "deferrals": sum(answer["deferrals"] for answer in answers),
        "slot_seconds": sum(answer["slot_seconds"] for answer in answers),
        "wall": wall,
    }


def _poll_row(
    mode: str, emulator: Any, redis_url: str, watchers: list[Worker], waits: int, scale: float, row: int
) -> dict[str, Any]:
    admin = emulator.admin
    admin.reset(time_scale=scale)
    admin.configure(paid_tasks_per_hour=10**6)
    key = f"cf-bench-poll-{row}"
    admin.add_key(key, "paid", credits=10**9)
    extra: dict[str, Any] = (
        {"budget": "redis", "redis_url": redis_url} if mode == "redis" else {"rate_share": 1 / len(watchers)}
    )
    conn_id = f"cf_bench_poll_{row}"
    env = {
        f"AIRFLOW_CONN_{conn_id.upper()}": cerebraform_connection(emulator.url, key, "paid", scale, **extra)
    }
    durations = spread(61.0, 601.0, 100)
    specs = [JobSpec(durations[n % len(durations)], "image", "paid") for n in range(waits)]
    jobs = submit_jobs(emulator.url, {"paid": key}, sorted(specs, key=lambda spec: spec.seconds), admin)
    shares = [jobs[n :: len(watchers)] for n in range(len(watchers))]
    interval = INTERVAL / scale
    cycle = waits / POLLS_PER_MINUTE["paid"] * 60 / scale
    answers = _in_parallel(
        [
            lambda n=n: watchers[n].request(
                {
                    "op": "run",
                    "watcher": "provider",
                    "env": env,
                    "jobs": [{"request_id": j.request_id, "kind": j.kind, "tier": "paid"} for j in shares[n]],
                    "conn_ids": {"paid": conn_id},
                    "url": emulator.url,
                    "keys": {"paid": key},
                    "interval": interval,
                    "spread": interval,
                    "deadline": max(durations) / scale + 3 * cycle + 30,
                }
            )
            for n in range(len(watchers))
        ]
    )
    stats = admin.stats()
    tasks = {task["request_id"]: task for task in stats["tasks"]}
    starts, dones, ends = [], [], []
    for share, answer in zip(shares, answers, strict=True):
        fires = {rid: at for rid, at, _ in answer["fires"]}
        for position, job in enumerate(share):
            starts.append(answer["started_at"] + interval * position / len(share))
            dones.append(tasks[job.request_id]["done_at"] or tasks[job.request_id]["planned_done_at"])
            ends.append(fires.get(job.request_id, math.nan))
    delays = [(end - done) * scale for end, done in zip(ends, dones, strict=True) if not math.isnan(end)]
    rate = POLLS_PER_MINUTE["paid"] * scale / 60.0  # the key's polls per real second
    ideal = [d * scale for d in ideal_delays(starts, dones, rate, interval)]
    polls = sum(stats["requests"].get(group, 0) for group in ("status", "result"))
    return {
        "mode": mode,
        "waits": waits,
        "processes": len(watchers),
        "scale": scale,
        "fired": len(delays),
        "unfired": sum(answer["unfired"] for answer in answers),
        "crashed": sum(answer["crashed"] for answer in answers),
        "polls": polls,
        "refused": int(stats["responses"].get("429", 0)),
        "mean": mean(delays),
        "ideal_mean": mean(ideal),
        "wall": max(answer["wall_s"] for answer in answers),
    }


def run(profile: Any, work: Path) -> Section:
    from airflow_provider_cerebraform.budget.redis_server import RedisServer
    from airflow_provider_cerebraform.emulator import EmulatorProcess

    began = time.perf_counter()
    tier, burst_scale, processes = profile.budget_burst
    waits, poll_scale, triggerers = profile.budget_poll
    args = ["--time-scale", str(burst_scale), "--log-level", "WARNING", "--credits", str(10**9)]
    burst_rows, poll_rows = [], []
    with (
        EmulatorProcess(args, log_path=str(work / "emulator-budget.log")) as emulator,
        RedisServer() as redis_server,
    ):
        workers = [Worker("benchmarks.budget_worker", work / f"burst-{n}.log") for n in range(processes)]
        try:
            _in_parallel([lambda w=w: w.request({"op": "prepare"}) for w in workers])
            for budget in BUDGETS:
                burst_rows.append(
                    _burst_row(budget, emulator, redis_server.url, work, workers, tier, burst_scale)
                )
        finally:
            for worker in workers:
                worker.close()
        watchers = [Worker("benchmarks.watchers", work / f"poll-{n}.log") for n in range(triggerers)]
        try:
            _in_parallel([lambda w=w: w.request({"op": "prepare", "watcher": "provider"}) for w in watchers])
            for row, mode in enumerate(("rate_share", "redis")):
                poll_rows.append(
                    _poll_row(mode, emulator, redis_server.url, watchers, waits, poll_scale, row)
                )
        finally:
            for watcher in watchers:
                watcher.close()
    return _section(burst_rows, poll_rows, time.perf_counter() - began)


def _section(burst_rows: list[dict[str, Any]], poll_rows: list[dict[str, Any]], wall: float) -> Section:
    burst = Table(
        "Three times the hourly creation limit, submitted by several worker processes at once",
        [
            "budget",
            "tier",
            "processes",
            "time scale (window)",
            "submitted / asked",
            "per window (first 3)",
            "share of the limit",
            "429s",
            "429s per success",
            "deferrals",
            "duplicate prompts",
            "worker-slot s",
            "wall s",
        ],
    )
    headlines: list[str] = []
    misses: list[str] = []
    for row in burst_rows:
        per_window = window_counts(row["created"], row["window"], 3)
        share = sum(per_window) / (3 * row["limit"])
        per_success = row["refused"] / max(1, row["succeeded"])
        row["share"], row["per_success"] = share, per_success
        burst.rows.append(
            [
                row["budget"],
                row["tier"],
                str(row["processes"]),
                f"{row['scale']:g} ({row['window']:g} s)",
                f"{row['succeeded']} / {row['count']}",
                " / ".join(str(n) for n in per_window) + f" (limit {row['limit']})",
                f"{share:.0%}",
                f"{row['refused']:,}",
                fmt(per_success, 2),
                str(row["deferrals"]),
                str(row["duplicates"]),
                fmt(row["slot_seconds"]),
                fmt(row["wall"]),
            ]
        )
        label = f"{row['processes']} worker processes, budget {row['budget']}"
        headlines.append(
            f"{label}: {share:.0%} of the creation limit used per window, {fmt(per_success, 2)} 429s per "
            f"success, {fmt(row['slot_seconds'])} worker-slot seconds"
        )
        if row["budget"] != "process" and (share < 0.95 or per_success > 0.05):
            misses.append(
                f"{label}: {share:.0%} of the limit used (target >= 95%), {fmt(per_success, 2)} "
                "429s per success (target <= 0.05)"
            )
        if row["duplicates"] or row["unpaid"] or row["succeeded"] != row["count"]:
            sample = row["errors"][0] if row["errors"] else "none"
            misses.append(
                f"{label}: {row['succeeded']} of {row['count']} submitted, {row['duplicates']} duplicates, "
                f"{row['unpaid']} prompts never paid (error sample: {sample})"
            )
    burst.notes.append(
        "Per window: creations in consecutive windows from the first one; share of the limit: their sum "
        "over 3 x limit. Worker-slot s: the seconds the processes' slots were busy (submitting or waiting "
        "in-process); a deferred try holds none."
    )
    polling = Table(
        "Waits on one paid key split over triggerer processes",
        [
            "budget of the polls",
            "waits",
            "processes",
            "time scale",
            "fired",
            "polls",
            "429s",
            "mean delay (emulated s)",
            "ideal mean",
            "mean over the ideal",
            "wall s",
        ],
    )
    for row in poll_rows:
        label = "one redis budget" if row["mode"] == "redis" else f"rate_share {1 / row['processes']:g} each"
        over = row["mean"] - row["ideal_mean"]
        row["over_ideal"] = over
        polling.rows.append(
            [
                label,
                str(row["waits"]),
                str(row["processes"]),
                f"{row['scale']:g}",
                f"{row['fired']} / {row['waits']}",
                f"{row['polls']:,}",
                f"{row['refused']:,}",
                fmt(row["mean"]),
                fmt(row["ideal_mean"]),
                f"+{fmt(over)}",
                fmt(row["wall"]),
            ]
        )
        headlines.append(
            f"{row['waits']} waits over {row['processes']} triggerers, {label}: {row['refused']} 429s, mean "
            f"delay {fmt(row['mean'])} s, {fmt(over)} s over the ideal {fmt(row['ideal_mean'])} s"
        )
        if row["fired"] != row["waits"] or row["crashed"]:
            misses.append(
                f"polling, {label}: {row['fired']} of {row['waits']} waits ended, {row['crashed']} crashed"
            )
    polling.notes.append(
        "Delay: end of a wait minus the job's done_at, in emulated seconds; the ideal is one perfect "
        "round-robin poller with the key's whole budget (120 polls a minute) on the same jobs and start "
        "times. With a static rate_share each triggerer has half the budget, whatever its own load."
    )
    facts = {
        "burst": [
            {
                k: row[k]
                for k in (
                    "budget",
                    "count",
                    "succeeded",
                    "refused",
                    "duplicates",
                    "unpaid",
                    "share",
                    "per_success",
                    "deferrals",
                    "slot_seconds",
                )
            }
            | {"errors": row["errors"][:3]}
            for row in burst_rows
        ],
        "polling": [
            {
                k: row[k]
                for k in (
                    "mode",
                    "waits",
                    "fired",
                    "unfired",
                    "crashed",
                    "polls",
                    "refused",
                    "mean",
                    "ideal_mean",
                    "over_ideal",
                )
            }
            for row in poll_rows
        ],
    }
    return Section(
        6,
        "One key, many processes: the shared budgets",
        [
            "The burst: 3x the tier's hourly creation limit through CerebraformSubmitOperator.execute in",
            "several worker processes at once (one slot each; every try has the pacing state of a new",
            "process), per budget: 'process' (each process alone), 'host' (a locked file) and 'redis' (a",
            "real redis-server on loopback). A try refused for longer than the in-process wait defers and",
            "comes back at the trigger's moment. The polling row: waits on one paid key split over two",
            "triggerer processes, each one event loop of CerebraformTaskTriggers, with rate_share 0.5 each",
            "(the static split) against one redis budget for both.",
        ],
        [burst, polling],
        headlines,
        misses,
        wall,
        facts,
    )
