"""
Benchmark 4: worker-slot seconds of the deferrable path against a blocking poll loop.

The same jobs (same prompts, kinds and emulated durations) go through two paths:

- deferrable: ``CerebraformGenerateOperator.execute`` until it raises ``TaskDeferred``, the trigger on
  a triggerer-like event loop (no worker slot), then ``execute_complete`` with the event; only the
  two calls hold a worker slot.
- blocking: in the worker, the hook submits, polls the status every 5 s (emulated) until the job is
  finished, and fetches the result; the whole wait holds the slot.

Jobs run concurrently (one thread each), so the slot-seconds are summed per job.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from benchmarks.common import Section, Table, cerebraform_connection, fmt
from benchmarks.harness import make_context, run_triggers

if TYPE_CHECKING:
    from pathlib import Path

INTERVAL = 5.0  # emulated seconds between polls, both paths


def _jobs(images: int, videos: int) -> list[tuple[str, str]]:
    return [("image", f"worker-slot job {n} (image)") for n in range(images)] + [
        ("video", f"worker-slot job {n} (video)") for n in range(videos)
    ]


def _deferrable(jobs: list[tuple[str, str]], conn_id: str, scale: float) -> dict[str, Any]:
    from airflow.sdk.exceptions import TaskDeferred

    from airflow_provider_cerebraform.operators.cerebraform import CerebraformGenerateOperator

    operators = [
        CerebraformGenerateOperator(
            task_id=f"generate_{n}",
            prompt=prompt,
            kind=kind,
            duration=5 if kind == "video" else None,
            poll_interval=INTERVAL / scale,
            cerebraform_conn_id=conn_id,
        )
        for n, (kind, prompt) in enumerate(jobs)
    ]
    contexts = [make_context(f"generate_{n}") for n in range(len(jobs))]

    def first_half(n: int) -> tuple[float, Any]:
        began = time.perf_counter()
        try:
            operators[n].execute(contexts[n])
        except TaskDeferred as deferred:
            return time.perf_counter() - began, deferred
        raise RuntimeError("the operator finished without deferring")

    def second_half(n: int, deferred: Any, event: Any) -> tuple[float, Any]:
        began = time.perf_counter()
        value = getattr(operators[n], deferred.method_name)(contexts[n], event=event)
        return time.perf_counter() - began, value

    began = time.perf_counter()
    with ThreadPoolExecutor(len(jobs)) as pool:
        firsts = list(pool.map(first_half, range(len(jobs))))
        events = run_triggers([deferred.trigger for _, deferred in firsts])
        seconds = list(pool.map(lambda n: second_half(n, firsts[n][1], events[n]), range(len(jobs))))
    wall = time.perf_counter() - began
    per_job = [first + second for (first, _), (second, _) in zip(firsts, seconds, strict=True)]
    results = [value for _, value in seconds]
    return {"per_job": per_job, "wall": wall, "ok": sum(1 for urls in results if urls)}


def _blocking(jobs: list[tuple[str, str]], conn_id: str, scale: float) -> dict[str, Any]:
    from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook

    def one(job: tuple[str, str]) -> tuple[float, Any]:
        kind, prompt = job
        began = time.perf_counter()
        hook = CerebraformHook(conn_id)
        request_id = hook.submit(kind, prompt, duration=5 if kind == "video" else None)
        while True:
            state = hook.get_status(kind, request_id)
            if state.status.is_terminal:
                break
            time.sleep(INTERVAL / scale)
        urls = hook.get_result(kind, request_id).urls
        return time.perf_counter() - began, urls

    began = time.perf_counter()
    with ThreadPoolExecutor(len(jobs)) as pool:
        done = list(pool.map(one, jobs))
    return {
        "per_job": [s for s, _ in done],
        "wall": time.perf_counter() - began,
        "ok": sum(1 for _, u in done if u),
    }


def run(profile: Any, work: Path) -> Section:
    from airflow_provider_cerebraform.emulator import EmulatorProcess
    from airflow_provider_cerebraform.pacing import reset_pacers

    began = time.perf_counter()
    scale = profile.slot_time_scale
    jobs = _jobs(*profile.slot_jobs)
    measured = {}
    args = ["--time-scale", str(scale), "--log-level", "WARNING", "--credits", str(10**9)]
    with EmulatorProcess(args, log_path=str(work / "emulator-slots.log")) as emulator:
        for path, runner in (("deferrable", _deferrable), ("blocking", _blocking)):
            emulator.admin.reset()
            key = f"cf-bench-slots-{path}"
            emulator.admin.add_key(key, "paid", credits=10**9)
            conn_id = f"cf_bench_slots_{path}"
            os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = cerebraform_connection(
                emulator.url, key, "paid", scale
            )
            reset_pacers()
            measured[path] = runner(jobs, conn_id, scale)
            measured[path]["polls"] = emulator.admin.stats()["requests"]["status"]
    return _section(measured, jobs, scale, time.perf_counter() - began)


def _section(
    measured: dict[str, dict[str, Any]], jobs: list[tuple[str, str]], scale: float, wall: float
) -> Section:
    table = Table(
        f"Worker-slot seconds for the same {len(jobs)} jobs (time scale {scale:g})",
        ["path", "jobs finished", "slot-seconds (sum)", "per job (mean)", "status polls", "wall s"],
    )
    for path in ("deferrable", "blocking"):
        figures = measured[path]
        total = sum(figures["per_job"])
        table.rows.append(
            [
                path,
                f"{figures['ok']} / {len(jobs)}",
                fmt(total, 2),
                fmt(total / len(jobs), 3),
                str(figures["polls"]),
                fmt(figures["wall"]),
            ]
        )
    deferrable = sum(measured["deferrable"]["per_job"])
    blocking = sum(measured["blocking"]["per_job"])
    ratio = blocking / deferrable if deferrable else float("nan")
    projected = blocking * scale / deferrable if deferrable else float("nan")
    table.notes.append(
        f"Measured ratio blocking / deferrable: {ratio:.1f}x. The jobs ran {scale:g}x faster than real "
        f"(image 12 s, video 60 s emulated). At real speed the blocking path waits {scale:g}x longer, "
        "while the deferrable path's slot time is a few HTTP exchanges that do not scale with the job: "
        f"about {projected:,.0f}x (projection: blocking slot-seconds x {scale:g}, deferrable unchanged)."
    )
    misses = []
    for path, figures in measured.items():
        if figures["ok"] != len(jobs):
            misses.append(f"{path}: {len(jobs) - figures['ok']} jobs did not return their media URLs")
    return Section(
        4,
        "Worker slots: deferrable vs blocking",
        [
            "Deferrable: CerebraformGenerateOperator.execute until TaskDeferred, the trigger on one event",
            "loop (rebuilt from serialize(), as the triggerer does), then execute_complete with the event;",
            "only the two calls count. Blocking: submit, poll every 5 s (emulated) and fetch the result",
            "in the worker; the whole wait counts. Same prompts, kinds and durations on both paths.",
        ],
        [table],
        [
            f"blocking / deferrable worker-slot seconds: {ratio:.1f}x measured, "
            f"about {projected:,.0f}x at real speed"
        ],
        misses,
        wall,
        {
            "jobs": len(jobs),
            "deferrable_ok": measured["deferrable"]["ok"],
            "blocking_ok": measured["blocking"]["ok"],
            "ratio": ratio,
        },
    )
