"""
Every invalid operator parameter is refused before anything is sent or paid for: at DAG parse time when
it is a literal (constructing the operator raises, naming the parameter), at run time when a template
renders it (the task fails at once, without a retry).
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

import pytest
from cerebraform_dagtest import run_dag

from airflow_provider_cerebraform.exceptions import CerebraformValidationError
from airflow_provider_cerebraform.operators.cerebraform import (
    CerebraformGenerateOperator,
    CerebraformResultOperator,
    CerebraformSubmitOperator,
)
from airflow_provider_cerebraform.sensors.cerebraform import CerebraformTaskSensor
from airflow_provider_cerebraform.version_compat import dag_bag

if TYPE_CHECKING:
    from pathlib import Path

    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

GOOD_ID = "0123456789abcdef"

BAD_LITERALS: list[tuple[str, type[Any], dict[str, Any]]] = [
    ("kind", CerebraformSubmitOperator, {"kind": "gif", "prompt": "a cat"}),
    ("prompt", CerebraformSubmitOperator, {"prompt": ""}),
    ("prompt", CerebraformSubmitOperator, {"prompt": "   \n"}),
    ("prompt", CerebraformSubmitOperator, {"prompt": "x" * 1001}),
    ("prompt", CerebraformSubmitOperator, {"prompt": None}),
    ("aspect_ratio", CerebraformSubmitOperator, {"prompt": "a cat", "aspect_ratio": "16x9"}),
    ("aspect_ratio", CerebraformSubmitOperator, {"prompt": "a cat", "aspect_ratio": "0:1"}),
    ("duration", CerebraformSubmitOperator, {"prompt": "a cat", "duration": 5}),
    ("duration", CerebraformSubmitOperator, {"prompt": "a cat", "kind": "video", "duration": 7}),
    ("image_url", CerebraformSubmitOperator, {"prompt": "a cat", "image_url": "ftp://host/cat.png"}),
    ("image_url", CerebraformSubmitOperator, {"prompt": "a cat", "image_url": "cat.png"}),
    ("request_id", CerebraformTaskSensor, {"request_id": "not an id/.."}),
    ("kind", CerebraformTaskSensor, {"request_id": GOOD_ID, "kind": "gif"}),
    ("request_id", CerebraformResultOperator, {"request_id": "../etc/passwd"}),
    ("output", CerebraformResultOperator, {"request_id": GOOD_ID, "output": "relative/folder"}),
    ("output", CerebraformResultOperator, {"request_id": GOOD_ID, "output": "  "}),
    (
        "file_name",
        CerebraformResultOperator,
        {"request_id": GOOD_ID, "output": "/tmp/x", "file_name": "../{index}"},
    ),
    ("file_name", CerebraformResultOperator, {"request_id": GOOD_ID, "file_name": "/abs/{index}{ext}"}),
    ("file_name", CerebraformResultOperator, {"request_id": GOOD_ID, "file_name": "{nope}.png"}),
    (
        "on_uncertain_submission",
        CerebraformSubmitOperator,
        {"prompt": "a cat", "on_uncertain_submission": "retry"},
    ),
    ("kind", CerebraformGenerateOperator, {"kind": "audio", "prompt": "a cat"}),
    ("duration", CerebraformGenerateOperator, {"kind": "video", "prompt": "a cat", "duration": 7}),
    ("output", CerebraformGenerateOperator, {"prompt": "a cat", "output": "relative"}),
    ("file_name", CerebraformGenerateOperator, {"prompt": "a cat", "file_name": "a/../../{index}"}),
]


@pytest.mark.parametrize(
    ("param", "operator", "kwargs"),
    BAD_LITERALS,
    ids=[
        f"{op.__name__.removeprefix('Cerebraform')}-{param}-{i}"
        for i, (param, op, _) in enumerate(BAD_LITERALS)
    ],
)
def test_a_bad_literal_fails_when_the_operator_is_built(
    param: str, operator: type[Any], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(CerebraformValidationError) as raised:
        operator(task_id="bad", **kwargs)
    assert f"Invalid {param}" in str(raised.value)
    assert raised.value.endpoint == "validation" or param in ("output", "file_name")


def test_templated_values_are_not_judged_at_parse_time() -> None:
    CerebraformSubmitOperator(
        task_id="ok",
        kind="{{ params.kind }}",
        prompt="{{ params.prompt }}",
        aspect_ratio="{{ params.ratio }}",
        duration="{{ params.duration }}",
        image_url="{{ params.url }}",
    )
    CerebraformResultOperator(
        task_id="ok2",
        request_id="{{ ti.xcom_pull('x') }}",
        output="{{ params.out }}",
        file_name="{{ params.f }}",
    )


def test_dag_file_with_a_bad_literal_is_an_import_error_naming_the_parameter(
    tmp_path: Path, airflow_db: Path
) -> None:
    dag_file = tmp_path / "cerebraform_bad_literal.py"
    dag_file.write_text(
        textwrap.dedent(
            """
            from __future__ import annotations

            from datetime import datetime

            from airflow.sdk import DAG

            from airflow_provider_cerebraform.operators.cerebraform import CerebraformSubmitOperator

            with DAG("cerebraform_bad_literal", schedule=None, start_date=datetime(2024, 1, 1)):
                CerebraformSubmitOperator(task_id="video", kind="video", prompt="a cat", duration=7)
            """
        )
    )
    bag = dag_bag(dag_folder=str(dag_file), safe_mode=False)
    assert "cerebraform_bad_literal" not in bag.dags
    (error,) = bag.import_errors.values()
    assert "Invalid duration=7" in error and "expected 5 or 10" in error


RUN_TIME_BAD = {
    "kind": "kind",
    "prompt_empty": "prompt",
    "prompt_too_long": "prompt",
    "aspect_ratio": "aspect_ratio",
    "duration_image": "duration",
    "duration_7": "duration",
    "image_url": "image_url",
    "sensor_request_id": "request_id",
    "result_request_id": "request_id",
    "output": "output",
    "file_name": "file_name",
    "generate_output": "output",
    "generate_file_name": "file_name",
}


def test_templated_bad_values_fail_the_task_at_run_time_before_any_request(
    airflow_db: Path,
    cerebraform_emulator: EmulatorHandle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = cerebraform_emulator.admin.stats()
    run = run_dag("cerebraform_test_bad_input", tmp_path / "records", monkeypatch)
    assert run.state == "failed"
    assert {task_id for task_id, _ in run.tasks} == set(RUN_TIME_BAD)
    for task_id, param in RUN_TIME_BAD.items():
        task = run.task(task_id)
        assert task.state == "failed", task_id
        assert task.try_number == 1, f"{task_id} was retried"
        (failure,) = run.failures_of(task_id)
        assert failure["type"] == "CerebraformValidationError", failure
        assert f"Invalid {param}" in failure["message"], failure
        assert "AirflowFailException" in failure["mro"]
    after = cerebraform_emulator.admin.stats()
    for group in ("submit", "status", "result", "credits", "media"):
        assert after["requests"].get(group, 0) == 0, (group, after["requests"])
    assert after["submissions"]["total"] == 0
    assert after["credits"] == before["credits"]
