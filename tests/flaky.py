"""
``scripts/flaky``: run test modules several times in a row and count failures per test.

Each run is a separate ``pytest`` process writing a JUnit XML report; the reports are merged into a
table of tests that failed (or errored) at least once, with the run numbers, plus each run's wall time
and totals. ``--load`` starts busy processes beside the runs, stopped by pid when the runs end.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUSY = "import itertools\nfor _ in itertools.count(): pass\n"


def _outcomes(report: Path, reasons: dict[str, list[str]]) -> dict[str, str]:
    """
    ``{test id: passed|failed|error|skipped}`` from one JUnit XML report; the message of each failure
    or error is added to ``reasons`` under its test.
    """
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                state = "failed" if child.tag == "failure" else child.tag
            if child.tag in ("failure", "error"):
                reasons[test_id].append((child.get("message") or child.text or "")[:500])
        outcomes[test_id] = state
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/flaky", description=__doc__)
    parser.add_argument("-n", "--runs", type=int, default=5, help="how many runs (default 5)")
    parser.add_argument("--load", type=int, default=0, help="busy processes beside the runs (default 0)")
    parser.add_argument("--report", default="flaky-report.txt", help="where the report is written")
    args, pytest_args = parser.parse_known_args(argv)
    if args.runs < 1 or args.load < 0:
        parser.error("--runs must be at least 1 and --load at least 0")

    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.load)]
    failures: dict[str, list[int]] = defaultdict(list)
    reasons: dict[str, list[str]] = defaultdict(list)
    lines: list[str] = []
    seen: set[str] = set()
    try:
        with tempfile.TemporaryDirectory(prefix="cerebraform-flaky-") as tmp:
            for run in range(1, args.runs + 1):
                report = Path(tmp) / f"run-{run}.xml"
                began = time.monotonic()
                command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
                done = subprocess.run(
                    [*command, f"--junitxml={report}", *pytest_args],
                    cwd=REPO,
                    check=False,
                    stdout=subprocess.DEVNULL if os.environ.get("FLAKY_QUIET") else None,
                )
                wall = time.monotonic() - began
                # The machine's own load over the run, neighbours included, not just our busy processes.
                load_avg = os.getloadavg()[1]
                outcomes = _outcomes(report, reasons) if report.exists() else {}
                seen.update(outcomes)
                bad = [test for test, state in outcomes.items() if state in ("failed", "error")]
                for test in bad:
                    failures[test].append(run)
                counts = Counter(outcomes.values())
                lines.append(
                    f"run {run}: exit {done.returncode}, {counts['passed']} passed, "
                    f"{counts['failed']} failed, {counts['error']} errors in {wall:.1f} s "
                    f"(busy processes {args.load}, load average {load_avg:.1f} over the last 5 min)"
                )
                if not outcomes:
                    failures["<no report: pytest could not run>"].append(run)
    finally:
        for process in busy:
            process.send_signal(signal.SIGTERM)
        for process in busy:
            process.wait(timeout=10)
    lines.append(f"{len(seen)} tests, {args.runs} runs, {sum(map(len, failures.values()))} failures")
    for test, runs in sorted(failures.items()):
        lines.append(f"  FAILED {len(runs)}/{args.runs} (runs {', '.join(map(str, runs))}): {test}")
        lines.extend(f"    {reason}" for reason in reasons.get(test, []))
    text = "\n".join(lines)
    print(text)
    Path(args.report).write_text(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
