"""
Airflow's deferral race on a real stack: mapped generations written with Airflow's defaults.

Airflow 3.3 can fail a resumed deferred task when the executor's stale success event from the defer-exit
is processed after the resumed try is running (apache/airflow #72716). This runs the DAG
``cf_real_mapped`` (``tests/real_airflow/dags``: one ``CerebraformGenerateOperator`` per prompt, no
``retries`` and no ``default_args``) on a real api-server, scheduler (LocalExecutor), dag-processor and
triggerer over PostgreSQL, with ``[workers] min_heartbeat_interval`` at Airflow's default (5 s), and
counts per run: generations delivered (a PNG and its manifest in the task's folder), task instances
failed, tries beyond the first, and prompts the emulator was paid for more than once.

    .venv/bin/python -m benchmarks.deferral_race --runs 3 --prompts 50 --loaded-runs 1

``--loaded-runs N`` runs the last N runs beside two busy processes (stopped by pid).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUSY = "import itertools\nfor _ in itertools.count(): pass\n"
DAG_ID = "cf_real_mapped"


def _task_instances(stack: Any, run_id: str) -> list[dict[str, Any]]:
    answer = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
    return [ti for ti in answer["task_instances"] if ti["task_id"] == "generate"]


def _one_run(stack: Any, number: int, prompts: int, loaded: bool, timeout: float) -> dict[str, Any]:
    run_id = f"race_{number}"
    texts = [f"a harbour at dawn, run {number}, prompt {i}" for i in range(prompts)]
    stack.emulator.admin.reset()
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2 if loaded else 0)]
    began = time.monotonic()
    try:
        stack.trigger(DAG_ID, run_id, conf={"prompts": texts})
        from tests.real_airflow.harness import wait_until

        def ended() -> str | None:
            state = stack.dag_run(DAG_ID, run_id)["state"]
            return state if state in ("success", "failed") else None

        state = wait_until(ended, timeout=timeout, what=f"{run_id} to end", interval=1.0, check=stack.check)
    finally:
        for process in busy:
            process.send_signal(signal.SIGTERM)
        for process in busy:
            process.wait(timeout=10)
    wall = time.monotonic() - began
    tis = _task_instances(stack, run_id)
    paid = Counter(task["prompt"] for task in stack.emulator.admin.stats()["tasks"])
    folder = stack.output / DAG_ID / run_id
    delivered = sum(
        1
        for index in range(prompts)
        if list((folder / str(index)).glob("*.png")) and list((folder / str(index)).glob("*.manifest.json"))
    )
    return {
        "run": run_id,
        "loaded": loaded,
        "state": state,
        "tasks": len(tis),
        "success": sum(ti["state"] == "success" for ti in tis),
        "failed": sum(ti["state"] == "failed" for ti in tis),
        "retried": sum((ti.get("try_number") or 1) > 1 for ti in tis),
        "delivered": delivered,
        "submissions": sum(paid.values()),
        "paid_twice": sum(count > 1 for count in paid.values()),
        "unpaid": sum(text not in paid for text in texts),
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deferral_race", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--loaded-runs", type=int, default=1, help="the last N runs beside 2 busy processes")
    parser.add_argument("--parallelism", type=int, default=8, help="[core] parallelism (LocalExecutor)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds for one run to end")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from tests.real_airflow.harness import TEST_DAGS, AirflowStack, new_api_key
    from tests.real_airflow.postgres import PostgresServer

    rows: list[dict[str, Any]] = []
    with PostgresServer() as postgres, tempfile.TemporaryDirectory(prefix="cf-deferral-race-") as tmp:
        url = postgres.create_database("airflow_race")
        with AirflowStack(
            Path(tmp),
            api_key=new_api_key(),
            time_scale=10.0,
            dag_sources={"real_airflow_dags": TEST_DAGS},
            parallelism=args.parallelism,
            database_url=url,
            # Airflow's default, not the 1 s the test stack uses to keep clear of the race.
            extra_env={"AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "5"},
        ) as stack:
            stack.wait_for_dag(DAG_ID, "cf_real_mapped.py")
            stack.unpause(DAG_ID)
            for number in range(1, args.runs + 1):
                loaded = number > args.runs - args.loaded_runs
                row = _one_run(stack, number, args.prompts, loaded, args.timeout)
                rows.append(row)
                print(row, flush=True)
    columns = list(rows[0]) if rows else []
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{v:.0f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    bad = [r for r in rows if r["delivered"] != args.prompts or r["paid_twice"] or r["state"] != "success"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
