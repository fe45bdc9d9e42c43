"""
The issue's "done when", as a user would do it: a DAG file of their own with one
``CerebraformBatchGenerateOperator(task_id=..., prompts=<JSONL path>, output=<path>)`` over 300 prompts,
run by the real ``airflow dags test`` command in a fresh ``AIRFLOW_HOME`` of its own, against the
emulator (time-scaled, paid key). Every prompt has its media under ``<output>/<id>/`` and the results
file says so; a second ``airflow dags test`` submits nothing and leaves every file as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from airflow_provider_cerebraform.version_compat import AIRFLOW_V_3_2_PLUS, AIRFLOW_V_3_3_PLUS

from .conftest import CONN_ENV, partial_files, results

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import BatchEmulator

ROWS = 300

USER_DAG = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_cerebraform.operators.batch import CerebraformBatchGenerateOperator

with DAG("prompt_dataset", schedule=None, start_date=datetime(2026, 1, 1)):
    CerebraformBatchGenerateOperator(task_id="generate", prompts={prompts!r}, output={output!r})
"""


def _airflow(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``airflow`` command in the user's own home: no setting of this test session leaks in."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "CEREBRAFORM_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # Older Airflow lines' in-process execution API needs it; 3.3 makes its own.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            CONN_ENV: os.environ[CONN_ENV],
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "airflow", *args],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _files(output: Path) -> dict[str, tuple[int, int, str]]:
    return {
        str(path.relative_to(output)): (
            path.stat().st_size,
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in output.rglob("*")
        if path.is_file() and "_cerebraform" not in path.parts
    }


@pytest.mark.skipif(
    AIRFLOW_V_3_2_PLUS and not AIRFLOW_V_3_3_PLUS,
    reason="Airflow 3.2's `airflow dags test` builds an in-process execution API per task that is garbage "
    "collected while the task uses it (\"'State' object has no attribute 'svcs_registry'\"): an Airflow bug, "
    "fixed in 3.3; the pytest harness corrects it (docs/installing.md), the CLI cannot be",
)
@pytest.mark.timeout(600)  # two `airflow dags test` processes; minutes at a load of 15 and more
def test_airflow_dags_test_of_a_users_batch_dag_stores_every_prompt_and_a_rerun_submits_nothing(
    batch_emulator: BatchEmulator, airflow_db: Path, tmp_path: Path
) -> None:
    # A 2-second creation window: 300 prompts need two of them.
    batch_emulator.reset(time_scale=1800.0, credits=ROWS)
    batch_emulator.admin.configure(image_long_side=64)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"p{n:03d}", "prompt": f"dataset row {n}"}) + "\n" for n in range(ROWS))
    )
    output = tmp_path / "media"
    home = tmp_path / "airflow-home"
    (home / "dags").mkdir(parents=True)
    (home / "dags" / "prompt_dataset.py").write_text(
        USER_DAG.format(prompts=str(prompts), output=str(output))
    )

    # What `airflow db migrate` makes, copied from the session's home (the same Airflow) rather than
    # migrated again: a minute and more on a loaded machine, and tested by the pytest plugin's tests.
    shutil.copyfile(airflow_db / "airflow.db", home / "airflow.db")
    first = _airflow(home, "dags", "test", "prompt_dataset")

    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert batch_emulator.submissions() == ROWS
    assert batch_emulator.duplicates() == 0
    lines = results(output)
    assert [line["id"] for line in lines] == [f"p{n:03d}" for n in range(ROWS)]
    for line in lines:
        assert line["status"] == "stored" and line["request_id"], line
        (entry,) = line["files"]
        stored = output / line["id"] / "image_0.png"
        assert entry["path"] == stored.as_uri() or entry["path"].endswith(f"media/{line['id']}/image_0.png")
        data = stored.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])
    assert sorted(path.name for path in output.iterdir()) == ["_cerebraform", *(line["id"] for line in lines)]
    assert not partial_files(output)
    manifest = json.loads((output / "_cerebraform" / "manifest.json").read_text())
    assert manifest["counts"] == {"stored": ROWS} and manifest["credits_spent"] == ROWS
    before = _files(output)

    second = _airflow(home, "dags", "test", "prompt_dataset")

    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert batch_emulator.admin.stats()["submissions"]["total"] == ROWS  # nothing submitted again
    assert _files(output) == before
    assert [line["status"] for line in results(output)] == ["stored"] * ROWS
