"""
The child process of the triggerer benchmark: it waits for many jobs on ONE asyncio event loop, as a
triggerer process does, with one of three watchers, and reports when each job's wait ended.

- ``provider``: real :class:`CerebraformTaskTrigger` objects, rebuilt from ``serialize()`` the way
  the triggerer does, each ``run()`` async generator consumed by its own task.
- ``http_sensor``: ``apache-airflow-providers-http``'s deferrable ``HttpSensorTrigger`` on the
  result endpoint (the only Cerebraform endpoint whose status code changes when the job is done).
- ``vendor_loop``: the vendor's published example loop (GET status, stop on 2 or -1, else sleep 5 s),
  as asyncio tasks sharing one ``httpx.AsyncClient``.

Run by :class:`benchmarks.common.Worker`; never imported by the parent.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from typing import TYPE_CHECKING, Any

from benchmarks.common import PeakRss, cpu_seconds, serve_requests

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


def _prepare(watcher: str) -> None:
    """Import what the watcher needs before the clock starts (a triggerer has it imported already)."""
    if watcher == "provider":
        importlib.import_module("airflow_provider_cerebraform.triggers.cerebraform")
        importlib.import_module("airflow_provider_cerebraform.hooks.cerebraform")
        importlib.import_module("redis.asyncio")  # the shared budget's client (benchmark 6)
    elif watcher == "http_sensor":
        importlib.import_module("airflow.providers.http.triggers.http")
    importlib.import_module("httpx")


def _provider(job: dict[str, Any], spec: dict[str, Any]) -> Callable[[], Awaitable[str]]:
    from airflow_provider_cerebraform.triggers.cerebraform import CerebraformTaskTrigger

    made = CerebraformTaskTrigger(
        request_id=job["request_id"],
        kind=job["kind"],
        cerebraform_conn_id=spec["conn_ids"][job["tier"]],
        poll_interval=spec["interval"],
    )
    # What the triggerer does: import the classpath from serialize() and call it with the kwargs.
    classpath, kwargs = made.serialize()
    module, _, name = classpath.rpartition(".")
    trigger = getattr(importlib.import_module(module), name)(**kwargs)

    async def wait() -> str:
        async for event in trigger.run():
            return str(event.payload.get("status"))
        return "no event"

    return wait


def _http_sensor(job: dict[str, Any], spec: dict[str, Any]) -> Callable[[], Awaitable[str]]:
    from airflow.providers.http.triggers.http import HttpSensorTrigger

    trigger = HttpSensorTrigger(
        endpoint=f"/ai/v1/to-{job['kind']}/result/{job['request_id']}",
        http_conn_id=spec["conn_ids"][job["tier"]],
        poke_interval=spec["interval"],
    )

    async def wait() -> str:
        async for event in trigger.run():
            return "fired" if event.payload else str(event.payload)
        return "no event"

    return wait


def _vendor_loop(job: dict[str, Any], spec: dict[str, Any], client: Any) -> Callable[[], Awaitable[str]]:
    url = f"{spec['url']}/ai/v1/to-{job['kind']}/status/{job['request_id']}"
    headers = {"Authorization": f"Bearer {spec['keys'][job['tier']]}", "Content-Type": "application/json"}

    async def wait() -> str:
        # The vendor's example, line for line: no 429 handling (the body has no 'status'), fixed sleep.
        while True:
            status_data = (await client.get(url, headers=headers)).json()
            status = status_data.get("status")
            if status == 2:
                return "done"
            if status == -1:
                return "failed"
            await asyncio.sleep(spec["interval"])

    return wait


async def _watch_all(spec: dict[str, Any]) -> dict[str, Any]:
    jobs = spec["jobs"]
    client = None
    if spec["watcher"] == "vendor_loop":
        import httpx

        client = httpx.AsyncClient(
            timeout=30,
            trust_env=False,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        )
    fires: dict[str, tuple[float, str]] = {}

    async def one(job: dict[str, Any], delay: float) -> None:
        if spec["watcher"] == "provider":
            wait = _provider(job, spec)
        elif spec["watcher"] == "http_sensor":
            wait = _http_sensor(job, spec)
        else:
            wait = _vendor_loop(job, spec, client)
        await asyncio.sleep(delay)
        outcome = await wait()
        fires[job["request_id"]] = (time.time(), outcome)

    started = time.time()
    spread = spec["spread"]
    tasks = [asyncio.create_task(one(job, spread * i / len(jobs))) for i, job in enumerate(jobs)]
    done, pending = await asyncio.wait(tasks, timeout=spec["deadline"])
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    crashed = [repr(task.exception())[:300] for task in done if task.exception() is not None]
    if client is not None:
        await client.aclose()
    return {
        "started_at": started,
        "fires": [[rid, at, outcome] for rid, at, outcome in ((k, *v) for k, v in fires.items())],
        "unfired": len(pending),
        "crashed": len(crashed),
        "crash_samples": crashed[:3],
    }


def handle(message: dict[str, Any]) -> dict[str, Any]:
    if message["op"] == "prepare":
        _prepare(message["watcher"])
        return {"ok": True}
    os.environ.update(message.get("env", {}))
    _prepare(message["watcher"])
    if message["watcher"] == "provider":
        from airflow_provider_cerebraform.pacing import reset_pacers

        reset_pacers()  # a fresh triggerer process: no pacing state from an earlier phase
    peak = PeakRss()
    cpu, wall = cpu_seconds(), time.perf_counter()
    result = asyncio.run(_watch_all(message))
    result["cpu_s"] = cpu_seconds() - cpu
    result["wall_s"] = time.perf_counter() - wall
    result["rss"] = peak.stop()
    return result


if __name__ == "__main__":
    serve_requests(handle)
