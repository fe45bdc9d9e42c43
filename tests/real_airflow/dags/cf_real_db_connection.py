"""
``cf_real_db_connection``: a submission and a deferred sensor on a connection stored in the metadata
database (``cerebraform_db``, made through the REST API by ``benchmarks/triggerer_stall.py``), not in an
environment variable. The triggerer then looks the connection up through its supervisor, which is what
issue 12's 65-second stall needs.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_cerebraform.operators.cerebraform import CerebraformSubmitOperator
from airflow_provider_cerebraform.sensors.cerebraform import CerebraformTaskSensor

CONN_ID = "cerebraform_db"

with DAG(
    dag_id="cf_real_db_connection",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["cerebraform", "real-airflow-test"],
):
    submit = CerebraformSubmitOperator(
        task_id="submit", prompt="a quiet library, {{ run_id }}", kind="image", cerebraform_conn_id=CONN_ID
    )
    CerebraformTaskSensor(
        task_id="wait",
        request_id=submit.output,
        kind="image",
        cerebraform_conn_id=CONN_ID,
        poll_interval=0.5,
        timeout=900,
    )
