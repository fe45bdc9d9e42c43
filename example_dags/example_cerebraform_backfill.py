"""
Backfill over a prompt dataset partitioned by date: each day's prompts are generated once, whatever
is re-run, and the backfill stays inside the account's task-creation limit.

The dataset is ``data/daily_prompts/<YYYY-MM-DD>.jsonl`` (one JSON object per line: ``id``,
``prompt``, ``aspect_ratio``); a day without a file has nothing to generate. Backfill a range with a
running scheduler (and triggerer)::

    airflow pools set cerebraform_create 4 "Cerebraform task creation"
    airflow backfill create --dag-id example_cerebraform_backfill \\
        --from-date 2025-06-01 --to-date 2025-06-07 --max-active-runs 2

Each partition lands in ``<output>/backfill/dt=<YYYY-MM-DD>/``: one folder per prompt id holding
``image_0.png`` and ``<request_id>.manifest.json``, and the partition's ``_manifest.json`` last.

What protects what:

- **A finished partition is never paid for again.** ``plan_partition`` skips the whole run when the
  partition's ``_manifest.json`` exists, which is written last and atomically. Re-running a date
  (``--reprocess-behavior completed``, clearing the run, a second backfill) submits nothing.
- **A half-done partition pays only for what is missing.** A prompt whose folder already holds a
  manifest (written by the provider only after every file of the task is stored) is not submitted
  again; only the others are.
- **Paths are deterministic** (partition, prompt id, ``image_{index}``), so a prompt generated again
  overwrites its own files instead of adding new ones.
- **A retry does not pay twice.** The generate operator remembers its request in the task state
  store as soon as the service accepts it: a retry or a cleared task of the same run reconnects to
  that request instead of submitting a new one.
- **The task-creation limit.** The ``cerebraform_create`` pool caps how many submissions run at
  once; the provider paces each process under the tier's hourly limit; when the service still
  answers 429, the task defers (freeing its worker slot and pool slot) until ``Retry-After`` and
  tries again, for up to ``max_rate_limit_wait`` seconds.
- **Left to a person:** a submission whose answer was lost (a 5xx, a read timeout or a dropped
  connection on the POST) may have been created and charged without a request id to follow. The
  task fails with ``CerebraformSubmissionUncertainError`` and is not retried, since a retry could
  pay twice: check the account, then clear the task (or re-run the partition) to submit again.

Output: the Variable ``cerebraform_output`` (env ``AIRFLOW_VAR_CEREBRAFORM_OUTPUT``), default
``file:///tmp/cerebraform-output``. ``CEREBRAFORM_POLL_INTERVAL`` (environment, seconds, default 10)
sets how often the waits poll.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, ObjectStoragePath, task

from airflow_provider_cerebraform.operators.cerebraform import CerebraformGenerateOperator
from airflow_provider_cerebraform.version_compat import AirflowSkipException

POLL_INTERVAL = float(os.environ.get("CEREBRAFORM_POLL_INTERVAL", "10"))
OUTPUT = "{{ var.value.get('cerebraform_output', 'file:///tmp/cerebraform-output') }}"
RUN_DAY = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"
DATASET = (Path(__file__).parent / "data" / "daily_prompts").as_uri()
PARTITION_MANIFEST = "_manifest.json"
PARTITIONS = Asset(name="cerebraform_backfill_partitions")
_PROMPT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")

log = logging.getLogger(__name__)


def read_partition(dataset: str, output: str, day: str) -> tuple[ObjectStoragePath, list[dict[str, Any]]]:
    """The partition's output folder and its prompts (none when the day has no file)."""
    folder = ObjectStoragePath(output) / f"dt={day}"
    source = ObjectStoragePath(dataset) / f"{day}.jsonl"
    if not source.exists():
        return folder, []
    prompts = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    ids = [prompt["id"] for prompt in prompts]
    if len(set(ids)) != len(ids) or not all(_PROMPT_ID.match(prompt_id) for prompt_id in ids):
        raise ValueError(f"{source}: prompt ids must be unique, lower-case letters, digits and '-'")
    return folder, prompts


@task
def plan_partition(dataset: str, output: str, day: str) -> list[dict[str, Any]]:
    """Skip the run if the partition is complete; else the generations still to pay for."""
    folder, prompts = read_partition(dataset, output, day)
    if (folder / PARTITION_MANIFEST).exists():
        raise AirflowSkipException(f"Partition {day} is complete ({folder / PARTITION_MANIFEST}).")
    if not prompts:
        raise AirflowSkipException(f"No prompts for {day} in {dataset}.")
    todo = []
    for prompt in prompts:
        prompt_folder = folder / prompt["id"]
        if prompt_folder.exists() and any(prompt_folder.glob("*.manifest.json")):
            log.info("%s/%s was generated by an earlier run; not paying again", day, prompt["id"])
            continue
        todo.append(
            {
                "prompt": prompt["prompt"],
                "aspect_ratio": prompt.get("aspect_ratio"),
                "output": str(prompt_folder),
            }
        )
    log.info("Partition %s: %d prompts, %d to generate", day, len(prompts), len(todo))
    return todo


@task(trigger_rule="none_failed_min_one_success", outlets=[PARTITIONS])
def write_partition_manifest(dataset: str, output: str, day: str, **context: Any) -> str:
    """Gather every prompt's stored files into the partition manifest, written last and atomically."""
    folder, prompts = read_partition(dataset, output, day)
    entries = []
    for prompt in prompts:
        manifests = sorted((folder / prompt["id"]).glob("*.manifest.json"), key=lambda path: path.name)
        if not manifests:
            raise FileNotFoundError(f"{folder / prompt['id']} has no manifest: its generation did not finish")
        files = [entry for manifest in manifests for entry in json.loads(manifest.read_text())]
        entries.append({**prompt, "files": files})
    body = {"partition": day, "run_id": context["run_id"], "prompts": entries}
    target = folder / PARTITION_MANIFEST
    temporary = folder / f".{PARTITION_MANIFEST}.{context['ti'].try_number}.tmp"
    temporary.write_text(json.dumps(body, indent=2, sort_keys=True))
    temporary.move(target)  # the manifest appears complete or not at all
    context["outlet_events"][PARTITIONS].extra = {"partition": day, "manifest": str(target)}
    log.info("Partition %s complete: %s", day, target)
    return str(target)


with DAG(
    dag_id="example_cerebraform_backfill",
    description="Date-partitioned prompts, each partition generated exactly once (safe to backfill)",
    schedule="@daily",
    start_date=datetime(2025, 6, 1),
    catchup=False,
    max_active_runs=2,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=1)},
    tags=["cerebraform", "example"],
) as dag:
    partition = {"dataset": DATASET, "output": f"{OUTPUT}/backfill", "day": RUN_DAY}
    generate = CerebraformGenerateOperator.partial(
        task_id="generate",
        kind="image",
        file_name="image_{index}{ext}",
        poll_interval=POLL_INTERVAL,
        wait_timeout=6 * 3600,
        # Hours, not minutes: on the free tier (10 tasks an hour) a big backfill queues behind 429s.
        max_rate_limit_wait=24 * 3600,
        pool="cerebraform_create",
        map_index_template="{{ task.prompt[:60] }}",
    ).expand_kwargs(plan_partition(**partition))
    generate >> write_partition_manifest(**partition)
