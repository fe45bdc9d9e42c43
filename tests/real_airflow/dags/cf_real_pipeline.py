"""
DAGs run by the real-Airflow tests (``tests/real_airflow``), parsed by a real dag-processor.

``cf_real_pipeline`` waits in the triggerer twice: an all-in-one image generation and a video
submitted, sensed and stored in three tasks. ``cf_real_worker_kill`` holds its submit task after the
submission so a test can ``kill -9`` it there and watch the retry reconnect instead of paying again.

Outputs go under the Airflow Variable ``cerebraform_output`` (``AIRFLOW_VAR_CEREBRAFORM_OUTPUT``); the
hold's flag files live in ``$CF_REAL_AIRFLOW_SIGNALS``.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG

from airflow_provider_cerebraform.operators.cerebraform import (
    CerebraformGenerateOperator,
    CerebraformResultOperator,
    CerebraformSubmitOperator,
)
from airflow_provider_cerebraform.sensors.cerebraform import CerebraformTaskSensor

if TYPE_CHECKING:
    from airflow.sdk import Context

OUTPUT = "{{ var.value.cerebraform_output }}/{{ dag.dag_id }}/{{ run_id }}"
#: How long the first try of the held submit task waits for a release flag before going on by itself.
HOLD_SECONDS = 300.0

with DAG(
    dag_id="cf_real_pipeline",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    default_args={"retries": 0},
    tags=["cerebraform", "real-airflow-test"],
):
    CerebraformGenerateOperator(
        task_id="generate_image",
        prompt="a lighthouse at dusk, {{ run_id }}",
        kind="image",
        aspect_ratio="16:9",
        output=OUTPUT,
        poll_interval=0.5,
        wait_timeout=900,
    )
    submit_video = CerebraformSubmitOperator(
        task_id="submit_video", prompt="waves on a pier, {{ run_id }}", kind="video", duration=5
    )
    wait_video = CerebraformTaskSensor(
        task_id="wait_video", request_id=submit_video.output, kind="video", poll_interval=0.5, timeout=900
    )
    store_video = CerebraformResultOperator(
        task_id="store_video", request_id=submit_video.output, kind="video", output=OUTPUT
    )
    submit_video >> wait_video >> store_video


class HeldSubmitOperator(CerebraformSubmitOperator):
    """
    Submits, then, on the first try only, writes ``<run_id>.holding`` (its pid) and waits for
    ``<run_id>.release`` in ``$CF_REAL_AIRFLOW_SIGNALS``: the window in which a test kills the worker,
    or writes ``<run_id>.fail`` to make the try fail with an exception.
    """

    def _submit(self, context: Context, *args: Any, **kwargs: Any) -> tuple[str, Any]:
        request_id, reconnected = super()._submit(context, *args, **kwargs)
        if context["ti"].try_number == 1:
            signals = Path(os.environ["CF_REAL_AIRFLOW_SIGNALS"])
            run_id = context["run_id"]
            (signals / f"{run_id}.holding").write_text(f"{os.getpid()} {request_id}\n")
            self.log.info("Submitted %s; holding until %s.release", request_id, run_id)
            deadline = time.monotonic() + HOLD_SECONDS
            while not (signals / f"{run_id}.release").exists() and time.monotonic() < deadline:
                if (signals / f"{run_id}.fail").exists():
                    raise RuntimeError(f"{run_id}.fail: the test ends this try with an exception")
                time.sleep(0.1)
        return request_id, reconnected


with DAG(
    dag_id="cf_real_worker_kill",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    default_args={"retries": 0},
    tags=["cerebraform", "real-airflow-test"],
):
    submit = HeldSubmitOperator(
        task_id="submit_image",
        prompt="a paper boat, {{ run_id }}",
        kind="image",
        state_location=OUTPUT,  # where the retry record lives before Airflow 3.3
        retries=1,
        retry_delay=timedelta(seconds=1),
    )
    wait = CerebraformTaskSensor(
        task_id="wait_image", request_id=submit.output, kind="image", poll_interval=0.5
    )
    store = CerebraformResultOperator(
        task_id="store_image", request_id=submit.output, kind="image", output=OUTPUT
    )
    submit >> wait >> store
