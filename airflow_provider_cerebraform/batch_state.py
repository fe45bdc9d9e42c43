"""
The state of one batch, in object storage next to its output, so that any try of the task (a retry,
a clear, a worker killed with ``kill -9``) carries on where the last one stopped and never pays twice.

Layout under ``<output>/_cerebraform/``:

* ``batch.json``: the fingerprint of the inputs (every valid row's id and request), written once.
* ``log/<seq>.json``: one event each, written atomically (temporary name, then moved) before the
  worker goes on. The event that matters most is the *intent*, written right before a paid POST
  (as :class:`~airflow_provider_cerebraform.submissions.SubmissionRecord` is for one submission);
  the request id follows once the service answered.
* ``segments/<first>-<last>.jsonl``: the log compacted. Each try starts by folding segments and log
  into one small record per row, then moves the log into a new segment, so that it reads a few files
  rather than one per event. Object stores have no append: small whole objects are the portable form.
* ``results.jsonl`` and ``manifest.json``: written when the batch finishes (see the operator).

Events carry the row's id and the attempt number ``n``; a row's state is its last event. An intent
found without an answer by a later try means its worker stopped between the POST and the record:
the POST may have been paid, and the row becomes *uncertain* (see ``on_uncertain_submission``).
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_cerebraform.media import remove_quietly, temporary_name, write_atomically

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow.sdk import ObjectStoragePath

#: The folder under ``output`` that holds the state; row ids cannot start with ``_``.
STATE_FOLDER = "_cerebraform"
#: Segments beyond this many are merged into one.
MAX_SEGMENTS = 16

# Row stages.
NEW = "new"
INTENT = "intent"
SUBMITTED = "submitted"
STORED = "stored"
FAILED = "failed"  # the generation failed on the service (status -1): paid
REFUSED = "refused"  # the service refused the submission (402, 400): nothing created, nothing paid
UNCERTAIN = "uncertain"  # the POST may have created and paid a task whose id is unknown
ERROR = "error"  # submitted (paid); waiting or storing failed: a later try polls the same id again
#: Stages whose submission may have been paid.
PAID_STAGES = (SUBMITTED, STORED, FAILED, UNCERTAIN, ERROR)


@dataclass
class RowState:
    """What the state knows of one row: its last attempt, where it is and what it produced."""

    attempt: int = 0
    stage: str = NEW
    kind: str = "image"
    request_id: str | None = None
    token: str | None = None
    error: str | None = None
    files: list[dict[str, Any]] | None = None
    credits: int = 0
    fingerprint: str | None = None
    from_ledger: bool = False


@dataclass
class BatchState:
    """
    The folded state of one batch.

    :param folder: ``<output>/_cerebraform``.
    :param rows: row id to its state (only rows that were ever touched).
    :param meta: the content of ``batch.json`` (None before the first try wrote it).
    :param stops: try token to why submitting stopped in that try (credits, ``max_credits``).
    :param answered_at: epoch seconds of the most recent answered submissions (for pacing).
    """

    folder: ObjectStoragePath
    rows: dict[str, RowState] = field(default_factory=dict)
    meta: dict[str, Any] | None = None
    stops: dict[str, str] = field(default_factory=dict)
    answered_at: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    next_seq: int = 1

    @classmethod
    def location(cls, output: ObjectStoragePath) -> ObjectStoragePath:
        return output / STATE_FOLDER

    @classmethod
    def load(cls, output: ObjectStoragePath) -> BatchState:
        """Read and fold the state under ``output`` (an empty state if there is none); compact the log."""
        state = cls(cls.location(output))
        meta_path = state.folder / "batch.json"
        try:
            state.meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            state.meta = None
        segments = _segments(state.folder / "segments")
        covered = 0
        kept: list[tuple[int, int, ObjectStoragePath]] = []
        for first, last, path in segments:
            if last <= covered:
                remove_quietly(path)  # merged into a larger segment whose old parts were not all removed
                continue
            kept.append((first, last, path))
            with path.open("r") as lines:
                # readline, not iteration: Airflow 3.0's file wrapper has no __iter__.
                for text in iter(lines.readline, ""):
                    if text.strip():
                        state.apply(json.loads(text))
            covered = max(covered, last)
        log: list[tuple[int, ObjectStoragePath]] = []
        log_folder = state.folder / "log"
        if log_folder.exists():
            for path in log_folder.iterdir():
                name = path.name
                if name.endswith(".json") and name[:-5].isdigit():
                    log.append((int(name[:-5]), path))
        log.sort(key=lambda item: item[0])
        events: list[dict[str, Any]] = []
        first = 0
        for seq, path in log:
            if seq <= covered:
                remove_quietly(path)  # compacted already; the try that moved it stopped before removing it
                continue
            try:
                event = json.loads(path.read_text())
            except FileNotFoundError:
                continue
            first = first or seq
            events.append(event)
            state.apply(event)
            covered = seq
        state.next_seq = covered + 1
        log_folder.mkdir(parents=True, exist_ok=True)
        if events:
            segment = state.folder / "segments" / f"{first:012d}-{covered:012d}.jsonl"
            _write_lines(segment, events)
            kept.append((first, covered, segment))
            for seq, path in log:
                if first <= seq <= covered:
                    remove_quietly(path)
        if len(kept) > MAX_SEGMENTS:
            state._merge(kept)
        return state

    def _merge(self, segments: list[tuple[int, int, ObjectStoragePath]]) -> None:
        """Rewrite every segment as one: the folded rows, as one event each (a smaller, equivalent log)."""
        last = segments[-1][1]
        merged = self.folder / "segments" / f"{0:012d}-{last:012d}.jsonl"
        _write_lines(merged, self.snapshot_events())
        for _, _, path in segments:
            if path.name != merged.name:
                remove_quietly(path)

    def snapshot_events(self) -> Iterable[dict[str, Any]]:
        """Events that rebuild this state from nothing."""
        for token, reason in self.stops.items():
            yield {"e": "stop", "token": token, "reason": reason}
        for at in self.answered_at:
            yield {"e": "answered", "at": at}
        for row_id, row in self.rows.items():
            yield {"e": "snapshot", "id": row_id, **row.__dict__}

    # -- events ---------------------------------------------------------------------------------

    def apply(self, event: dict[str, Any]) -> None:
        """Fold one event into the state."""
        kind = event.get("e")
        if kind == "stop":
            self.stops[event["token"]] = event["reason"]
            return
        if kind == "answered":
            self.answered_at.append(event["at"])
            return
        row_id = event["id"]
        if kind == "snapshot":
            fields = {key: value for key, value in event.items() if key not in ("e", "id")}
            self.rows[row_id] = RowState(**fields)
            return
        row = self.rows.setdefault(row_id, RowState())
        if kind == INTENT:
            row.attempt, row.stage, row.token = event["n"], INTENT, event["token"]
            row.kind = event.get("kind", row.kind)
            row.request_id = row.error = row.files = None
        elif kind in ("withdrawn", "lost"):
            row.stage = NEW
        elif kind == SUBMITTED:
            row.stage, row.request_id = SUBMITTED, event["rid"]
            row.fingerprint, row.from_ledger = event.get("fp"), False
            row.credits += int(event.get("credits", 0))
            self.answered_at.append(event["at"])
        elif kind == UNCERTAIN:
            if row.stage == INTENT:
                row.credits += int(event.get("credits", 0))
            row.stage, row.error = UNCERTAIN, event.get("error")
            row.request_id = event.get("rid", row.request_id)
        elif kind in (STORED, FAILED, REFUSED, ERROR):
            row.stage, row.error = kind, event.get("error")
            if "token" in event:
                row.token = event["token"]
            if kind == STORED:
                row.files = event.get("files")
                if event.get("ledger"):
                    row.request_id, row.from_ledger = event.get("rid"), True

    def append(self, event: dict[str, Any]) -> None:
        """Make ``event`` durable (its own small object), then fold it in."""
        path = self.folder / "log" / f"{self.next_seq:012d}.json"
        write_atomically(path, json.dumps(event, separators=(",", ":")).encode())
        self.next_seq += 1
        self.apply(event)

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomically(self.folder / "batch.json", json.dumps(meta, indent=2).encode())
        self.meta = meta

    def wipe(self) -> None:
        """Forget everything (``start_over``): the log, the segments and the fingerprint."""
        for sub in ("log", "segments"):
            folder = self.folder / sub
            if folder.exists():
                for path in list(folder.iterdir()):
                    remove_quietly(path)
        remove_quietly(self.folder / "batch.json")
        self.rows.clear()
        self.stops.clear()
        self.answered_at.clear()
        self.meta = None

    # -- questions --------------------------------------------------------------------------------

    def pending(self, token: str) -> dict[str, str]:
        """Request id to row id of every paid submission still to wait for in the try ``token``."""
        return {
            row.request_id: row_id
            for row_id, row in self.rows.items()
            if row.request_id and (row.stage == SUBMITTED or (row.stage == ERROR and row.token != token))
        }

    def credits_spent(self) -> int:
        return sum(row.credits for row in self.rows.values())

    def answered_ages(self, now: float | None = None) -> list[float]:
        now = time.time() if now is None else now
        return [max(0.0, now - at) for at in self.answered_at]


def _segments(folder: ObjectStoragePath) -> list[tuple[int, int, ObjectStoragePath]]:
    if not folder.exists():
        return []
    found = []
    for path in folder.iterdir():
        name = path.name
        if not name.endswith(".jsonl"):
            continue
        first, _, last = name[:-6].partition("-")
        if first.isdigit() and last.isdigit():
            found.append((int(first), int(last), path))
    # Larger ranges first among those that start together, so a merged segment hides its parts.
    found.sort(key=lambda item: (item[0], -item[1]))
    return found


def _write_lines(target: ObjectStoragePath, lines: Iterable[dict[str, Any]]) -> None:
    """Write JSON lines to ``target`` under a temporary name, streamed, then move it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(target)
    try:
        with temporary.open("w") as sink:
            for line in lines:
                sink.write(json.dumps(line, separators=(",", ":")) + "\n")
        temporary.move(target)
    except BaseException:
        remove_quietly(temporary)
        raise
