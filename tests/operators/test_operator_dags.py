"""
The operators run through Airflow's own machinery (``dag.test()``) against the emulator over HTTP,
writing to real local storage. The DAGs live in ``tests/dags/cerebraform_test_dags.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import imageio_ffmpeg
import pytest
from cerebraform_dagtest import run_dag
from PIL import Image

from airflow_provider_cerebraform.state_storage import STATE_FOLDER
from airflow_provider_cerebraform.version_compat import AIRFLOW_V_3_3_PLUS

if TYPE_CHECKING:
    from airflow_provider_cerebraform.emulator.pytest_plugin import EmulatorHandle

pytestmark = pytest.mark.usefixtures("airflow_db")

DEV_KEY_CREDITS = 1000


def local_path(url: str) -> Path:
    parts = urlsplit(url)
    assert parts.scheme == "file", url
    return Path(parts.path)


def check_delivered(manifest: list[dict[str, Any]], folder: Path, kind: str) -> list[bytes]:
    """Every file of the manifest exists in ``folder`` with its size and sha256, next to the manifest JSON."""
    assert manifest, "empty manifest"
    request_ids = {entry["request_id"] for entry in manifest}
    assert len(request_ids) == 1, request_ids
    (request_id,) = request_ids
    written = json.loads((folder / f"{request_id}.manifest.json").read_text())
    assert written == manifest
    blobs = []
    for index, entry in enumerate(manifest):
        path = local_path(entry["path"])
        assert folder in path.parents, (path, folder)
        data = path.read_bytes()
        assert entry["index"] == index and entry["kind"] == kind
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        if kind == "image":
            assert entry["content_type"] == "image/png" and path.suffix == ".png"
            with Image.open(io.BytesIO(data)) as image:
                assert image.format == "PNG"
                image.load()
        else:
            assert entry["content_type"] == "video/mp4" and path.suffix == ".mp4"
            assert data[4:8] == b"ftyp"
            frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
            assert frames > 0 and seconds > 0
        blobs.append(data)
    assert not [p for p in folder.rglob("*") if p.name.endswith(".partial")]
    return blobs


def test_submit_sensor_result_pipeline_stores_real_media_locally(
    cerebraform_emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "out"
    run = run_dag("cerebraform_test_pipeline", tmp_path / "records", monkeypatch, output=f"file://{folder}")
    assert run.state == "success", run.failures
    request_id = run.task("submit").return_value
    assert run.task("submit").xcom["request_id"] == request_id
    assert run.task("wait").return_value == {
        "request_id": request_id,
        "kind": "image",
        "message": "Task completed.",
        "status": "done",
        "task_status": 2,
    }
    manifest = run.task("store").return_value
    (png,) = check_delivered(manifest, folder, "image")
    with Image.open(io.BytesIO(png)) as image:
        assert image.width > image.height  # aspect_ratio 16:9 reached the service
    stats = cerebraform_emulator.admin.stats()
    assert stats["submissions"]["total"] == 1
    (task,) = stats["tasks"]
    assert task["request_id"] == request_id and task["aspect_ratio"] == "16:9"
    assert task["result_fetches"] == 1 and task["media_fetches"] == 1


def test_generate_operator_image_video_mapped_failure_timeout_and_asset(
    cerebraform_emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "out"
    run = run_dag("cerebraform_test_generate", tmp_path / "records", monkeypatch, output=f"file://{folder}")
    assert run.state == "failed"  # "failing" and "too_slow" fail on purpose

    image = run.task("image")
    assert image.state == "success"
    check_delivered(image.return_value, folder / "image", "image")
    video = run.task("video")
    assert video.state == "success"
    (mp4,) = check_delivered(video.return_value, folder / "video", "video")
    request_id = video.return_value[0]["request_id"]
    assert local_path(video.return_value[0]["path"]) == folder / "video" / "video" / f"{request_id}.mp4"
    _, seconds = imageio_ffmpeg.count_frames_and_secs(str(folder / "video" / "video" / f"{request_id}.mp4"))
    assert seconds == pytest.approx(10, abs=0.5)  # duration=10 reached the service
    assert len(mp4) > 1000

    mapped = run.mapped("mapped")
    assert [t.state for t in mapped] == ["success"] * 3
    mapped_ids = set()
    for task in mapped:
        check_delivered(task.return_value, folder / "mapped", "image")
        mapped_ids.add(task.return_value[0]["request_id"])
    assert len(mapped_ids) == 3

    urls = run.task("urls_only").return_value
    assert isinstance(urls, list) and len(urls) == 1 and urls[0].startswith(cerebraform_emulator.url)

    # Status -1: the API's message reaches the user, and the task is not retried (retries=1).
    failing = run.task("failing")
    assert failing.state == "failed" and failing.try_number == 1
    (failure,) = run.failures_of("failing")
    assert failure["type"] == "CerebraformTaskFailedError"
    assert "AirflowFailException" in failure["mro"]
    assert "the model refused this prompt (test)" in failure["message"]

    too_slow = run.task("too_slow")
    assert too_slow.state == "failed"
    (timeout,) = run.failures_of("too_slow")
    assert timeout["type"] == "CerebraformTimeoutError"
    assert "not done by the deadline" in timeout["message"]

    # The asset outlet got the manifest in its event's extra.
    (event,) = run.asset_events("cerebraform_test_media")
    assert event["source_task_id"] == "image"
    assert event["extra"]["request_id"] == image.return_value[0]["request_id"]
    assert event["extra"]["manifest"] == image.return_value

    stats = cerebraform_emulator.admin.stats()
    assert stats["submissions"]["total"] == 8  # image, video, 3 mapped, failing, too_slow, urls_only
    assert stats["rate_limited"] == {}
    by_prompt = {task["prompt"]: task for task in stats["tasks"]}
    assert by_prompt["waves rolling onto a beach"]["duration"] == 10
    assert by_prompt["waves rolling onto a beach"]["cost"] == 10


def test_retry_of_submit_reconnects_instead_of_paying_twice_and_min_credits_guards(
    cerebraform_emulator: EmulatorHandle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    run = run_dag("cerebraform_test_retry", tmp_path / "records", monkeypatch, output=str(tmp_path / "media"))
    logs = capfd.readouterr().out

    crashed = run.task("submit_crash_once")
    assert crashed.state == "success"
    assert crashed.try_number == 2  # dag.test ran the retry
    (first_try,) = run.failures_of("submit_crash_once")
    assert first_try["try_number"] == 1 and "worker lost after submitting" in first_try["message"]
    request_id = crashed.return_value
    assert request_id in first_try["message"]  # the retry returned the id the first try had paid for
    assert crashed.xcom["request_id"] == request_id

    guarded = run.task("guarded")
    assert guarded.state == "failed"
    (refused,) = run.failures_of("guarded")
    assert refused["type"] == "CerebraformInsufficientCreditsError"
    assert "min_credits=1000000000" in refused["message"] and "nothing was submitted" in refused["message"]

    generated = run.task("generate_crash_once")
    assert generated.state == "success" and generated.try_number == 2
    (lost,) = run.failures_of("generate_crash_once")
    generated_id = generated.xcom["request_id"]
    assert generated_id in lost["message"]
    (entry,) = generated.return_value
    assert entry["request_id"] == generated_id and local_path(entry["path"]).stat().st_size == entry["bytes"]
    # The log says what happened in words: the status by name, the API's message quoted once.
    reconnected = (
        f"Reconnecting to image task {generated_id} from an earlier try instead of paying again; it is"
    )
    assert f'{reconnected} done ("' in logs, logs[-3000:]
    assert "is done (2)" not in logs and ". from an earlier try" not in logs
    # The extra links Airflow resolved when the task finished (what the UI's buttons open).
    status_url = f"{cerebraform_emulator.url}/ai/v1/to-image/status/{generated_id}"
    assert generated.xcom["_link_CerebraformRequestLink"] == status_url
    assert generated.xcom["_link_CerebraformMediaLink"] == entry["source_url"]
    assert crashed.xcom["_link_CerebraformRequestLink"] == status_url.replace(generated_id, request_id)

    stats = cerebraform_emulator.admin.stats()
    assert stats["submissions"]["total"] == 2  # one per operator: neither retry paid again
    assert {task["request_id"] for task in stats["tasks"]} == {request_id, generated_id}
    # Each retry looked at its request's status once; the all-in-one operator found its generation
    # done and stored it without deferring (a trigger would have polled at least once more).
    assert stats["requests"]["status"] == 2
    assert stats["credits"][_dev_label(stats)] == DEV_KEY_CREDITS - 2
    # Before Airflow 3.3 the retry found its record in object storage (next to the media by default);
    # from 3.3 in the task state store, and nothing is written there.
    records = sorted(p.name for p in (tmp_path / "media").rglob("*") if STATE_FOLDER in p.parts)
    if AIRFLOW_V_3_3_PLUS:
        assert records == []
    else:
        assert (tmp_path / "media" / "state" / STATE_FOLDER).is_dir()
        assert (tmp_path / "media" / "retried" / STATE_FOLDER).is_dir()
        assert records.count("cerebraform_submission.json") == 2


def _dev_label(stats: dict[str, Any]) -> str:
    from airflow_provider_cerebraform.emulator import DEFAULT_API_KEY, key_label

    label = key_label(DEFAULT_API_KEY)
    assert label in stats["credits"], stats["credits"]
    return label


FREE_KEY = "cf-free-key-for-rate-limit-tests"


def test_rate_limited_submit_defers_then_succeeds_and_gives_up_past_its_budget(
    cerebraform_emulator: EmulatorHandle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # A free key (10 tasks an hour); at time scale 240 the "hour" lasts 15 real seconds. The window
    # must outlast the filler task and give_up, each a task run of its own: at 900x (4 s) they took
    # longer than the window at a load average of 15, so defer_then_submit found it open and never
    # deferred (scripts/flaky run 3 of this session's report).
    time_scale = 240
    admin = cerebraform_emulator.admin
    admin.configure(time_scale=time_scale)
    admin.add_key(FREE_KEY, tier="free", credits=100)
    monkeypatch.setenv(
        "AIRFLOW_CONN_CEREBRAFORM_FREE",
        json.dumps(
            {
                "conn_type": "cerebraform",
                "host": cerebraform_emulator.url,
                "password": FREE_KEY,
                "extra": {"tier": "free", "time_scale": time_scale},
            }
        ),
    )
    run = run_dag("cerebraform_test_rate_limit", tmp_path / "records", monkeypatch)
    logs = capfd.readouterr().out
    assert run.state == "success", run.failures  # the last task decides: defer_then_submit
    assert run.task("use_up_create_window").return_value == 10

    # Past max_rate_limit_wait: a clear error that says why, and nothing was submitted.
    assert run.task("give_up").state == "failed"
    (gave_up,) = run.failures_of("give_up")
    assert gave_up["type"] == "CerebraformRateLimitError"
    assert "HTTP 429" in gave_up["message"] and "max_rate_limit_wait=0.5 s" in gave_up["message"]

    # Within it: the task deferred on a timer (max_in_process_wait=0 holds no worker) and then submitted.
    deferred = run.task("defer_then_submit")
    assert deferred.state == "success" and deferred.try_number == 1
    assert "; deferring" in logs and "without a worker slot" in logs
    assert (
        's; the API said "Rate limit exceeded. Try again in' in logs and "seconds. (retry after" not in logs
    )
    stats = admin.stats()
    assert stats["submissions"]["total"] == 11  # 10 fillers and the deferred one
    tasks = sorted(stats["tasks"], key=lambda task: task["created_at"])
    assert tasks[-1]["request_id"] == deferred.return_value and tasks[-1]["prompt"] == "a patient robot"
    window = 3600 / time_scale
    assert tasks[-1]["created_at"] >= tasks[0]["created_at"] + window * 0.95
    assert stats["rate_limited"].get("submit", 0) >= 2  # the filler's last try and give_up
    assert stats["rate_limited"].get("poll", 0) == 0
