"""
The real stack on the oldest Airflow the provider supports (3.0.6): the same tests as
``test_real_airflow.py`` for one deferred generation (the scheduled example), a triggerer restart
while tasks are deferred. The third, a worker killed after its submission whose retry reconnects,
cannot run on 3.0: Airflow 3.0 does not retry a task whose process died (see its skip reason).
``scripts/test`` runs this module with the oldest line's compatibility suite; on newer Airflow
``test_real_airflow.py`` covers it all.
"""

from __future__ import annotations

import pytest

from airflow_provider_cerebraform.version_compat import AIRFLOW_V_3_1_PLUS

from .test_real_airflow import (  # noqa: F401 (fixtures and tests collected here too)
    emulator,
    stack,
    test_example_scheduled_dag_defers_and_stores_media,
    test_triggerer_restart_resumes_deferred_tasks_without_resubmitting,
)

pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.skipif(AIRFLOW_V_3_1_PLUS, reason="the oldest Airflow line only; test_real_airflow.py runs"),
]


@pytest.mark.skip(
    reason="Airflow 3.0.6 does not retry a task whose process died: its supervisor reports FAILED for any "
    "non-zero exit without looking at retries (3.1 added the retry); measured: try 1 failed, no try 2"
)
def test_worker_killed_after_submit_retry_reconnects() -> None:
    """On 3.1+ ``test_real_airflow.py``'s test of the same name kills the worker and checks the retry."""
