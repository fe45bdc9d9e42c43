"""
Bad input to a batch: every bad row is named by its line and parameter, and nothing is submitted.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from airflow_provider_cerebraform.exceptions import CerebraformValidationError
from airflow_provider_cerebraform.operators.batch import CerebraformBatchGenerateOperator

from .conftest import results, run_batch

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import BatchEmulator

pytestmark = pytest.mark.usefixtures("airflow_db")

BAD_ROWS = [
    {"id": "ok-1", "prompt": "a fine prompt"},
    {"id": "empty", "prompt": "   "},
    {"id": "long", "prompt": "x" * 1001},
    {"id": "clip", "prompt": "a clip", "kind": "video", "duration": 7},
    {"id": "ratio", "prompt": "a ratio", "aspect_ratio": "wide"},
    {"id": "ok-1", "prompt": "the same id again"},
    {"id": "../escape", "prompt": "a hostile id"},
    {"prompt": "a typo", "aspect": "1:1"},
]


def test_bad_rows_are_all_named_by_line_and_parameter_before_anything_is_paid(
    batch_emulator: BatchEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    lines = [json.dumps(row) for row in BAD_ROWS]
    lines.insert(3, "{not json")
    prompts.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out"

    run = run_batch(tmp_path, monkeypatch, prompts=str(prompts), output=f"file://{output}")

    assert run.task("batch").state == "failed"
    (failure,) = run.failures
    message = failure["message"]
    assert failure["type"] == "CerebraformValidationError"
    assert "8 invalid row(s)" in message and "nothing was submitted" in message, message
    for expected in (
        "prompts line 2: Invalid prompt=",
        "prompts line 3: Invalid prompt: 1001 characters; the API allows at most 1000",
        "prompts line 4: not valid JSON",
        "prompts line 5: Invalid duration=7: expected 5 or 10",
        "prompts line 6: Invalid aspect_ratio='wide'",
        "prompts line 7: duplicate id 'ok-1' (line 1)",
        "prompts line 8: Invalid id='../escape'",
        "prompts line 9: unknown field(s) 'aspect'",
    ):
        assert expected in message, (expected, message)
    assert batch_emulator.admin.stats()["submissions"]["total"] == 0

    # on_invalid="skip": the bad rows are recorded and skipped; the good one is generated.
    skipped = run_batch(
        tmp_path, monkeypatch, prompts=str(prompts), output=f"file://{output}", on_invalid="skip"
    )
    assert skipped.task("batch").state == "success", skipped.failures
    statuses = [line["status"] for line in results(output)]
    assert statuses.count("invalid") == 8 and statuses.count("stored") == 1
    assert batch_emulator.admin.stats()["submissions"]["total"] == 1


def test_unreadable_and_missing_files_fail_clearly_without_a_request(
    batch_emulator: BatchEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_column = tmp_path / "prompts.csv"
    no_column.write_text("text,kind\nhello,image\n")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage\n")
    output = f"file://{tmp_path / 'out'}"

    for source, expected in (
        (no_column, "a CSV file needs a header row with a 'prompt' column"),
        (binary, "not UTF-8 text"),
        (tmp_path / "missing.jsonl", "the file does not exist"),
    ):
        run = run_batch(tmp_path / f"run-{source.stem}", monkeypatch, prompts=str(source), output=output)
        assert run.task("batch").state == "failed"
        (failure,) = run.failures
        assert expected in failure["message"], failure
        assert str(source) in failure["message"]
    assert batch_emulator.admin.stats()["submissions"]["total"] == 0


def test_bad_parameters_fail_at_parse_time_naming_the_allowed_values() -> None:
    cases = {
        "on_invalid": ({"on_invalid": "ignore"}, "expected 'fail' or 'skip'"),
        "max_failed": ({"max_failed": -1}, "expected a count of rows (0 or more) or a fraction below 1"),
        "max_credits": ({"max_credits": -5}, "expected a whole number of credits"),
        "kind": ({"kind": "audio"}, "expected 'image' or 'video'"),
        "policy": ({"on_uncertain_submission": "maybe"}, "expected 'fail' or 'resubmit'"),
        "prompts": ({"prompts": "/data/prompts.txt"}, "must end in .jsonl, .ndjson or .csv"),
        "in_flight": ({"max_in_flight": 0}, "Invalid max_in_flight=0"),
    }
    for name, (change, expected) in cases.items():
        kwargs = {"task_id": f"bad_{name}", "prompts": ["a"], "output": "/tmp/out", **change}
        with pytest.raises(CerebraformValidationError, match="") as raised:
            CerebraformBatchGenerateOperator(**kwargs)
        assert expected in str(raised.value), (name, str(raised.value))
        assert f"bad_{name}" in str(raised.value)
