"""The retry record's object storage (Airflow before 3.3), on local files and on a moto S3 server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from s3 import MotoServer

from airflow_provider_cerebraform.state_storage import STATE_FOLDER, ObjectStorageTaskState

if TYPE_CHECKING:
    from pathlib import Path

RUN_ID = "scheduled__2026-12-01T00:00:00+00:00"


def state(location: object, run_id: str = RUN_ID, map_index: int = -1) -> ObjectStorageTaskState:
    return ObjectStorageTaskState(
        location, dag_id="dag", run_id=run_id, task_id="group.submit", map_index=map_index
    )


def test_set_get_delete_on_local_storage_leaves_one_small_file_per_key(tmp_path: Path) -> None:
    store = state(str(tmp_path))
    assert store.get("cerebraform_submission") is None
    record = {"request_id": "abc123", "fingerprint": "f" * 64}
    store.set("cerebraform_submission", record)
    assert store.get("cerebraform_submission") == record
    assert state(f"file://{tmp_path}").get("cerebraform_submission") == record  # same place by URL

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    (only,) = files
    assert only.name == "cerebraform_submission.json"
    relative = only.relative_to(tmp_path).parts
    assert relative[0] == STATE_FOLDER and relative[1] == "dag" and relative[4] == "-1"
    assert ":" not in str(only) and "+" not in str(only)  # object-store-safe names

    store.delete("cerebraform_submission")
    store.delete("cerebraform_submission")  # forgetting twice is fine
    assert store.get("cerebraform_submission") is None


def test_task_instances_do_not_share_records(tmp_path: Path) -> None:
    state(str(tmp_path)).set("k", 1)
    state(str(tmp_path), map_index=3).set("k", 2)
    # Two run ids that differ only in characters a path cannot hold stay apart.
    state(str(tmp_path), run_id=RUN_ID.replace(":", "_")).set("k", 3)
    assert [state(str(tmp_path)).get("k"), state(str(tmp_path), map_index=3).get("k")] == [1, 2]
    assert state(str(tmp_path), run_id=RUN_ID.replace(":", "_")).get("k") == 3


def test_a_relative_location_is_refused_naming_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="local path must be absolute"):
        state("relative/records")


def test_records_on_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    with MotoServer() as server:
        monkeypatch.setenv("AIRFLOW_CONN_AWS_STATE_TEST", server.connection_json())
        s3 = server.client()
        s3.create_bucket(Bucket="records")
        store = state("s3://aws_state_test@records/prefix")
        store.set("cerebraform_submission", {"request_id": "abc"})
        assert store.get("cerebraform_submission") == {"request_id": "abc"}
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="records")["Contents"]]
        assert len(keys) == 1 and keys[0].startswith(f"prefix/{STATE_FOLDER}/dag/")
        assert keys[0].endswith("/-1/cerebraform_submission.json")
        store.delete("cerebraform_submission")
        assert store.get("cerebraform_submission") is None
