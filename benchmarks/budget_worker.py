"""
The child process of the shared-budget burst (benchmark 6): one worker process with one slot that
runs its share of the submissions through ``CerebraformSubmitOperator.execute``, every try with
fresh pacing state as a try in its own process has (the ``host`` and ``redis`` budgets keep theirs
in the shared store). A try refused for longer than the in-process wait defers; the task comes back
at the trigger's moment in ``execute_after_rate_limit``. Run by :class:`benchmarks.common.Worker`.
"""

from __future__ import annotations

import heapq
import os
import time
from typing import Any

from benchmarks.common import serve_requests
from benchmarks.harness import make_context


def _operator_class() -> type:
    from airflow_provider_cerebraform.operators.cerebraform import CerebraformSubmitOperator
    from airflow_provider_cerebraform.pacing import KeyPacer

    class TaskProcessSubmitOperator(CerebraformSubmitOperator):
        """Each try starts with the pacing state of a new process."""

        @property
        def hook(self) -> Any:
            from airflow_provider_cerebraform.budget import SharedKeyPacer

            hook = super().hook
            protocol = hook.get_conn().protocol
            settings = protocol.settings
            fresh = KeyPacer(settings) if settings.budget == "process" else SharedKeyPacer(settings)
            protocol.pacer = fresh
            return hook

    return TaskProcessSubmitOperator


def _burst(message: dict[str, Any]) -> dict[str, Any]:
    from airflow.sdk.exceptions import TaskDeferred

    from airflow_provider_cerebraform.budget import reset_stores
    from airflow_provider_cerebraform.pacing import reset_pacers

    os.environ.update(message["env"])
    reset_pacers()
    reset_stores()
    operator_class = _operator_class()
    prompts: list[str] = message["prompts"]
    operators = [
        operator_class(
            task_id=f"burst_{index}",
            prompt=prompt,
            cerebraform_conn_id=message["conn_id"],
            kind="image",
            max_in_process_wait=message["in_process_wait"],
        )
        for index, prompt in enumerate(prompts)
    ]
    contexts = [make_context(f"burst_{index}") for index in range(len(prompts))]
    # Everyone starts at the same moment (epoch seconds), after every process has imported Airflow.
    time.sleep(max(0.0, message["start_at"] - time.time()))
    ready = [(time.monotonic(), index, False) for index in range(len(prompts))]
    heapq.heapify(ready)
    finished: dict[int, str] = {}
    errors: list[str] = []
    slot_seconds = 0.0
    deferrals = 0
    kwargs: dict[int, dict[str, Any]] = {}
    while ready:
        at, index, resumed = heapq.heappop(ready)
        time.sleep(max(0.0, at - time.monotonic()))
        began = time.perf_counter()
        requeue: float | None = None
        try:
            operator, context = operators[index], contexts[index]
            if resumed:
                finished[index] = operator.execute_after_rate_limit(context, None, **kwargs[index])
            else:
                finished[index] = operator.execute(context)
        except TaskDeferred as deferred:
            moment = deferred.trigger.moment.timestamp()
            requeue = time.monotonic() + max(0.0, moment - time.time())
            kwargs[index] = deferred.kwargs or {}  # the slot a shared budget keeps for it, if any
        except Exception as error:
            errors.append(f"{type(error).__name__}: {error}"[:300])
        slot_seconds += time.perf_counter() - began
        if requeue is not None:
            deferrals += 1
            heapq.heappush(ready, (requeue, index, True))
    return {
        "request_ids": list(finished.values()),
        "errors": errors,
        "slot_seconds": slot_seconds,
        "deferrals": deferrals,
    }


def handle(message: dict[str, Any]) -> dict[str, Any]:
    if message["op"] == "prepare":
        import airflow.sdk  # noqa: F401

        # A worker that has run a task on the redis budget has imported it (here it may even compile).
        import redis  # noqa: F401

        import airflow_provider_cerebraform.budget
        import airflow_provider_cerebraform.operators.cerebraform  # noqa: F401

        return {"ok": True}
    return _burst(message)


if __name__ == "__main__":
    handle({"op": "prepare"})
    serve_requests(handle)
