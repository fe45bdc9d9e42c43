"""
Scheduled content generation: every day, an image from a prompt templated from the run, then a short
video animated from that image; both land in object storage under the run's date.

Copy this file and change the prompt, the schedule and the output. What it shows:

- A prompt templated from the run. Manual runs have no logical date in Airflow 3, so the date is
  ``dag_run.logical_date or dag_run.run_after`` (a scheduled run has both, a manual run only the
  second), never ``{{ ds }}`` alone.
- The all-in-one ``CerebraformGenerateOperator`` for the image: submit, wait in the triggerer
  without a worker slot, store the media, return the manifest.
- The video as three tasks (submit, sensor, result), the shape to use when the steps need different
  retries: the paid submission is retry-safe (a retry reconnects to the same request), the wait has
  its own timeout and the download can be retried freely.
- ``image_url`` taken from the image's result URL (``source_url`` in its manifest).
- An asset, ``cerebraform_daily_video``, updated with the video's manifest: schedule a DAG on it to
  publish each day's video.
- A generation ledger (``<output>/ledger``, see ``docs/ledger.md``): a second run on the same day (a
  manual trigger after the scheduled run, a cleared DAG run) asks for the same generations, finds
  them stored, pays nothing and leaves the day's files and manifests as they were.

Where files go: the Airflow Variable ``cerebraform_output`` (env ``AIRFLOW_VAR_CEREBRAFORM_OUTPUT``),
an object-storage URL such as ``s3://aws_default@my-bucket/media`` or ``file:///data/media``; default
``file:///tmp/cerebraform-output``. Each day writes ``<output>/scheduled/<YYYY-MM-DD>/``:
``image_0.png``, ``video_0.mp4`` and one ``<request_id>.manifest.json`` per generation.

``CEREBRAFORM_POLL_INTERVAL`` (environment, seconds, default 10) sets how often the waits poll; the
demo and the tests shorten it because the emulator runs faster than real time.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset, Param

from airflow_provider_cerebraform.operators.cerebraform import (
    CerebraformGenerateOperator,
    CerebraformResultOperator,
    CerebraformSubmitOperator,
)
from airflow_provider_cerebraform.sensors.cerebraform import CerebraformTaskSensor

POLL_INTERVAL = float(os.environ.get("CEREBRAFORM_POLL_INTERVAL", "10"))
OUTPUT = "{{ var.value.get('cerebraform_output', 'file:///tmp/cerebraform-output') }}"
# A scheduled run has a logical date; a manual run (UI, `airflow dags trigger`) may not.
RUN_DAY = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"
DAY_FOLDER = f"{OUTPUT}/scheduled/{RUN_DAY}"
# What was already generated and stored, so that a second run of the same day pays nothing.
LEDGER = f"{OUTPUT}/ledger"
# Updated with the video's manifest in the event's extra: DAGs scheduled on it get each day's video.
DAILY_VIDEO = Asset(name="cerebraform_daily_video")

with DAG(
    dag_id="example_cerebraform_scheduled",
    description="Daily image, then a video animated from it, stored under the run's date",
    schedule="@daily",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "subject": Param(
            "a lighthouse on a rocky coast at sunrise, travel poster style",
            type="string",
            minLength=1,
            maxLength=800,
            description="What today's picture shows; the date is added to the prompt.",
        ),
    },
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    tags=["cerebraform", "example"],
) as dag:
    generate_image = CerebraformGenerateOperator(
        task_id="generate_image",
        kind="image",
        prompt=(
            "{{ params.subject }}, on "
            "{{ (dag_run.logical_date or dag_run.run_after).strftime('%A %d %B %Y') }}"
        ),
        aspect_ratio="16:9",
        output=DAY_FOLDER,
        file_name="image_{index}{ext}",
        ledger=LEDGER,
        poll_interval=POLL_INTERVAL,
        wait_timeout=3600,
    )

    # The image's manifest (its return value) lists the stored files and the URL each came from.
    submit_video = CerebraformSubmitOperator(
        task_id="submit_video",
        kind="video",
        prompt="{{ params.subject }}, slow camera push-in, waves moving",
        image_url="{{ ti.xcom_pull(task_ids='generate_image')[0]['source_url'] }}",
        aspect_ratio="16:9",
        duration=5,
        ledger=LEDGER,
    )

    wait_for_video = CerebraformTaskSensor(
        task_id="wait_for_video",
        kind="video",
        request_id=submit_video.output,
        poll_interval=POLL_INTERVAL,
        timeout=3600,
        ledger=LEDGER,
    )

    store_video = CerebraformResultOperator(
        task_id="store_video",
        kind="video",
        request_id=submit_video.output,
        output=DAY_FOLDER,
        file_name="video_{index}{ext}",
        ledger=LEDGER,
        outlets=[DAILY_VIDEO],
        retries=4,
    )

    generate_image >> submit_video >> wait_for_video >> store_video
