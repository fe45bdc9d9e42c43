"""
DAGs that the provider's tests run with ``dag.test()`` against the emulator.

They read what changes from run to run (prompt, output folder) from ``params``, so a test passes it as
``run_conf``. Every task records its failure (exception type and message) as JSON in the folder named
by ``CEREBRAFORM_TEST_RECORD_DIR`` when that is set, so the tests can check what a user would read.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, task

from airflow_provider_cerebraform.operators.cerebraform import (
    CerebraformGenerateOperator,
    CerebraformResultOperator,
    CerebraformSubmitOperator,
)
from airflow_provider_cerebraform.sensors.cerebraform import CerebraformTaskSensor
from airflow_provider_cerebraform.version_compat import BaseHook

RECORD_DIR_ENV = "CEREBRAFORM_TEST_RECORD_DIR"
START = datetime(2024, 1, 1)
MEDIA_ASSET = Asset(name="cerebraform_test_media", uri="file:///cerebraform-test/media")


def record_failure(context: Any) -> None:
    """``on_failure_callback`` and ``on_retry_callback``: record the exception a user would see, per try."""
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
    name = f"{ti.dag_id}.{ti.task_id}.{ti.map_index}.{ti.try_number}.json"
    Path(folder, name).write_text(json.dumps(record))


DEFAULTS: dict[str, Any] = {
    "on_failure_callback": record_failure,
    "on_retry_callback": record_failure,
    "retries": 0,
}


# -- submit -> sensor -> result to object storage ---------------------------------------------------


def _pipeline() -> DAG:
    with DAG(
        "cerebraform_test_pipeline",
        schedule=None,
        start_date=START,
        catchup=False,
        default_args=DEFAULTS,
        params={"output": "", "prompt": "a lighthouse at dawn, oil painting"},
    ) as dag:
        submitted = CerebraformSubmitOperator(
            task_id="submit", prompt="{{ params.prompt }}", aspect_ratio="16:9"
        )
        waited = CerebraformTaskSensor(
            task_id="wait", request_id=submitted.output, poll_interval=0.1, timeout=60
        )
        stored = CerebraformResultOperator(
            task_id="store", request_id=submitted.output, output="{{ params.output }}"
        )
        submitted >> waited >> stored
    return dag


pipeline = _pipeline()

# -- the all-in-one operator: image (with an asset outlet), video, mapped, failing, timing out ------


def _generate() -> DAG:
    with DAG(
        "cerebraform_test_generate",
        schedule=None,
        start_date=START,
        catchup=False,
        default_args=DEFAULTS,
        params={"output": ""},
    ) as dag:
        CerebraformGenerateOperator(
            task_id="image",
            prompt="a red fox in fresh snow",
            aspect_ratio="1:1",
            output="{{ params.output }}/image",
            poll_interval=0.1,
            outlets=[MEDIA_ASSET],
        )
        CerebraformGenerateOperator(
            task_id="video",
            kind="video",
            prompt="waves rolling onto a beach",
            duration=10,
            aspect_ratio="16:9",
            output="{{ params.output }}/video",
            file_name="{kind}/{request_id}{ext}",
            poll_interval=0.1,
        )
        CerebraformGenerateOperator.partial(
            task_id="mapped", output="{{ params.output }}/mapped", poll_interval=0.1
        ).expand(prompt=["a blue circle", "a green square", "a yellow star"])
        CerebraformGenerateOperator(
            task_id="failing",
            prompt="a forbidden picture #cf-fail:the model refused this prompt (test)",
            poll_interval=0.1,
            retries=1,
            retry_delay=timedelta(0),
        )
        CerebraformGenerateOperator(
            task_id="too_slow", kind="video", prompt="a slow sunset", poll_interval=0.1, wait_timeout=0.3
        )
        CerebraformGenerateOperator(task_id="urls_only", prompt="a paper crane", poll_interval=0.1)
    return dag


generate = _generate()

# -- the sensor in its three ways of waiting, each on its own job -----------------------------------


def _sensors() -> DAG:
    with DAG(
        "cerebraform_test_sensors",
        schedule=None,
        start_date=START,
        catchup=False,
        default_args={**DEFAULTS, "retries": 1, "retry_delay": timedelta(0)},
        params={"prompt": "a quiet harbour"},
    ) as dag:
        previous = None
        for mode in ("deferred", "poke", "reschedule"):
            submit = CerebraformSubmitOperator(
                task_id=f"submit_{mode}", prompt="{{ params.prompt }}", trigger_rule="all_done"
            )
            sensor = CerebraformTaskSensor(
                task_id=f"sensor_{mode}",
                request_id=submit.output,
                poll_interval=0.2,
                timeout=3,
                deferrable=mode == "deferred",
                mode="reschedule" if mode == "reschedule" else "poke",
            )
            if previous is not None:
                previous >> submit
            submit >> sensor
            previous = sensor
    return dag


sensors = _sensors()


def _sensor_error_budget() -> DAG:
    """Two poking sensors (poke, reschedule) whose every poll fails: the budget must end both."""
    with DAG(
        "cerebraform_test_sensor_error_budget",
        schedule=None,
        start_date=START,
        catchup=False,
        default_args=DEFAULTS,
        params={"request_id": "unset"},
    ) as dag:
        for mode in ("poke", "reschedule"):
            CerebraformTaskSensor(
                task_id=f"sensor_{mode}",
                request_id="{{ params.request_id }}",
                poll_interval=0.1,
                timeout=30,
                deferrable=False,
                mode=mode,
                max_consecutive_errors=2,
            )
    return dag


sensor_error_budget = _sensor_error_budget()

# -- retry safety and the credit guard --------------------------------------------------------------


class SubmitThenCrashOnce(CerebraformSubmitOperator):
    """Submits, then fails its first try as if the worker died right after the service said yes."""

    def execute(self, context: Any) -> Any:
        request_id = super().execute(context)
        if context["ti"].try_number == 1:
            raise RuntimeError(f"worker lost after submitting {request_id} (test)")
        return request_id


class GenerateThenCrashOnce(CerebraformGenerateOperator):
    """
    Submits; on the first try the generation is finished (by the emulator's control API) and the
    worker "dies" before deferring. The retry finds it done and stores it without deferring.
    """

    def _continue_after_submit(self, context: Any, request_id: str, reconnected: Any = None) -> Any:
        if context["ti"].try_number == 1:
            from airflow_provider_cerebraform.emulator import EmulatorAdmin, EmulatorAdminError

            admin = EmulatorAdmin(BaseHook.get_connection("cerebraform_default").host)
            try:
                admin.complete_task(request_id)
            except EmulatorAdminError as error:
                if error.status != 409:  # 409: it had already finished on its own
                    raise
            raise RuntimeError(f"worker lost before deferring {request_id} (test)")
        return super()._continue_after_submit(context, request_id, reconnected)


def _retry() -> DAG:
    with DAG(
        "cerebraform_test_retry",
        schedule=None,
        start_date=START,
        catchup=False,
        default_args=DEFAULTS,
        params={"output": ""},
    ) as dag:
        SubmitThenCrashOnce(
            task_id="submit_crash_once",
            prompt="a lantern in the fog",
            state_location="{{ params.output }}/state",  # the retry record before Airflow 3.3
            retries=1,
            retry_delay=timedelta(0),
        )
        CerebraformSubmitOperator(
            task_id="guarded", prompt="an expensive video", kind="video", min_credits=10**9
        )
        GenerateThenCrashOnce(
            task_id="generate_crash_once",
            prompt="a kite over the dunes",
            output="{{ params.output }}/retried",
            retries=1,
            retry_delay=timedelta(0),
        )
    return dag


retry = _retry()

# -- rate limits: a free key whose task-creation window another client has just used up -------------


def _rate_limit() -> DAG:
    with DAG(
        "cerebraform_test_rate_limit",
        schedule=None,
        start_date=START,
        catchup=False,
        default_args={**DEFAULTS, "cerebraform_conn_id": "cerebraform_free"},
    ) as dag:

        @task
        def use_up_create_window() -> int:
            """Another client of the same key: submit until the service answers 429."""
            import requests

            conn = BaseHook.get_connection("cerebraform_free")
            session = requests.Session()
            session.trust_env = False
            headers = {"Authorization": f"Bearer {conn.password}"}
            for accepted in range(100):
                response = session.post(
                    f"{conn.host}/ai/v1/to-image",
                    json={"prompt": f"filler {accepted}"},
                    headers=headers,
                    timeout=10,
                )
                if response.status_code == 429:
                    return accepted
                response.raise_for_status()
            raise AssertionError("the create limit never answered 429")

        give_up = CerebraformSubmitOperator(
            task_id="give_up", prompt="a tiny robot", max_rate_limit_wait=0.5, max_in_process_wait=0
        )
        defer_then_submit = CerebraformSubmitOperator(
            task_id="defer_then_submit",
            prompt="a patient robot",
            max_rate_limit_wait=120,
            max_in_process_wait=0,
            trigger_rule="all_done",
        )
        use_up_create_window() >> give_up >> defer_then_submit
    return dag


rate_limit = _rate_limit()

# -- bad input that only shows at run time: templated values render to something invalid ----------


def _bad_input() -> DAG:
    with DAG(
        "cerebraform_test_bad_input",
        schedule=None,
        start_date=START,
        catchup=False,
        # retries=1 shows that a validation error is final: no second try is spent on it.
        default_args={**DEFAULTS, "retries": 1, "retry_delay": timedelta(0)},
    ) as dag:
        GOOD_ID = "0123456789abcdef"
        CerebraformSubmitOperator(task_id="kind", kind="{{ 'gif' }}", prompt="a cat")
        CerebraformSubmitOperator(task_id="prompt_empty", prompt="{{ '   ' }}")
        CerebraformSubmitOperator(task_id="prompt_too_long", prompt="{{ 'x' * 1001 }}")
        CerebraformSubmitOperator(task_id="aspect_ratio", prompt="a cat", aspect_ratio="{{ '16x9' }}")
        CerebraformSubmitOperator(task_id="duration_image", prompt="a cat", duration="{{ 5 }}")
        CerebraformSubmitOperator(task_id="duration_7", kind="video", prompt="a cat", duration="{{ 7 }}")
        CerebraformSubmitOperator(task_id="image_url", prompt="a cat", image_url="{{ 'ftp://host/cat.png' }}")
        CerebraformTaskSensor(task_id="sensor_request_id", request_id="{{ 'not an id/..' }}")
        CerebraformResultOperator(task_id="result_request_id", request_id="{{ '../etc/passwd' }}")
        CerebraformResultOperator(task_id="output", request_id=GOOD_ID, output="{{ 'relative/folder' }}")
        CerebraformResultOperator(
            task_id="file_name",
            request_id=GOOD_ID,
            output="/tmp/cerebraform-never",
            file_name="{{ '../{index}' }}",
        )
        CerebraformGenerateOperator(
            task_id="generate_output", prompt="a cat", output="{{ 'relative/folder' }}", poll_interval=0.1
        )
        CerebraformGenerateOperator(
            task_id="generate_file_name",
            prompt="a cat",
            output="/tmp/cerebraform-never",
            file_name="{{ 'a/../../{index}' }}",
            poll_interval=0.1,
        )
    return dag


bad_input = _bad_input()
