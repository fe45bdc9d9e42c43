"""
Security: the API key never shows, TLS is verified unless turned off (with a warning), downloads are
http(s) only, size-capped and cannot escape their folder, and the emulator listens on loopback.
"""

from __future__ import annotations

import asyncio
import datetime
import http.server
import ipaddress
import json
import ssl
import sys
import threading
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3.exceptions import InsecureRequestWarning

from airflow_provider_cerebraform.exceptions import CerebraformError, CerebraformTransportError
from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook
from airflow_provider_cerebraform.media import DEFAULT_FILE_NAME, extension_for, file_name_for
from airflow_provider_cerebraform.operators.cerebraform import (
    CerebraformGenerateOperator,
    CerebraformResultOperator,
    CerebraformSubmitOperator,
)
from airflow_provider_cerebraform.sensors.cerebraform import CerebraformTaskSensor
from airflow_provider_cerebraform.triggers.cerebraform import CerebraformTaskTrigger

from .conftest import file_hits, key_hits
from .harness import FAULT_KEY, LEDGER, media_files, partial_files, record_emulator, run_dag

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .conftest import FaultEmulator


# -- the key ------------------------------------------------------------------------------------------


def test_the_key_scan_finds_a_planted_key(tmp_path: Path) -> None:
    """The package-wide scan is able to fail: a key in a text or in any file (binary too) is found."""
    planted = "cfk-planted-" + "0f" * 8  # not the fault key: this folder is scanned at the end too
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "task.log").write_text(f"2026 INFO Authorization: Bearer {planted}\n")
    (tmp_path / "blob.db").write_bytes(b"\x00\x01" + planted.encode() + b"\xff")
    (tmp_path / "clean.txt").write_text("nothing here")
    assert key_hits([("a", "x"), ("b", f"..{planted}..")], planted) == ["b"]
    hits, scanned = file_hits([tmp_path], planted)
    assert sorted(Path(hit).name for hit in hits) == ["blob.db", "task.log"] and scanned == 3


def test_the_key_is_never_in_reprs_trigger_kwargs_or_errors(fault_emulator: FaultEmulator) -> None:
    """
    Fault: the service echoes the key back, in an injected 503's ``msg`` (status polls) and in an
    unreadable submit answer's body.

    Expected: the key is in none of: ``repr`` of the hook, both clients, their protocol and
    connection settings, a trigger, the operators and the sensor; the trigger's ``serialize()``
    kwargs (what reaches the metadata database); the typed errors raised (text, ``repr``,
    ``api_message``), where an echoed key is replaced by ``***``.
    """
    hook = CerebraformHook()
    client = hook.get_conn()
    async_client = asyncio.run(hook.aget_conn())
    trigger = CerebraformTaskTrigger(request_id="abc123", kind="image", poll_interval=0.1, deadline=1e10)
    objects: list[Any] = [
        hook,
        client,
        async_client,
        client.protocol,
        client.protocol.settings,
        async_client.protocol.settings,
        trigger,
        CerebraformSubmitOperator(task_id="s", prompt="p"),
        CerebraformGenerateOperator(task_id="g", prompt="p", output="/tmp/x"),
        CerebraformResultOperator(task_id="r", request_id="abc123"),
        CerebraformTaskSensor(task_id="w", request_id="abc123"),
    ]
    for thing in objects:
        assert FAULT_KEY not in repr(thing), type(thing)
        assert FAULT_KEY not in str(thing), type(thing)
    assert client.protocol.headers["Authorization"] == f"Bearer {FAULT_KEY}"  # it is sent, only sent
    classpath, kwargs = trigger.serialize()
    assert FAULT_KEY not in json.dumps(kwargs) and FAULT_KEY not in classpath

    request_id = hook.submit("image", "a key echo test")
    fault_emulator.admin.set_faults(
        {"endpoint": "status", "fail_next": 4, "status": 503, "message": f"bad key {FAULT_KEY}"},
        {"endpoint": "submit", "malformed_next": 1, "body": json.dumps({"echo": f"Bearer {FAULT_KEY}"})},
    )
    errors: list[CerebraformError] = []
    for call in (lambda: hook.get_status("image", request_id), lambda: hook.submit("image", "again")):
        with pytest.raises(CerebraformError) as raised:
            call()
        errors.append(raised.value)
    for error in errors:
        text = f"{error} {error!r} {error.api_message} {error.args}"
        assert FAULT_KEY not in text and "***" in text, text
    record_emulator(fault_emulator.admin)


# -- TLS ------------------------------------------------------------------------------------------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class _Credits(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b'{"credits": 7}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate, answering ``{"credits": 7}``."""
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Credits)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _tls_connection(monkeypatch: pytest.MonkeyPatch, url: str, **extra: Any) -> None:
    conn = {
        "conn_type": "cerebraform",
        "host": url,
        "password": FAULT_KEY,
        "extra": {"tier": "paid", "retry_limit": 0, "timeout": 5, **extra},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CEREBRAFORM_TLS", json.dumps(conn))


def test_tls_is_verified_by_default_and_turning_it_off_warns(
    tls_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    Fault: the API's host presents a self-signed certificate.

    Expected: by default both clients refuse it (a ``CerebraformTransportError`` naming the
    certificate failure), with no warning about TLS; with ``verify_ssl=false`` on the connection
    both connect, and the hook logs a warning that TLS verification is off (Airflow's structured
    log goes to the task log: stdout here).
    """
    refused = r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"
    _tls_connection(monkeypatch, tls_server)
    with pytest.raises(CerebraformTransportError, match=refused):
        CerebraformHook("cerebraform_tls").get_credits()
    with pytest.raises(CerebraformTransportError, match=refused):
        asyncio.run(CerebraformHook("cerebraform_tls").aget_credits())
    assert "turns TLS verification off" not in read_and_keep(capsys)

    _tls_connection(monkeypatch, tls_server, verify_ssl="false")
    with pytest.warns(InsecureRequestWarning):  # urllib3 says so too, for every unverified request
        assert CerebraformHook("cerebraform_tls").get_credits() == 7
    assert asyncio.run(CerebraformHook("cerebraform_tls").aget_credits()) == 7
    warnings = [line for line in read_and_keep(capsys).splitlines() if "turns TLS verification off" in line]
    assert len(warnings) == 2, warnings
    assert all("warning" in line and "'cerebraform_tls'" in line for line in warnings), warnings


def read_and_keep(capsys: pytest.CaptureFixture[str]) -> str:
    """What was printed so far; printed again so that pytest's report (and the key scan) keep it."""
    captured = capsys.readouterr()
    sys.stdout.write(captured.out)
    sys.stderr.write(captured.err)
    return captured.out + captured.err


# -- downloads ------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("airflow_db")
def test_downloads_are_http_only_size_capped_and_stay_in_their_folder(
    fault_emulator: FaultEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Fault: result URLs of ``file:///etc/passwd`` and ``ftp://127.0.0.1:9/...`` (the emulator's
    ``public_url``); a 1000-byte cap on a PNG of several kB; a result whose URL ends in
    ``?name=../../escape/../../x`` and whose content type is ``../../../escape``.

    Expected: the file and ftp URLs are refused before anything is fetched or created ("only
    http(s) URLs are allowed"); the oversized file fails with a clear ``max_bytes`` error and leaves
    nothing behind; the hostile names end up as a plain ``<request_id>/image-0.png`` inside the
    output folder and nothing is written outside it. (A submit answer with ``request_id`` ``../../x``
    is refused in ``test_malformed_answers_from_every_endpoint_are_typed_errors``.)
    """
    output = tmp_path / "out"
    run = run_dag("cerebraform_fault_downloads", tmp_path / "records", monkeypatch, output=f"file://{output}")

    for task_id, scheme in (("file_url", "file:///etc/passwd"), ("ftp_url", "ftp://127.0.0.1:9")):
        failure = run.failure(task_id)
        assert failure["type"] == "CerebraformMediaError", failure
        assert "only http(s) URLs are allowed" in failure["message"] and scheme in failure["message"]
        assert not (output / task_id).exists()
        LEDGER.tasks_failed_as_expected += 1
    too_big = run.failure("too_big")
    assert too_big["type"] == "CerebraformMediaError", too_big
    assert "over max_bytes=1000" in too_big["message"]
    assert media_files(output / "too_big") == []
    LEDGER.tasks_failed_as_expected += 1

    assert run.task("hostile_store").state == "success", run.failures
    (entry,) = run.task("hostile_store").return_value
    request_id = run.task("hostile_submit").return_value
    stored = Path(entry["path"].removeprefix("file://"))
    assert stored == output / "hostile" / request_id / "image-0.png"
    assert stored.resolve().is_relative_to(output.resolve())
    assert "escape" in entry["source_url"]  # the hostile URL was the one downloaded
    assert [p.name for p in media_files(output / "hostile")] == ["image-0.png"]
    assert not any(p.name in ("x", "escape") for p in tmp_path.rglob("*"))
    assert partial_files(output) == []
    stats = record_emulator(fault_emulator.admin)
    assert stats["faults_injected"] == {"result:malformed": 1}
    LEDGER.faults_injected["result:hostile_url"] += 2  # the file:// and ftp:// result URLs


@settings(max_examples=300, deadline=None)
@given(
    request_id=st.text(max_size=40),
    content_type=st.none() | st.text(max_size=30) | st.sampled_from(["../../x", "image/../../png", "a/b;c"]),
    url=st.text(max_size=40).map(lambda tail: "http://127.0.0.1/media/" + tail)
    | st.sampled_from(
        ["http://h/../../x", "http://h/a.png/../../.ssh", "http://h/x.p/ng", "http://h/..%2F..%2Fx"]
    ),
    pattern=st.sampled_from(
        [DEFAULT_FILE_NAME, "{kind}/{request_id}{ext}", "{request_id}/{kind}-{index}{ext}"]
    ),
)
def test_server_supplied_names_never_leave_the_output_folder(
    request_id: str, content_type: str | None, url: str, pattern: str
) -> None:
    """Whatever request_id, content type and URL the service sends, the file name stays inside."""
    ext = extension_for(content_type, url)
    assert ext.startswith(".") and "/" not in ext and ".." not in ext
    name = file_name_for(pattern, request_id=request_id, kind="image", index=0, ext=ext)
    path = PurePosixPath(name)
    assert not path.is_absolute() and ".." not in path.parts and "" not in name.split("/")
    assert all(not part.startswith(".") for part in path.parts)


# -- the emulator's address -----------------------------------------------------------------------------


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port``, from the kernel's TCP tables."""
    found = set()
    for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if int(port_hex, 16) != port or state != "0A":  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            if family == 4:
                found.add(str(ipaddress.IPv4Address(raw[::-1])))
            else:
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                found.add(str(ipaddress.IPv6Address(words)))
    return found


def test_the_emulator_listens_on_loopback_unless_told_otherwise(fault_emulator: FaultEmulator) -> None:
    """
    Expected: the default bind address is 127.0.0.1 (config and command line), the session's emulator
    process listens on 127.0.0.1 only (read from the kernel's socket table, no traffic sent), and a
    non-loopback address is recognised as such (the emulator then logs a warning).
    """
    from urllib.parse import urlsplit

    from airflow_provider_cerebraform.emulator import EmulatorConfig
    from airflow_provider_cerebraform.emulator.cli import build_parser, config_from_args
    from airflow_provider_cerebraform.emulator.server import is_loopback

    assert EmulatorConfig().host == "127.0.0.1"
    assert config_from_args(build_parser().parse_args([])).host == "127.0.0.1"
    port = urlsplit(fault_emulator.url).port
    assert port is not None
    assert _listening_addresses(port) == {"127.0.0.1"}
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
