"""
The example DAGs, as a user would run them: parsed by a DagBag, then each run end to end with
``dag.test()`` against the emulator, checking the media, manifests and catalogs they leave behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import REPO, load_dag, output_entries

from airflow_provider_cerebraform.version_compat import dag_bag

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

EXAMPLES = REPO / "example_dags"
EXAMPLE_DAG_IDS = {
    "example_cerebraform_scheduled",
    "example_cerebraform_etl",
    "example_cerebraform_etl_consumer",
    "example_cerebraform_backfill",
    "example_cerebraform_batch",
}
CREATE_POOL = "cerebraform_create"

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the examples write (their ``cerebraform_output`` Variable); waits poll fast."""
    folder = tmp_path / "output"
    monkeypatch.setenv("AIRFLOW_VAR_CEREBRAFORM_OUTPUT", folder.as_uri())
    monkeypatch.setenv("CEREBRAFORM_POLL_INTERVAL", "0.2")
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_png(path: Path, size: tuple[int, int] | None = None) -> None:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG", path
        if size is not None:
            assert image.size == size, path
        image.load()  # decodes every pixel: a truncated file fails here


def assert_mp4(path: Path, seconds: float) -> None:
    import imageio_ffmpeg

    assert path.read_bytes()[4:8] == b"ftyp", path
    frames, duration = imageio_ffmpeg.count_frames_and_secs(str(path))  # a real decode by ffmpeg
    assert frames > 0, path
    assert duration == pytest.approx(seconds, abs=0.5), path


def assert_manifest_matches(entry: dict[str, Any], request_id: str, kind: str) -> Path:
    """A manifest entry names a complete file: same size and sha256 as what is on disk."""
    assert entry["request_id"] == request_id
    assert entry["kind"] == kind
    assert entry["path"].startswith("file://")
    path = Path(entry["path"].removeprefix("file://"))
    assert path.stat().st_size == entry["bytes"]
    assert sha256(path) == entry["sha256"]
    return path


def files_under(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: relative path -> (sha256, mtime in ns)."""
    return {
        str(path.relative_to(folder)): (sha256(path), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def asset_event_extras(asset_name: str, run_id: str) -> list[dict[str, Any]]:
    """The ``extra`` of each event the run emitted for the asset, from the metadata database."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == asset_name, AssetEvent.source_run_id == run_id)
        ).all()
        return [dict(event.extra) for event in events]


def test_every_example_dag_loads_without_import_errors_or_warnings() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = dag_bag(dag_folder=EXAMPLES, known_pools={"default_pool", CREATE_POOL})

    assert bag.import_errors == {}
    assert bag.dag_warnings == set()

    # Warnings raised in our files; a library's own (3.0's starlette import under a newer anyio) is not ours.
    def ours(location: str) -> bool:
        return location.startswith(str(REPO)) and "site-packages" not in location

    captured = {
        path: [w for w in found if ours(w.split(":")[0])] for path, found in bag.captured_warnings.items()
    }
    assert {path: found for path, found in captured.items() if found} == {}
    mine = [w for w in caught if ours(str(w.filename))]
    assert mine == [], [str(w.message) for w in mine]
    assert set(bag.dag_ids) == EXAMPLE_DAG_IDS
    for dag_id in EXAMPLE_DAG_IDS:
        dag = bag.get_dag(dag_id)
        assert "cerebraform" in dag.tags and "example" in dag.tags, dag_id
    # Generations that fan out take their turn in the task-creation pool.
    assert bag.get_dag("example_cerebraform_etl").get_task("generate").pool == CREATE_POOL
    # A batch is one task per dataset or partition: it paces its own submissions.
    for dag_id, task_id in (
        ("example_cerebraform_backfill", "generate_partition"),
        ("example_cerebraform_batch", "generate_catalog"),
    ):
        assert len(bag.get_dag(dag_id).tasks) == 1
        assert bag.get_dag(dag_id).get_task(task_id).task_type == "CerebraformBatchGenerateOperator"


def test_scheduled_example_makes_an_image_then_a_video_from_it_on_a_manual_run(
    cerebraform_emulator: EmulatorHandle, output_dir: Path
) -> None:
    dag = load_dag("example_dags/example_cerebraform_scheduled.py", "example_cerebraform_scheduled")

    run = dag.test(logical_date=None)  # like a manual trigger: no logical date, so no {{ ds }}

    assert run.state == "success"
    day = run.run_after.date()
    folder = output_dir / "scheduled" / day.isoformat()
    image, video = folder / "image_0.png", folder / "video_0.mp4"
    assert_png(image, size=(512, 288))  # 16:9
    assert_mp4(video, seconds=5)

    tasks = {task["kind"]: task for task in cerebraform_emulator.admin.stats()["tasks"]}
    assert sorted(tasks) == ["image", "video"]
    assert day.strftime("%d %B %Y") in tasks["image"]["prompt"]
    image_entries = json.loads((folder / f"{tasks['image']['request_id']}.manifest.json").read_text())
    video_entries = json.loads((folder / f"{tasks['video']['request_id']}.manifest.json").read_text())
    assert assert_manifest_matches(image_entries[0], tasks["image"]["request_id"], "image") == image
    assert assert_manifest_matches(video_entries[0], tasks["video"]["request_id"], "video") == video
    # The video was animated from the image: its image_url is the image's result URL.
    assert tasks["video"]["image_url"] == image_entries[0]["source_url"]
    assert (tasks["video"]["duration"], tasks["video"]["aspect_ratio"]) == (5, "16:9")
    assert [path.name for path in output_entries(folder)] == sorted(
        ["image_0.png", "video_0.mp4", *(f"{task['request_id']}.manifest.json" for task in tasks.values())]
    )
    # The video's asset event carries its manifest, for DAGs scheduled on the asset.
    (extra,) = asset_event_extras("cerebraform_daily_video", run.run_id)
    assert extra == {"request_id": tasks["video"]["request_id"], "manifest": video_entries}

    # Triggered again the same day: the ledger has both generations, so nothing is paid or overwritten.
    files = {path.name: path.read_bytes() for path in output_entries(folder)}
    again = dag.test(logical_date=None)
    assert again.state == "success"
    if again.run_after.date() == day:  # not across midnight: the same prompts
        assert cerebraform_emulator.admin.stats()["submissions"]["total"] == 2
        assert [path.name for path in output_entries(folder)] == sorted(files)
        assert (image.read_bytes(), video.read_bytes()) == (files["image_0.png"], files["video_0.mp4"])
        for manifest in (f"{task['request_id']}.manifest.json" for task in tasks.values()):
            (entry,) = json.loads((folder / manifest).read_text())
            assert (
                entry["sha256"]
                == hashlib.sha256((folder / entry["path"].rsplit("/", 1)[1]).read_bytes()).hexdigest()
            )


def test_etl_example_cleans_generates_loads_a_catalog_and_the_consumer_picks_it_up(
    cerebraform_emulator: EmulatorHandle, output_dir: Path
) -> None:
    producer = load_dag("example_dags/example_cerebraform_etl.py", "example_cerebraform_etl")
    consumer = load_dag("example_dags/example_cerebraform_etl.py", "example_cerebraform_etl_consumer")

    run = producer.test()

    assert run.state == "success"
    # Of the 8 CSV rows: one empty prompt dropped, two duplicates (one differing only in case and
    # spacing) dropped; a blank and an invalid aspect ratio fall back to 1:1.
    expected = {
        "MUG-001": "1:1",
        "LAMP-014": "4:5",
        "CHAIR-203": "1:1",
        "BAG-077": "4:5",
        "VASE-009": "1:1",
    }
    tasks = cerebraform_emulator.admin.stats()["tasks"]
    assert len(tasks) == len(expected)
    assert len({task["prompt"].casefold() for task in tasks}) == len(expected)
    assert all(task["prompt"] == " ".join(task["prompt"].split()) for task in tasks)

    folder = output_dir / "etl" / run.logical_date.date().isoformat()
    lines = [json.loads(line) for line in (folder / "catalog.jsonl").read_text().splitlines()]
    assert {line["sku"]: line["aspect_ratio"] for line in lines} == expected
    by_request = {task["request_id"]: task for task in tasks}
    for line in lines:
        path = assert_manifest_matches(line, line["request_id"], "image")
        assert path.parent == folder / "media"
        assert_png(path)
        assert by_request[line["request_id"]]["prompt"] == line["prompt"]
        assert by_request[line["request_id"]]["aspect_ratio"] == line["aspect_ratio"]
        assert (path.parent / f"{line['request_id']}.manifest.json").is_file()

    (extra,) = asset_event_extras("cerebraform_etl_catalog", run.run_id)
    assert extra == {"catalog": (folder / "catalog.jsonl").as_uri(), "files": len(expected)}

    # The consumer finds the catalog through the asset event the producer emitted.
    picked = consumer.test()

    assert picked.state == "success"
    gallery = (folder / "gallery.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', gallery)
    assert sorted(sources) == sorted(f"media/{Path(line['path']).name}" for line in lines)
    assert cerebraform_emulator.admin.stats()["submissions"]["total"] == len(expected)


def partition_results(partition: Path) -> list[dict[str, Any]]:
    text = (partition / "_cerebraform" / "results.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_backfill_example_generates_each_partition_once_and_reruns_pay_nothing(
    cerebraform_emulator: EmulatorHandle, output_dir: Path
) -> None:
    admin = cerebraform_emulator.admin
    dag = load_dag("example_dags/example_cerebraform_backfill.py", "example_cerebraform_backfill")
    day = datetime(2025, 6, 2, tzinfo=timezone.utc)
    partition = output_dir / "backfill" / "dt=2025-06-02"
    prompt_ids = ["alpine-lake", "meadow-bees", "trail-map"]
    # The service refuses the first two submissions with 429: the batch waits and tries again.
    admin.set_faults({"endpoint": "submit", "status": 429, "fail_next": 2, "retry_after": 1})

    first = dag.test(logical_date=day)

    assert first.state == "success"
    stats = admin.stats()
    assert stats["submissions"]["total"] == 3
    assert stats["responses"]["429"] == 2
    lines = partition_results(partition)
    assert [line["id"] for line in lines] == prompt_ids
    for line in lines:
        assert line["status"] == "stored", line
        (entry,) = line["files"]
        path = Path(entry["path"].removeprefix("file://"))
        assert path == partition / line["id"] / "image_0.png"
        assert sha256(path) == entry["sha256"]
        assert_png(path)
    media = {name: digest for name, digest in files_under(partition).items() if not name.startswith("_")}
    assert len(media) == 6  # three images, three request manifests

    # The same date again (a re-run backfill, a cleared run): nothing paid, no media written.
    again = dag.test(logical_date=day)

    assert again.state == "success"
    assert admin.stats()["submissions"]["total"] == 3
    assert {n: d for n, d in files_under(partition).items() if not n.startswith("_")} == media

    # A half-done partition (one prompt's files deleted since): only that one is paid for.
    for path in (partition / "trail-map").iterdir():
        path.unlink()

    repaired = dag.test(logical_date=day)

    assert repaired.state == "success"
    assert admin.stats()["submissions"]["total"] == 4
    after = files_under(partition)
    for name in media:
        if name.startswith(("alpine-lake/", "meadow-bees/")):
            assert after[name] == media[name], name  # untouched
    assert (partition / "trail-map" / "image_0.png").exists()
    assert [line["status"] for line in partition_results(partition)] == ["stored"] * 3


def test_backfill_example_skips_a_day_without_prompts(
    cerebraform_emulator: EmulatorHandle, output_dir: Path
) -> None:
    dag = load_dag("example_dags/example_cerebraform_backfill.py", "example_cerebraform_backfill")

    run = dag.test(logical_date=datetime(2025, 6, 4, tzinfo=timezone.utc))  # no 2025-06-04.jsonl

    assert run.state == "success"
    assert cerebraform_emulator.admin.stats()["submissions"]["total"] == 0
    assert not (output_dir / "backfill" / "dt=2025-06-04" / "_cerebraform").exists()


def test_batch_example_generates_the_whole_file_in_one_task(
    cerebraform_emulator: EmulatorHandle, output_dir: Path
) -> None:
    dag = load_dag("example_dags/example_cerebraform_batch.py", "example_cerebraform_batch")

    run = dag.test()

    assert run.state == "success"
    rows = (EXAMPLES / "data" / "batch_prompts.jsonl").read_text().splitlines()
    lines = partition_results(output_dir / "batch")
    assert [line["id"] for line in lines] == [json.loads(row)["id"] for row in rows]
    assert {line["status"] for line in lines} == {"stored"}
    assert cerebraform_emulator.admin.stats()["submissions"]["total"] == len(rows)
    assert len(run.get_task_instances()) == 1


@pytest.fixture
def s3_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A moto S3 server on loopback (stopped by pid), the ``aws_default`` connection pointing at it, and
    the examples' output Variable set to ``s3://aws_default@examples/out``; yields a boto3 client."""
    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "moto.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log_text = (tmp_path / "moto.log").read_text()
                    raise RuntimeError(f"moto server did not start:\n{log_text}") from None
                time.sleep(0.1)
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        monkeypatch.setenv(
            "AIRFLOW_CONN_AWS_DEFAULT",
            json.dumps(
                {
                    "conn_type": "aws",
                    "login": credentials["aws_access_key_id"],
                    "password": credentials["aws_secret_access_key"],
                    "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
                }
            ),
        )
        monkeypatch.setenv("AIRFLOW_VAR_CEREBRAFORM_OUTPUT", "s3://aws_default@examples/out")
        monkeypatch.setenv("CEREBRAFORM_POLL_INTERVAL", "0.2")
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials)
        client.create_bucket(Bucket="examples")
        yield client
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def s3_objects(client: Any, prefix: str) -> dict[str, str]:
    """Every object under ``prefix``: key -> ETag."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="examples", Prefix=prefix)
    return {item["Key"]: item["ETag"] for page in pages for item in page.get("Contents", [])}


def test_examples_write_to_s3_when_only_the_output_variable_changes(
    cerebraform_emulator: EmulatorHandle, s3_output: Any
) -> None:
    backfill = load_dag("example_dags/example_cerebraform_backfill.py", "example_cerebraform_backfill")
    producer = load_dag("example_dags/example_cerebraform_etl.py", "example_cerebraform_etl")
    consumer = load_dag("example_dags/example_cerebraform_etl.py", "example_cerebraform_etl_consumer")
    day = datetime(2025, 6, 3, tzinfo=timezone.utc)  # one prompt: night-market

    assert backfill.test(logical_date=day).state == "success"
    assert backfill.test(logical_date=day).state == "success"  # the re-run pays and writes nothing

    assert cerebraform_emulator.admin.stats()["submissions"]["total"] == 1
    prefix = "out/backfill/dt=2025-06-03/"
    objects = s3_objects(s3_output, prefix)
    media = sorted(key.removeprefix(prefix) for key in objects if "/_cerebraform/" not in key)
    request_id = cerebraform_emulator.admin.stats()["tasks"][0]["request_id"]
    assert media == sorted(["night-market/image_0.png", f"night-market/{request_id}.manifest.json"])
    body = s3_output.get_object(Bucket="examples", Key=f"{prefix}night-market/image_0.png")
    image = body["Body"].read()
    assert image.startswith(b"\x89PNG\r\n\x1a\n")
    results = s3_output.get_object(Bucket="examples", Key=f"{prefix}_cerebraform/results.jsonl")
    (line,) = [json.loads(text) for text in results["Body"].read().decode().splitlines()]
    (entry,) = line["files"]
    assert entry["path"].startswith("s3://")
    assert entry["sha256"] == hashlib.sha256(image).hexdigest()

    run = producer.test()
    assert run.state == "success"
    assert consumer.test().state == "success"

    prefix = f"out/etl/{run.logical_date.date().isoformat()}/"
    objects = s3_objects(s3_output, prefix)
    assert {f"{prefix}catalog.jsonl", f"{prefix}gallery.html"} <= set(objects)
    assert len([key for key in objects if key.endswith(".png")]) == 5
    gallery = s3_output.get_object(Bucket="examples", Key=f"{prefix}gallery.html")["Body"].read().decode()
    assert sorted(re.findall(r'<img src="([^"]+)"', gallery)) == sorted(
        key.removeprefix(prefix) for key in objects if key.endswith(".png")
    )


# ----------------------------------------------------------------------------- the docs and the README

DOCS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
_SNIPPET = re.compile(r"<!-- snippet: (?P<source>\S+) -->\n```python\n(?P<code>.*?)\n```", re.DOTALL)
_LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {_slug(match) for match in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


def test_docs_code_marked_as_a_snippet_is_verbatim_from_the_example_dags() -> None:
    """Copy-paste examples in the docs come from the tested example DAGs, and stay in step with them."""
    found = 0
    for doc in DOCS:
        for match in _SNIPPET.finditer(doc.read_text()):
            source = (REPO / match["source"]).read_text().splitlines()
            snippet = match["code"].splitlines()
            starts = [i for i in range(len(source)) if source[i : i + len(snippet)] == snippet]
            assert starts, (
                f"{doc.name}: the snippet from {match['source']} is not in that file:\n{match['code']}"
            )
            found += 1
    assert found >= 10


def test_docs_links_point_to_files_and_headings_that_exist() -> None:
    for doc in DOCS:
        for match in _LINK.finditer(doc.read_text()):
            target = match["target"]
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file_part, _, anchor = target.partition("#")
            path = (doc.parent / file_part).resolve() if file_part else doc
            assert path.exists(), f"{doc.name}: broken link {target}"
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path), f"{doc.name}: no heading for #{anchor} in {path.name}"


def test_readme_usage_example_builds_a_valid_task() -> None:
    from airflow.sdk import DAG

    readme = (REPO / "README.md").read_text()
    usage = readme[readme.index("## Usage") :]
    code = re.search(r"```python\n(.*?)\n```", usage, re.DOTALL)[1]
    namespace: dict[str, Any] = {}
    with DAG(dag_id="readme_usage", schedule=None) as dag:
        exec(compile(code, "README.md", "exec"), namespace)
    task = dag.get_task("generate_image")
    assert type(task).__name__ == "CerebraformGenerateOperator"
    assert task.output_location.startswith("s3://aws_default@my-bucket/")
    assert (task.kind, task.aspect_ratio, task.file_name) == ("image", "16:9", "image_{index}{ext}")
