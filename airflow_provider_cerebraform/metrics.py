"""
The provider's metrics, sent through Airflow's own metrics backend (StatsD, Datadog or OpenTelemetry,
whichever ``[metrics]`` configures; nothing when none is). Names are listed in ``docs/metrics.md``.

Each metric is emitted by the one place that decides the event: the protocol (submissions, 429s,
paced waits, balance), the operator's reconnect and media delivery, the trigger's wait.
"""

from __future__ import annotations

import logging
from typing import Any

PREFIX = "cerebraform"

SUBMISSIONS = f"{PREFIX}.submissions"
RECONNECTIONS = f"{PREFIX}.reconnections"
RATE_LIMITED = f"{PREFIX}.rate_limited"
PACED_WAITS = f"{PREFIX}.paced_waits"
PACED_WAIT_TIME = f"{PREFIX}.paced_wait_time"
CREDITS_BALANCE = f"{PREFIX}.credits_balance"
GENERATION_WAIT_TIME = f"{PREFIX}.generation_wait_time"
BYTES_STORED = f"{PREFIX}.bytes_stored"
FILES_STORED = f"{PREFIX}.files_stored"
LEDGER_HITS = f"{PREFIX}.ledger_hits"

log = logging.getLogger(__name__)
_stats: Any = None


def _backend() -> Any:
    """Airflow's stats module, configured from ``[metrics]`` if this process has not done it yet.

    A task's process configures it; ``dag.test()`` and the triggerer's trigger process may not, and
    then metrics would silently go nowhere.
    """
    global _stats
    if _stats is None:
        from airflow_provider_cerebraform.version_compat import stats_backend

        _stats = stats_backend()
    return _stats


def _emit(method: str, *args: Any, **kwargs: Any) -> None:
    # Metrics must never fail a task: a broken backend costs a debug line, not a generation.
    try:
        getattr(_backend(), method)(*args, **kwargs)
    except Exception:
        log.debug("Could not emit metric %s", args[:1], exc_info=True)


def incr(name: str, count: int = 1, **tags: str) -> None:
    """Add ``count`` to the counter ``name``."""
    _emit("incr", name, count, tags=tags or None)


def timing(name: str, seconds: float, **tags: str) -> None:
    """Record a duration (sent in milliseconds, as Airflow's own timers are)."""
    _emit("timing", name, seconds * 1000.0, tags=tags or None)


def gauge(name: str, value: float, **tags: str) -> None:
    """Set the gauge ``name``."""
    _emit("gauge", name, value, tags=tags or None)
