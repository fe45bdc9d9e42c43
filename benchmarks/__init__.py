"""
Benchmarks of airflow-provider-cerebraform against its emulator on loopback.

One command runs them all and writes ``docs/benchmarks.md``::

    .venv/bin/python -m benchmarks run            # the full run (about 10 minutes here)
    .venv/bin/python -m benchmarks run --smoke    # tiny sizes, what CI runs (well under a minute)

They print figures; they are not timed tests. Machines are shared and noisy, so every comparison is
measured side by side in the same run and reported as ratios and medians.
"""

from __future__ import annotations
