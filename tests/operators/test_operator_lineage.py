"""
OpenLineage, for real: the generate operator's DAG runs with the OpenLineage provider configured with
a file transport, and the task's COMPLETE event names what it read and what it wrote, for a generation
downloaded from the service, for one copied from the ledger, and for a batch (its prompt dataset in, its
output folder out).

The DAG runs in a child process (as ``airflow dags test`` would): the OpenLineage provider reads its
configuration, and decides whether its listener exists, once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
from conftest import REPO

if TYPE_CHECKING:
    from pathlib import Path

    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

pytestmark = pytest.mark.usefixtures("airflow_db")
pytest.importorskip("airflow.providers.openlineage", reason="the openlineage extra is not installed")

RUN_TWICE = """
import json, os, sys
from pathlib import Path
from airflow_provider_cerebraform.emulator.airflow_home import AirflowHome

home = AirflowHome(Path(os.environ["AIRFLOW_HOME"]), rootdir=Path(sys.argv[1]))
dag = home.load_dag("test_dags/cerebraform_ledger_dags.py", "cerebraform_test_ledger_generate")
for conf in json.loads(sys.argv[2]):
    print("RUN-STATE", dag.test(run_conf=conf).state, flush=True)
batch = home.load_dag("test_dags/cerebraform_batch_dags.py", "cerebraform_batch")
print("RUN-STATE", batch.test(run_conf=json.loads(sys.argv[3])).state, flush=True)
"""


def _complete_events(path: Path, job: str) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        event
        for event in events
        if event.get("eventType") == "COMPLETE" and event.get("job", {}).get("name") == job
    ]


def _names(datasets: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(dataset["namespace"], dataset["name"]) for dataset in datasets]


@pytest.mark.timeout(900)
def test_the_complete_event_names_inputs_and_outputs(
    cerebraform_emulator: EmulatorHandle, tmp_path: Path
) -> None:
    events = tmp_path / "openlineage.jsonl"
    env = {
        **os.environ,
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "cerebraform-test",
        # The listener emits from a forked child that it kills after this many seconds (default 10).
        "AIRFLOW__OPENLINEAGE__EXECUTION_TIMEOUT": "120",
    }
    ledger = f"file://{tmp_path / 'ledger'}"
    runs = [
        {"output": f"file://{tmp_path / 'day1'}", "ledger": ledger},
        {"output": f"file://{tmp_path / 'day2'}", "ledger": ledger},
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "fox", "prompt": "a fox in the snow"}\n')
    batch = {"prompts": f"file://{prompts}", "output": f"file://{tmp_path / 'batch'}"}
    log = tmp_path / "child.log"
    with log.open("w") as sink:
        done = subprocess.run(
            [sys.executable, "-c", RUN_TWICE, str(REPO), json.dumps(runs), json.dumps(batch)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=560,
        )
    output = log.read_text()
    states = [line.split()[1] for line in output.splitlines() if line.startswith("RUN-STATE ")]
    assert done.returncode == 0 and states == ["success", "success", "success"], output[-3000:]
    assert cerebraform_emulator.admin.stats()["submissions"]["total"] == 2

    generated, copied = _complete_events(events, "cerebraform_test_ledger_generate.image")
    tasks = cerebraform_emulator.admin.tasks()
    request_id = next(task["request_id"] for task in tasks if task["prompt"] != "a fox in the snow")
    stored = ("file", str(tmp_path / "day1" / f"{request_id}_0.png"))
    assert _names(generated["inputs"]) == [(cerebraform_emulator.url, f"/ai/v1/to-image/result/{request_id}")]
    assert _names(generated["outputs"]) == [stored]
    # The second run paid nothing: its input is the stored file it copied.
    assert _names(copied["inputs"]) == [stored]
    assert _names(copied["outputs"]) == [("file", str(tmp_path / "day2" / f"{request_id}_0.png"))]
    # The batch: the prompt dataset in, the output folder out (its results file lists every file).
    (batch_event,) = _complete_events(events, "cerebraform_batch.batch")
    assert _names(batch_event["inputs"]) == [("file", str(prompts))]
    assert _names(batch_event["outputs"]) == [("file", str(tmp_path / "batch"))]
