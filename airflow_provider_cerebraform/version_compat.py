"""
The one place that knows which Airflow 3 release the provider runs on (3.0.6 to 3.3.x).

Every other module imports what moved between releases from here, never with its own
``try``/``except ImportError``, like Apache's providers do with their ``version_compat.py``. Each
import below was checked on 3.0.6, 3.1.8, 3.2.2 and 3.3.2 (``scripts/test`` runs a suite on each).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from packaging.version import Version

if TYPE_CHECKING:
    from collections.abc import Mapping


def _airflow_version() -> Version:
    from airflow import __version__

    return Version(Version(__version__).base_version)


AIRFLOW_VERSION = _airflow_version()
AIRFLOW_V_3_1_PLUS = Version("3.1.0") <= AIRFLOW_VERSION
AIRFLOW_V_3_2_PLUS = Version("3.2.0") <= AIRFLOW_VERSION
AIRFLOW_V_3_3_PLUS = Version("3.3.0") <= AIRFLOW_VERSION
#: From 3.3.2 ``BaseHook.aget_connection`` and ``amask_secret`` mask without a blocking call to the
#: supervisor. Before, ``aget_connection`` (3.1+) masks synchronously, which can raise
#: ``DeadlockImminentError`` in the triggerer (the reason common.compat's ``get_async_connection`` has);
#: 3.0 has no ``aget_connection`` at all. There the lookup runs in a worker thread instead.
ASYNC_CONNECTION_LOOKUP = Version("3.3.2") <= AIRFLOW_VERSION

# BaseHook joined the Task SDK's public names in 3.1; in 3.0 it is still Airflow core's.
if AIRFLOW_V_3_1_PLUS:
    from airflow.sdk import BaseHook
else:
    from airflow.hooks.base import BaseHook

# The task exceptions moved to airflow.sdk.exceptions in 3.2 (AirflowException alone in 3.1); the old
# names still work there but warn, and the task runner catches the same classes under either name.
if AIRFLOW_V_3_2_PLUS:
    from airflow.sdk.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowSensorTimeout,
        AirflowSkipException,
        TaskDeferred,
    )
else:
    from airflow.exceptions import (  # type: ignore[no-redef]
        AirflowException,
        AirflowFailException,
        AirflowSensorTimeout,
        AirflowSkipException,
        TaskDeferred,
    )


def dag_bag(**kwargs: Any) -> Any:
    """Airflow's ``DagBag(**kwargs)``: ``airflow.dag_processing.dagbag`` from 3.2, ``airflow.models.dagbag``
    before (imported on call: it loads most of Airflow core)."""
    if AIRFLOW_V_3_2_PLUS:
        from airflow.dag_processing.dagbag import DagBag
    else:
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]
    return DagBag(**kwargs)


def scheduler_dag(dag: Any) -> Any:
    """``dag`` as the scheduler sees it (serialized, then read back): the test harnesses run a DAG run's
    loop with it. ``DagSerialization`` from 3.2, ``SerializedDAG`` before."""
    if AIRFLOW_V_3_2_PLUS:
        from airflow.serialization.serialized_objects import DagSerialization as Serialization
    else:
        from airflow.serialization.serialized_objects import SerializedDAG as Serialization
    return Serialization.deserialize_dag(Serialization.serialize_dag(dag))


def mask_secret(secret: str) -> None:
    """Mask ``secret`` in the task's logs (and its supervisor's)."""
    from airflow.sdk.log import mask_secret as _mask_secret

    _mask_secret(secret)


async def amask_secret(secret: str) -> None:
    """Mask ``secret`` from the event loop (only with ``ASYNC_CONNECTION_LOOKUP``: 3.3.2+)."""
    from airflow.sdk.log import amask_secret as _amask_secret

    await _amask_secret(secret)


def task_state_store(context: Mapping[str, Any]) -> Any:
    """The task instance's ``task_state_store`` (Airflow 3.3+), or None before 3.3."""
    return context.get("task_state_store")


#: Airflow's UI reads a connection type's fields from ``conn-fields`` in the provider info from 3.2
#: on; before, only from the hook's ``get_connection_form_widgets`` / ``get_ui_field_behaviour``.
DECLARATIVE_CONN_FIELDS = AIRFLOW_V_3_2_PLUS


def form_widgets_from_conn_fields(conn_fields: Mapping[str, Any]) -> dict[str, Any]:
    """
    The WTForms fields Airflow before 3.2 builds its connection form from, made from the provider
    info's ``conn-fields`` so that one definition serves every version. Only the field classes old
    Airflow accepts (and its API server can render without Flask-AppBuilder) are used: a ``number``
    is a text field, read as a number by the hook like a hand-written extra.

    :param conn_fields: the ``conn-fields`` of one connection type in the provider info.
    """
    from wtforms import BooleanField, IntegerField, StringField
    from wtforms.validators import Optional, any_of

    classes = {"boolean": BooleanField, "integer": IntegerField}
    widgets: dict[str, Any] = {}
    for name, definition in conn_fields.items():
        schema = definition.get("schema", {})
        types = schema.get("type", "string")
        kind = next((t for t in ([types] if isinstance(types, str) else types) if t != "null"), "string")
        validators: list[Any] = [Optional()]
        if "enum" in schema:
            validators.append(any_of(schema["enum"]))
        widgets[name] = classes.get(kind, StringField)(
            definition.get("label", name),
            validators=validators,
            description=definition.get("description", ""),
            default=schema.get("default"),
        )
    return widgets


def field_behaviour_from_provider_info(behaviour: Mapping[str, Any]) -> dict[str, Any]:
    """The provider info's ``ui-field-behaviour`` in the hook method's form (snake_case keys)."""
    return {key.replace("-", "_"): value for key, value in behaviour.items()}


def stats_backend() -> Any:
    """
    Airflow's metrics object (``incr``, ``timing``, ``gauge``), configured from ``[metrics]`` when this
    process has not done it yet: a task's process configures it, ``dag.test()`` and the triggerer's
    trigger process may not, and then metrics would silently go nowhere.

    3.3 has a module (``airflow.sdk.observability.stats``) set up by ``initialize``; 3.2 the Task SDK's
    ``Stats`` class, set up by ``Stats.initialize``; 3.0 and 3.1 Airflow core's ``Stats``, which
    configures itself from ``[metrics]`` on first use.
    """
    if AIRFLOW_V_3_3_PLUS:
        from airflow.sdk._shared.observability.metrics import stats as shared
        from airflow.sdk.configuration import conf
        from airflow.sdk.observability import stats
        from airflow.sdk.observability.metrics import stats_utils

        if shared._factory is None:
            shared.initialize(
                factory=stats_utils.get_stats_factory(),
                export_legacy_names=conf.getboolean("metrics", "legacy_names_on", fallback=False),
            )
        return stats
    if AIRFLOW_V_3_2_PLUS:
        from airflow.sdk.observability.metrics import stats_utils
        from airflow.sdk.observability.stats import Stats

        if Stats.factory is None:
            Stats.initialize(factory=stats_utils.get_stats_factory(Stats))
        return Stats
    from airflow.stats import Stats

    return Stats


__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3_1_PLUS",
    "AIRFLOW_V_3_2_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "ASYNC_CONNECTION_LOOKUP",
    "DECLARATIVE_CONN_FIELDS",
    "AirflowException",
    "AirflowFailException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "BaseHook",
    "TaskDeferred",
    "amask_secret",
    "dag_bag",
    "field_behaviour_from_provider_info",
    "form_widgets_from_conn_fields",
    "mask_secret",
    "scheduler_dag",
    "stats_backend",
    "task_state_store",
]
