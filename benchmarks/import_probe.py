"""
One sample of the import benchmark, in a fresh interpreter:
``python -m benchmarks.import_probe OUT.json PARSE_REPEATS [DAG_FILE ...]``.

It times ``import airflow.sdk``, then the base classes every provider uses (``airflow.sdk`` loads them
lazily), then the provider's modules on top, then (optionally) parsing each
DAG file with Airflow's ``DagBag`` a number of times. Only the standard library is imported before the
clock starts.
"""

from __future__ import annotations

import importlib
import json
import sys
import time

BASE_CLASSES = ("BaseHook", "BaseOperator", "BaseSensorOperator", "ObjectStoragePath")
PROVIDER_MODULES = (
    "airflow_provider_cerebraform.hooks.cerebraform",
    "airflow_provider_cerebraform.operators.cerebraform",
    "airflow_provider_cerebraform.sensors.cerebraform",
    "airflow_provider_cerebraform.triggers.cerebraform",
)


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    out, repeats, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    began = time.perf_counter()
    sdk_module = importlib.import_module("airflow.sdk")
    sdk = time.perf_counter()
    rss_sdk = _rss_mb()
    # The base classes every provider builds on (airflow.sdk imports them lazily, on first access).
    for name in BASE_CLASSES:
        getattr(sdk_module, name)
    importlib.import_module("airflow.triggers.base")
    bases = time.perf_counter()
    rss_bases = _rss_mb()
    for module in PROVIDER_MODULES:
        importlib.import_module(module)
    provider = time.perf_counter()
    result: dict[str, object] = {
        "sdk_s": sdk - began,
        "bases_s": bases - sdk,
        "provider_s": provider - bases,
        "rss_sdk_mb": rss_sdk,
        "rss_bases_mb": rss_bases - rss_sdk,
        "rss_provider_mb": _rss_mb() - rss_bases,
        "parse": {},
    }
    if files:
        from airflow.dag_processing.dagbag import DagBag

        parse: dict[str, object] = {}
        for path in files:
            times, dags, errors = [], 0, {}
            for _ in range(repeats):
                start = time.perf_counter()
                bag = DagBag(dag_folder=path, safe_mode=False)
                times.append(time.perf_counter() - start)
                dags, errors = len(bag.dags), bag.import_errors
            parse[path] = {"times": times, "dags": dags, "errors": {k: v[-500:] for k, v in errors.items()}}
        result["parse"] = parse
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
