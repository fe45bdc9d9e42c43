"""
What a task instance remembers about its paid submission, so that a retry never pays twice.

The record is written twice: an *intent* (the submission's fingerprint and the time) right before
the POST, then the ``request_id`` once the service answered. A retry that finds the intent alone
cannot know whether the earlier try paid (its worker may have died between the POST and the second
write), and applies the user's :class:`~airflow_provider_cerebraform.models.UncertainSubmissionPolicy`.

:class:`SubmissionRecordStore` is the whole interface a storage needs: one record per task
instance, read and replaced. :class:`TaskStateSubmissionStore` keeps it in Airflow 3.3's
``context["task_state_store"]``, or before 3.3 in an
:class:`~airflow_provider_cerebraform.state_storage.ObjectStorageTaskState` (same interface) under the
operator's ``state_location``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from logging import Logger

#: Key in ``task_state_store`` of the submission record of one task instance.
SUBMISSION_KEY = "cerebraform_submission"


@dataclass(frozen=True)
class SubmissionRecord:
    """
    One task instance's submission.

    :param fingerprint: the submission and its connection (:meth:`Submission.fingerprint`).
    :param intent_at: epoch seconds when the POST was about to be sent.
    :param request_id: the service's id once it answered; None while the outcome is unknown.
    """

    fingerprint: str
    intent_at: float
    request_id: str | None = None

    def answered(self, request_id: str | None) -> SubmissionRecord:
        return replace(self, request_id=request_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Any) -> SubmissionRecord | None:
        """The record in ``value``, or None for anything else (an absent or foreign value)."""
        if not isinstance(value, dict) or not isinstance(value.get("fingerprint"), str):
            return None
        request_id = value.get("request_id")
        intent_at = value.get("intent_at")
        return cls(
            fingerprint=value["fingerprint"],
            intent_at=float(intent_at) if isinstance(intent_at, (int, float)) else 0.0,
            request_id=request_id if isinstance(request_id, str) else None,
        )


class SubmissionRecordStore(Protocol):
    """Where one task instance keeps its :class:`SubmissionRecord` across retries."""

    def get(self) -> SubmissionRecord | None:
        """The record, or None when there is none."""

    def put(self, record: SubmissionRecord) -> None:
        """Replace the record; it must be durable when this returns."""

    def delete(self) -> None:
        """Forget the record."""


class TaskStateSubmissionStore:
    """
    The record in Airflow 3.3's task state store, scoped to the task instance (DAG run, task id, map
    index), kept across retries and clears and deleted with its DAG run.

    :param task_state_store: ``context["task_state_store"]``.
    :param key: the key to keep the record under.
    """

    def __init__(self, task_state_store: Any, key: str = SUBMISSION_KEY) -> None:
        self._store = task_state_store
        self._key = key

    def get(self) -> SubmissionRecord | None:
        return SubmissionRecord.from_dict(self._store.get(self._key))

    def put(self, record: SubmissionRecord) -> None:
        self._store.set(self._key, record.to_dict())

    def delete(self) -> None:
        self._store.delete(self._key)


_warned_no_store = False


def task_state(context: Any, state_location: Any = None) -> Any:
    """
    The task instance's state that survives its retries: Airflow 3.3's ``task_state_store``; before
    3.3 an :class:`~airflow_provider_cerebraform.state_storage.ObjectStorageTaskState` under
    ``state_location`` (same ``get``/``set``/``delete``); None when there is neither.
    """
    from airflow_provider_cerebraform.state_storage import ObjectStorageTaskState
    from airflow_provider_cerebraform.version_compat import task_state_store

    store = task_state_store(context)
    if store is None and state_location is not None:
        store = ObjectStorageTaskState.for_task_instance(state_location, context)
    return store


def submission_store(context: Any, log: Logger, state_location: Any = None) -> SubmissionRecordStore | None:
    """The task instance's record store, or None (with a one-time warning) when there is none."""
    global _warned_no_store
    store = task_state(context, state_location)
    if store is not None:
        return TaskStateSubmissionStore(store)
    if not _warned_no_store:
        _warned_no_store = True
        log.warning(
            "This Airflow has no task_state_store and the task no state_location: a retry of a submit "
            "task may submit (and pay) again."
        )
    return None
