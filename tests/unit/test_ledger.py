"""The generation ledger on real local storage: fingerprints, records, stale entries, atomic copies."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import pytest

from airflow_provider_cerebraform.exceptions import CerebraformValidationError
from airflow_provider_cerebraform.ledger import (
    GenerationLedger,
    LedgerEntry,
    StaleLedgerEntryError,
    generation_fingerprint,
    submission_fingerprint,
)
from airflow_provider_cerebraform.media import ManifestEntry, as_storage_path
from airflow_provider_cerebraform.validation import build_submission

if TYPE_CHECKING:
    from pathlib import Path


def test_an_omitted_default_equals_the_explicit_default():
    assert generation_fingerprint("image", "a cat") == generation_fingerprint(" Image ", "a cat", "9:16")
    assert generation_fingerprint("image", "a cat", "1:1 ") == generation_fingerprint("image", "a cat", "1:1")
    assert generation_fingerprint("video", "a cat") == generation_fingerprint("video", "a cat", duration=5)
    assert generation_fingerprint("video", "a cat", duration="10") == generation_fingerprint(
        "video", "a cat", duration=10
    )
    url = "https://example.com/a.png"
    assert generation_fingerprint("video", "a", image_url=f" {url} ") == generation_fingerprint(
        "video", "a", image_url=url
    )
    submission = build_submission("video", "a cat", aspect_ratio="9:16", duration=5)
    assert submission_fingerprint(submission) == generation_fingerprint("video", "a cat")


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("image", "a cat"), ("video", "a cat")),
        (("image", "a cat"), ("image", "a cat ")),  # the prompt is sent verbatim
        (("image", "a cat"), ("image", "A cat")),
        (("image", "a cat", "16:9"), ("image", "a cat", "32:18")),
        (("video", "a cat", None, 5), ("video", "a cat", None, 10)),
        (
            ("video", "a", None, None, "https://e.com/1.png"),
            ("video", "a", None, None, "https://e.com/2.png"),
        ),
    ],
)
def test_different_requests_have_different_fingerprints(one, other):
    assert generation_fingerprint(*one) != generation_fingerprint(*other)


def test_a_bad_value_is_refused_naming_the_parameter():
    with pytest.raises(CerebraformValidationError, match="duration"):
        generation_fingerprint("video", "a cat", duration=7)
    with pytest.raises(CerebraformValidationError, match="duration"):
        generation_fingerprint("image", "a cat", duration=5)
    with pytest.raises(CerebraformValidationError, match="ledger"):
        GenerationLedger("relative/path")


def _stored(folder: Path, name: str, data: bytes, request_id: str = "req-1") -> ManifestEntry:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return ManifestEntry(
        request_id=request_id,
        kind="image",
        index=0,
        source_url=f"https://media.example/{name}",
        path=str(as_storage_path(str(folder / name))),
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type="image/png",
    )


def test_record_lookup_and_copy(tmp_path: Path):
    ledger = GenerationLedger(str(tmp_path / "ledger"))
    fingerprint = generation_fingerprint("image", "a cat")
    assert ledger.lookup(fingerprint) is None
    ledger.record(LedgerEntry.from_manifest(fingerprint, [_stored(tmp_path / "run1", "a.png", b"png!")]))

    entry = ledger.lookup(fingerprint)
    assert entry is not None and entry.request_id == "req-1"
    assert ledger.lookup_request("req-1") == entry
    assert LedgerEntry.from_dict(json.loads(json.dumps(entry.to_dict()))) == entry
    assert (tmp_path / "ledger" / fingerprint[:2] / f"{fingerprint}.json").is_file()

    copies = ledger.copy_into(entry, str(tmp_path / "run2"), "{kind}_{index}{ext}")
    assert [copy.path for copy in copies] == [str(as_storage_path(str(tmp_path / "run2" / "image_0.png")))]
    assert copies[0].copied_from == entry.files[0].path and copies[0].request_id == "req-1"
    assert (tmp_path / "run2" / "image_0.png").read_bytes() == b"png!"
    manifest = json.loads((tmp_path / "run2" / "req-1.manifest.json").read_text())
    assert manifest == [copy.to_dict() for copy in copies]
    assert not [path for path in (tmp_path / "run2").iterdir() if path.name.startswith(".")]

    # Into the folder it came from, under the same name: left as it is.
    same = ledger.copy_into(entry, str(tmp_path / "run1"), "a{ext}")
    assert same[0].path == entry.files[0].path
    assert (tmp_path / "run1" / "a.png").read_bytes() == b"png!"


@pytest.mark.parametrize("change", ["overwrite", "same_size", "delete"])
def test_an_entry_whose_file_changed_is_not_used(tmp_path: Path, change: str, caplog):
    ledger = GenerationLedger(str(tmp_path / "ledger"))
    fingerprint = generation_fingerprint("image", "a dog")
    ledger.record(LedgerEntry.from_manifest(fingerprint, [_stored(tmp_path / "out", "a.png", b"original")]))
    target = tmp_path / "out" / "a.png"
    if change == "overwrite":
        target.write_bytes(b"another image")
    elif change == "same_size":
        target.write_bytes(b"ORIGINAL")
    else:
        target.unlink()
    assert ledger.lookup(fingerprint) is None
    assert ledger.lookup_request("req-1") is None
    assert "stale" in caplog.text


def test_a_copy_whose_source_changed_after_the_lookup_writes_nothing(tmp_path: Path):
    ledger = GenerationLedger(str(tmp_path / "ledger"))
    fingerprint = generation_fingerprint("image", "a fox")
    ledger.record(LedgerEntry.from_manifest(fingerprint, [_stored(tmp_path / "out", "a.png", b"first")]))
    entry = ledger.lookup(fingerprint)
    assert entry is not None
    (tmp_path / "out" / "a.png").write_bytes(b"later")
    with pytest.raises(StaleLedgerEntryError):
        ledger.copy_into(entry, str(tmp_path / "copy"))
    assert [path.name for path in (tmp_path / "copy").iterdir()] == []


def test_a_damaged_record_is_a_miss(tmp_path: Path):
    ledger = GenerationLedger(str(tmp_path / "ledger"))
    fingerprint = generation_fingerprint("image", "a hen")
    path = tmp_path / "ledger" / fingerprint[:2] / f"{fingerprint}.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert ledger.lookup(fingerprint) is None
    path.write_text(json.dumps({"fingerprint": fingerprint}))
    assert ledger.lookup(fingerprint) is None
