"""
Reading a batch's prompts: a JSONL or CSV file in object storage, or a list, one validated row at a time.

Rows are streamed (memory stays flat in the size of the file) and each is checked by the same
functions as every other submission (:func:`~airflow_provider_cerebraform.validation.build_submission`);
an error names the row's line and the parameter. A row without an ``id`` gets one derived from its
content, so the same prompt keeps its id, its folder and its state from one run to the next.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_cerebraform.exceptions import CerebraformValidationError
from airflow_provider_cerebraform.media import as_storage_path
from airflow_provider_cerebraform.validation import build_submission

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow_provider_cerebraform.models import Submission

#: The fields a row may have.
ROW_FIELDS = ("id", "prompt", "kind", "aspect_ratio", "duration", "image_url")
#: A row id is a folder name under ``output``: no separators, no leading dot or underscore.
_ROW_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: How many bad rows one error lists (all are counted).
MAX_LISTED_ERRORS = 20


@dataclass(frozen=True)
class BatchRow:
    """
    One valid row.

    :param line: where it is: the line of a JSONL file, the line of a CSV file (the header is line 1),
        or the 1-based position in a list.
    :param id: its id, given or derived from its content.
    :param submission: what to submit for it.
    """

    line: int
    id: str
    submission: Submission


@dataclass(frozen=True)
class InvalidRow:
    """A row that failed validation: where, its id if it had one, and why."""

    line: int
    id: str | None
    error: str


def derived_id(submission: Submission) -> str:
    """The id of a row that has none: a digest of what it asks for."""
    text = json.dumps([submission.kind.value, submission.payload], sort_keys=True)
    return "p-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_source(prompts: Any) -> str:
    if isinstance(prompts, (list, tuple)):
        return f"a list of {len(prompts)} prompts"
    return str(prompts)


def validate_prompts_source(prompts: Any) -> None:
    """Refuse a ``prompts`` that is neither a list nor a path to a ``.jsonl``/``.csv`` file (no I/O)."""
    if isinstance(prompts, (list, tuple)):
        return
    path = _path(prompts)
    _format(path, prompts)


def _path(prompts: Any) -> Any:
    try:
        return as_storage_path(prompts)
    except CerebraformValidationError:
        raise CerebraformValidationError(
            f"Invalid prompts={prompts!r}: expected a list of prompts (strings or dicts), or the "
            "ObjectStoragePath or URL of a .jsonl or .csv file (e.g. 's3://aws_default@bucket/prompts.jsonl').",
            endpoint="validation",
        ) from None


def _format(path: Any, prompts: Any) -> str:
    name = path.name.lower()
    for suffix, kind in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".csv", "csv")):
        if name.endswith(suffix) or name.endswith(suffix + ".gz"):
            return kind
    raise CerebraformValidationError(
        f"Invalid prompts={str(prompts)!r}: the file name must end in .jsonl, .ndjson or .csv "
        "(optionally .gz) so that its format is known.",
        endpoint="validation",
    )


def raw_rows(prompts: Any) -> Iterator[tuple[int, Any]]:
    """(line, raw row) of every row; a file is streamed. Unreadable input raises a validation error."""
    if isinstance(prompts, (list, tuple)):
        yield from enumerate(prompts, start=1)
        return
    path = _path(prompts)
    kind = _format(path, prompts)
    try:
        raw = path.open("rb", compression="infer") if path.name.endswith(".gz") else path.open("rb")
    except FileNotFoundError:
        raise CerebraformValidationError(
            f"Invalid prompts={str(prompts)!r}: the file does not exist.", endpoint="validation"
        ) from None
    with raw, io.TextIOWrapper(raw, encoding="utf-8", newline="" if kind == "csv" else None) as text:
        try:
            if kind == "jsonl":
                yield from _jsonl_rows(text, prompts)
            else:
                yield from _csv_rows(text, prompts)
        except UnicodeDecodeError as error:
            raise CerebraformValidationError(
                f"Invalid prompts={str(prompts)!r}: not UTF-8 text ({error.reason} at byte {error.start}).",
                endpoint="validation",
            ) from None


def _jsonl_rows(text: io.TextIOBase, prompts: Any) -> Iterator[tuple[int, Any]]:
    for line, content in enumerate(text, start=1):
        if not content.strip():
            continue  # blank lines (a trailing newline, spacing) are not rows
        try:
            yield line, json.loads(content)
        except ValueError as error:
            yield line, _Unreadable(f"not valid JSON ({error})")


def _csv_rows(text: io.TextIOBase, prompts: Any) -> Iterator[tuple[int, Any]]:
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise CerebraformValidationError(
            f"Invalid prompts={str(prompts)!r}: unreadable CSV header ({error}).", endpoint="validation"
        ) from None
    if header is None or "prompt" not in [name.strip() for name in header]:
        raise CerebraformValidationError(
            f"Invalid prompts={str(prompts)!r}: a CSV file needs a header row with a 'prompt' column "
            f"(columns: {', '.join(ROW_FIELDS)}).",
            endpoint="validation",
        )
    names = [name.strip() for name in header]
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield reader.line_num, _Unreadable(f"unreadable CSV ({error})")
            continue
        if not any(value.strip() for value in values):
            continue
        if len(values) != len(names):
            yield reader.line_num, _Unreadable(f"{len(values)} columns where the header has {len(names)}")
            continue
        cells = zip(names, values, strict=True)
        yield reader.line_num, {name: (value if value.strip() else None) for name, value in cells}


class _Unreadable:
    def __init__(self, problem: str) -> None:
        self.problem = problem


def parse_row(line: int, raw: Any, default_kind: Any) -> BatchRow:
    """One raw row as a :class:`BatchRow`; a :class:`CerebraformValidationError` names the line."""
    try:
        return _parse(line, raw, default_kind)
    except CerebraformValidationError as error:
        raise CerebraformValidationError(
            f"prompts line {line}: {error.message}", endpoint="validation"
        ) from None


def _parse(line: int, raw: Any, default_kind: Any) -> BatchRow:
    if isinstance(raw, _Unreadable):
        raise CerebraformValidationError(raw.problem, endpoint="validation")
    if isinstance(raw, str):
        raw = {"prompt": raw}
    if not isinstance(raw, dict):
        raise CerebraformValidationError(
            f"expected a prompt string or an object with {', '.join(ROW_FIELDS)}, got {type(raw).__name__}",
            endpoint="validation",
        )
    unknown = sorted(set(raw) - set(ROW_FIELDS))
    if unknown:
        raise CerebraformValidationError(
            f"unknown field(s) {', '.join(map(repr, unknown))}; a row has {', '.join(ROW_FIELDS)}",
            endpoint="validation",
        )
    kind = raw.get("kind") or default_kind
    submission = build_submission(
        kind,
        raw.get("prompt"),
        image_url=raw.get("image_url"),
        aspect_ratio=raw.get("aspect_ratio"),
        duration=raw.get("duration"),
    )
    row_id = raw.get("id")
    if row_id is None:
        row_id = derived_id(submission)
    elif isinstance(row_id, int) and not isinstance(row_id, bool):
        row_id = str(row_id)
    if not isinstance(row_id, str) or not _ROW_ID.match(row_id):
        shown = repr(row_id) if len(repr(row_id)) <= 80 else repr(row_id)[:77] + "..."
        raise CerebraformValidationError(
            f"Invalid id={shown}: expected 1 to 128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (it names the row's folder under output)",
            endpoint="validation",
        )
    return BatchRow(line, row_id, submission)


def row_digest(row: BatchRow) -> bytes:
    """What a row contributes to the batch's input fingerprint."""
    return json.dumps([row.id, row.submission.kind.value, row.submission.payload], sort_keys=True).encode()
