"""
Generation chained with ETL: extract a prompt dataset, clean and deduplicate it, generate one image
per prompt with dynamic task mapping, load the results into a catalog, and let a second DAG pick
the media up when the catalog changes (data-aware scheduling).

``example_cerebraform_etl`` (daily):

1. ``extract``: read ``data/etl_prompts.csv`` (shipped next to this file) through ``ObjectStoragePath``;
   point ``SOURCE`` at ``s3://...`` or ``gs://...`` and nothing else changes.
2. ``clean``: normalise whitespace, drop rows the API would refuse (checked with the provider's own
   validation, before anything is paid for), fall back to a default aspect ratio, deduplicate.
3. ``generate``: ``CerebraformGenerateOperator`` mapped over the clean rows (``expand_kwargs``), in
   the ``cerebraform_create`` pool; each mapped task waits in the triggerer, then stores its image and
   ``<request_id>.manifest.json`` under ``<output>/etl/<YYYY-MM-DD>/media/``.
4. ``load_catalog``: join the rows with the manifests and write ``catalog.jsonl`` (one line per file:
   the source row, the path, size, sha256, request_id); it updates the asset
   ``cerebraform_etl_catalog`` with the catalog's path in the event's ``extra``.

``example_cerebraform_etl_consumer`` runs whenever that asset is updated: it reads the catalog named by
the triggering event (or the latest event, for a manual run), checks every file's size and sha256,
and writes ``gallery.html`` next to the catalog.

Output: the Variable ``cerebraform_output`` (env ``AIRFLOW_VAR_CEREBRAFORM_OUTPUT``), default
``file:///tmp/cerebraform-output``. ``CEREBRAFORM_POLL_INTERVAL`` (environment, seconds, default 10)
sets how often the waits poll.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import logging
import os
import posixpath
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, ObjectStoragePath, task

from airflow_provider_cerebraform.exceptions import CerebraformValidationError
from airflow_provider_cerebraform.operators.cerebraform import CerebraformGenerateOperator
from airflow_provider_cerebraform.validation import validate_aspect_ratio, validate_prompt

POLL_INTERVAL = float(os.environ.get("CEREBRAFORM_POLL_INTERVAL", "10"))
OUTPUT = "{{ var.value.get('cerebraform_output', 'file:///tmp/cerebraform-output') }}"
RUN_DAY = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"
RUN_FOLDER = f"{OUTPUT}/etl/{RUN_DAY}"
SOURCE = (Path(__file__).parent / "data" / "etl_prompts.csv").as_uri()
DEFAULT_ASPECT_RATIO = "1:1"


def generation_kwargs(row: dict[str, Any]) -> dict[str, Any]:
    """The operator arguments of one clean row (``expand_kwargs`` takes one dict per mapped task)."""
    return {"prompt": row["prompt"], "aspect_ratio": row["aspect_ratio"]}


def sha256_of(path: ObjectStoragePath) -> str:
    """Stream a file of any size through sha256."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


# Declared without a URI: each run's catalog has its own path, which the event's extra carries.
CATALOG = Asset(name="cerebraform_etl_catalog")
log = logging.getLogger(__name__)


with DAG(
    dag_id="example_cerebraform_etl",
    description="Prompt CSV -> clean, deduplicate -> mapped image generation -> catalog (asset)",
    schedule="@daily",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    tags=["cerebraform", "example"],
) as etl_dag:

    @task
    def extract(source: str) -> list[dict[str, str]]:
        text = ObjectStoragePath(source).read_text(encoding="utf-8")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        log.info("Read %d rows from %s", len(rows), source)
        return rows

    @task
    def clean(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
        """The rows worth paying for: valid, normalised and unique (case and spacing ignored)."""
        seen: set[tuple[str, str]] = set()
        kept: list[dict[str, Any]] = []
        for number, row in enumerate(rows, start=2):  # line 1 is the header
            prompt = " ".join((row.get("prompt") or "").split())
            try:
                validate_prompt(prompt)
            except CerebraformValidationError as error:
                log.warning("Line %d dropped: %s", number, error)
                continue
            aspect_ratio = (row.get("aspect_ratio") or "").strip() or DEFAULT_ASPECT_RATIO
            try:
                validate_aspect_ratio(aspect_ratio)
            except CerebraformValidationError:
                log.warning(
                    "Line %d: aspect ratio %r replaced by %s", number, aspect_ratio, DEFAULT_ASPECT_RATIO
                )
                aspect_ratio = DEFAULT_ASPECT_RATIO
            key = (prompt.casefold(), aspect_ratio)
            if key in seen:
                log.info("Line %d dropped: a duplicate of an earlier row", number)
                continue
            seen.add(key)
            kept.append(
                {"sku": (row.get("sku") or "").strip(), "prompt": prompt, "aspect_ratio": aspect_ratio}
            )
        log.info("%d of %d rows kept", len(kept), len(rows))
        return kept

    @task(outlets=[CATALOG])
    def load_catalog(
        rows: list[dict[str, Any]], manifests: list[list[dict[str, Any]]], catalog: str, **context: Any
    ) -> str:
        """Write one JSON line per stored file; mapped results come back in the order of ``rows``."""
        manifests = manifests[:]  # every mapped result in one request, in map-index order
        if len(manifests) != len(rows):
            raise ValueError(f"{len(rows)} rows but {len(manifests)} manifests")
        lines = [
            {**row, **entry, "run_id": context["run_id"]}
            for row, manifest in zip(rows, manifests, strict=True)
            for entry in manifest
        ]
        target = ObjectStoragePath(catalog)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
        context["outlet_events"][CATALOG].extra = {"catalog": str(target), "files": len(lines)}
        log.info("Loaded %d files into %s", len(lines), target)
        return str(target)

    rows = clean(extract(SOURCE))
    generate = CerebraformGenerateOperator.partial(
        task_id="generate",
        kind="image",
        output=f"{RUN_FOLDER}/media",
        poll_interval=POLL_INTERVAL,
        wait_timeout=3600,
        pool="cerebraform_create",
        max_active_tis_per_dag=8,
        map_index_template="{{ task.prompt[:60] }}",
    ).expand_kwargs(rows.map(generation_kwargs))
    load_catalog(rows, generate.output, catalog=f"{RUN_FOLDER}/catalog.jsonl")


with DAG(
    dag_id="example_cerebraform_etl_consumer",
    description="Runs when the Cerebraform ETL catalog is updated: verifies the media, writes a gallery",
    schedule=[CATALOG],
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["cerebraform", "example"],
) as consumer_dag:

    @task(inlets=[CATALOG])
    def pick_up_media(**context: Any) -> str:
        events = list(context["triggering_asset_events"].get(CATALOG) or [])
        if not events:  # a manual run: take the catalog's latest event
            # Oldest first on every Airflow 3 (a list before 3.2, a lazy sequence since).
            events = list(context["inlet_events"][CATALOG][-1:])
        if not events:
            raise ValueError("The catalog asset has no event yet: run example_cerebraform_etl first.")
        catalog = ObjectStoragePath(events[-1].extra["catalog"])
        entries = [json.loads(line) for line in catalog.read_text().splitlines() if line.strip()]
        cards = []
        for entry in entries:
            media = ObjectStoragePath(entry["path"])
            if media.stat().st_size != entry["bytes"] or sha256_of(media) != entry["sha256"]:
                raise ValueError(f"{media} does not match the catalog (size or sha256)")
            relative = posixpath.relpath(media.path, catalog.parent.path)  # works on every storage
            cards.append(
                f'<figure><img src="{html.escape(relative)}" width="256">'
                f"<figcaption>{html.escape(entry['sku'])}: {html.escape(entry['prompt'])}</figcaption>"
                "</figure>"
            )
        gallery = catalog.parent / "gallery.html"
        gallery.write_text(
            "<!doctype html><meta charset=utf-8><title>Cerebraform ETL gallery</title>\n"
            + "\n".join(cards)
            + "\n"
        )
        log.info("Verified %d files; gallery at %s", len(entries), gallery)
        return str(gallery)

    pick_up_media()
