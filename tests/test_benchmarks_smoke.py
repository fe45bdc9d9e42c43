"""
The benchmarks at their smoke size, through the documented command, so they cannot rot: every
benchmark runs, writes its section, and the plain figures show each one measured what it claims.
No timing is asserted (the machines are shared); only counts and invariants.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_smoke_run_writes_every_section_with_sound_figures(tmp_path: Path) -> None:
    report, figures = tmp_path / "benchmarks.md", tmp_path / "benchmarks.json"
    command = ["-m", "benchmarks", "run", "--smoke", "--output", str(report), "--json", str(figures)]
    done = subprocess.run(
        [sys.executable, *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"

    text = report.read_text()
    assert text.startswith("# Benchmarks")
    assert "-m benchmarks run --smoke" in text  # the exact command
    for row in ("| nproc |", "| memory |", "| cpu |", "| python |", "| apache-airflow |"):
        assert row in text
    for number in range(1, 8):
        assert f"\n## {number}. " in text
    sections = json.loads(figures.read_text())["sections"]
    assert sorted(sections) == ["1", "2", "3", "4", "5", "6", "7"]

    # 1. Every watcher saw every job end; the provider's trigger reported failures as failures.
    phases = sections["1"]["facts"]["phases"]
    assert {phase["watcher"] for phase in phases} == {"provider", "http_sensor", "vendor_loop"}
    for phase in phases:
        assert phase["unfired"] == phase["crashed"] == 0, phase
        assert phase["fired"] == phase["jobs"] > 0, phase
        assert phase["requests"] >= phase["jobs"], phase
    provider = next(phase for phase in phases if phase["watcher"] == "provider")
    assert provider["outcomes"].get("failed", 0) >= 1, provider
    assert sum(provider["outcomes"].values()) == provider["jobs"]
    assert set(provider["outcomes"]) <= {"done", "failed"}, provider

    # 2. The whole burst went through the operator, each prompt exactly once.
    for row in sections["2"]["facts"]["rows"]:
        assert row["succeeded"] == row["count"] > 0, row
        assert row["duplicates"] == row["unknown_ids"] == row["xcom_mismatch"] == 0, row
    # A fresh pacer per try learns the limit from the service's 429s.
    assert any(row["refused"] > 0 for row in sections["2"]["facts"]["rows"] if row["mode"] == "per-process")

    # 3. Every transfer delivered the whole file, the same bytes to every target.
    runs = [run for run in sections["3"]["facts"]["runs"] if run["target"] != "curl"]
    assert {run["target"] for run in runs} == {"file", "s3"}
    for run in runs:
        assert run["bytes"] == run["size"], run
    assert len({run["sha256"] for run in runs}) == 1

    # 4. Both paths returned media for every job; the blocking one held slots longer.
    slots = sections["4"]["facts"]
    assert slots["deferrable_ok"] == slots["blocking_ok"] == slots["jobs"] > 0
    assert slots["ratio"] > 1

    # 5. Import times were measured, and every example DAG file was parsed.
    imports = sections["5"]["facts"]
    assert 0 < imports["provider_s"] < imports["sdk_s"] * 10
    example_dags = sorted(p.name for p in (REPO / "example_dags").glob("*.py") if not p.name.startswith("_"))
    assert sorted(imports["parse"]) == example_dags

    # 6. Every prompt of the burst paid once under each budget; the shared budgets drew no 429 storm;
    # every wait of the polling row ended.
    burst = {row["budget"]: row for row in sections["6"]["facts"]["burst"]}
    assert sorted(burst) == ["host", "process", "redis"]
    for row in burst.values():
        assert row["succeeded"] == row["count"] > 0, row
        assert row["duplicates"] == row["unpaid"] == 0, row
    assert burst["host"]["per_success"] <= 0.05 and burst["redis"]["per_success"] <= 0.05, burst
    for row in sections["6"]["facts"]["polling"]:
        assert row["fired"] == row["waits"] > 0 and row["crashed"] == 0, row

    # 7. One batch task stored every prompt, each submitted once, with no 429; its re-run paid nothing.
    for row in sections["7"]["facts"]["rows"]:
        assert row["stored"] == row["submissions"] == row["size"] > 0, row
        assert row["rate_limited"] == 0, row
        assert row["rerun_submissions"] == row["rerun_credits"] == 0, row
        assert row["rerun_files_unchanged"], row
