"""The trigger of a batch: it watches the batch's pending requests and wakes the worker when there is work."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_cerebraform.exceptions import CerebraformError
from airflow_provider_cerebraform.polling import TRANSIENT_ERRORS, StatusPoller

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class CerebraformBatchTrigger(BaseTrigger):
    """
    Polls a batch's pending requests on the key's shared poll budget and fires one event when the worker
    has something to do: ``wake_after`` of them finished (media to store), all of them finished, or
    ``wake_at`` came (the creation window opens for the next burst of submissions).

    Its kwargs hold only the pending request ids, at most the operator's ``max_in_flight``; the
    batch's state stays in object storage, which the trigger never reads. The event is
    ``{"finished": [[request_id, status, message, error_type], ...]}`` with ``status`` ``done``,
    ``failed`` or ``error`` (polling ended by an error that is not transient, or by too many transient
    ones in a row, as :class:`~airflow_provider_cerebraform.polling.StatusPoller` decides).

    :param pending: ``[kind, request_id]`` of each request to watch.
    :param cerebraform_conn_id: the connection to poll with.
    :param poll_interval: seconds between rounds of polls (the shared budget may space them more).
    :param wake_at: epoch seconds when the worker should come back anyway; None: only for finished work.
    :param wake_after: how many finished requests wake the worker.
    :param max_consecutive_errors: transient errors in a row tolerated per request.
    """

    def __init__(
        self,
        pending: list[list[str]],
        cerebraform_conn_id: str = "cerebraform_default",
        poll_interval: float = 5.0,
        wake_at: float | None = None,
        wake_after: int = 1,
        max_consecutive_errors: int = 5,
    ) -> None:
        super().__init__()
        self.pending = [[str(kind), str(request_id)] for kind, request_id in pending]
        self.cerebraform_conn_id = cerebraform_conn_id
        self.poll_interval = float(poll_interval)
        self.wake_at = wake_at
        self.wake_after = max(1, int(wake_after))
        self.max_consecutive_errors = max_consecutive_errors

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "pending": self.pending,
                "cerebraform_conn_id": self.cerebraform_conn_id,
                "poll_interval": self.poll_interval,
                "wake_at": self.wake_at,
                "wake_after": self.wake_after,
                "max_consecutive_errors": self.max_consecutive_errors,
            },
        )

    def __repr__(self) -> str:
        return (
            f"CerebraformBatchTrigger({len(self.pending)} pending, conn={self.cerebraform_conn_id!r}, "
            f"wake_at={self.wake_at}, wake_after={self.wake_after})"
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent({"finished": await self._watch()})

    def _due(self) -> bool:
        return self.wake_at is not None and time.time() >= self.wake_at

    async def _watch(self) -> list[list[Any]]:
        open_requests = list(self.pending)
        finished: list[list[Any]] = []
        if not open_requests:
            await self._sleep_until_due()
            return finished
        from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook

        client = await CerebraformHook(self.cerebraform_conn_id).aget_conn()
        poller = StatusPoller(self.max_consecutive_errors)
        errors: dict[str, int] = {}
        wake_after = min(self.wake_after, len(open_requests))
        while True:
            for kind, request_id in list(open_requests):
                if self._due():
                    return finished
                try:
                    outcome = await client.get_status(kind, request_id)
                except TRANSIENT_ERRORS as error:
                    outcome = error
                except CerebraformError as error:
                    outcome = error
                try:
                    poll = poller.after(outcome, errors.get(request_id, 0))
                except CerebraformError as error:
                    finished.append([request_id, "error", error.message, type(error).__name__])
                    open_requests.remove([kind, request_id])
                    continue
                errors[request_id] = poll.errors_in_a_row
                if poll.warning:
                    self.log.warning("Polling %s (%s)", request_id, poll.warning)
                if poll.event is not None:
                    finished.append([request_id, poll.event["status"], poll.event.get("message"), None])
                    open_requests.remove([kind, request_id])
            if len(finished) >= wake_after or not open_requests or self._due():
                if not open_requests and not finished:
                    await self._sleep_until_due()
                return finished
            delay = self.poll_interval
            if self.wake_at is not None:
                delay = min(delay, max(0.0, self.wake_at - time.time()))
            await asyncio.sleep(delay)

    async def _sleep_until_due(self) -> None:
        if self.wake_at is not None:
            await asyncio.sleep(max(0.0, self.wake_at - time.time()))
