"""
One batch over a large JSONL file in object storage: thousands of prompts in one task.

Dynamic task mapping runs one task instance per prompt and stops at ``[core] max_map_length``
(1024 by default); one :class:`CerebraformBatchGenerateOperator` takes any number of rows. It
submits at the pace the key's creation quota allows (200 an hour on a paid key), holds no worker
slot while it waits, and writes ``<output>/<id>/`` per prompt plus ``_cerebraform/results.jsonl``.
Up to 1% of the rows may fail (``max_failed=0.01``) before the task does; ``max_credits`` caps what
the run may spend. A re-run pays only for rows that failed or are missing.

Configure with Variables (or the environment, ``AIRFLOW_VAR_<NAME>``):

- ``cerebraform_batch_prompts``: the JSONL (``id``, ``prompt``, optional ``kind``, ``aspect_ratio``,
  ``duration``, ``image_url``), e.g. ``s3://aws_default@my-bucket/prompts/catalog.jsonl``; default:
  ``data/batch_prompts.jsonl`` next to this file.
- ``cerebraform_output``: where media go (``/batch/`` below it), default
  ``file:///tmp/cerebraform-output``.
- ``cerebraform_batch_max_credits``: the spending cap, default 5000.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, Asset

from airflow_provider_cerebraform.operators.batch import CerebraformBatchGenerateOperator

POLL_INTERVAL = float(os.environ.get("CEREBRAFORM_POLL_INTERVAL", "10"))
DEFAULT_PROMPTS = (Path(__file__).parent / "data" / "batch_prompts.jsonl").as_uri()
CATALOG = Asset(name="cerebraform_batch_catalog")

with DAG(
    dag_id="example_cerebraform_batch",
    description="A large JSONL of prompts generated in one task, within the creation quota",
    schedule=None,
    start_date=datetime(2025, 6, 1),
    catchup=False,
    default_args={"retries": 3},
    tags=["cerebraform", "example"],
) as dag:
    CerebraformBatchGenerateOperator(
        task_id="generate_catalog",
        prompts=f"{{{{ var.value.get('cerebraform_batch_prompts', '{DEFAULT_PROMPTS}') }}}}",
        output="{{ var.value.get('cerebraform_output', 'file:///tmp/cerebraform-output') }}/batch",
        max_failed=0.01,
        max_credits="{{ var.value.get('cerebraform_batch_max_credits', 5000) }}",
        max_in_flight=200,
        poll_interval=POLL_INTERVAL,
        outlets=[CATALOG],
    )
