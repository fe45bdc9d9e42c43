"""
The child process of the streaming benchmark: one ``CerebraformHook.store_media`` (which runs
``MediaDownloader.store_all``) per request, with this process's peak RSS measured around it.
Run by :class:`benchmarks.common.Worker`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from benchmarks.common import PeakRss, cpu_seconds, serve_requests


def _transfer(message: dict[str, Any]) -> dict[str, Any]:
    os.environ.update(message.get("env", {}))
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook

    hook = CerebraformHook(message["conn_id"])
    kind, request_id = message["kind"], message["request_id"]
    result = hook.get_result(kind, request_id)
    folder = ObjectStoragePath(message["dest"])
    # Warm the storage path (an S3 client loads its service model on first use; Airflow loads its
    # lineage plugins on the first open): the baseline is a worker that has written to this storage
    # once, so the time and the peak above it are what streaming the file costs.
    warm = folder.parent / f".warm-{os.getpid()}"
    with warm.open("wb") as sink:
        sink.write(b"warm")
    warm.unlink()
    log = logging.getLogger("benchmarks.streaming")
    peak = PeakRss()
    cpu, began = cpu_seconds(), time.perf_counter()
    entries = hook.store_media(result, folder, "{request_id}_{index}{ext}", log=log)
    seconds = time.perf_counter() - began
    return {
        "seconds": seconds,
        "cpu_s": cpu_seconds() - cpu,
        "bytes": entries[0].bytes,
        "sha256": entries[0].sha256,
        "path": entries[0].path,
        "rss": peak.stop(),
    }


def handle(message: dict[str, Any]) -> dict[str, Any]:
    if message["op"] == "prepare":
        import airflow.sdk  # noqa: F401

        import airflow_provider_cerebraform.media  # noqa: F401

        if message.get("s3"):
            import s3fs  # noqa: F401
        return {"ok": True}
    return _transfer(message)


if __name__ == "__main__":
    # Import right away, so the parent can start its servers meanwhile.
    handle({"op": "prepare"})
    serve_requests(handle)
