"""The sensor that waits for a Cerebraform task: deferred by default, or poke/reschedule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowSensorTimeout

from airflow_provider_cerebraform.exceptions import CerebraformTaskFailedError
from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook
from airflow_provider_cerebraform.triggers.cerebraform import (
    TRANSIENT_ERRORS,
    defer_until_finished,
    raise_for_event,
)
from airflow_provider_cerebraform.validation import validate_kind, validate_literals, validate_request_id

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from airflow_provider_cerebraform.models import TaskState


class CerebraformTaskSensor(BaseSensorOperator):
    """
    Waits until a Cerebraform task is done and returns its status (``status``, ``message``,
    ``request_id``, ``kind``) through XCom.

    Deferrable by default: the wait runs in the triggerer and holds no worker slot. With
    ``deferrable=False`` it pokes in ``mode="poke"`` or ``mode="reschedule"`` with the same outcomes.
    A failed task (-1) fails the sensor with the API's message and is not retried (the same request
    stays failed); running out of ``timeout`` raises the sensor timeout.

    :param request_id: the task to wait for (templated; usually the submit operator's ``.output``).
    :param kind: ``"image"`` or ``"video"`` (templated).
    :param cerebraform_conn_id: the Cerebraform connection.
    :param poll_interval: seconds between polls; all waits on one key also share its status budget.
    :param deferrable: wait in the triggerer (default) instead of a worker.
    :param max_consecutive_errors: transient polling errors in a row that are tolerated.
    """

    template_fields: Sequence[str] = ("request_id", "kind")

    def __init__(
        self,
        *,
        request_id: str,
        kind: str = "image",
        cerebraform_conn_id: str = CerebraformHook.default_conn_name,
        poll_interval: float = 5.0,
        deferrable: bool = True,
        max_consecutive_errors: int = 5,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        validate_literals(request_id=request_id, kind=kind)
        self.request_id = request_id
        self.kind = kind
        self.cerebraform_conn_id = cerebraform_conn_id
        self.poll_interval = poll_interval
        self.deferrable = deferrable
        self.max_consecutive_errors = max_consecutive_errors
        self._errors_in_a_row = 0

    def execute(self, context: Context) -> Any:
        kind, request_id = validate_kind(self.kind).value, validate_request_id(self.request_id)
        if not self.deferrable:
            return super().execute(context)
        try:
            state = CerebraformHook(self.cerebraform_conn_id).get_status(kind, request_id)
        except TRANSIENT_ERRORS as error:
            # The trigger tolerates the same errors; one failed first look must not end the wait.
            self.log.warning("Polling failed (%s); deferring the wait to the triggerer", error.message)
        else:
            if state.status.is_terminal:
                return self._finish(state)
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
            state = CerebraformHook(self.cerebraform_conn_id).get_status(self.kind, self.request_id)
        except TRANSIENT_ERRORS as error:
            self._errors_in_a_row += 1
            if self._errors_in_a_row > self.max_consecutive_errors:
                raise
            self.log.warning(
                "Polling failed (%d in a row tolerated): %s", self._errors_in_a_row, error.message
            )
            return PokeReturnValue(is_done=False)
        self._errors_in_a_row = 0
        if state.status.is_terminal:
            return PokeReturnValue(is_done=True, xcom_value=self._finish(state))
        self.log.info("Cerebraform %s", state.describe())
        return PokeReturnValue(is_done=False)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        finished = raise_for_event(event, on_timeout=AirflowSensorTimeout)
        self.log.info(
            "Cerebraform %s task %s is done: %s",
            finished["kind"],
            finished["request_id"],
            finished["message"],
        )
        return {key: finished[key] for key in ("request_id", "kind", "message")} | {
            "status": finished["task_status"]
        }

    def _finish(self, state: TaskState) -> dict[str, Any]:
        if state.is_failed:
            raise CerebraformTaskFailedError(
                f"Cerebraform {state.describe()}", request_id=state.request_id, api_message=state.message
            )
        self.log.info("Cerebraform %s", state.describe())
        return {
            "request_id": state.request_id,
            "kind": state.kind.value,
            "message": state.message,
            "status": int(state.status),
        }
