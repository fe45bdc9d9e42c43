"""The trigger that waits for a Cerebraform task in the triggerer, without a worker slot."""

from __future__ import annotations

import asyncio
import importlib
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_cerebraform import metrics
from airflow_provider_cerebraform.exceptions import CerebraformError, CerebraformTaskFailedError
from airflow_provider_cerebraform.models import GenerationKind, TaskStatus
from airflow_provider_cerebraform.polling import TRANSIENT_ERRORS, StatusPoller, wait_event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from airflow.sdk import BaseOperator

__all__ = ["TRANSIENT_ERRORS", "CerebraformTaskTrigger", "defer_until_finished", "raise_for_event"]


class CerebraformTaskTrigger(BaseTrigger):
    """
    Polls one Cerebraform task until it is done, failed or out of time, then fires exactly one event.

    Every trigger of the same API key in a triggerer process draws its polls from one shared budget
    under the tier's status limit (the client's pacer), served in turn; a 429 pauses the key for
    ``Retry-After``. Serialized as plain data: no key ever reaches the metadata database.

    The event is a dict with ``status`` (``done``, ``failed``, ``timeout`` or ``error``),
    ``request_id``, ``kind``, ``message``, ``task_status`` (the API's integer code, when known) and,
    for ``error``, ``error_type``.

    :param request_id: the task to wait for.
    :param kind: ``"image"`` or ``"video"``.
    :param cerebraform_conn_id: the connection to poll with.
    :param poll_interval: seconds between this trigger's polls (the shared budget may space them more).
    :param deadline: epoch seconds after which a ``timeout`` event fires; None waits for ever.
    :param max_consecutive_errors: transient errors in a row (after the client's own retries) that
        are tolerated before an ``error`` event.
    """

    def __init__(
        self,
        request_id: str,
        kind: str,
        cerebraform_conn_id: str = "cerebraform_default",
        poll_interval: float = 5.0,
        deadline: float | None = None,
        max_consecutive_errors: int = 5,
    ) -> None:
        super().__init__()
        self.request_id = request_id
        self.kind = GenerationKind(kind).value
        self.cerebraform_conn_id = cerebraform_conn_id
        self.poll_interval = float(poll_interval)
        self.deadline = deadline
        self.max_consecutive_errors = max_consecutive_errors

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "request_id": self.request_id,
                "kind": self.kind,
                "cerebraform_conn_id": self.cerebraform_conn_id,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "max_consecutive_errors": self.max_consecutive_errors,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            event = await self._wait_within_deadline()
        except CerebraformError as error:
            event = self._event("error", error.message, error_type=type(error).__name__)
        yield TriggerEvent(event)

    async def _wait_within_deadline(self) -> dict[str, Any]:
        if self.deadline is None:
            return await self._wait()
        try:
            return await asyncio.wait_for(self._wait(), timeout=max(0.0, self.deadline - time.time()))
        except asyncio.TimeoutError:
            return self._event("timeout", f"{self.kind} task {self.request_id} was not done by the deadline")

    async def _wait(self) -> dict[str, Any]:
        # The hook's module brings in requests and the media and budget code (0.45 s at a load average
        # of 17 here): imported on the loop, the first trigger of a triggerer would stall every other.
        hooks = await asyncio.to_thread(
            importlib.import_module, "airflow_provider_cerebraform.hooks.cerebraform"
        )
        client = await hooks.CerebraformHook(self.cerebraform_conn_id).aget_conn()
        poller = StatusPoller(self.max_consecutive_errors)
        started = time.monotonic()
        errors = 0
        last_status: TaskStatus | None = None
        while True:
            try:
                outcome = await client.get_status(self.kind, self.request_id)
            except TRANSIENT_ERRORS as error:
                outcome = error
            poll = poller.after(outcome, errors)
            errors = poll.errors_in_a_row
            if poll.warning:
                self.log.warning("Polling %s (%s)", self.request_id, poll.warning)
            elif poll.state is not None and poll.state.status is not last_status:
                last_status = poll.state.status
                self.log.info("Cerebraform %s", poll.state.describe())
            if poll.event is not None:
                if poll.state is not None and poll.state.status.is_terminal:
                    metrics.timing(metrics.GENERATION_WAIT_TIME, time.monotonic() - started, kind=self.kind)
                return poll.event
            await asyncio.sleep(self.poll_interval)

    def _event(self, status: str, message: str | None, **extra: Any) -> dict[str, Any]:
        return wait_event(status, self.kind, self.request_id, message, **extra)


def raise_for_event(event: dict[str, Any] | None, *, on_timeout: type[Exception]) -> dict[str, Any]:
    """
    Turn a trigger event into the finished task's state, or into the matching error.

    :param event: what the trigger fired.
    :param on_timeout: the exception class for a ``timeout`` event (sensors use ``AirflowSensorTimeout``).
    """
    if not event or "status" not in event:
        raise CerebraformError(f"The Cerebraform trigger fired an unexpected event: {event!r}")
    status, message = event["status"], event.get("message")
    what = f"Cerebraform {event.get('kind')} task {event.get('request_id')}"
    if status == "done":
        return event
    if status == "failed":
        raise CerebraformTaskFailedError(
            f"{what} failed: {message or '(the API gave no message)'}",
            request_id=event.get("request_id"),
            api_message=message,
        )
    if status == "timeout":
        raise on_timeout(f"{what}: {message}")
    # The trigger ran in another process: rebuild the error's own type from its name, so that a
    # malformed answer stays a CerebraformResponseError (and so on) for the task's failure.
    error_class = _error_class(event.get("error_type"))
    raise error_class(f"{what}: waiting failed ({event.get('error_type')}): {message}")


def _error_class(name: Any) -> type[CerebraformError]:
    from airflow_provider_cerebraform import exceptions

    found = getattr(exceptions, name, None) if isinstance(name, str) else None
    if isinstance(found, type) and issubclass(found, CerebraformError):
        return found
    return CerebraformError


#: Airflow's own deferral timeout fires this long after the trigger's deadline, as a backstop only:
#: the trigger's ``timeout`` event comes first and gives the clean error.
DEFER_TIMEOUT_MARGIN = 300.0


def defer_until_finished(
    operator: BaseOperator,
    *,
    request_id: str,
    kind: str,
    cerebraform_conn_id: str,
    poll_interval: float,
    timeout: float | None,
    **trigger_kwargs: Any,
) -> NoReturn:
    """
    Defer ``operator`` to ``execute_complete`` on a :class:`CerebraformTaskTrigger` whose deadline is
    ``timeout`` seconds from now (None: no deadline).
    """
    operator.defer(
        trigger=CerebraformTaskTrigger(
            request_id=request_id,
            kind=kind,
            cerebraform_conn_id=cerebraform_conn_id,
            poll_interval=poll_interval,
            deadline=time.time() + timeout if timeout is not None else None,
            **trigger_kwargs,
        ),
        method_name="execute_complete",
        timeout=timedelta(seconds=timeout + DEFER_TIMEOUT_MARGIN) if timeout is not None else None,
    )
