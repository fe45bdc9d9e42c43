"""
Benchmark 5: what the provider adds to every Airflow process that imports it, and what each example
DAG costs the DAG processor to parse. Each sample is a fresh interpreter (``benchmarks/import_probe.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from benchmarks.common import REPO, Section, Table, child_env, fmt, median

if TYPE_CHECKING:
    from pathlib import Path

#: The provider's import on top of Airflow's own should stay a small fraction of it.
IMPORT_SHARE_TARGET = 0.10


def _sample(work: Path, index: int, parse_repeats: int, files: list[str]) -> dict[str, Any]:
    out = work / f"import-{index}.json"
    home = work / "airflow-home"
    home.mkdir(exist_ok=True)
    env = child_env(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "example_dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
    )
    with open(work / "import-probe.log", "ab") as log:
        subprocess.run(
            [sys.executable, "-m", "benchmarks.import_probe", str(out), str(parse_repeats), *files],
            env=env,
            cwd=str(REPO),
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=300,
        )
    return json.loads(out.read_text())


def run(profile: Any, work: Path) -> Section:
    began = time.perf_counter()
    files = sorted(
        str(path) for path in (REPO / "example_dags").glob("*.py") if not path.name.startswith("_")
    )
    samples = []
    for index in range(profile.import_repeats):
        # DAG files are parsed in the first sample only, each parse_repeats times.
        samples.append(_sample(work, index, profile.parse_repeats, files if index == 0 else []))
    return _section(samples, files, profile, time.perf_counter() - began)


def _section(samples: list[dict[str, Any]], files: list[str], profile: Any, wall: float) -> Section:
    sdk = median([s["sdk_s"] for s in samples])
    bases = median([s["bases_s"] for s in samples])
    provider = median([s["provider_s"] for s in samples])
    imports = Table(
        f"Import time, median of {len(samples)} fresh interpreters",
        ["what", "seconds", "RSS added MB"],
        [
            ["import airflow.sdk", fmt(sdk, 3), fmt(median([s["rss_sdk_mb"] for s in samples]))],
            [
                "+ BaseHook, BaseOperator, BaseSensorOperator, ObjectStoragePath, BaseTrigger",
                fmt(bases, 3),
                fmt(median([s["rss_bases_mb"] for s in samples])),
            ],
            [
                "+ the provider (hooks, operators, sensors, triggers)",
                fmt(provider, 3),
                fmt(median([s["rss_provider_mb"] for s in samples])),
            ],
        ],
    )
    share = provider / (sdk + bases) if sdk + bases else float("nan")
    imports.notes.append(
        f"The provider adds {share:.1%} to the import time of airflow.sdk with its base classes "
        f"(all samples: {', '.join(fmt(s['provider_s'], 3) for s in samples)} s)."
    )
    parse_table = Table(
        f"DAG parse time with DagBag, median of {profile.parse_repeats} parses in one interpreter",
        ["file", "DAGs", "median ms", "first parse ms", "import errors"],
    )
    parse = samples[0]["parse"] if samples else {}
    for path in files:
        figures = parse.get(path)
        if figures is None:
            continue
        parse_table.rows.append(
            [
                f"`example_dags/{path.rsplit('/', 1)[-1]}`",
                str(figures["dags"]),
                fmt(median(figures["times"]) * 1000),
                fmt(figures["times"][0] * 1000),
                str(len(figures["errors"]))
                if not figures["errors"]
                else "; ".join(v.strip().splitlines()[-1][:120] for v in figures["errors"].values()),
            ]
        )
    if not files:
        parse_table.notes.append("No example DAGs were found in example_dags/ when this ran.")
    parse_table.notes.append(
        "The first parse in an interpreter also imports what the file needs for the first time; the "
        "DAG processor pays that once per process, so the median is the steady cost."
    )
    misses = []
    if share > IMPORT_SHARE_TARGET:
        misses.append(
            f"the provider's import adds {share:.1%} to that of airflow.sdk and its base classes "
            f"(goal: under {IMPORT_SHARE_TARGET:.0%})"
        )
    for path, figures in parse.items():
        if figures["errors"]:
            misses.append(f"`{path.rsplit('/', 1)[-1]}` failed to parse")
    headlines = [
        f"provider import {fmt(provider * 1000, 0)} ms on top of {fmt((sdk + bases) * 1000, 0)} ms "
        f"({share:.1%})"
    ]
    if parse:
        slowest = max(parse.items(), key=lambda item: median(item[1]["times"]))
        headlines.append(
            f"slowest example DAG parse {fmt(median(slowest[1]['times']) * 1000)} ms "
            f"({slowest[0].rsplit('/', 1)[-1]})"
        )
    return Section(
        5,
        "Import and parse cost",
        [
            "Each sample is a fresh interpreter that imports airflow.sdk, then the base classes every",
            "provider uses, then the provider's modules, timing each step (the OS page cache is warm).",
            "The DAG files in example_dags/ are parsed with airflow.dag_processing.dagbag.DagBag, one file",
            "per DagBag, as the DAG processor does.",
        ],
        [imports, parse_table],
        headlines,
        misses,
        wall,
        {
            "sdk_s": sdk,
            "provider_s": provider,
            "parse": {
                path.rsplit("/", 1)[-1]: {"dags": f["dags"], "errors": len(f["errors"])}
                for path, f in parse.items()
            },
        },
    )
