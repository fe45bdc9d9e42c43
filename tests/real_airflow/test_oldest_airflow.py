"""
The real stack on the oldest Airflow the provider supports (3.0.6): the same tests as
``test_real_airflow.py`` for one deferred generation (the scheduled example) and a triggerer restart
while tasks are deferred, and a retry that reconnects. ``test_real_airflow.py`` makes that retry by
killing the worker after its submission, which cannot work on 3.0 (Airflow 3.0 does not retry a task
whose process died: its supervisor reports FAILED for any non-zero exit without looking at
``retries``; 3.1 added the retry). Here the first try fails with an exception at the same point, and
the retry must reconnect from the record in object storage. ``scripts/test`` runs this module with the
oldest line's compatibility suite; on newer Airflow ``test_real_airflow.py`` covers it all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from airflow_provider_cerebraform.version_compat import AIRFLOW_V_3_1_PLUS

from .test_real_airflow import (  # noqa: F401 (fixtures and tests collected here too)
    assert_a_retry_after_submit_reconnects,
    emulator,
    stack,
    test_example_scheduled_dag_defers_and_stores_media,
    test_triggerer_restart_resumes_deferred_tasks_without_resubmitting,
)

if TYPE_CHECKING:
    import psutil

    from airflow_provider_cerebraform.emulator import EmulatorAdmin

    from .harness import AirflowStack

pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.skipif(AIRFLOW_V_3_1_PLUS, reason="the oldest Airflow line only; test_real_airflow.py runs"),
]


def test_a_try_failed_after_submit_retry_reconnects(
    stack: AirflowStack,  # noqa: F811 (the fixture imported above)
    emulator: EmulatorAdmin,  # noqa: F811
) -> None:
    def fail(runner: psutil.Process, run_id: str) -> None:
        (stack.signals / f"{run_id}.fail").touch()

    assert_a_retry_after_submit_reconnects(stack, emulator, "rt_failed_try", fail)
