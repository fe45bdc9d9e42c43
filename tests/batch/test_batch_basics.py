"""
The batch operator end to end: ``dag.test()`` over HTTP against the emulator, media in real folders
(``file://``) and in S3 (moto); then a re-run that pays for nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .conftest import partial_files, results, run_batch

if TYPE_CHECKING:
    from .conftest import BatchEmulator

pytestmark = pytest.mark.usefixtures("airflow_db")


def test_a_jsonl_batch_stores_every_row_and_a_rerun_pays_nothing(
    batch_emulator: BatchEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    30 rows (ids given and derived, one video) through one task: every row's media under
    ``<output>/<id>/``, results.jsonl with sha256 of each file, the manifest in XCom; 30 submissions.
    A second run over the same output submits nothing and leaves the files unchanged.
    """
    rows = [{"id": f"row-{n:02d}", "prompt": f"batch basics {n}"} for n in range(20)]
    rows += [{"prompt": f"derived id {n}", "aspect_ratio": "1:1"} for n in range(9)]
    rows.append({"id": "clip", "prompt": "a short clip", "kind": "video", "duration": 5})
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "out"

    first = run_batch(tmp_path, monkeypatch, prompts=str(prompts), output=f"file://{output}")

    assert first.task("batch").state == "success", first.failures
    manifest = first.task("batch").xcom["return_value"]
    assert manifest["counts"] == {"stored": 30}, manifest
    assert manifest["credits_spent"] == 29 + 5
    assert batch_emulator.submissions() == 30
    lines = results(output)
    assert [line["line"] for line in lines] == list(range(1, 31))
    for line in lines:
        assert line["status"] == "stored" and line["request_id"], line
        for stored in line["files"]:
            data = Path(stored["path"].removeprefix("file://")).read_bytes()
            assert hashlib.sha256(data).hexdigest() == stored["sha256"]
            assert len(data) == stored["bytes"]
            assert f"/out/{line['id']}/" in stored["path"]
    assert (output / "clip").is_dir() and (output / "row-00").is_dir()
    assert not partial_files(output)
    before = {
        p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file() and "_cerebraform" not in p.parts
    }

    second = run_batch(tmp_path, monkeypatch, prompts=str(prompts), output=f"file://{output}")

    assert second.task("batch").state == "success", second.failures
    assert batch_emulator.submissions() == 30  # nothing paid again
    assert second.task("batch").xcom["return_value"]["counts"] == {"stored": 30}
    after = {
        p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file() and "_cerebraform" not in p.parts
    }
    assert after == before


def test_a_batch_over_a_new_output_copies_what_the_ledger_holds_and_pays_nothing(
    batch_emulator: BatchEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    With a generation ledger, a batch records every row it generates; another batch asking for the
    same generations into another output copies them from the ledger (same sha256) and submits
    nothing; a new row in it is the only one paid for.
    """
    ledger = f"file://{tmp_path / 'ledger'}"
    prompts = [{"id": f"l-{n}", "prompt": f"ledger batch {n}"} for n in range(4)]
    first = run_batch(
        tmp_path, monkeypatch, prompts=prompts, output=f"file://{tmp_path / 'a'}", ledger=ledger
    )
    assert first.task("batch").state == "success", first.failures
    assert batch_emulator.submissions() == 4

    more = [*prompts, {"id": "l-new", "prompt": "a row the ledger does not have"}]
    second = run_batch(tmp_path, monkeypatch, prompts=more, output=f"file://{tmp_path / 'b'}", ledger=ledger)

    assert second.task("batch").state == "success", second.failures
    assert batch_emulator.submissions() == 5  # only the new row was paid for
    manifest = second.task("batch").xcom["return_value"]
    assert manifest["from_ledger"] == 4 and manifest["counts"] == {"stored": 5}, manifest
    copied = {line["id"]: line for line in results(tmp_path / "b")}
    originals = {line["id"]: line for line in results(tmp_path / "a")}
    for row_id, line in originals.items():
        assert copied[row_id]["from_ledger"] is True
        assert [f["sha256"] for f in copied[row_id]["files"]] == [f["sha256"] for f in line["files"]]
        assert all(f"/b/{row_id}/" in f["path"] for f in copied[row_id]["files"])
    assert copied["l-new"]["from_ledger"] is False
