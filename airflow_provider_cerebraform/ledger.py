"""
The generation ledger: which generations were already paid for, and where their media are stored.

A generation is identified by :func:`generation_fingerprint`, a hash of what it was asked (kind,
prompt, aspect ratio, duration, image URL). After an operator stores a generation's media it
records a :class:`LedgerEntry` (the fingerprint, the ``request_id``, and each stored file with its
size and sha256). An operator about to pay for the same fingerprint finds the entry, copies the
stored files to its own output (server-side where the storage allows) and pays nothing.

Layout, one small JSON object per generation so that the ledger grows to any size without a file
that every task rewrites, each written under a temporary name and moved into place::

    <ledger>/<fp[:2]>/<fp>.json                        the entry of fingerprint fp
    <ledger>/requests/<h[:2]>/<request_id>.json        request id -> fingerprint (h: sha256 of the id)

An entry is only trusted while its files are what it says: :meth:`GenerationLedger.lookup` reads
every recorded file back and returns None (with a log line) when one is missing or its size or
sha256 changed, so nothing built from the ledger ever describes a file that was overwritten.
Entries hold no API key and no connection secret: paths are object-storage URIs, with at most an
Airflow connection id (``s3://aws_default@bucket/...``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pendulum

from airflow_provider_cerebraform.exceptions import CerebraformMediaError
from airflow_provider_cerebraform.media import (
    DEFAULT_FILE_NAME,
    ManifestEntry,
    as_storage_path,
    copy_atomically,
    extension_for,
    file_digest,
    file_name_for,
    safe_component,
    write_atomically,
    write_manifest,
)
from airflow_provider_cerebraform.models import GenerationKind, Submission
from airflow_provider_cerebraform.validation import (
    DEFAULT_ASPECT_RATIO,
    DEFAULT_VIDEO_DURATION,
    validate_aspect_ratio,
    validate_duration,
    validate_image_url,
    validate_kind,
    validate_prompt,
)

if TYPE_CHECKING:
    from collections.abc import Iterable
    from logging import Logger

    from airflow.sdk import ObjectStoragePath

__all__ = [
    "LEDGER_VERSION",
    "GenerationLedger",
    "LedgerEntry",
    "LedgerFile",
    "StaleLedgerEntryError",
    "generation_fingerprint",
    "ledger_for",
    "normalised_request",
    "submission_fingerprint",
    "submission_request",
]

#: Part of every fingerprint: a change of the normalisation below must change every fingerprint.
LEDGER_VERSION = 1
#: The folder of the request-id index, beside the two-hex-digit folders of the entries.
REQUESTS_FOLDER = "requests"

_log = logging.getLogger(__name__)


def normalised_request(
    kind: Any,
    prompt: Any,
    aspect_ratio: Any = None,
    duration: Any = None,
    image_url: Any = None,
) -> dict[str, Any]:
    """
    What a generation asks, validated and normalised so that equal requests compare equal:

    - ``kind``: ``"image"`` or ``"video"``, case and surrounding spaces ignored;
    - ``prompt``: verbatim (the API receives it as is: case and spaces may change the result);
    - ``aspect_ratio``: stripped; omitted means the API's default ``"9:16"``. Ratios are not reduced
      (``"32:18"`` stays distinct from ``"16:9"``: the API receives it as written);
    - ``duration``: video only; omitted means the API's default 5, ``"10"`` means 10; always None
      for images;
    - ``image_url``: stripped; None when omitted.

    Invalid values raise the same :class:`~airflow_provider_cerebraform.exceptions.CerebraformValidationError`
    as a submission would.
    """
    generation_kind = validate_kind(kind)
    video = generation_kind is GenerationKind.VIDEO
    chosen_duration = validate_duration(generation_kind, duration)
    return {
        "kind": generation_kind.value,
        "prompt": validate_prompt(prompt),
        "aspect_ratio": validate_aspect_ratio(aspect_ratio) or DEFAULT_ASPECT_RATIO,
        "duration": (chosen_duration or DEFAULT_VIDEO_DURATION) if video else None,
        "image_url": validate_image_url(image_url),
    }


def generation_fingerprint(
    kind: Any,
    prompt: Any,
    aspect_ratio: Any = None,
    duration: Any = None,
    image_url: Any = None,
) -> str:
    """
    A stable hash (sha256 hex) of what a generation asks, after :func:`normalised_request`: an
    omitted default equals the explicit default (``aspect_ratio=None`` and ``"9:16"``; a video's
    ``duration=None`` and 5). The connection is not part of it: one ledger may serve several
    connections of the same account; give separate accounts (or the emulator) separate ledgers.
    """
    return _fingerprint(normalised_request(kind, prompt, aspect_ratio, duration, image_url))


def submission_request(submission: Submission) -> dict[str, Any]:
    """The :func:`normalised_request` of a built :class:`~.models.Submission`."""
    payload = submission.payload
    return normalised_request(
        submission.kind,
        payload["prompt"],
        aspect_ratio=payload.get("aspect_ratio"),
        duration=payload.get("duration"),
        image_url=payload.get("image_url"),
    )


def submission_fingerprint(submission: Submission) -> str:
    """The :func:`generation_fingerprint` of a built :class:`~.models.Submission`."""
    return _fingerprint(submission_request(submission))


def _fingerprint(request: dict[str, Any]) -> str:
    text = json.dumps(["cerebraform-generation", LEDGER_VERSION, request], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class StaleLedgerEntryError(CerebraformMediaError):
    """A ledger entry's file changed between the lookup and the copy: generate instead of trusting it."""


@dataclass(frozen=True)
class LedgerFile:
    """
    One stored file of a generation.

    :param path: its object-storage URI (``str`` of its ``ObjectStoragePath``).
    :param bytes: its size.
    :param sha256: its checksum (hex).
    :param index: its position in the generation's results.
    :param content_type: its media type, when known.
    :param source_url: the URL the service gave for it (may have expired since).
    """

    path: str
    bytes: int
    sha256: str
    index: int = 0
    content_type: str | None = None
    source_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> LedgerFile:
        return cls(
            path=str(value["path"]),
            bytes=int(value["bytes"]),
            sha256=str(value["sha256"]),
            index=int(value.get("index", 0)),
            content_type=value.get("content_type"),
            source_url=value.get("source_url"),
        )


@dataclass
class LedgerEntry:
    """
    A generation that was paid for and stored.

    :param fingerprint: its :func:`generation_fingerprint`.
    :param request_id: the service's id of the paid generation.
    :param kind: ``"image"`` or ``"video"``.
    :param files: the stored files.
    :param created_at: when it was recorded (ISO 8601, UTC).
    :param request: what was asked (:func:`normalised_request`), for people reading the ledger.
    """

    fingerprint: str
    request_id: str
    kind: str
    files: list[LedgerFile]
    created_at: str = field(default_factory=lambda: pendulum.now("UTC").to_iso8601_string())
    request: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": LEDGER_VERSION,
            "fingerprint": self.fingerprint,
            "request_id": self.request_id,
            "kind": self.kind,
            "files": [item.to_dict() for item in self.files],
            "created_at": self.created_at,
            "request": self.request,
        }

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> LedgerEntry:
        return cls(
            fingerprint=str(value["fingerprint"]),
            request_id=str(value["request_id"]),
            kind=str(value["kind"]),
            files=[LedgerFile.from_dict(item) for item in value["files"]],
            created_at=str(value.get("created_at", "")),
            request=value.get("request"),
        )

    @classmethod
    def from_manifest(
        cls,
        fingerprint: str,
        entries: Iterable[ManifestEntry],
        *,
        request_id: str | None = None,
        kind: str | None = None,
        request: dict[str, Any] | None = None,
    ) -> LedgerEntry:
        """The entry of a generation whose files were just stored (the result operator's manifest)."""
        items = list(entries)
        if not items and (request_id is None or kind is None):
            raise ValueError("An empty manifest needs request_id and kind.")
        return cls(
            fingerprint=fingerprint,
            request_id=request_id or items[0].request_id,
            kind=kind or items[0].kind,
            files=[
                LedgerFile(
                    path=item.path,
                    bytes=item.bytes,
                    sha256=item.sha256,
                    index=item.index,
                    content_type=item.content_type,
                    source_url=item.source_url,
                )
                for item in items
            ],
            request=request,
        )


class GenerationLedger:
    """
    The generations already paid for and stored, in object storage.

    :param location: the ledger's folder: an ``ObjectStoragePath``, a URL such as
        ``s3://aws_default@bucket/cerebraform-ledger`` or an absolute local path. Shared by every task
        (and DAG) that should not pay twice for the same generation.
    :param log: where hits, misses and stale entries are reported.
    """

    def __init__(self, location: Any, *, log: Logger | None = None) -> None:
        self.root: ObjectStoragePath = as_storage_path(location, param="ledger")
        self.log = log or _log

    def __repr__(self) -> str:
        return f"GenerationLedger({str(self.root)!r})"

    def entry_path(self, fingerprint: str) -> ObjectStoragePath:
        return self.root / fingerprint[:2] / f"{fingerprint}.json"

    def request_path(self, request_id: str) -> ObjectStoragePath:
        shard = hashlib.sha256(request_id.encode()).hexdigest()[:2]
        return self.root / REQUESTS_FOLDER / shard / f"{safe_component(request_id)}.json"

    def _read(self, path: ObjectStoragePath) -> dict[str, Any] | None:
        try:
            value = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as error:
            self.log.warning("Ignoring unreadable ledger record %s: %s", path, error)
            return None
        return value if isinstance(value, dict) else None

    def read(self, fingerprint: str) -> LedgerEntry | None:
        """The recorded entry, without checking its files (see :meth:`lookup`)."""
        value = self._read(self.entry_path(fingerprint))
        if value is None:
            return None
        try:
            return LedgerEntry.from_dict(value)
        except (KeyError, TypeError, ValueError) as error:
            self.log.warning("Ignoring malformed ledger entry %s: %r", fingerprint, error)
            return None

    def lookup(self, fingerprint: str) -> LedgerEntry | None:
        """
        The entry of ``fingerprint`` if every file it records is still there with the recorded size
        and sha256 (each file is read once); None, with a log line, when there is no entry or a
        file is missing or changed.
        """
        entry = self.read(fingerprint)
        if entry is None:
            return None
        if not entry.files:
            self.log.warning("Ledger entry %s lists no files; not using it.", fingerprint)
            return None
        for item in entry.files:
            problem = self._check_file(item)
            if problem is not None:
                self.log.warning(
                    "Ledger entry of request %s is stale: %s %s since it was recorded at %s; "
                    "not using it (the generation will be paid for again).",
                    entry.request_id,
                    item.path,
                    problem,
                    entry.created_at,
                )
                return None
        return entry

    def _check_file(self, item: LedgerFile) -> str | None:
        """None when the file is as recorded, else what changed."""
        path = as_storage_path(item.path, param="ledger file")
        try:
            if path.stat().st_size != item.bytes:
                return "changed size"
            digest, size = file_digest(path)
        except FileNotFoundError:
            return "was deleted"
        if size != item.bytes or digest != item.sha256:
            return "was overwritten"
        return None

    def fingerprint_of_request(self, request_id: str) -> str | None:
        """The fingerprint a submission recorded for ``request_id`` (:meth:`remember_request`), or None."""
        value = self._read(self.request_path(request_id))
        if value is None or value.get("request_id") != request_id:
            return None
        fingerprint = value.get("fingerprint")
        return fingerprint if isinstance(fingerprint, str) else None

    def lookup_request(self, request_id: str) -> LedgerEntry | None:
        """The checked entry (as :meth:`lookup`) of the generation ``request_id``, or None."""
        fingerprint = self.fingerprint_of_request(request_id)
        if fingerprint is None:
            return None
        entry = self.lookup(fingerprint)
        return entry if entry is not None and entry.request_id == request_id else None

    def remember_request(self, request_id: str, fingerprint: str, kind: str) -> None:
        """
        Note which fingerprint a paid submission has, so that whoever stores its media later (the
        result operator, which only knows the request id) can :meth:`record` it.
        """
        record = {"request_id": request_id, "fingerprint": fingerprint, "kind": kind}
        path = self.request_path(request_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(record, sort_keys=True).encode())

    def record(self, entry: LedgerEntry) -> None:
        """Record a stored generation (replacing any entry of its fingerprint), atomically."""
        path = self.entry_path(entry.fingerprint)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(entry.to_dict(), indent=1, sort_keys=True).encode())
        self.remember_request(entry.request_id, entry.fingerprint, entry.kind)
        self.log.info(
            "Recorded generation %s (request %s, %d file(s)) in the ledger %s",
            entry.fingerprint[:12],
            entry.request_id,
            len(entry.files),
            self.root,
        )

    def copy_into(
        self,
        entry: LedgerEntry,
        folder: Any,
        file_name: str = DEFAULT_FILE_NAME,
        *,
        manifest: bool = True,
    ) -> list[ManifestEntry]:
        """
        Copy the stored files of ``entry`` into ``folder`` and return their manifest (the original
        ``request_id``; ``copied_from`` set on every entry). Each file is named by ``file_name`` as
        a download would be, copied server-side when source and destination share a store (S3
        ``CopyObject``), written under a temporary name and moved into place only once its sha256
        matches the ledger's; a file already at its destination (a re-run into the same folder) is
        left as it is. With ``manifest``, ``<request_id>.manifest.json`` is written as the result
        operator does.

        :param entry: an entry from :meth:`lookup` (just checked).
        :param folder: the output folder (``ObjectStoragePath``, URL or absolute local path).
        :param file_name: the file-name pattern (``{request_id}``, ``{kind}``, ``{index}``, ``{ext}``).
        :param manifest: write the manifest file beside the copies.
        :raises StaleLedgerEntryError: a file changed since the lookup; nothing of it was written.
        """
        destination = as_storage_path(folder)
        destination.mkdir(parents=True, exist_ok=True)
        copies: list[ManifestEntry] = []
        for item in sorted(entry.files, key=lambda stored: stored.index):
            source = as_storage_path(item.path, param="ledger file")
            name = file_name_for(
                file_name,
                request_id=entry.request_id,
                kind=entry.kind,
                index=item.index,
                ext=extension_for(item.content_type, item.path),
            )
            target = destination / name
            if str(target) == str(source):
                self.log.info("Ledger copy of %s is already in place: %s", entry.request_id, target)
            else:
                try:
                    copy_atomically(source, target, sha256=item.sha256)
                except (FileNotFoundError, CerebraformMediaError) as error:
                    raise StaleLedgerEntryError(
                        f"Ledger entry of request {entry.request_id}: {source} changed or vanished "
                        f"while it was copied ({error}); nothing was written to {target}."
                    ) from None
                self.log.info("Copied %s from the ledger to %s (%d bytes)", source, target, item.bytes)
            copies.append(
                ManifestEntry(
                    request_id=entry.request_id,
                    kind=entry.kind,
                    index=item.index,
                    source_url=item.source_url or "",
                    path=str(target),
                    bytes=item.bytes,
                    sha256=item.sha256,
                    content_type=item.content_type,
                    copied_from=item.path,
                )
            )
        if manifest:
            write_manifest(destination, entry.request_id, copies)
        return copies


def ledger_for(ledger: Any, cerebraform_conn_id: str, log: Logger | None = None) -> GenerationLedger | None:
    """
    The ledger an operator uses, the one place that decides it: the operator's ``ledger`` parameter
    when set (``False``: no ledger, whatever the connection says), else the connection's ``ledger``
    field, else None (no ledger: every generation is paid for).

    :param ledger: the operator's parameter: a :class:`GenerationLedger`, an ``ObjectStoragePath``, a
        URL or absolute local path, ``False``, or None / ``""`` for the connection's.
    :param cerebraform_conn_id: the connection whose ``ledger`` field applies otherwise.
    :param log: where the ledger reports hits, misses and stale entries.
    """
    if ledger is False:
        return None
    if isinstance(ledger, GenerationLedger):
        return ledger
    if ledger is not None and not (isinstance(ledger, str) and not ledger.strip()):
        return GenerationLedger(ledger, log=log)
    from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook

    location = CerebraformHook(cerebraform_conn_id).ledger_location()
    return GenerationLedger(location, log=log) if location else None
