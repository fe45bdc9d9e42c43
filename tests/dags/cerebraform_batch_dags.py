"""
DAGs of the batch tests (``tests/batch/``), run with ``dag.test()`` against the emulator.

Each takes its inputs from the run's conf (``prompts``: a list or a path; ``output``; ``max_failed``;
``max_credits``; ``on_invalid``; ``on_uncertain_submission``), rendered as native objects so a list
stays a list. Failures are recorded as JSON in ``CEREBRAFORM_BATCH_RECORD_DIR``.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset

from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook
from airflow_provider_cerebraform.operators.batch import CerebraformBatchGenerateOperator

RECORD_DIR_ENV = "CEREBRAFORM_BATCH_RECORD_DIR"
#: Set to N in the process that runs a first try: it kills itself (SIGKILL) right after the N-th
#: submission was answered, before the request id is recorded.
KILL_AFTER_ENV = "CEREBRAFORM_BATCH_KILL_AFTER"
BATCH_ASSET = Asset("cerebraform://batch/test")


def record_failure(context: Any) -> None:
    folder = os.environ.get(RECORD_DIR_ENV)
    if not folder:
        return
    ti = context["ti"]
    error = context.get("exception")
    record = {
        "task_id": ti.task_id,
        "map_index": ti.map_index,
        "try_number": ti.try_number,
        "type": type(error).__name__,
        "mro": [cls.__name__ for cls in type(error).__mro__],
        "message": str(error),
    }
    Path(folder).mkdir(parents=True, exist_ok=True)
    Path(folder, f"{ti.dag_id}.{ti.task_id}.{ti.map_index}.{ti.try_number}.json").write_text(
        json.dumps(record)
    )


PARAMS = {
    "prompts": [],
    "output": "",
    "max_failed": 0,
    "max_credits": None,
    "on_invalid": "fail",
    "on_uncertain_submission": "fail",
    "ledger": None,
}
ARGS = {
    "prompts": "{{ dag_run.conf.get('prompts', params.prompts) }}",
    "output": "{{ dag_run.conf.get('output', params.output) }}",
    "max_failed": "{{ dag_run.conf.get('max_failed', params.max_failed) }}",
    "max_credits": "{{ dag_run.conf.get('max_credits', params.max_credits) }}",
    "on_invalid": "{{ dag_run.conf.get('on_invalid', params.on_invalid) }}",
    "ledger": "{{ dag_run.conf.get('ledger', params.ledger) }}",
    "on_uncertain_submission": (
        "{{ dag_run.conf.get('on_uncertain_submission', params.on_uncertain_submission) }}"
    ),
}


def _dag(dag_id: str) -> DAG:
    return DAG(
        dag_id,
        schedule=None,
        start_date=datetime(2024, 1, 1),
        catchup=False,
        render_template_as_native_obj=True,
        params=PARAMS,
        default_args={"on_failure_callback": record_failure, "retries": 0},
    )


with _dag("cerebraform_batch") as batch_dag:
    CerebraformBatchGenerateOperator(
        task_id="batch", poll_interval=0.05, max_in_flight=50, outlets=[BATCH_ASSET], **ARGS
    )


class _KillAfterAnswerHook(CerebraformHook):
    answered = 0

    def submit(self, *args: Any, **kwargs: Any) -> str:
        request_id = super().submit(*args, **kwargs)
        limit = os.environ.get(KILL_AFTER_ENV)
        type(self).answered += 1
        if limit and type(self).answered >= int(limit):
            os.kill(os.getpid(), signal.SIGKILL)  # answered, not recorded: the worker dies here
        return request_id


class KilledBatch(CerebraformBatchGenerateOperator):
    """A batch whose worker is killed (``kill -9``) right after the N-th submission was answered."""

    def _hook(self, **kwargs: Any) -> CerebraformHook:
        return _KillAfterAnswerHook(self.cerebraform_conn_id, **kwargs)


with _dag("cerebraform_batch_killed") as killed_dag:
    KilledBatch(task_id="batch", poll_interval=0.05, max_in_flight=50, **ARGS)
