"""
Backfill over a prompt dataset partitioned by date: each day's prompts are generated once, whatever
is re-run, and the backfill stays inside the account's task-creation limit.

The dataset is ``data/daily_prompts/<YYYY-MM-DD>.jsonl`` (one JSON object per line: ``id``,
``prompt``, ``aspect_ratio``); a day without a file is skipped. Backfill a range with a running
scheduler and triggerer::

    airflow backfill create --dag-id example_cerebraform_backfill \\
        --from-date 2025-06-01 --to-date 2025-06-07 --max-active-runs 2

One task per partition: :class:`CerebraformBatchGenerateOperator` validates every row of the day's
file before paying for anything, submits within the key's creation quota (deferring, without a
worker slot, while the window is closed and while the generations run) and stores each prompt's
media at ``<output>/backfill/dt=<YYYY-MM-DD>/<id>/image_0.png``. The partition's
``_cerebraform/results.jsonl`` (one line per prompt, with the sha256 of each file) and
``_cerebraform/manifest.json`` are written when it ends.

What protects what (see ``docs/batches.md``):

- **Nothing is paid twice.** The batch's state lives next to its output: an intent before each paid
  submission, the request id after. A retry, a cleared run, a second backfill of the same dates or a
  worker killed mid-partition carries on; prompts already stored are not submitted again.
- **A half-done partition pays only for what is missing**, including a prompt whose files were
  deleted since.
- **Left to a person:** a submission whose answer was lost may have been paid without a request id
  to follow. It is recorded as ``uncertain`` in the results and not submitted again unless
  ``on_uncertain_submission="resubmit"``.

Output: the Variable ``cerebraform_output`` (env ``AIRFLOW_VAR_CEREBRAFORM_OUTPUT``), default
``file:///tmp/cerebraform-output``. ``CEREBRAFORM_POLL_INTERVAL`` (environment, seconds, default 10)
sets how often the trigger polls.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Asset

from airflow_provider_cerebraform.operators.batch import CerebraformBatchGenerateOperator

POLL_INTERVAL = float(os.environ.get("CEREBRAFORM_POLL_INTERVAL", "10"))
OUTPUT = "{{ var.value.get('cerebraform_output', 'file:///tmp/cerebraform-output') }}"
RUN_DAY = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"
DATASET = (Path(__file__).parent / "data" / "daily_prompts").as_uri()
PARTITIONS = Asset(name="cerebraform_backfill_partitions")

with DAG(
    dag_id="example_cerebraform_backfill",
    description="Date-partitioned prompts, each partition generated exactly once (safe to backfill)",
    schedule="@daily",
    start_date=datetime(2025, 6, 1),
    catchup=False,
    max_active_runs=2,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=1)},
    tags=["cerebraform", "example"],
) as dag:
    CerebraformBatchGenerateOperator(
        task_id="generate_partition",
        prompts=f"{DATASET}/{RUN_DAY}.jsonl",
        output=f"{OUTPUT}/backfill/dt={RUN_DAY}",
        kind="image",
        on_missing_prompts="skip",
        poll_interval=POLL_INTERVAL,
        outlets=[PARTITIONS],
    )
