"""Fixtures of the shared-budget tests: a real Redis server per test, and worker processes on one key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_cerebraform.budget import reset_stores
from airflow_provider_cerebraform.budget.redis_server import RedisServer
from airflow_provider_cerebraform.pacing import reset_pacers

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow_provider_cerebraform.models import ConnectionSettings

SUBMITTER = Path(__file__).with_name("submitter.py")


@pytest.fixture(autouse=True)
def _fresh_pacers() -> Iterator[None]:
    reset_pacers()
    reset_stores()
    yield
    reset_pacers()
    reset_stores()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port with its own tmp dir, stopped by pid."""
    with RedisServer() as server:
        yield server


def settings_json(settings: ConnectionSettings) -> str:
    fields = asdict(settings)
    fields["tier"] = settings.tier.value
    return json.dumps(fields)


@dataclass
class Workers:
    """Worker processes that each submit their prompts once all of them are ready."""

    results: list[list[dict[str, Any]]]
    seconds: float


def run_workers(
    settings: ConnectionSettings,
    prompt_lists: list[list[str]],
    tmp_path: Path,
    *,
    max_wait: float | None = None,
    timeout: float = 120.0,
) -> Workers:
    env = {**os.environ, "CEREBRAFORM_TEST_SETTINGS": settings_json(settings)}
    go = tmp_path / "go"
    readies = [tmp_path / f"ready-{n}" for n in range(len(prompt_lists))]
    args = [] if max_wait is None else [str(max_wait)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(SUBMITTER), json.dumps(prompts), str(ready), str(go), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for prompts, ready in zip(prompt_lists, readies, strict=True)
    ]
    try:
        # Each worker imports Airflow first: about 10 s of CPU, longer on a shared, loaded machine.
        deadline = time.monotonic() + 300
        while not all(ready.exists() for ready in readies):
            failed = [proc for proc in procs if proc.poll() is not None]
            assert not failed, failed[0].stderr.read() if failed[0].stderr else "a worker exited"
            assert time.monotonic() < deadline, "the workers did not get ready in 300 s"
            time.sleep(0.02)
        started = time.monotonic()
        go.touch()
        outputs = [proc.communicate(timeout=timeout) for proc in procs]
        seconds = time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return Workers(results, seconds)
