"""
DAGs of the generation-ledger tests (``tests/operators/test_operator_ledger.py``), run with ``dag.test()``.

``ledger`` is a param: empty means the connection's ``ledger`` field.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_cerebraform.operators.cerebraform import (
    CerebraformGenerateOperator,
    CerebraformResultOperator,
    CerebraformSubmitOperator,
)
from airflow_provider_cerebraform.sensors.cerebraform import CerebraformTaskSensor

START = datetime(2024, 1, 1)
LEDGER = "{{ params.ledger }}"


def _daily() -> DAG:
    """The scheduled example's shape: an image, then a video animated from it, into one folder."""
    with DAG(
        "cerebraform_test_ledger",
        schedule=None,
        start_date=START,
        catchup=False,
        default_args={"retries": 0},
        params={"output": "", "ledger": "", "prompt": "a lighthouse at dawn"},
    ) as dag:
        image = CerebraformGenerateOperator(
            task_id="image",
            prompt="{{ params.prompt }}",
            aspect_ratio="16:9",
            output="{{ params.output }}",
            file_name="image_{index}{ext}",
            ledger=LEDGER,
            poll_interval=0.1,
        )
        submit_video = CerebraformSubmitOperator(
            task_id="submit_video",
            kind="video",
            prompt="{{ params.prompt }}, slow push-in",
            image_url="{{ ti.xcom_pull(task_ids='image')[0]['source_url'] }}",
            duration=5,
            ledger=LEDGER,
        )
        wait = CerebraformTaskSensor(
            task_id="wait_video",
            kind="video",
            request_id=submit_video.output,
            poll_interval=0.1,
            timeout=60,
            ledger=LEDGER,
        )
        store = CerebraformResultOperator(
            task_id="store_video",
            kind="video",
            request_id=submit_video.output,
            output="{{ params.output }}",
            file_name="video_{index}{ext}",
            ledger=LEDGER,
        )
        image >> submit_video >> wait >> store
    return dag


daily = _daily()


def _generate() -> DAG:
    """One generate task: the S3 and lineage tests."""
    with DAG(
        "cerebraform_test_ledger_generate",
        schedule=None,
        start_date=START,
        catchup=False,
        default_args={"retries": 0},
        params={"output": "", "ledger": "", "prompt": "a red fox in fresh snow"},
    ) as dag:
        CerebraformGenerateOperator(
            task_id="image",
            prompt="{{ params.prompt }}",
            output="{{ params.output }}",
            ledger=LEDGER,
            poll_interval=0.1,
        )
    return dag


generate = _generate()
