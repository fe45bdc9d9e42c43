"""
The one wait policy: what a status poll means, for the trigger and the sensor alike.

:class:`StatusPoller` holds no request and no count of its own: each call takes the errors in a
row so far and returns the new count, so the caller keeps it where it survives (a trigger in
memory, a sensor in ``mode="reschedule"`` in the task state store, a batch trigger per request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_cerebraform.exceptions import (
    CerebraformRateLimitError,
    CerebraformServerError,
    CerebraformTransportError,
)

if TYPE_CHECKING:
    from airflow_provider_cerebraform.models import TaskState

#: Errors that may clear up on their own; anything else ends the wait at once.
TRANSIENT_ERRORS = (CerebraformServerError, CerebraformTransportError, CerebraformRateLimitError)


@dataclass(frozen=True)
class Poll:
    """
    What one status poll decided.

    :param errors_in_a_row: the transient errors in a row, this one included (0 after an answer).
    :param state: the answer, when there was one.
    :param event: the finished event (``status`` ``done`` or ``failed``) when the task ended.
    :param warning: what to log when a transient error was tolerated.
    """

    errors_in_a_row: int
    state: TaskState | None = None
    event: dict[str, Any] | None = None
    warning: str | None = None


def wait_event(status: str, kind: str, request_id: str, message: str | None, **extra: Any) -> dict[str, Any]:
    """The event of a finished wait: ``status`` is ``done``, ``failed``, ``timeout`` or ``error``."""
    return {
        "status": status,
        "request_id": request_id,
        "kind": kind,
        "message": message,
        "task_status": None,
        **extra,
    }


def state_event(state: TaskState) -> dict[str, Any]:
    """The event of a task that ended: ``status`` is the status name (``done``, ``failed``)."""
    return wait_event(
        state.status.name.lower(),
        state.kind.value,
        state.request_id,
        state.message,
        task_status=int(state.status),
    )


class StatusPoller:
    """
    Decides after each status poll: finished, keep waiting, or give up.

    :param max_consecutive_errors: transient errors in a row (after the client's own retries) that
        are tolerated; the next one is raised.
    """

    def __init__(self, max_consecutive_errors: int = 5) -> None:
        self.max_consecutive_errors = max_consecutive_errors

    def after(self, outcome: TaskState | Exception, errors_in_a_row: int) -> Poll:
        """
        The decision after one poll.

        :param outcome: the state the poll answered, or the error it raised.
        :param errors_in_a_row: transient errors in a row before this poll.
        :raises: ``outcome`` itself when it is not transient, or when the budget is spent.
        """
        if isinstance(outcome, TRANSIENT_ERRORS):
            errors = errors_in_a_row + 1
            if errors > self.max_consecutive_errors:
                raise outcome
            return Poll(
                errors,
                warning=f"{errors} of {self.max_consecutive_errors} tolerated in a row: {outcome.message}",
            )
        if isinstance(outcome, Exception):
            raise outcome
        return Poll(0, outcome, state_event(outcome) if outcome.status.is_terminal else None)
