"""
Benchmark 8: a batch against dynamic task mapping on a real Airflow (the ``tests/real_airflow`` stack:
PostgreSQL metadata database, scheduler with the LocalExecutor, triggerer, dag-processor, api-server),
paid key, emulator time-scaled.

One run of a DAG with one ``CerebraformBatchGenerateOperator`` over N prompts, then one run of a DAG
with ``CerebraformGenerateOperator`` mapped over M prompts, on the same stack, one after the other.
Measured per run: wall time (the run's start to end, from the metadata database) over the quota
bound (prompts / 200 per hour, scaled), 429 answers and submissions (the emulator's admin stats),
worker-slot seconds (task instances in state ``running`` sampled every second from the database,
times the interval), task instances, and the scheduler process's own CPU seconds (psutil; the
LocalExecutor's task processes are its children and not counted).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from benchmarks.common import Section, Table, fmt

if TYPE_CHECKING:
    from pathlib import Path

PAID_PER_HOUR = 200
DAG_FILE = '''
"""The two DAGs of benchmark 8; sizes and places come from the environment the benchmark sets."""

import json
import os
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_cerebraform.operators.batch import CerebraformBatchGenerateOperator
from airflow_provider_cerebraform.operators.cerebraform import CerebraformGenerateOperator

with DAG("bench_batch", schedule=None, start_date=datetime(2026, 1, 1)):
    CerebraformBatchGenerateOperator(
        task_id="batch",
        prompts=os.environ["CF_BENCH_PROMPTS"],
        output=os.environ["CF_BENCH_BATCH_OUTPUT"],
        poll_interval=float(os.environ["CF_BENCH_POLL"]),
        max_in_process_wait=float(os.environ["CF_BENCH_POLL"]),
    )

with DAG("bench_mapped", schedule=None, start_date=datetime(2026, 1, 1)):
    CerebraformGenerateOperator.partial(
        task_id="generate",
        output=os.environ["CF_BENCH_MAPPED_OUTPUT"],
        poll_interval=float(os.environ["CF_BENCH_POLL"]),
    ).expand(prompt=json.loads(os.environ["CF_BENCH_MAPPED_PROMPTS"]))
'''


def _scalar(postgres: Any, database: str, query: str) -> Any:
    rows = postgres.execute(query, database)
    return rows[0][0] if rows else None


def _measure(stack: Any, postgres: Any, database: str, dag_id: str, prompts: int, timeout: float) -> dict:
    import psutil

    admin = stack.emulator.admin
    scheduler = psutil.Process(stack.processes["scheduler"].pid)
    before, cpu_before = admin.stats(), scheduler.cpu_times()
    run_id = f"bench-{dag_id}-{int(time.time())}"
    stack.trigger(dag_id, run_id)
    where = f"dag_id = '{dag_id}' AND run_id = '{run_id}'"
    slot_seconds, last, state = 0.0, time.monotonic(), None
    deadline = last + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)
        running = _scalar(
            postgres, database, f"SELECT count(*) FROM task_instance WHERE {where} AND state = 'running'"
        )
        now = time.monotonic()
        slot_seconds += int(running or 0) * (now - last)
        last = now
        state = _scalar(postgres, database, f"SELECT state FROM dag_run WHERE {where}")
        if state in ("success", "failed"):
            break
    after, cpu_after = admin.stats(), scheduler.cpu_times()
    wall = _scalar(
        postgres, database, f"SELECT EXTRACT(EPOCH FROM end_date - start_date) FROM dag_run WHERE {where}"
    )
    states = dict(
        postgres.execute(f"SELECT state, count(*) FROM task_instance WHERE {where} GROUP BY state", database)
    )
    return {
        "dag_id": dag_id,
        "prompts": prompts,
        "state": state,
        "wall": float(wall) if wall is not None else None,
        "submissions": after["submissions"]["total"] - before["submissions"]["total"],
        "rate_limited": sum(after["rate_limited"].values()) - sum(before["rate_limited"].values()),
        "slot": slot_seconds,
        "task_instances": sum(states.values()),
        "ti_states": {str(k): int(v) for k, v in states.items()},
        "scheduler_cpu": (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system),
    }


def run(profile: Any, work: Path) -> Section:
    from tests.real_airflow.harness import AirflowStack, new_api_key
    from tests.real_airflow.postgres import PostgresServer

    began = time.perf_counter()
    scale = profile.stack_time_scale
    batch_size, mapped_size = profile.stack_batch_prompts, profile.stack_mapped_prompts
    root = work / "real-stack"
    (root / "bench_dags").mkdir(parents=True)
    (root / "bench_dags" / "bench_dags.py").write_text(DAG_FILE)
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": f"b{n:05d}", "prompt": f"real stack batch row {n}"}) + "\n"
            for n in range(batch_size)
        )
    )
    poll = 5.0 / scale
    env = {
        "CF_BENCH_PROMPTS": str(prompts),
        "CF_BENCH_BATCH_OUTPUT": str(root / "batch-out"),
        "CF_BENCH_MAPPED_OUTPUT": (root / "mapped-out").as_uri(),
        "CF_BENCH_MAPPED_PROMPTS": json.dumps([f"real stack mapped row {n}" for n in range(mapped_size)]),
        "CF_BENCH_POLL": str(max(poll, 0.05)),
        "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(1024, mapped_size)),
    }
    rows: list[dict[str, Any]] = []
    facts: dict[str, Any] = {"time_scale": scale, "parallelism": profile.stack_parallelism}
    with PostgresServer() as postgres:
        database = "airflow_bench"
        url = postgres.create_database(database)
        stack = AirflowStack(
            root / "stack",
            api_key=new_api_key(),
            time_scale=scale,
            emulator_args=["--credits", str(10**9), "--log-level", "WARNING"],
            dag_sources={"bench_dags": root / "bench_dags"},
            parallelism=profile.stack_parallelism,
            extra_env=env,
            database_url=url,
            startup_timeout=600.0,
        )
        with stack:
            facts["startup_s"] = stack.startup_seconds
            stack.emulator.admin.configure(image_long_side=64)
            for dag_id in ("bench_batch", "bench_mapped"):
                stack.wait_for_dag(dag_id, "bench_dags.py", timeout=300)
                stack.unpause(dag_id)
            for dag_id, size in (("bench_batch", batch_size), ("bench_mapped", mapped_size)):
                row = _measure(stack, postgres, database, dag_id, size, profile.stack_run_timeout)
                row["bound"] = size / PAID_PER_HOUR * 3600 / scale
                rows.append(row)
                print(f"[benchmarks] 8. {dag_id}: {json.dumps(row)}", flush=True)
    facts["rows"] = rows
    return _section(rows, scale, profile.stack_parallelism, time.perf_counter() - began, facts)


def _section(rows: list[dict[str, Any]], scale: float, parallelism: int, wall: float, facts: dict) -> Section:
    table = Table(
        f"One run each on the real stack (LocalExecutor, parallelism {parallelism}, PostgreSQL; time scale "
        f"{scale:g}, paid key)",
        [
            "DAG",
            "prompts",
            "run state",
            "submissions",
            "429s",
            "wall s",
            "quota bound s",
            "wall / bound",
            "worker-slot s",
            "task instances",
            "scheduler CPU s",
        ],
    )
    misses: list[str] = []
    for row in rows:
        ratio = row["wall"] / row["bound"] if row["wall"] else None
        shape = "one batch task" if row["dag_id"] == "bench_batch" else "mapped generate"
        table.rows.append(
            [
                f"{row['dag_id']} ({shape})",
                str(row["prompts"]),
                str(row["state"]),
                str(row["submissions"]),
                str(row["rate_limited"]),
                fmt(row["wall"]),
                fmt(row["bound"]),
                f"{ratio:.2f}" if ratio is not None else "n/a",
                fmt(row["slot"]),
                str(row["task_instances"]),
                fmt(row["scheduler_cpu"]),
            ]
        )
        if row["state"] != "success":
            misses.append(f"{row['dag_id']}: the run ended {row['state']} ({row['ti_states']})")
    table.notes.append(
        "Worker-slot seconds: task instances found in state running, sampled every second from the "
        "metadata database, times the interval (a deferred task holds none). Scheduler CPU: the "
        "scheduler process's own user+system seconds over the run."
    )
    headlines = []
    by_dag = {row["dag_id"]: row for row in rows}
    if {"bench_batch", "bench_mapped"} <= set(by_dag):
        batch, mapped = by_dag["bench_batch"], by_dag["bench_mapped"]
        headlines.append(
            f"real stack: {batch['prompts']} prompts in 1 batch task took {fmt(batch['wall'])} s "
            f"({batch['rate_limited']} 429s, {fmt(batch['slot'])} worker-slot s); {mapped['prompts']} "
            f"mapped prompts took {fmt(mapped['wall'])} s ({mapped['rate_limited']} 429s, "
            f"{fmt(mapped['slot'])} worker-slot s, {mapped['task_instances']} task instances)"
        )
    return Section(
        8,
        "Batch against dynamic task mapping on a real Airflow",
        [
            "On the tests/real_airflow stack (api-server, scheduler with the LocalExecutor, dag-processor,",
            "triggerer, PostgreSQL metadata database) and the emulator, time-scaled, paid key: one run of a",
            "DAG with one CerebraformBatchGenerateOperator over N prompts (a JSONL file, media to a folder),",
            "then one run of a DAG with CerebraformGenerateOperator mapped over M prompts, one after the",
            "other.",
        ],
        [table],
        headlines,
        misses,
        wall,
        facts,
    )
