"""
Results go to S3 for real: the pipeline DAG writes through the result operator to a moto S3 server on
loopback, addressed as ``s3://<conn_id>@bucket/prefix``; the objects are checked byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import requests
from cerebraform_dagtest import run_dag

if TYPE_CHECKING:
    from pathlib import Path

    import pytest
    from s3 import MotoServer

    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

CONN_ID = "aws_cerebraform_test"
BUCKET = "cerebraform-media"


def test_pipeline_writes_media_and_manifest_to_s3(
    airflow_db: Path,
    cerebraform_emulator: EmulatorHandle,
    moto_server: MotoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cerebraform_emulator.admin.configure(images_per_task=2)
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", moto_server.connection_json())
    s3 = moto_server.client()
    s3.create_bucket(Bucket=BUCKET)
    prefix = "runs/pipeline"

    run = run_dag(
        "cerebraform_test_pipeline",
        tmp_path / "records",
        monkeypatch,
        output=f"s3://{CONN_ID}@{BUCKET}/{prefix}",
    )
    assert run.state == "success", run.failures
    request_id = run.task("submit").return_value
    manifest = run.task("store").return_value
    assert [entry["index"] for entry in manifest] == [0, 1]

    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    keys = sorted(obj["Key"] for obj in listed.get("Contents", []))
    assert keys == sorted(
        [
            f"{prefix}/{request_id}_0.png",
            f"{prefix}/{request_id}_1.png",
            f"{prefix}/{request_id}.manifest.json",
        ]
    )
    assert not [key for key in keys if key.endswith(".partial")]

    stored = json.loads(
        s3.get_object(Bucket=BUCKET, Key=f"{prefix}/{request_id}.manifest.json")["Body"].read()
    )
    assert stored == manifest
    session = requests.Session()
    session.trust_env = False
    for entry in manifest:
        key = f"{prefix}/{request_id}_{entry['index']}.png"
        assert entry["path"].endswith(f"{BUCKET}/{key}")
        assert entry["path"].startswith("s3://")
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert body[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(body) == entry["bytes"]
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
        served = session.get(entry["source_url"], timeout=10)
        assert served.status_code == 200 and served.content == body  # byte for byte what the API served
    task = cerebraform_emulator.admin.task(request_id)
    assert task["media_fetches"] == 4  # two files by the operator, two by this test
