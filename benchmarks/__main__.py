"""
``python -m benchmarks run [--smoke] [--only 1,3] [--set FIELD=VALUE ...] [--output FILE] [--json FILE]
[--keep]``

Runs the benchmarks against the emulator on loopback and writes one markdown report: every benchmark
at the full size to ``docs/benchmarks.md`` by default; the smoke size, or a part (``--only``), to
stdout unless ``--output`` is given, so that a part never replaces the whole report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import REPO, machine_info

if TYPE_CHECKING:
    from benchmarks.common import Section

DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
NAMES = {
    1: "triggerer",
    2: "submission",
    3: "streaming",
    4: "worker_slots",
    5: "imports",
    6: "shared_budget",
    7: "batch",
    8: "real_stack",
}
#: Left out of ``--smoke`` unless named with ``--only``: it starts a whole Airflow (minutes).
HEAVY = {8}


def _command() -> str:
    python = Path(sys.executable)
    with_venv = REPO / ".venv" / "bin"
    shown = f".venv/bin/{python.name}" if python.parent == with_venv else str(python)
    return " ".join([shown, "-m", "benchmarks", *map(shlex.quote, sys.argv[1:])])


def _run_one(number: int, profile: Any, work: Path) -> Section:
    import importlib

    module = importlib.import_module(f"benchmarks.{NAMES[number]}")
    return module.run(profile, work)


def render(
    sections: list[Section], machine: dict[str, str], command: str, started: str, wall: float, smoke: bool
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated; do not edit by hand. To refresh it, run from the repository root:",
        "",
        "```bash",
        ".venv/bin/python -m benchmarks run            # the full size, about 35 minutes here",
        ".venv/bin/python -m benchmarks run --smoke    # every benchmark at a tiny size (CI runs it)",
        ".venv/bin/python -m benchmarks run --only 7 --output /tmp/s7.md  # some of them, to a file",
        "```",
        "",
        f"- Command of this report: `{command}`",
        f"- Date: {started}",
        f"- Wall time: {wall / 60:.1f} minutes",
        "",
        "Everything runs against the emulator (`airflow_provider_cerebraform.emulator`) and a moto S3",
        "server on 127.0.0.1, with time compressed by the emulator's `--time-scale` and the connection's",
        "`time_scale` extra. These are measurements, not tests: the machine is shared with other",
        "engineers and noisy (see the load averages), so comparisons are made side by side in the same",
        "run and reported as ratios and medians; absolute seconds move from run to run.",
        "",
    ]
    if smoke:
        lines += ["**Smoke size: the figures below only show that the benchmarks run.**", ""]
    lines += ["## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in machine.items()]
    lines += ["", "## Summary", ""]
    for section in sections:
        for headline in section.headlines:
            lines.append(f"- ({section.number}) {headline}.")
    misses = [(section.number, miss) for section in sections for miss in section.misses]
    lines += ["", "Missed targets:" if misses else "Every target was met.", ""]
    lines += [f"- ({number}) {miss}." for number, miss in misses]
    for section in sections:
        lines += ["", section.markdown()]
    return "\n".join(lines).rstrip() + "\n"


def _override(profile: Any, assignments: list[str], parser: argparse.ArgumentParser) -> Any:
    """The profile with ``FIELD=VALUE`` overrides, each parsed as the type of the field's current value."""
    import dataclasses

    changes: dict[str, Any] = {}
    fields = {field.name for field in dataclasses.fields(profile)}
    for assignment in assignments:
        name, _, text = assignment.partition("=")
        name = name.strip()
        if name not in fields or name == "name" or not text:
            parser.error(f"--set {assignment!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        current = getattr(profile, name)
        try:
            if isinstance(current, tuple) and all(isinstance(v, (int, float)) for v in current):
                kind = type(current[0]) if current else int
                changes[name] = tuple(kind(part) for part in text.split(",") if part.strip())
            elif isinstance(current, (bool, int, float, str)):
                changes[name] = type(current)(text)
            else:
                parser.error(f"--set {assignment!r}: {name} cannot be set from the command line")
        except ValueError:
            parser.error(f"--set {assignment!r}: not a valid {type(current).__name__}")
    return dataclasses.replace(profile, **changes) if changes else profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run the benchmarks and write the report")
    run.add_argument("--smoke", action="store_true", help="tiny sizes: shows the benchmarks still run")
    run.add_argument("--only", default="", help="comma-separated benchmark numbers (1-8)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field of the profile (benchmarks/profiles.py), e.g. batch_sizes=1000 or "
        "batch_time_scale=36; a tuple of numbers is comma-separated",
    )
    run.add_argument(
        "--output", type=Path, help=f"report file (default: {DEFAULT_OUTPUT} for a full run, else stdout)"
    )
    run.add_argument("--json", type=Path, help="also write the plain figures as JSON")
    run.add_argument("--keep", action="store_true", help="keep the work directory with every log")
    args = parser.parse_args(argv)

    from benchmarks.profiles import PROFILES

    profile = _override(PROFILES["smoke" if args.smoke else "full"], args.set, parser)
    numbers = [int(n) for n in args.only.split(",") if n.strip()] or [
        n for n in sorted(NAMES) if not (args.smoke and n in HEAVY)
    ]
    output = args.output or (None if args.smoke or args.only.strip() else DEFAULT_OUTPUT)
    # Benchmarks must not see a developer's Airflow home or connections.
    work = Path(tempfile.mkdtemp(prefix="cerebraform-bench-"))
    os.environ["AIRFLOW_HOME"] = str(work / "airflow-home")
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
    (work / "airflow-home").mkdir()

    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = machine_info()
    command = _command()
    began = time.perf_counter()
    sections: list[Section] = []
    failed = False
    for number in numbers:
        print(f"[benchmarks] {number}. {NAMES[number]} ...", flush=True)
        try:
            section = _run_one(number, profile, work)
        except Exception:
            failed = True
            traceback.print_exc()
            print(f"[benchmarks] {number}. {NAMES[number]} FAILED; logs kept in {work}", flush=True)
            continue
        sections.append(section)
        print(f"[benchmarks] {number}. {NAMES[number]} done in {section.wall_seconds:.0f} s", flush=True)
        for headline in section.headlines:
            print(f"    {headline}", flush=True)
        for miss in section.misses:
            print(f"    MISSED: {miss}", flush=True)
    wall = time.perf_counter() - began
    machine["load average at end"] = " ".join(f"{value:.2f}" for value in os.getloadavg())
    report = render(sections, machine, command, started, wall, args.smoke)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report, encoding="utf-8")
        print(f"[benchmarks] wrote {output} ({wall:.0f} s in all)", flush=True)
    else:
        print(report)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "profile": profile.name,
                    "wall_seconds": wall,
                    "sections": {
                        str(s.number): {"facts": s.facts, "misses": s.misses, "headlines": s.headlines}
                        for s in sections
                    },
                },
                indent=2,
                default=str,
            ),
            encoding="utf-8",
        )
    if failed or args.keep:
        print(f"[benchmarks] work directory kept: {work}", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
