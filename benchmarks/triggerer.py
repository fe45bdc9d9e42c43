"""
Benchmark 1: many waiting generations in one triggerer process.

Jobs of mixed durations are created on the emulator (straight through HTTP: setup, not measured),
then a child process waits for all of them on one event loop with one watcher (see
``benchmarks/watchers.py``). Each watcher runs in its own child, so its RSS and CPU are its own.
The emulator's statistics give the requests, the 429s and the moment each job finished
(``done_at``); the child reports the moment each wait ended. Delay = end of wait - done_at.

The ideal delay is an exact round-robin scheduler simulated on the same jobs and start times with
the same poll budget (the tier's status limit) and the same minimum interval between two polls of
one job; at saturation it approaches K/(2B) for K jobs sharing B polls a minute.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import (
    JobSpec,
    Section,
    Table,
    Worker,
    cerebraform_connection,
    child_env,
    fmt,
    mean,
    percentile,
    submit_jobs,
)

if TYPE_CHECKING:
    from benchmarks.common import Job

#: Status polls per emulated minute, as published.
POLLS_PER_MINUTE = {"paid": 120, "free": 20}
#: How far above the ideal mean delay the provider's triggers may be before the report flags it.
IDEAL_SLACK = 1.25
#: The poll interval of every watcher, in emulated seconds (the trigger's default, the vendor's loop).
INTERVAL = 5.0
WATCHER_NAMES = {
    "provider": "CerebraformTaskTrigger",
    "http_sensor": "HttpSensorTrigger (http provider)",
    "vendor_loop": "vendor example loop",
}


@dataclass(frozen=True)
class Phase:
    """One watcher over one set of jobs."""

    name: str
    watcher: str
    paid: int
    free: int
    durations: tuple[float, ...]  # emulated seconds, assigned to jobs in turn
    time_scale: float
    fail_every: int = 0  # every n-th job carries #cf-fail (0: none)

    def specs(self) -> list[JobSpec]:
        specs = []
        for index in range(self.paid + self.free):
            seconds = self.durations[index % len(self.durations)]
            kind = "image" if seconds <= 120 else "video"
            tier = "free" if index < self.free else "paid"
            fail = bool(self.fail_every) and index % self.fail_every == self.fail_every - 1
            specs.append(JobSpec(seconds, kind, tier, fail))
        # Durations cycle over the jobs, so each key gets the whole range; submitted shortest first.
        return sorted(specs, key=lambda spec: (spec.seconds, spec.tier))


def ideal_delays(
    starts: list[float], dones: list[float], polls_per_second: float, interval: float
) -> list[float]:
    """
    Delays (same unit as the inputs) of a perfect round-robin poller: one poll every
    ``1/polls_per_second``, the job polled longest ago first, no job polled twice within ``interval``.
    """
    if not starts:
        return []
    gap = 1.0 / polls_per_second
    order = sorted(range(len(starts)), key=lambda i: starts[i])
    queue = deque((i, starts[i]) for i in order)  # (job, earliest next poll)
    delays = [0.0] * len(starts)
    now = min(starts)
    while queue:
        job, allowed = queue.popleft()
        if allowed > now:
            now += max(0.0, (allowed - now) // gap) * gap
            if now < allowed:
                now += gap
        if dones[job] <= now:
            delays[job] = now - dones[job]
        else:
            queue.append((job, now + interval))
        now += gap
    return delays


_REQUEST_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) DEBUG .*"
    r"\"GET /ai/v1/to-\w+/(?:status|result)/\S+ HTTP/1\.1\" (\d{3}) "
)


def admitted_poll_times(log_text: str) -> list[float]:
    """Times (seconds, one clock) of the polls the emulator admitted, from its DEBUG request lines."""
    times = []
    for line in log_text.splitlines():
        match = _REQUEST_LINE.match(line)
        if match and match.group(2) != "429":
            moment = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            times.append(moment.timestamp())
    return sorted(times)


def burst_share(times: list[float], window: float) -> float:
    """
    How bunched the admitted polls are: in each window (counted from the first poll), the share of
    its polls that fell in its busiest tenth, averaged over windows weighted by their polls.
    About 0.1 to 0.2 when polls are spread evenly; 1.0 when each window's polls go in one burst.
    """
    if not times:
        return math.nan
    tenth = window / 10
    bins: dict[int, int] = {}
    for at in times:
        slot = int((at - times[0]) // tenth)
        bins[slot] = bins.get(slot, 0) + 1
    busiest = total = 0
    for first in range(0, max(bins) + 1, 10):
        counts = [bins.get(first + i, 0) for i in range(10)]
        busiest += max(counts)
        total += sum(counts)
    return busiest / total if total else math.nan


def _run_phase(phase: Phase, emulator: Any, worker: Worker, index: int) -> dict[str, Any]:
    admin = emulator.admin
    scale = phase.time_scale
    admin.reset(time_scale=scale)
    keys = {"paid": f"cf-bench-paid-{index}", "free": f"cf-bench-free-{index}"}
    conn_ids = {}
    env = {}
    for tier, key in keys.items():
        admin.add_key(key, tier, credits=10**9)
        if phase.watcher == "http_sensor":
            conn_id = f"cf_http_{tier}_{index}"
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(
                {"conn_type": "http", "host": emulator.url, "extra": {"Authorization": f"Bearer {key}"}}
            )
        else:
            conn_id = f"cf_bench_{tier}_{index}"
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = cerebraform_connection(emulator.url, key, tier, scale)
        conn_ids[tier] = conn_id
    worker.request({"op": "prepare", "watcher": phase.watcher})
    jobs = submit_jobs(emulator.url, keys, phase.specs(), admin)
    interval = INTERVAL / scale
    longest = max(phase.durations) / scale
    cycle = max(
        (phase.paid / POLLS_PER_MINUTE["paid"]) * 60 / scale,
        (phase.free / POLLS_PER_MINUTE["free"]) * 60 / scale,
    )
    log_path = Path(emulator.log_path)
    log_offset = log_path.stat().st_size
    answer = worker.request(
        {
            "op": "run",
            "watcher": phase.watcher,
            "env": env,
            "jobs": [{"request_id": j.request_id, "kind": j.kind, "tier": j.tier} for j in jobs],
            "conn_ids": conn_ids,
            "url": emulator.url,
            "keys": keys,
            "interval": interval,
            "spread": interval,
            "deadline": longest + 3 * cycle + 30,
        }
    )
    stats = admin.stats()
    with open(log_path, "rb") as log:
        log.seek(log_offset)
        timeline = admitted_poll_times(log.read().decode("utf-8", "replace"))
    measured = _measure(phase, jobs, answer, stats)
    measured["burst_share"] = burst_share(timeline, 60.0 / scale)
    return measured


def _measure(phase: Phase, jobs: list[Job], answer: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    scale = phase.time_scale
    tasks = {task["request_id"]: task for task in stats["tasks"]}
    fires = {rid: (at, outcome) for rid, at, outcome in answer["fires"]}
    started = answer["started_at"]
    ended = max((at for at, _ in fires.values()), default=started)
    if answer["unfired"]:
        ended = started + answer["wall_s"]
    requests = sum(stats["requests"].get(group, 0) for group in ("status", "result", "credits"))
    refused = int(stats["responses"].get("429", 0))
    budget = 0.0
    by_tier: dict[str, dict[str, Any]] = {}
    interval = INTERVAL / scale
    for tier in ("paid", "free"):
        mine = [job for job in jobs if job.tier == tier]
        if not mine:
            continue
        rate = POLLS_PER_MINUTE[tier] * scale / 60.0  # polls per real second
        # A sliding window admits its limit in every window the run touches (the first one at once).
        budget += POLLS_PER_MINUTE[tier] * math.ceil((ended - started) / (60.0 / scale))
        position = {job.request_id: i for i, job in enumerate(jobs)}
        starts = [started + interval * position[job.request_id] / len(jobs) for job in mine]
        dones = [tasks[job.request_id]["done_at"] or tasks[job.request_id]["planned_done_at"] for job in mine]
        ideal = ideal_delays(starts, dones, rate, interval)
        delays = [
            (fires[job.request_id][0] - done) * scale
            for job, done in zip(mine, dones, strict=True)
            if job.request_id in fires
        ]
        outcomes: dict[str, int] = {}
        for job in mine:
            outcome = fires.get(job.request_id, (0, "unfired"))[1]
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        by_tier[tier] = {
            "jobs": len(mine),
            "fired": len(delays),
            "mean": mean(delays),
            "p95": percentile(delays, 0.95),
            "ideal_mean": mean([d * scale for d in ideal]),
            "ideal_p95": percentile([d * scale for d in ideal], 0.95),
            "saturation": len(mine) / (2 * POLLS_PER_MINUTE[tier]) * 60,
            "outcomes": outcomes,
        }
    return {
        "phase": phase,
        "wall_s": ended - started,
        "rss": answer["rss"],
        "cpu_s": answer["cpu_s"],
        "requests": requests,
        "refused": refused,
        "admitted": requests - refused,
        "budget": budget,
        "tiers": by_tier,
        "unfired": answer["unfired"],
        "crashed": answer["crashed"],
        "crash_samples": answer["crash_samples"],
    }


def run(profile: Any, work: Path) -> Section:
    from airflow_provider_cerebraform.emulator import EmulatorProcess

    started = time.perf_counter()
    phases: list[Phase] = profile.triggerer_phases
    results = []
    # Creation limits are lifted for the setup only (this benchmark is about waiting); polling limits
    # stay as published. Credits are plentiful.
    args = [
        "--time-scale",
        str(phases[0].time_scale),
        "--log-level",
        "DEBUG",  # one line per request: the timeline of admitted polls
        "--credits",
        str(10**9),
        "--set",
        "paid_tasks_per_hour=100000000",
        "--set",
        "free_tasks_per_hour=100000000",
    ]
    with EmulatorProcess(args, log_path=str(work / "emulator-triggerer.log")) as emulator:
        shared: Worker | None = None
        try:
            for index, phase in enumerate(phases):
                if profile.worker_per_phase or shared is None:
                    if shared is not None:
                        shared.close()
                    shared = Worker("benchmarks.watchers", work / f"watchers-{index}.log", env=child_env())
                results.append(_run_phase(phase, emulator, shared, index))
        finally:
            if shared is not None:
                shared.close()
    return _section(results, time.perf_counter() - started)


def _section(results: list[dict[str, Any]], wall: float) -> Section:
    resources = Table(
        "Resources of the watching process and traffic seen by the emulator",
        [
            "watcher",
            "jobs (paid + free)",
            "time scale",
            "wall s",
            "peak RSS above baseline MB",
            "CPU s",
            "requests",
            "429s",
            "polls admitted / limit in the windows touched",
            "busiest tenth of a window",
            "unfired",
        ],
    )
    delays = Table(
        "Delay between a job finishing and its wait ending, in emulated seconds",
        [
            "watcher",
            "tier",
            "jobs",
            "ended",
            "mean",
            "p95",
            "ideal mean",
            "ideal p95",
            "mean / ideal",
            "K/(2B)",
        ],
    )
    headlines: list[str] = []
    misses: list[str] = []
    for result in results:
        phase: Phase = result["phase"]
        name = f"{WATCHER_NAMES[phase.watcher]} x{phase.paid + phase.free}"
        share = result["admitted"] / result["budget"] if result["budget"] else float("nan")
        resources.rows.append(
            [
                name,
                f"{phase.paid} + {phase.free}",
                f"{phase.time_scale:g}",
                fmt(result["wall_s"]),
                fmt(result["rss"]["above_mb"]),
                fmt(result["cpu_s"]),
                f"{result['requests']:,}",
                f"{result['refused']:,}",
                f"{result['admitted']:,} / {result['budget']:,.0f} ({share:.0%})",
                f"{result['burst_share']:.0%}",
                f"{result['unfired']}" + (f" ({result['crashed']} crashed)" if result["crashed"] else ""),
            ]
        )
        for tier, figures in result["tiers"].items():
            ratio = figures["mean"] / figures["ideal_mean"] if figures["ideal_mean"] else float("nan")
            delays.rows.append(
                [
                    name,
                    tier,
                    str(figures["jobs"]),
                    str(figures["fired"]),
                    fmt(figures["mean"]),
                    fmt(figures["p95"]),
                    fmt(figures["ideal_mean"]),
                    fmt(figures["ideal_p95"]),
                    fmt(ratio, 2),
                    fmt(figures["saturation"]),
                ]
            )
        if phase.watcher == "provider" and result["refused"]:
            misses.append(f"{name}: {result['refused']} responses were 429 (target 0)")
        if result["crash_samples"]:
            resources.notes.append(f"{name}: waits that raised, e.g. {result['crash_samples'][0]}")
    providers = [r for r in results if r["phase"].watcher == "provider"]
    if providers:
        big = max(providers, key=lambda r: r["phase"].paid + r["phase"].free)
        count = big["phase"].paid + big["phase"].free
        headlines.append(
            f"{count} CerebraformTaskTriggers on one loop: {fmt(big['rss']['above_mb'])} MB above baseline, "
            f"{fmt(big['cpu_s'])} CPU s, {big['refused']} 429s"
        )
    size = _comparison_size(results)
    comparison = [r for r in results if r["phase"].paid + r["phase"].free == size]
    ours = next((r for r in comparison if r["phase"].watcher == "provider"), None)
    for other in comparison if ours is not None else []:
        if other["phase"].watcher == "provider":
            continue
        ratio_mean = _paid_mean(other) / _paid_mean(ours) if _paid_mean(ours) else float("nan")
        headlines.append(
            f"{WATCHER_NAMES[other['phase'].watcher]} x{size}: {other['refused']:,} 429s "
            f"vs {ours['refused']}, "
            f"{other['requests'] / max(1, ours['requests']):.1f}x the requests, "
            f"{other['cpu_s'] / max(0.01, ours['cpu_s']):.1f}x the CPU, "
            f"paid-tier mean delay {fmt(ratio_mean, 2)}x the trigger's"
        )
    for result in providers:
        for tier, figures in result["tiers"].items():
            if figures["ideal_mean"] and figures["mean"] > IDEAL_SLACK * figures["ideal_mean"]:
                why = ""
                if result["burst_share"] > 0.5:
                    why = (
                        f"; the pacer spent each window's polls in a burst "
                        f"({result['burst_share']:.0%} of them in the busiest tenth of the window), so a "
                        "job is looked at about once a window rather than every K/B minutes once fewer "
                        "jobs wait than twice the window's limit; spacing poll slots evenly would close "
                        "most of the gap"
                    )
                misses.append(
                    f"{WATCHER_NAMES['provider']} x{result['phase'].paid + result['phase'].free} {tier}: "
                    f"mean delay {fmt(figures['mean'])} s, {figures['mean'] / figures['ideal_mean']:.2f}x "
                    f"the ideal {fmt(figures['ideal_mean'])} s "
                    f"(goal: within {IDEAL_SLACK:g}x){why}"
                )
    facts = {
        "phases": [
            {
                "watcher": r["phase"].watcher,
                "jobs": r["phase"].paid + r["phase"].free,
                "fired": sum(t["fired"] for t in r["tiers"].values()),
                "unfired": r["unfired"],
                "crashed": r["crashed"],
                "requests": r["requests"],
                "refused": r["refused"],
                "rss_above_mb": r["rss"]["above_mb"],
                "outcomes": _merge(t["outcomes"] for t in r["tiers"].values()),
            }
            for r in results
        ]
    }
    return Section(
        1,
        "Triggerer scale: thousands of waits on one event loop",
        [
            "Each watcher runs in its own child process, all its waits as tasks on one asyncio loop",
            "(a triggerer's model); the provider's triggers are rebuilt from serialize() as the",
            "triggerer does. RSS is the child's peak above its RSS right before the waits start",
            "(imports done); CPU is the child's. Jobs are created first (plain HTTP; creation limits",
            "are lifted for this setup only, polling limits stay as published), with durations spread",
            "evenly over the range below and 2% failing in the large run; the three watchers see the",
            "same job mix at the comparison size, one after the other. Requests, 429s and each job's",
            "done_at come from the emulator's stats; a delay is the end of the wait minus done_at, in",
            "emulated seconds (real x time scale). 'Limit in the windows touched' is what a sliding",
            "window admits over the run (the tier's limit per window, the first window at once). The",
            "ideal is a perfect round-robin poller simulated on the same jobs and start times, spending",
            "the tier's limit evenly (120 polls a minute paid, 20 free) with the same 5 s minimum",
            "between two polls of a job; K/(2B) is the saturated estimate with K = the jobs on the key",
            "at the start and B its polls a minute (K shrinks as jobs end, so the ideal is lower). A",
            "client may beat the ideal a little: a sliding window also admits a whole window at once.",
            "HttpSensorTrigger can only watch the result endpoint (it ends the wait on any answer but",
            "a 404, so on the status endpoint it would end at once); it sleeps only after a 404, so it",
            "retries the 409 'not ready' and the 429 answers at once, with no interval. The vendor loop",
            "ignores 429 (the body has no 'status', so it sleeps 5 s and asks again).",
        ],
        [resources, delays, _durations_table(results)],
        headlines,
        misses,
        wall,
        facts,
    )


def _merge(counters: Any) -> dict[str, int]:
    merged: dict[str, int] = {}
    for counter in counters:
        for key, value in counter.items():
            merged[key] = merged.get(key, 0) + value
    return merged


def _durations_table(results: list[dict[str, Any]]) -> Table:
    table = Table("Job mixes", ["watcher", "durations (emulated s, evenly spread)", "failing jobs"])
    for result in results:
        phase: Phase = result["phase"]
        failing = (phase.paid + phase.free) // phase.fail_every if phase.fail_every else 0
        table.rows.append(
            [
                f"{WATCHER_NAMES[phase.watcher]} x{phase.paid + phase.free}",
                f"{len(phase.durations)} values from {min(phase.durations):g} to {max(phase.durations):g}",
                str(failing),
            ]
        )
    return table


def _comparison_size(results: list[dict[str, Any]]) -> int:
    sizes = [r["phase"].paid + r["phase"].free for r in results if r["phase"].watcher != "provider"]
    return sizes[0] if sizes else -1


def _paid_mean(result: dict[str, Any]) -> float:
    tier = result["tiers"].get("paid") or next(iter(result["tiers"].values()))
    return tier["mean"]
