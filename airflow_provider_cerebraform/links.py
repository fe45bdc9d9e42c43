"""Operator extra links: buttons on a task instance in Airflow's UI that open what the task made.

Airflow 3 resolves a link when the task finishes (in the worker) and stores the URL in XCom under the
link's ``xcom_key``; the UI reads it from there. A link reads what the operator itself pushed to XCom,
so it needs no connection lookup and never carries the API key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: XCom keys the operators push for their links.
MEDIA_URL_KEY = "cerebraform_media_url"
REQUEST_URL_KEY = "cerebraform_request_url"


def _xcom(ti_key: TaskInstanceKey, key: str) -> Any:
    from airflow.sdk.execution_time.xcom import XCom

    return XCom.get_value(ti_key=ti_key, key=key)


class CerebraformMediaLink(BaseOperatorLink):
    """Opens the first generated file (its result URL, which the service may sign and expire)."""

    name = "Cerebraform media"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return str(_xcom(ti_key, MEDIA_URL_KEY) or "")


class CerebraformRequestLink(BaseOperatorLink):
    """Opens the generation request's status on the API (the API asks for the key in a browser)."""

    name = "Cerebraform request"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return str(_xcom(ti_key, REQUEST_URL_KEY) or "")
