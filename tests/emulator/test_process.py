"""The CLI and the subprocess launcher: flags, readiness, stop by pid, clean signals, no airflow import."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import requests

from airflow_provider_cerebraform.emulator import (
    CerebraformEmulator,
    EmulatorConfig,
    EmulatorProcess,
    KeySpec,
)
from airflow_provider_cerebraform.emulator import server as server_module
from airflow_provider_cerebraform.emulator.cli import build_parser, config_from_args, parse_size
from airflow_provider_cerebraform.emulator.process import _PACKAGE_ROOT

from .conftest import Api, assert_error

if TYPE_CHECKING:
    from pathlib import Path


def test_process_starts_serves_and_stops_by_pid() -> None:
    process = EmulatorProcess(["--key", "proc-free=free:5", "--time-scale", "100", "--log-level", "DEBUG"])
    with process:
        pid = process.pid
        assert process.is_running()
        assert process.url.startswith("http://127.0.0.1:")
        assert process.admin.health()["pid"] == pid
        client = Api(process.url, "proc-free")
        assert client.get("/ai/v1/user/credits").json() == {"credits": 5}
        assert Api(process.url).get("/ai/v1/user/credits").json() == {"credits": 1000}
        assert process.admin.config()["time_scale"] == 100
        log = process.log_text()
        assert f"Cerebraform emulator listening on {process.url}" in log
        assert "proc-free" not in log  # keys are logged by label only
    assert not process.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_process_from_a_config_object() -> None:
    config = EmulatorConfig(keys=[KeySpec("cfg-key", "free", 11)], default_key=False, image_seconds=0)
    with EmulatorProcess(config=config) as process:
        assert Api(process.url, "cfg-key").get("/ai/v1/user/credits").json() == {"credits": 11}
        assert_error(Api(process.url).get("/ai/v1/user/credits"), 401)
        request_id = Api(process.url, "cfg-key").submit_id()
        assert Api(process.url, "cfg-key").status("image", request_id).json()["status"] == 2


def test_stop_returns_the_clean_exit_status_and_sigint_also_stops() -> None:
    process = EmulatorProcess().start()
    assert process.stop() == 0
    process = EmulatorProcess().start()
    pid = process.pid
    assert process.stop(timeout=0) in (0, -signal.SIGKILL)  # no grace period: the SIGKILL fallback
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    process = EmulatorProcess().start()
    pid = process.pid
    os.kill(pid, signal.SIGINT)
    proc = process._proc
    assert proc is not None
    assert proc.wait(10) == 0
    process.stop()


def test_cli_ready_file_print_and_module_entry(tmp_path: Path) -> None:
    ready = tmp_path / "ready.txt"
    env = {**os.environ, "PYTHONPATH": _PACKAGE_ROOT}
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_cerebraform.emulator",
            "--port",
            "0",
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        assert line.startswith("Cerebraform emulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        assert ready.read_text().strip() == url
        assert requests.get(url + "/_emulator/health", timeout=5).json()["status"] == "ok"
    finally:
        os.kill(child.pid, signal.SIGTERM)
        assert child.wait(10) == 0


def test_cli_reports_a_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": _PACKAGE_ROOT}
        done = subprocess.run(
            [sys.executable, "-m", "airflow_provider_cerebraform.emulator", "--port", str(port)],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
    assert done.returncode == 2
    assert "cannot listen" in done.stderr


def test_cli_flags_build_the_config(tmp_path: Path) -> None:
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"video_seconds": 7, "image_seconds": 3, "free_tasks_per_hour": 2}))
    args = build_parser().parse_args(
        [
            *("--host", "127.0.0.2", "--port", "0", "--key", "a=free", "--key", "b=paid:77"),
            *("--no-default-key", "--credits", "5", "--anonymous-credits", "6", "--time-scale", "10"),
            *("--image-seconds", "4", "--images-per-task", "2", "--failure-rate", "0.1", "--seed", "3"),
            *("--url-ttl", "600", "--media-bytes", "1GiB", "--config", str(config_file)),
            *("--public-url", "http://emulator.test:1", "--media-dir", str(tmp_path)),
        ]
    )
    config = config_from_args(args)
    assert config.host == "127.0.0.2" and config.port == 0
    assert [k.to_dict() for k in config.keys] == [
        {"key": "a", "tier": "free", "credits": None},
        {"key": "b", "tier": "paid", "credits": 77},
    ]
    assert not config.default_key and config.all_keys() == config.keys
    assert (config.credits, config.anonymous_credits, config.time_scale) == (5, 6, 10)
    assert (config.image_seconds, config.video_seconds, config.free_tasks_per_hour) == (4, 7, 2)
    assert (config.images_per_task, config.failure_rate, config.seed, config.url_ttl) == (2, 0.1, 3, 600)
    assert config.media_bytes == 1024**3 and config.public_url == "http://emulator.test:1"
    assert config_from_args(build_parser().parse_args([])).port == 8787
    extra = build_parser().parse_args(["--set", "paid_tasks_per_hour=5000", "--set", "public_url=http://h:1"])
    config = config_from_args(extra)
    assert config.paid_tasks_per_hour == 5000 and config.public_url == "http://h:1"


@pytest.mark.parametrize(
    ("text", "size"), [("1000", 1000), ("10k", 10_000), ("10MB", 10**7), ("1GiB", 2**30), ("2 MiB", 2**21)]
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "bad", ["--key=nokey", "--key=k=gold", "--key=k=free:x", "--media-bytes=lots", "--set=novalue"]
)
def test_bad_flags_exit_with_usage(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args([bad])
    assert raised.value.code == 2
    assert isinstance(build_parser(), argparse.ArgumentParser)


def test_non_loopback_bind_logs_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert server_module.is_loopback("127.0.0.1") and server_module.is_loopback("::1")
    assert server_module.is_loopback("localhost")
    assert not server_module.is_loopback("0.0.0.0") and not server_module.is_loopback("192.0.2.1")
    monkeypatch.setattr(server_module, "is_loopback", lambda host: False)
    with caplog.at_level(logging.WARNING), CerebraformEmulator():
        pass
    assert "not a loopback address" in caplog.text


def test_the_emulator_never_imports_airflow() -> None:
    code = (
        "import sys\n"
        "import airflow_provider_cerebraform.emulator as e\n"
        "from airflow_provider_cerebraform.emulator import cli, server, process, admin\n"
        "from airflow_provider_cerebraform.emulator import pytest_plugin, openapi\n"
        "e.CerebraformEmulator, e.EmulatorProcess, e.EmulatorAdmin\n"
        "bad = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.'))\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": _PACKAGE_ROOT}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
