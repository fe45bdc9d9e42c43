"""
A minimal stand-in for what Airflow gives an operator at run time, enough to call the provider's
operators as a worker would: ``context["ti"]`` (XCom pushes are recorded), ``context["task_state_store"]``
(in memory, kept across tries of one task instance, as Airflow 3.3's store is) and the deferral loop
(``TaskDeferred`` -> wait for the trigger -> call the method it names).
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from typing import Any


class MemoryTaskStateStore:
    """``context["task_state_store"]`` of one task instance: get/set/delete of JSON values."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._values.get(key, default)

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        with self._lock:
            self._values[key] = value

    def delete(self, key: str) -> None:
        with self._lock:
            self._values.pop(key, None)


class RecordingTaskInstance:
    """The slice of ``context["ti"]`` the operators use."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any, **_: Any) -> None:
        self.xcom[key] = value


def make_context(task_id: str) -> dict[str, Any]:
    """A fresh context for one task instance (the store survives between calls with this dict)."""
    return {"ti": RecordingTaskInstance(task_id), "task_state_store": MemoryTaskStateStore()}


def rebuild_trigger(trigger: Any) -> Any:
    """What the triggerer does with a deferred trigger: import its classpath, call it with the kwargs."""
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


async def first_event(trigger: Any) -> Any:
    """Run a trigger until its first event; return the event's payload."""
    async for event in rebuild_trigger(trigger).run():
        return event.payload
    raise RuntimeError(f"{trigger!r} ended without an event")


def run_triggers(triggers: list[Any]) -> list[Any]:
    """Run triggers together on one event loop (a triggerer) and return their first events in order."""

    async def all_events() -> list[Any]:
        return list(await asyncio.gather(*(first_event(trigger) for trigger in triggers)))

    return asyncio.run(all_events())
