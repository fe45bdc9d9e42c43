"""What the tests import from Airflow internals that moved between 3.0 and 3.3 (the provider's own
imports are in ``airflow_provider_cerebraform/version_compat.py``)."""

from __future__ import annotations

from typing import Any

from airflow_provider_cerebraform.version_compat import AIRFLOW_V_3_2_PLUS


def dag_bag(**kwargs: Any) -> Any:
    """Airflow's DagBag: ``airflow.dag_processing.dagbag`` from 3.2, ``airflow.models.dagbag`` before."""
    if AIRFLOW_V_3_2_PLUS:
        from airflow.dag_processing.dagbag import DagBag
    else:
        from airflow.models.dagbag import DagBag
    return DagBag(**kwargs)
