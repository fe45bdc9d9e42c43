"""
A batch wholly in object storage: the prompts JSONL read from a moto S3 server on loopback as
``s3://<conn_id>@bucket/prompts.jsonl`` and the media, the results file and the resumable state
written there through ``ObjectStoragePath``; no temporary object is left behind.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import pytest

from .conftest import run_batch

if TYPE_CHECKING:
    from pathlib import Path

    from s3 import MotoServer

    from .conftest import BatchEmulator

pytestmark = pytest.mark.usefixtures("airflow_db")

CONN_ID = "aws_cerebraform_batch"
BUCKET = "cerebraform-batch"


def test_a_batch_reads_its_prompts_from_s3_and_stores_media_results_and_state_there(
    batch_emulator: BatchEmulator, moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", moto_server.connection_json())
    s3 = moto_server.client()
    s3.create_bucket(Bucket=BUCKET)
    rows = [{"id": f"s3-{n}", "prompt": f"a batch in object storage {n}"} for n in range(6)]
    s3.put_object(
        Bucket=BUCKET,
        Key="inputs/prompts.jsonl",
        Body="".join(json.dumps(row) + "\n" for row in rows).encode(),
    )
    prompts = f"s3://{CONN_ID}@{BUCKET}/inputs/prompts.jsonl"
    output = f"s3://{CONN_ID}@{BUCKET}/runs/batch"

    first = run_batch(tmp_path, monkeypatch, prompts=prompts, output=output)

    assert first.task("batch").state == "success", first.failures
    manifest = first.task("batch").xcom["return_value"]
    assert manifest["counts"] == {"stored": 6}, manifest
    assert manifest["results"].startswith("s3://") and manifest["results"].endswith(
        f"{BUCKET}/runs/batch/_cerebraform/results.jsonl"
    )
    assert batch_emulator.submissions() == 6

    def keys() -> dict[str, str]:
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/batch/")
        return {obj["Key"]: obj["ETag"] for obj in listed.get("Contents", [])}

    stored = keys()
    assert not [key for key in stored if key.endswith(".partial")], sorted(stored)
    media = sorted(key for key in stored if key.endswith(".png"))
    assert media == [f"runs/batch/s3-{n}/image_0.png" for n in range(6)]
    # Beside each row's media, nothing but the manifest of its request (as the result operator writes).
    others = {key for key in stored if "/_cerebraform/" not in key and key not in media}
    state = sorted(key.split("/_cerebraform/")[1] for key in stored if "/_cerebraform/" in key)
    assert {"batch.json", "results.jsonl", "manifest.json"} <= set(state), state
    # The resumable state: the event log, compacted into segments at the start of a step.
    assert any(name.startswith(("segments/", "log/")) for name in state), state

    body = s3.get_object(Bucket=BUCKET, Key="runs/batch/_cerebraform/results.jsonl")["Body"].read()
    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    assert [line["id"] for line in lines] == [row["id"] for row in rows]
    for line in lines:
        assert line["status"] == "stored" and line["request_id"], line
        (entry,) = line["files"]
        key = f"runs/batch/{line['id']}/image_0.png"
        assert entry["path"].startswith("s3://") and entry["path"].endswith(f"{BUCKET}/{key}")
        others.remove(f"runs/batch/{line['id']}/{line['request_id']}.manifest.json")
        data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])

    assert not others, sorted(others)

    second = run_batch(tmp_path, monkeypatch, prompts=prompts, output=output)

    assert second.task("batch").state == "success", second.failures
    assert batch_emulator.submissions() == 6  # the state in S3 said every row was stored
    assert second.task("batch").xcom["return_value"]["counts"] == {"stored": 6}
    again = keys()
    assert {key: tag for key, tag in again.items() if key in media} == {key: stored[key] for key in media}
    assert not [key for key in again if key.endswith(".partial")]
