"""What a reader sees in task logs and errors: statuses by name, the API's message quoted once, no
fake secrets registered for masking."""

from __future__ import annotations

import json

import pytest

from airflow_provider_cerebraform.models import GenerationKind, TaskState, TaskStatus


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (2, "Task completed.", 'image task r1 is done ("Task completed.")'),
        (1, "Task is running (52%).", 'image task r1 is running ("Task is running (52%).")'),
        (0, None, "image task r1 is queued"),
        (-1, "boom", 'image task r1 is failed ("boom")'),
        (7, None, "image task r1 is in an unknown state (status code 7)"),
    ],
)
def test_a_status_is_described_by_name_with_the_api_message_quoted(
    status: int, message: str | None, expected: str
) -> None:
    state = TaskState(GenerationKind.IMAGE, "r1", TaskStatus(status), message)
    assert state.describe() == expected
    # A clause other text can follow without doubled punctuation or a bare integer code.
    follow = f"Cerebraform {state.describe()}; deferring the wait to the triggerer"
    assert ".;" not in follow and ". from" not in follow
    if status in (-1, 0, 1, 2):
        assert f"({status})" not in follow


def test_reading_the_connection_registers_no_extra_field_as_a_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``tier: "paid"`` was registered for masking, and Airflow warned in every task log that it was too
    short to mask."""
    from airflow.sdk import Connection

    # The one path to the SDK's masker on every line (3.1+ re-export it from airflow.sdk._shared).
    from airflow.sdk.execution_time.secrets_masker import SecretsMasker

    from airflow_provider_cerebraform.hooks.cerebraform import settings_from_connection

    extra = {"tier": "paid", "timeout": "12", "verify_ssl": "true", "time_scale": 40}
    conn = Connection(
        conn_id="c",
        conn_type="cerebraform",
        host="http://127.0.0.1:9",
        password="a-long-api-key-0123456789",
        extra=json.dumps(extra),
    )
    # Airflow warns once per process (its log goes through structlog, not caplog): watch its flag.
    SecretsMasker._has_warned_short_secret = False
    settings = settings_from_connection(conn)
    assert settings.tier.value == "paid" and settings.timeout == 12
    assert SecretsMasker._has_warned_short_secret is False, "a short extra value was registered as a secret"


BAD_DAG = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_cerebraform.operators.cerebraform import CerebraformGenerateOperator

with DAG("bad_prompt", schedule=None, start_date=datetime(2026, 1, 1)):
    CerebraformGenerateOperator(task_id="fine", prompt="a cat")
    CerebraformGenerateOperator(task_id="too_wide", prompt="a cat", aspect_ratio="wide")
"""


def test_a_parse_time_error_names_the_task_and_the_dag_file_line(tmp_path) -> None:
    from airflow_provider_cerebraform.version_compat import dag_bag

    dag_file = tmp_path / "bad_dag.py"
    dag_file.write_text(BAD_DAG)
    line = (
        BAD_DAG.splitlines().index(
            '    CerebraformGenerateOperator(task_id="too_wide", prompt="a cat", aspect_ratio="wide")'
        )
        + 1
    )

    bag = dag_bag(dag_folder=str(dag_file))

    (error,) = bag.import_errors.values()
    last = error.strip().splitlines()[-1]
    assert f"Task 'too_wide' (in {dag_file}, line {line}): Invalid aspect_ratio='wide'" in last, error
