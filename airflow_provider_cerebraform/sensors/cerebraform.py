"""The sensor that waits for a Cerebraform task: deferred by default, or poke/reschedule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook
from airflow_provider_cerebraform.ledger import ledger_for
from airflow_provider_cerebraform.media import validate_location
from airflow_provider_cerebraform.models import TaskStatus
from airflow_provider_cerebraform.polling import TRANSIENT_ERRORS, StatusPoller, state_event, wait_event
from airflow_provider_cerebraform.triggers.cerebraform import defer_until_finished, raise_for_event
from airflow_provider_cerebraform.validation import (
    naming_the_task,
    validate_kind,
    validate_literals,
    validate_request_id,
)
from airflow_provider_cerebraform.version_compat import AirflowSensorTimeout

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

#: Key in ``task_state_store`` of the polling errors in a row of the current try (reschedule mode).
POLL_ERRORS_KEY = "cerebraform_poll_errors"
#: What the sensor returns (XCom) of the finished wait, the same values as the trigger's event.
RESULT_KEYS = ("request_id", "kind", "message", "status", "task_status")


class CerebraformTaskSensor(BaseSensorOperator):
    """
    Waits until a Cerebraform task is done and returns (XCom) the same values as the trigger's
    event: ``status`` (``"done"``), ``task_status`` (the API's integer, 2), ``message``,
    ``request_id`` and ``kind``.

    Deferrable by default: the wait runs in the triggerer and holds no worker slot. With
    ``deferrable=False`` it pokes in ``mode="poke"`` or ``mode="reschedule"`` with the same outcomes,
    decided by the same :class:`~airflow_provider_cerebraform.polling.StatusPoller` as the trigger.
    A failed task (-1) fails the sensor with the API's message and is not retried (the same request
    stays failed); running out of ``timeout`` raises the sensor timeout. ``max_consecutive_errors``
    counts transient polling errors in a row within one try: in ``mode="reschedule"`` the count is
    kept in the task state store across reschedules, and a retry of the task starts a new count.

    With a generation ledger (``ledger``, or the connection's ``ledger`` field) that has the request
    stored (a submit operator found the generation there and returned its original id), the wait is
    over at once without asking the service, where the request may have expired.

    :param request_id: the task to wait for (templated; usually the submit operator's ``.output``).
    :param kind: ``"image"`` or ``"video"`` (templated).
    :param cerebraform_conn_id: the Cerebraform connection.
    :param poll_interval: seconds between polls; all waits on one key also share its status budget.
    :param deferrable: wait in the triggerer (default) instead of a worker.
    :param max_consecutive_errors: transient polling errors in a row that are tolerated.
    :param ledger: the generation ledger's folder; None uses the connection's ``ledger`` field,
        ``False`` uses no ledger (templated).
    """

    template_fields: Sequence[str] = ("request_id", "kind", "ledger")

    def __init__(
        self,
        *,
        request_id: str,
        kind: str = "image",
        cerebraform_conn_id: str = CerebraformHook.default_conn_name,
        poll_interval: float = 5.0,
        deferrable: bool = True,
        max_consecutive_errors: int = 5,
        ledger: Any = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        with naming_the_task(self.task_id):
            validate_literals(request_id=request_id, kind=kind)
            validate_location("ledger", ledger)
        self.ledger = ledger
        self.request_id = request_id
        self.kind = kind
        self.cerebraform_conn_id = cerebraform_conn_id
        self.poll_interval = poll_interval
        self.deferrable = deferrable
        self.max_consecutive_errors = max_consecutive_errors
        self._errors_in_a_row: int | None = None

    def execute(self, context: Context) -> Any:
        kind, request_id = validate_kind(self.kind).value, validate_request_id(self.request_id)
        ledger = ledger_for(self.ledger, self.cerebraform_conn_id, self.log)
        if ledger is not None and ledger.lookup_request(request_id) is not None:
            self.log.info(
                "The ledger %s has request %s stored: not asking the service.", ledger.root, request_id
            )
            message = "stored in the generation ledger"
            event = wait_event("done", kind, request_id, message, task_status=int(TaskStatus.DONE))
            return self.execute_complete(context, event)
        if not self.deferrable:
            return super().execute(context)
        try:
            state = CerebraformHook(self.cerebraform_conn_id).get_status(kind, request_id)
        except TRANSIENT_ERRORS as error:
            # The trigger tolerates the same errors; one failed first look must not end the wait.
            self.log.warning("Polling failed (%s); deferring the wait to the triggerer", error.message)
        else:
            if state.status.is_terminal:
                return self.execute_complete(context, state_event(state))
            self.log.info("Cerebraform %s; deferring the wait to the triggerer", state.describe())
        defer_until_finished(
            self,
            request_id=request_id,
            kind=kind,
            cerebraform_conn_id=self.cerebraform_conn_id,
            poll_interval=self.poll_interval,
            timeout=float(self.timeout) if self.timeout is not None else None,
            max_consecutive_errors=self.max_consecutive_errors,
        )

    def poke(self, context: Context) -> PokeReturnValue:
        try:
            outcome: Any = CerebraformHook(self.cerebraform_conn_id).get_status(self.kind, self.request_id)
        except TRANSIENT_ERRORS as error:
            outcome = error
        errors_before = self._errors_so_far(context)
        poll = StatusPoller(self.max_consecutive_errors).after(outcome, errors_before)
        self._remember_errors(context, errors_before, poll.errors_in_a_row)
        if poll.warning:
            self.log.warning("Polling failed (%s)", poll.warning)
        if poll.event is not None:
            return PokeReturnValue(is_done=True, xcom_value=self.execute_complete(context, poll.event))
        if poll.state is not None:
            self.log.info("Cerebraform %s", poll.state.describe())
        return PokeReturnValue(is_done=False)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        finished = raise_for_event(event, on_timeout=AirflowSensorTimeout)
        self.log.info(
            "Cerebraform %s task %s is done: %s",
            finished["kind"],
            finished["request_id"],
            finished["message"],
        )
        return {key: finished.get(key) for key in RESULT_KEYS}

    def _errors_so_far(self, context: Context) -> int:
        """Transient errors in a row so far in this try; in reschedule mode, read back from the store."""
        if self._errors_in_a_row is None:
            self._errors_in_a_row = 0
            store = self._errors_store(context)
            saved = store.get(POLL_ERRORS_KEY) if store is not None else None
            if isinstance(saved, dict) and saved.get("try_number") == context["ti"].try_number:
                self._errors_in_a_row = int(saved.get("errors", 0))
        return self._errors_in_a_row

    def _remember_errors(self, context: Context, before: int, errors: int) -> None:
        self._errors_in_a_row = errors
        store = self._errors_store(context)
        if store is not None and errors != before:
            store.set(POLL_ERRORS_KEY, {"try_number": context["ti"].try_number, "errors": errors})

    def _errors_store(self, context: Context) -> Any:
        """Where the count outlives this object: only needed when each poke is a new task run."""
        if self.mode != "reschedule":
            return None
        from airflow_provider_cerebraform.version_compat import task_state_store

        store = task_state_store(context)
        if store is None and not getattr(type(self), "_warned_no_store", False):
            type(self)._warned_no_store = True  # type: ignore[attr-defined]
            self.log.warning(
                "This Airflow has no task_state_store: in mode='reschedule' max_consecutive_errors "
                "applies within one poke only."
            )
        return store
