"""These operators retry by default (a retry reconnects, so it is free, and it rescues a task Airflow
marks failed after resuming from deferral), but a user's own ``retries`` always wins."""

from __future__ import annotations

from datetime import datetime

import pytest

from airflow_provider_cerebraform.operators.cerebraform import (
    DEFAULT_RETRIES,
    CerebraformGenerateOperator,
    CerebraformResultOperator,
    CerebraformSubmitOperator,
)


def _dag(**default_args):
    from airflow.sdk import DAG

    return DAG("retries_dag", schedule=None, start_date=datetime(2026, 1, 1), default_args=default_args)


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: CerebraformGenerateOperator(task_id=f"t{len(kw)}", prompt="a cat", **kw),
        lambda **kw: CerebraformSubmitOperator(task_id=f"t{len(kw)}", prompt="a cat", **kw),
        lambda **kw: CerebraformResultOperator(task_id=f"t{len(kw)}", request_id="r1", **kw),
    ],
)
def test_default_retries_unless_the_task_or_the_dag_sets_them(make) -> None:
    assert DEFAULT_RETRIES >= 1
    with _dag():
        assert make().retries == DEFAULT_RETRIES
        assert make(retries=0).retries == 0  # the user's explicit choice
    with _dag(retries=0):
        assert make().retries == 0  # the DAG's default_args
    with _dag(retries=5):
        assert make().retries == 5


@pytest.mark.airflow_min(
    "3.3",
    reason="partial() takes retries from Airflow's default (0), not the operator's: seen on 3.0.6 and 3.1.8",
)
def test_mapped_tasks_get_the_default_and_keep_the_dags() -> None:
    with _dag():
        mapped = CerebraformGenerateOperator.partial(task_id="m").expand(prompt=["a", "b"])
        explicit = CerebraformGenerateOperator.partial(task_id="n", retries=0).expand(prompt=["a"])
    assert mapped.partial_kwargs["retries"] == DEFAULT_RETRIES
    assert explicit.partial_kwargs["retries"] == 0
    with _dag(retries=0):
        mapped = CerebraformGenerateOperator.partial(task_id="m").expand(prompt=["a", "b"])
    assert mapped.partial_kwargs["retries"] == 0
