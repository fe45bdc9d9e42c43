"""
The generation ledger through Airflow (``dag.test()``), the emulator over HTTP and real storage (local
files and the moto S3 server): a second run of the same generations pays nothing and asks the service
nothing, an entry whose file was overwritten is not used, and the API key never reaches the ledger.
The DAGs live in ``tests/dags/cerebraform_ledger_dags.py``.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import pytest
from cerebraform_dagtest import run_dag
from conftest import output_entries

from airflow_provider_cerebraform.emulator.pytest_plugin import CONN_ENV
from airflow_provider_cerebraform.ledger import GenerationLedger, generation_fingerprint

if TYPE_CHECKING:
    from pathlib import Path

    from s3 import MotoServer

    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

pytestmark = pytest.mark.usefixtures("airflow_db")

DAG_FILE = "test_dags/cerebraform_ledger_dags.py"
S3_CONN_ID = "aws_cerebraform_ledger"
BUCKET = "cerebraform-ledger"


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in output_entries(folder)}


def _check_manifests(folder: Path) -> None:
    """Every manifest in ``folder`` describes files that are there with its size and sha256."""
    for manifest in folder.glob("*.manifest.json"):
        for entry in json.loads(manifest.read_text()):
            data = (folder / entry["path"].rsplit("/", 1)[1]).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"]), (
                manifest
            )


def _no_key_in(folder: Path, key: str) -> None:
    records = [path for path in folder.rglob("*") if path.is_file()]
    assert records
    for path in records:
        assert key not in path.read_text(), path


def test_a_second_run_with_the_connection_ledger_pays_nothing_and_asks_nothing(
    cerebraform_emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger_dir, out = tmp_path / "ledger", tmp_path / "out"
    # The ledger is the connection's field: every operator of the DAG gets it without a parameter.
    monkeypatch.setenv(CONN_ENV, cerebraform_emulator.connection_json(ledger=f"file://{ledger_dir}"))
    conf: dict[str, Any] = {"output": f"file://{out}", "ledger": ""}

    first = run_dag("cerebraform_test_ledger", tmp_path / "r1", monkeypatch, dag_file=DAG_FILE, **conf)
    assert first.state == "success", first.states()
    image_id = first.task("image").return_value[0]["request_id"]
    video_id = first.task("submit_video").return_value
    assert first.task("store_video").return_value[0]["copied_from"] is None
    stats = cerebraform_emulator.admin.stats()
    assert stats["submissions"]["total"] == 2
    files = _files(out)
    assert sorted(files) == sorted(
        ["image_0.png", "video_0.mp4", f"{image_id}.manifest.json", f"{video_id}.manifest.json"]
    )

    second = run_dag("cerebraform_test_ledger", tmp_path / "r2", monkeypatch, dag_file=DAG_FILE, **conf)
    assert second.state == "success", second.states()
    after = cerebraform_emulator.admin.stats()
    assert after["submissions"]["total"] == 2  # nothing paid
    # Nothing asked either: no status poll, no result or media fetch (only this test's admin calls).
    assert {**after["requests"], "control": 0} == {**stats["requests"], "control": 0}
    assert second.task("submit_video").return_value == video_id  # the original request id
    assert second.task("wait_video").return_value["message"] == "stored in the generation ledger"
    image = second.task("image").return_value
    assert image[0]["request_id"] == image_id
    assert image[0]["copied_from"] == image[0]["path"]  # already in place: left as it was
    assert second.task("store_video").return_value[0]["copied_from"].endswith("/video_0.mp4")
    again = _files(out)
    assert sorted(again) == sorted(files)  # no new file, no new manifest
    assert again["image_0.png"] == files["image_0.png"] and again["video_0.mp4"] == files["video_0.mp4"]
    _check_manifests(out)
    _no_key_in(ledger_dir, cerebraform_emulator.api_key)
    assert cerebraform_emulator.api_key not in json.dumps(
        [t.xcom for t in second.tasks.values()], default=str
    )


def test_an_entry_whose_file_was_overwritten_is_paid_again_and_recorded_anew(
    cerebraform_emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger_dir, out = tmp_path / "ledger", tmp_path / "out"
    conf: dict[str, Any] = {"output": f"file://{out}", "ledger": f"file://{ledger_dir}"}
    first = run_dag("cerebraform_test_ledger", tmp_path / "r1", monkeypatch, dag_file=DAG_FILE, **conf)
    assert first.state == "success", first.states()
    old_video = first.task("submit_video").return_value
    (out / "video_0.mp4").write_bytes(b"another video written over it")

    second = run_dag("cerebraform_test_ledger", tmp_path / "r2", monkeypatch, dag_file=DAG_FILE, **conf)
    assert second.state == "success", second.states()
    assert cerebraform_emulator.admin.stats()["submissions"]["total"] == 3  # the video only
    assert second.task("image").return_value[0]["copied_from"] is not None
    new_video = second.task("submit_video").return_value
    assert new_video != old_video
    stored = second.task("store_video").return_value
    assert stored[0]["copied_from"] is None and stored[0]["request_id"] == new_video
    data = (out / "video_0.mp4").read_bytes()
    assert stored[0]["sha256"] == hashlib.sha256(data).hexdigest() and data[4:8] == b"ftyp"
    entry = GenerationLedger(f"file://{ledger_dir}").lookup_request(new_video)
    assert entry is not None and entry.files[0].sha256 == stored[0]["sha256"]


def test_a_ledger_in_s3_copies_into_a_new_output_without_paying(
    cerebraform_emulator: EmulatorHandle,
    moto_server: MotoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{S3_CONN_ID.upper()}", moto_server.connection_json())
    s3 = moto_server.client()
    s3.create_bucket(Bucket=BUCKET)
    base = f"s3://{S3_CONN_ID}@{BUCKET}"
    conf = {"ledger": f"{base}/ledger", "prompt": "a heron in the reeds"}

    first = run_dag(
        "cerebraform_test_ledger_generate",
        tmp_path / "r1",
        monkeypatch,
        dag_file=DAG_FILE,
        output=f"{base}/day1",
        **conf,
    )
    assert first.state == "success"
    second = run_dag(
        "cerebraform_test_ledger_generate",
        tmp_path / "r2",
        monkeypatch,
        dag_file=DAG_FILE,
        output=f"{base}/day2",
        **conf,
    )
    assert second.state == "success"
    assert cerebraform_emulator.admin.stats()["submissions"]["total"] == 1
    (original,) = first.task("image").return_value
    (copy,) = second.task("image").return_value
    request_id = original["request_id"]
    assert copy["request_id"] == request_id and copy["copied_from"] == original["path"]
    assert copy["path"] == f"{base}/day2/{request_id}_0.png"
    body = s3.get_object(Bucket=BUCKET, Key=f"day2/{request_id}_0.png")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == original["sha256"] == copy["sha256"]
    keys = sorted(obj["Key"] for obj in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
    fingerprint = generation_fingerprint("image", "a heron in the reeds")
    assert f"ledger/{fingerprint[:2]}/{fingerprint}.json" in keys
    assert f"day2/{request_id}.manifest.json" in keys
    assert not [key for key in keys if key.endswith(".partial")]
