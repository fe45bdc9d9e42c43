"""
``cf_real_mapped``: one image generation per prompt, mapped, written as a user would with Airflow's
defaults (no ``retries``, no ``default_args``). ``benchmarks/deferral_race.py`` runs it on the real
stack to count generations lost to Airflow's deferral race (apache/airflow #72716) or paid twice.
The prompts come from the run's conf (``{"prompts": [...]}``). ``cf_real_mapped_queued`` is the same
with a shorter in-process wait, for the time-compressed CeleryExecutor test.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_cerebraform.operators.cerebraform import CerebraformGenerateOperator


@task
def prompts(dag_run: Any = None) -> list[str]:
    return list(dag_run.conf["prompts"])


with DAG(
    dag_id="cf_real_mapped",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["cerebraform", "real-airflow-test"],
):
    CerebraformGenerateOperator.partial(
        task_id="generate",
        kind="image",
        output="{{ var.value.cerebraform_output }}/{{ dag.dag_id }}/{{ run_id }}/{{ ti.map_index }}",
        poll_interval=0.5,
    ).expand(prompt=prompts())

# The same for the CeleryExecutor test, whose service runs 60x faster than real time: there the default
# in-process wait (60 s) is a whole creation window, and tasks waiting in-process held every worker
# slot while new tasks could not start to take the next slots. 30 s (RESUME_AHEAD) keeps the queue in
# the shared budget instead, as the default does against a real hour-long window.
with DAG(
    dag_id="cf_real_mapped_queued",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["cerebraform", "real-airflow-test"],
):
    CerebraformGenerateOperator.partial(
        task_id="generate",
        kind="image",
        output="{{ var.value.cerebraform_output }}/{{ dag.dag_id }}/{{ run_id }}/{{ ti.map_index }}",
        poll_interval=0.5,
        max_in_process_wait=30.0,
    ).expand(prompt=prompts())
