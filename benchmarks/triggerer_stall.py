"""
Issue 12's triggerer stall: how long a deferred sensor waits for its first poll from the triggerer when
its connection is stored in the metadata database (not in an environment variable).

Runs ``cf_real_db_connection`` (``tests/real_airflow/dags``: a submission and a deferred
``CerebraformTaskSensor`` on the connection ``cerebraform_db``, made here through the REST API) on a real
api-server, scheduler, dag-processor and triggerer over PostgreSQL. For each run it measures the time
from the deferral (the trigger row's ``created_date``) to the triggerer's first poll (the emulator's
``last_poll_at`` once the task's poll count passes the sensor's own poll before deferring), and counts
the triggerer log's "event loop appears deadlocked" and "async thread was blocked" lines.

The first run of a triggerer process is its first connection lookup through the supervisor; the last
run follows a triggerer restart, so it is a first lookup again. The runs between are not.

    .venv/bin/python -m benchmarks.triggerer_stall --runs 3
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DAG_ID = "cf_real_db_connection"
CONN_ID = "cerebraform_db"
TIME_SCALE = 10.0


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _log_counts(stack: Any) -> dict[str, int]:
    text = "".join(p.read_text(errors="replace") for p in sorted(stack.logs.glob("triggerer-*.log")))
    return {
        "deadlocked": len(re.findall(r"event loop appears deadlocked", text)),
        "blocked": len(re.findall(r"async thread was blocked", text)),
    }


def _one_run(stack: Any, number: int, timeout: float) -> dict[str, Any]:
    from tests.real_airflow.harness import wait_until

    run_id = f"stall_{number}"
    admin = stack.emulator.admin
    admin.reset()
    # The job outlasts the measurement; it is completed by hand once the triggerer has polled it.
    admin.configure(image_seconds=3600 * TIME_SCALE)
    logs_before = _log_counts(stack)
    stack.trigger(DAG_ID, run_id)

    def deferred() -> dict[str, Any] | None:
        ti = stack.task_instances(DAG_ID, run_id).get("wait")
        return ti if ti and ti["state"] == "deferred" and ti.get("trigger") else None

    ti = wait_until(deferred, timeout=timeout, what="the sensor to defer", interval=0.1, check=stack.check)
    deferred_at = _epoch(ti["trigger"]["created_date"])
    (task,) = admin.tasks()
    own_polls = task["polls"]  # the sensor's poll before deferring (made in the worker)

    def polled() -> dict[str, Any] | None:
        (task,) = admin.tasks()
        return task if task["polls"] > own_polls else None

    task = wait_until(polled, timeout=timeout, what="the triggerer's first poll", interval=0.1)
    first_poll_at = float(task["last_poll_at"])
    admin.complete_task(task["request_id"])
    state = wait_until(
        lambda: (s := stack.dag_run(DAG_ID, run_id)["state"]) in ("success", "failed") and s,
        timeout=timeout,
        what=f"{run_id} to end",
        check=stack.check,
    )
    logs_after = _log_counts(stack)
    return {
        "run": run_id,
        "triggerer": stack.triggerer_starts,
        "defer_to_first_poll_s": round(first_poll_at - deferred_at, 1),
        "deadlocked_lines": logs_after["deadlocked"] - logs_before["deadlocked"],
        "blocked_lines": logs_after["blocked"] - logs_before["blocked"],
        "state": state,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.triggerer_stall", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="the last one after a triggerer restart")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for each wait")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from tests.real_airflow.harness import TEST_DAGS, AirflowStack, new_api_key
    from tests.real_airflow.postgres import PostgresServer

    rows: list[dict[str, Any]] = []
    with PostgresServer() as postgres, tempfile.TemporaryDirectory(prefix="cf-triggerer-stall-") as tmp:
        url = postgres.create_database("airflow_stall")
        with AirflowStack(
            Path(tmp),
            api_key=new_api_key(),
            time_scale=TIME_SCALE,
            dag_sources={"real_airflow_dags": TEST_DAGS},
            database_url=url,
            startup_timeout=900,
        ) as stack:
            assert stack.emulator is not None
            stack.api(
                "POST",
                "/connections",
                json={
                    "connection_id": CONN_ID,
                    "conn_type": "cerebraform",
                    "host": stack.emulator.url,
                    "password": stack.api_key,
                    "extra": json.dumps({"tier": "paid", "time_scale": TIME_SCALE}),
                },
            )
            stack.wait_for_dag(DAG_ID, "cf_real_db_connection.py")
            stack.unpause(DAG_ID)
            for number in range(1, args.runs + 1):
                if number == args.runs and args.runs > 1:
                    stack.stop_triggerer()
                    stack.start_triggerer()
                row = _one_run(stack, number, args.timeout)
                rows.append(row)
                print(row, flush=True)
            print(f"triggerer logs: {stack.logs}", flush=True)
            for line in "".join(
                p.read_text() for p in sorted(stack.logs.glob("triggerer-*.log"))
            ).splitlines():
                if "deadlocked" in line or "was blocked" in line:
                    print(line[:300])
    columns = list(rows[0]) if rows else []
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
    return 0 if all(r["state"] == "success" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
