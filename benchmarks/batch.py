"""
Benchmark 7: N prompts through one ``CerebraformBatchGenerateOperator`` task on a paid key.

Two processes, as in Airflow: a *worker* runs the operator's steps (``execute``, then
``execute_complete`` each time its trigger fires) and a *triggerer* runs each deferred trigger,
rebuilt from ``serialize()``, on its event loop. They talk over a pipe: only the trigger's kwargs
and its event cross it. Every submission, poll and download goes over HTTP to the emulator, time
scaled so that the hourly creation window passes in seconds; media go to a local folder.

Measured per size: wall time over the quota bound (N / 200 per hour, scaled), 429 answers,
worker-slot seconds (the steps) over wall time, peak RSS of each process, task instances (1 by
construction), then a re-run of the same batch: submissions, credits and files before and after.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import time
from typing import TYPE_CHECKING, Any

from benchmarks.common import Section, Table, cerebraform_connection, fmt

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from pathlib import Path

CONN_ID = "cf_bench_batch"
KEY = "cf-bench-batch-key"
PAID_PER_HOUR = 200


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _triggerer(pipe: Connection) -> None:
    """The triggerer process: run each trigger it is sent until its first event."""
    import asyncio

    from benchmarks.harness import first_event

    class _Serialized:
        def __init__(self, classpath: str, kwargs: dict[str, Any]) -> None:
            self.value = (classpath, kwargs)

        def serialize(self) -> tuple[str, dict[str, Any]]:
            return self.value

    loop = asyncio.new_event_loop()
    while True:
        message = pipe.recv()
        if message is None:
            pipe.send({"peak_rss_mib": _peak_rss_mib()})
            return
        classpath, kwargs = message
        pipe.send(loop.run_until_complete(first_event(_Serialized(classpath, kwargs))))


def _worker(pipe: Connection, prompts: str, output: str, results: Connection, scale: float) -> None:
    """The worker process: the operator's steps, deferring to the triggerer between them."""
    from airflow.sdk.exceptions import TaskDeferred

    from airflow_provider_cerebraform.operators.batch import CerebraformBatchGenerateOperator
    from benchmarks.harness import make_context

    operator = CerebraformBatchGenerateOperator(
        task_id="batch",
        prompts=prompts,
        output=output,
        cerebraform_conn_id=CONN_ID,
        # The operator's defaults (5 s between poll rounds, 5 s of in-process wait), time-scaled.
        poll_interval=5.0 / scale,
        max_in_process_wait=5.0 / scale,
        max_in_flight=200,
        retries=0,
    )
    context = make_context("batch")
    context["ti"].run_id = "benchmark"
    context["ti"].try_number = 1
    began = time.perf_counter()
    slot = 0.0
    steps = 0
    event: Any = None
    while True:
        step_began = time.perf_counter()
        steps += 1
        try:
            manifest = (
                operator.execute(context) if event is None else operator.execute_complete(context, event)
            )
        except TaskDeferred as deferred:
            slot += time.perf_counter() - step_began
            pipe.send(deferred.trigger.serialize())
            event = pipe.recv()
            continue
        slot += time.perf_counter() - step_began
        break
    results.send(
        {
            "manifest": manifest,
            "wall": time.perf_counter() - began,
            "slot": slot,
            "steps": steps,
            "peak_rss_mib": _peak_rss_mib(),
        }
    )


def _run_batch(prompts: Path, output: Path, scale: float) -> dict[str, Any]:
    spawn = multiprocessing.get_context("spawn")
    to_triggerer, triggerer_end = spawn.Pipe()
    results_in, results_out = spawn.Pipe(duplex=False)
    triggerer = spawn.Process(target=_triggerer, args=(triggerer_end,))
    worker = spawn.Process(
        target=_worker, args=(to_triggerer, str(prompts), output.as_uri(), results_out, scale)
    )
    triggerer.start()
    worker.start()
    try:
        figures = results_in.recv()
        worker.join(60)
        to_triggerer.send(None)
        figures["triggerer_peak_rss_mib"] = to_triggerer.recv()["peak_rss_mib"]
        triggerer.join(60)
    finally:
        for process in (worker, triggerer):
            if process.is_alive():
                process.kill()
    return figures


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file() and "_cerebraform" not in path.parts
    }


def run(profile: Any, work: Path) -> Section:
    from airflow_provider_cerebraform.emulator import EmulatorProcess, key_label

    began = time.perf_counter()
    scale = profile.batch_time_scale
    share = profile.batch_rate_share
    rows: list[dict[str, Any]] = []
    args = ["--time-scale", str(scale), "--log-level", "WARNING", "--credits", str(10**9)]
    with EmulatorProcess(args, log_path=str(work / "emulator-batch.log")) as emulator:
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = cerebraform_connection(
            emulator.url, KEY, "paid", scale, rate_share=share, retry_backoff=0.05
        )
        for size in profile.batch_sizes:
            emulator.admin.reset()
            emulator.admin.add_key(KEY, "paid", credits=10**9)
            # Small images: the emulator draws each one on request, which would measure its own CPU.
            emulator.admin.configure(image_long_side=64)
            folder = work / f"batch-{size}"
            folder.mkdir(parents=True, exist_ok=True)
            prompts = folder / "prompts.jsonl"
            with prompts.open("w") as sink:
                for n in range(size):
                    sink.write(
                        json.dumps({"id": f"row-{n:05d}", "prompt": f"benchmark batch row {n}"}) + "\n"
                    )
            output = folder / "out"
            figures = _run_batch(prompts, output, scale)
            stats = emulator.admin.stats()
            credits_before = stats["credits"][key_label(KEY)]
            files = _snapshot(output)
            again = _run_batch(prompts, output, scale)
            after = emulator.admin.stats()
            bound = size / (PAID_PER_HOUR * share) * 3600 / scale
            rows.append(
                {
                    "size": size,
                    "stored": figures["manifest"]["counts"].get("stored", 0),
                    "submissions": stats["submissions"]["total"],
                    "rate_limited": sum(stats["rate_limited"].values()),
                    "wall": figures["wall"],
                    "bound": bound,
                    "slot": figures["slot"],
                    "steps": figures["steps"],
                    "worker_rss": figures["peak_rss_mib"],
                    "triggerer_rss": figures["triggerer_peak_rss_mib"],
                    "rerun_submissions": after["submissions"]["total"] - stats["submissions"]["total"],
                    "rerun_credits": credits_before - after["credits"][key_label(KEY)],
                    "rerun_files_unchanged": _snapshot(output) == files,
                    "rerun_wall": again["wall"],
                    "rerun_counts": again["manifest"]["counts"],
                }
            )
    return _section(rows, scale, share, time.perf_counter() - began)


def _section(rows: list[dict[str, Any]], scale: float, share: float, wall: float) -> Section:
    table = Table(
        f"One batch task on a paid key (time scale {scale:g}, rate_share {share:g})",
        [
            "prompts",
            "stored",
            "submissions",
            "429s",
            "wall s",
            "quota bound s",
            "wall / bound",
            "worker steps",
            "worker-slot s",
            "slot / wall",
            "slot / wall at real speed",
            "worker peak RSS MiB",
            "triggerer peak RSS MiB",
            "task instances",
        ],
    )
    rerun = Table(
        "The same batch run again over the same output",
        ["prompts", "submissions", "credits spent", "files unchanged", "outcome", "wall s"],
    )
    misses: list[str] = []
    for row in rows:
        ratio = row["wall"] / row["bound"]
        slot_share = row["slot"] / row["wall"]
        real_share = row["slot"] / (row["wall"] * scale)
        table.rows.append(
            [
                str(row["size"]),
                str(row["stored"]),
                str(row["submissions"]),
                str(row["rate_limited"]),
                fmt(row["wall"]),
                fmt(row["bound"]),
                f"{ratio:.2f}",
                str(row["steps"]),
                fmt(row["slot"]),
                f"{slot_share:.1%}",
                f"{real_share:.3%}",
                fmt(row["worker_rss"], 0),
                fmt(row["triggerer_rss"], 0),
                "1",
            ]
        )
        rerun.rows.append(
            [
                str(row["size"]),
                str(row["rerun_submissions"]),
                str(row["rerun_credits"]),
                "yes" if row["rerun_files_unchanged"] else "NO",
                ", ".join(f"{k} {v}" for k, v in sorted(row["rerun_counts"].items())),
                fmt(row["rerun_wall"]),
            ]
        )
        if row["stored"] != row["size"] or row["submissions"] != row["size"]:
            misses.append(f"{row['size']} prompts: {row['stored']} stored, {row['submissions']} submissions")
        if ratio > 1.05:
            misses.append(f"{row['size']} prompts: wall / quota bound {ratio:.2f} (goal at most 1.05)")
        if row["rate_limited"]:
            misses.append(f"{row['size']} prompts: {row['rate_limited']} 429 answers (goal 0)")
        if real_share >= 0.01:
            misses.append(
                f"{row['size']} prompts: worker-slot share at real speed {real_share:.2%} (goal < 1%)"
            )
        if row["rerun_submissions"] or row["rerun_credits"] or not row["rerun_files_unchanged"]:
            misses.append(f"{row['size']} prompts: the re-run paid or wrote something")
    table.notes.append(
        "Wall time includes the last generations after the last submission (12 s emulated per image) "
        "and storing every file. Worker-slot seconds are the operator's steps (read and fold the state, "
        "one pass over the input, submit a burst, store what finished); they do not scale with the "
        f"time scale, so at real speed the slot share is the measured one divided by {scale:g}."
    )
    if any(row["slot"] > row["bound"] for row in rows):
        table.notes.append(
            "Where worker-slot seconds exceed the quota bound, the worker, not the quota, set the pace: "
            "at this time scale a window lasts less than the worker needs to submit and store its 200 "
            "rows. At real speed (200 rows an hour) the same work is the last column's share of the hour."
        )
    largest = rows[-1] if rows else None
    headlines = []
    if largest:
        headlines.append(
            f"{largest['size']} prompts in 1 task: wall / quota bound "
            f"{largest['wall'] / largest['bound']:.2f}, {largest['rate_limited']} 429s, worker peak RSS "
            f"{largest['worker_rss']:.0f} MiB; a re-run submitted {largest['rerun_submissions']}"
        )
    return Section(
        7,
        "Batches: a prompt dataset in one task",
        [
            "A JSONL of N rows through one CerebraformBatchGenerateOperator: a worker process runs its steps",
            "and a triggerer process runs each deferred trigger rebuilt from serialize(), over a pipe that",
            "carries only the trigger's kwargs and event. The emulator is time-scaled, so the quota bound",
            "N / 200 per hour takes seconds. Then the same batch runs again over the same output.",
        ],
        [table, rerun],
        headlines,
        misses,
        wall,
        {"rows": rows, "time_scale": scale, "rate_share": share},
    )
