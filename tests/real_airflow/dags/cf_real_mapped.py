"""
``cf_real_mapped``: one image generation per prompt, mapped, written as a user would with Airflow's
defaults (no ``retries``, no ``default_args``). ``benchmarks/deferral_race.py`` runs it on the real
stack to count generations lost to Airflow's deferral race (apache/airflow #72716) or paid twice.
The prompts come from the run's conf (``{"prompts": [...]}``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_cerebraform.operators.cerebraform import CerebraformGenerateOperator

with DAG(
    dag_id="cf_real_mapped",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["cerebraform", "real-airflow-test"],
):

    @task
    def prompts(dag_run: Any = None) -> list[str]:
        return list(dag_run.conf["prompts"])

    CerebraformGenerateOperator.partial(
        task_id="generate",
        kind="image",
        output="{{ var.value.cerebraform_output }}/{{ dag.dag_id }}/{{ run_id }}/{{ ti.map_index }}",
        poll_interval=0.5,
    ).expand(prompt=prompts())
