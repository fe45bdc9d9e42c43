"""
A task instance's retry state in object storage, for Airflow before 3.3 (no ``task_state_store``).

The submit operators remember their paid submission across retries of one task instance, so a
retry reconnects instead of paying again. Airflow 3.3 keeps that record in ``context["task_state_store"]``;
older Airflow has nothing that survives a retry (XCom is cleared), so the record goes to object
storage instead, as common.ai's batch operator in apache/airflow does: one small JSON file per key
under ``<state_location>/.cerebraform-state/<dag_id>/<run_id>/<task_id>/<map_index>/``, written
atomically. :class:`ObjectStorageTaskState` has the same ``get``/``set``/``delete`` as the task state
store, so either can back the operators. Like the task state store, records outlive retries and
clears of the task; unlike it, they are not deleted with the DAG run (they are a few hundred bytes).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

from airflow_provider_cerebraform.media import as_storage_path, remove_quietly, write_atomically

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

#: The folder under ``state_location`` that holds the records.
STATE_FOLDER = ".cerebraform-state"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _component(text: str) -> str:
    """A path part from an Airflow id: readable, no separators, distinct for distinct ids."""
    cleaned = _UNSAFE.sub("_", text).strip("._")[:80]
    if cleaned == text:
        return text
    return f"{cleaned}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


class ObjectStorageTaskState:
    """
    One task instance's small state (JSON values by key) in object storage.

    :param location: the base location: an ``ObjectStoragePath``, a URL such as
        ``s3://aws_default@bucket/prefix`` or an absolute local path.
    :param dag_id: the task instance's DAG.
    :param run_id: its DAG run.
    :param task_id: its task.
    :param map_index: its map index (-1 when not mapped).
    """

    def __init__(self, location: Any, *, dag_id: str, run_id: str, task_id: str, map_index: int) -> None:
        self.folder: ObjectStoragePath = (
            as_storage_path(location)
            / STATE_FOLDER
            / _component(dag_id)
            / _component(run_id)
            / _component(task_id)
            / str(map_index)
        )

    @classmethod
    def for_task_instance(cls, location: Any, context: Any) -> ObjectStorageTaskState:
        """The state of the task instance running in ``context``."""
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        return cls(
            location,
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            map_index=-1 if map_index is None else int(map_index),
        )

    def _path(self, key: str) -> ObjectStoragePath:
        return self.folder / f"{_component(key)}.json"

    def get(self, key: str) -> Any:
        """The value stored under ``key``, or None."""
        path = self._path(key)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON) under ``key``; durable, and never half-written, when this returns."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(value, sort_keys=True).encode())

    def delete(self, key: str) -> None:
        """Forget ``key`` (nothing happens when it is not there)."""
        remove_quietly(self._path(key))

    def __repr__(self) -> str:
        return f"ObjectStorageTaskState({str(self.folder)!r})"
