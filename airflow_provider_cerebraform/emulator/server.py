"""The HTTP server: the Cerebraform API, media downloads and the ``/_emulator/`` control surface."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import socket
import socketserver
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .config import ConfigError, EmulatorConfig, KeySpec
from .errors import ApiError, error_body, status_error_name
from .faults import FaultDecision, parse_faults
from .media import PngCache, VideoCache, VideoEncoderUnavailable, padded_size, stream_file, stream_png
from .signing import UrlSigner
from .state import DONE, FAILED, EmulatorState, Task
from .validation import dimensions, parse_json, validate_submission

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .admin import EmulatorAdmin

log = logging.getLogger("airflow_provider_cerebraform.emulator")

VERSION = "0.1.0"
_SUBMIT_RE = re.compile(r"/ai/v1/to-(image|video)")
_TASK_RE = re.compile(r"/ai/v1/to-(image|video)/(status|result)/([^/]+)")
_MEDIA_RE = re.compile(r"/media/([^/]+)")
_MEDIA_NAME_RE = re.compile(r"([0-9a-f]{32})-([0-9]{1,2})\.(png|mp4)")
_TASK_CONTROL_RE = re.compile(r"/_emulator/tasks/([^/]+)/(fail|complete)")
_HOST_RE = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_DRAIN_LIMIT = 64 * 1024 * 1024
_CONTENT_TYPES = {"png": "image/png", "mp4": "video/mp4"}


class _Dropped(Exception):
    """The request was answered by closing the connection."""


class _Answered(Exception):
    """The request was already answered (by an injected malformed body)."""


def is_loopback(host: str) -> bool:
    """Return whether a bind address only accepts local connections.

    :param host: host name or address.
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class EmulatorHTTPServer(ThreadingHTTPServer):
    """A threading HTTP/1.1 server that tracks its connections so ``stop()`` can close them.

    :param address: ``(host, port)`` to bind.
    :param emulator: the emulator whose state answers requests.
    """

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: CerebraformEmulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.emulator = emulator
        self.connections: set[socket.socket] = set()
        self.reset_sockets: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, RequestHandler)

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind's getfqdn(): a reverse DNS lookup can stall startup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
            reset = request in self.reset_sockets
            self.reset_sockets.discard(request)
        if reset:
            # SO_LINGER 0 is set: close() without shutdown() sends a TCP RST.
            request.close()
        else:
            super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut every open connection so idle keep-alive handlers end."""
        with self.conn_lock:
            sockets = list(self.connections)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class RequestHandler(BaseHTTPRequestHandler):
    """Answers one connection's requests (keep-alive); every response has a Content-Length."""

    protocol_version = "HTTP/1.1"
    server_version = f"CerebraformEmulator/{VERSION}"
    timeout = 300
    server: EmulatorHTTPServer

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __getattr__(self, name: str) -> Any:
        # Route every method (GET, POST, DELETE, PROPFIND, ...) to one dispatcher: unknown ones get 405/404.
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)

    # -- plumbing --------------------------------------------------------------------------------

    @property
    def emulator(self) -> CerebraformEmulator:
        return self.server.emulator

    @property
    def state(self) -> EmulatorState:
        return self.server.emulator.state

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer protocol errors raised by the base class (bad request line, ...) in the error shape."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.1"  # answer with a status line and headers all the same
        with contextlib.suppress(OSError):
            self._send_json(code, error_body(code, status_error_name(code), message or explain or "Error"))

    def _send_json(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode("utf-8")
        self._send_bytes(code, body, "application/json", headers)

    def _send_bytes(
        self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        # Headers and body in one write: no small-segment stalls (Nagle vs delayed ACK).
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(body)
        # Counted before it goes out: a client that has read the answer finds it in the stats.
        self.state.count_response(code)
        self.flush_headers()

    def _send_api_error(self, error: ApiError) -> None:
        self._send_json(error.code, error.body(), error.headers)

    def _drop(self) -> None:
        """Close the connection without any response."""
        self.close_connection = True
        self.state.count_response("dropped")
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        raise _Dropped

    def _read_body(self) -> bytes:
        encoding = self.headers.get("Transfer-Encoding")
        limit = self.state.config.max_body_bytes
        if encoding is not None:
            if encoding.strip().lower() != "chunked":
                self.close_connection = True
                raise ApiError(400, "invalid_request", "Unsupported Transfer-Encoding.")
            return self._read_chunked(limit)
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        length_text = length_header.strip()
        if not length_text.isascii() or not length_text.isdigit() or len(length_text) > 18:
            self.close_connection = True
            raise ApiError(400, "invalid_request", "Invalid Content-Length header.")
        length = int(length_text)
        if length > limit:
            if length <= _DRAIN_LIMIT:
                left = length
                while left > 0:
                    piece = self.rfile.read(min(left, 1024 * 1024))
                    if not piece:
                        break
                    left -= len(piece)
            else:
                self.close_connection = True
            raise ApiError(413, "payload_too_large", f"Request body too large: at most {limit} bytes.")
        return self.rfile.read(length)

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size_total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
                if size < 0:
                    raise ValueError(size)
            except ValueError:
                self.close_connection = True
                raise ApiError(400, "invalid_request", "Malformed chunked body.") from None
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            size_total += size
            if size_total > limit:
                self.close_connection = True
                raise ApiError(413, "payload_too_large", f"Request body too large: at most {limit} bytes.")
            parts.append(self.rfile.read(size))
            self.rfile.readline(16)

    def _base_url(self) -> str:
        config = self.state.config
        if config.public_url:
            return config.public_url.rstrip("/")
        host = self.headers.get("Host")
        if host and _HOST_RE.fullmatch(host.strip()):
            return f"http://{host.strip()}"
        return self.emulator.url

    # -- dispatch --------------------------------------------------------------------------------

    def _handle(self) -> None:
        raw = self.path
        if raw.startswith(("http://", "https://")):
            parts = urlsplit(raw)
            path, query = parts.path or "/", parts.query
        else:
            path, _, query = raw.partition("?")
            path = path.split("#", 1)[0]
        group, handler = self._route(path, query)
        self.state.count_request(group, self.headers)
        try:
            body = self._read_body()
            handler(body)
        except ApiError as exc:
            self._send_api_error(exc)
        except (_Dropped, _Answered):
            pass
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception:
            log.exception("Unexpected error answering %s %s", self.command, path)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_json(500, error_body(500, "internal_error", "Internal emulator error."))

    def _route(self, path: str, query: str) -> tuple[str, Any]:
        method = self.command

        def guarded(group: str, *methods: str, handler: Any) -> tuple[str, Any]:
            def run(body: bytes) -> None:
                _allow(method, methods)
                handler(body)

            return group, run

        match = _SUBMIT_RE.fullmatch(path)
        if match:
            kind = match.group(1)
            return guarded("submit", "POST", handler=lambda body: self._submit(kind, body))
        match = _TASK_RE.fullmatch(path)
        if match:
            kind, what, rid = match.group(1), match.group(2), unquote(match.group(3), errors="replace")
            if what == "status":
                return guarded("status", "GET", handler=lambda _: self._status(kind, rid))
            return guarded("result", "GET", handler=lambda _: self._result(kind, rid))
        if path == "/ai/v1/user/credits":
            return guarded("credits", "GET", handler=lambda _: self._credits())
        match = _MEDIA_RE.fullmatch(path)
        if match:
            name = match.group(1)
            return guarded("media", "GET", "HEAD", handler=lambda _: self._media(path, name, query))
        if path == "/openapi.json":
            return guarded("openapi", "GET", "HEAD", handler=lambda _: self._openapi())
        if path.startswith("/_emulator/"):
            return "control", lambda body: self._control(path, body)

        def not_found(_: bytes) -> None:
            raise ApiError(404, "not_found", "Unknown path.")

        return "other", not_found

    # -- API -------------------------------------------------------------------------------------

    def _fault(self, group: str) -> FaultDecision:
        decision = self.state.decide_fault(group)
        if decision.latency > 0:
            time.sleep(decision.latency)
        return decision

    def _apply_fault(self, decision: FaultDecision, success: int = 200) -> None:
        if decision.action == "drop":
            self._drop()
        if decision.action == "malformed":
            self._send_bytes(success, decision.body, "application/json")
            raise _Answered
        if decision.action == "error":
            headers = {} if decision.retry_after is None else {"Retry-After": str(decision.retry_after)}
            msg = decision.message or f"Injected fault: HTTP {decision.status} (emulated server trouble)."
            raise ApiError(decision.status, status_error_name(decision.status), msg, headers=headers)

    def _submit(self, kind: str, raw: bytes) -> None:
        fault = self._fault("submit")
        if not fault.after_commit:
            self._apply_fault(fault, 201)
        state = self.state
        account = state.authenticate(self.headers.get("Authorization"))
        state.admit(account, "submit")
        submission = validate_submission(kind, parse_json(raw))
        config = state.config
        if kind == "video":
            width, height = dimensions(submission.ratio, config.video_long_side, even=True)
        else:
            width, height = dimensions(submission.ratio, config.image_long_side)
        task = state.create_task(account, submission, width, height)
        log.info("%s %s task %s created", account.label, kind, task.request_id)
        if kind == "video":
            assert submission.duration is not None
            self.emulator.video_cache.prepare_async(width, height, submission.duration, config.video_fps)
        if fault.after_commit:
            self._apply_fault(fault, 201)
        self._send_json(201, {"request_id": task.request_id})

    def _task(self, group: str, kind: str, request_id: str) -> Task:
        self._apply_fault(self._fault(group))
        account = self.state.authenticate(self.headers.get("Authorization"))
        self.state.admit(account, "poll")
        return self.state.lookup(account, kind, request_id)

    def _status(self, kind: str, request_id: str) -> None:
        task = self._task("status", kind, request_id)
        status, message = self.state.poll(task)
        self._send_json(200, {"status": status, "message": message})

    def _result(self, kind: str, request_id: str) -> None:
        task = self._task("result", kind, request_id)
        status, message = self.state.result_state(task)
        if status == FAILED:
            raise ApiError(409, "task_failed", f"The task failed, so it has no result: {message}")
        if status != DONE:
            raise ApiError(
                409,
                "result_not_ready",
                f"The task is not finished yet (status {status}: {message}); "
                "poll the status endpoint until it reports 2.",
            )
        config = self.state.config
        base = self._base_url()
        ttl = None if config.url_ttl is None else config.scaled(config.url_ttl)
        signer = self.emulator.signer
        sub = task.submission
        results: list[dict[str, Any]] = []
        if task.kind == "video":
            assert sub.duration is not None
            try:
                self.emulator.video_cache.ensure(task.width, task.height, sub.duration, config.video_fps)
            except VideoEncoderUnavailable as exc:
                raise ApiError(500, "video_encoder_unavailable", str(exc)) from None
            url = base + signer.sign(f"/media/{task.request_id}-0.mp4", ttl)
            results.append(
                {
                    "url": url,
                    "content_type": "video/mp4",
                    "width": task.width,
                    "height": task.height,
                    "duration": sub.duration,
                }
            )
        else:
            for index in range(task.count):
                url = base + signer.sign(f"/media/{task.request_id}-{index}.png", ttl)
                results.append(
                    {"url": url, "content_type": "image/png", "width": task.width, "height": task.height}
                )
        self._send_json(200, {"results": results})

    def _credits(self) -> None:
        self._apply_fault(self._fault("credits"))
        account = self.state.authenticate(self.headers.get("Authorization"))
        self.state.admit(account, "poll")
        self._send_json(200, {"credits": account.credits})

    def _openapi(self) -> None:
        from .openapi import openapi_document

        self._send_json(200, openapi_document(self._base_url()))

    # -- media -----------------------------------------------------------------------------------

    def _media(self, path: str, name: str, query: str) -> None:
        fault = self._fault("media")
        if fault.action in ("drop", "error"):
            self._apply_fault(fault)
        match = _MEDIA_NAME_RE.fullmatch(name)
        if match is None:
            raise ApiError(404, "not_found", "Unknown media.")
        config = self.state.config
        self.emulator.signer.check(path, query, required=config.url_ttl is not None)
        request_id, index, ext = match.group(1), int(match.group(2)), match.group(3)
        task = self.state.media_task(request_id)
        if task is None or index >= task.count or ext != ("mp4" if task.kind == "video" else "png"):
            raise ApiError(404, "not_found", "Unknown media.")
        sub = task.submission
        if ext == "png":
            png = self.emulator.png_cache.get(f"{sub.prompt}\x00{index}", task.width, task.height)
            total = padded_size(png, config.media_bytes)
            chunks = stream_png(png, total)
        else:
            assert sub.duration is not None
            try:
                video = self.emulator.video_cache.ensure(
                    task.width, task.height, sub.duration, config.video_fps
                )
            except VideoEncoderUnavailable as exc:
                raise ApiError(500, "video_encoder_unavailable", str(exc)) from None
            total = os.path.getsize(video)
            chunks = stream_file(video)
        self._stream(total, _CONTENT_TYPES[ext], chunks, fault.action)

    def _stream(self, total: int, content_type: str, chunks: Iterator[bytes], action: str | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(total))
        self.send_header("Cache-Control", "private, max-age=60")
        self.state.count_response(200)
        self.end_headers()
        if self.command == "HEAD":
            return
        limit = total // 2 if action in ("truncate", "reset") else total
        sent = 0
        for piece in chunks:
            if sent + len(piece) > limit:
                piece = piece[: limit - sent]
            if piece:
                self.wfile.write(piece)
                sent += len(piece)
            if sent >= limit:
                break
        if action == "truncate":
            self.close_connection = True
        elif action == "reset":
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with self.server.conn_lock:
                self.server.reset_sockets.add(self.connection)

    # -- control surface -------------------------------------------------------------------------

    def _control(self, path: str, raw: bytes) -> None:
        state = self.state
        method = self.command
        name = path[len("/_emulator/") :]
        routes: dict[str, tuple[str, ...]] = {
            "health": ("GET",),
            "stats": ("GET",),
            "config": ("GET", "POST"),
            "reset": ("POST",),
            "faults": ("GET", "POST"),
            "credits": ("POST",),
            "keys": ("POST",),
        }
        task_match = _TASK_CONTROL_RE.fullmatch(path)
        if task_match is None and name not in routes:
            raise ApiError(404, "not_found", "Unknown control endpoint.")
        _allow(method, ("POST",) if task_match else routes[name])
        body: Any = parse_json(raw) if raw.strip() else {}
        try:
            if task_match:
                if not isinstance(body, dict):
                    raise ConfigError("body must be a JSON object")
                message = body.get("message")
                if message is not None and not isinstance(message, str):
                    raise ConfigError("message must be a string")
                rid = unquote(task_match.group(1))
                task = state.force_finish(rid, message, fail=task_match.group(2) == "fail")
                with state.lock:
                    view = state.task_view(task, state.clock())
                self._send_json(200, view)
            elif name == "health":
                self._send_json(200, {"status": "ok", "url": self.emulator.url, "pid": os.getpid()})
            elif name == "stats":
                self._send_json(200, state.stats())
            elif name == "config":
                if method == "POST":
                    state.configure(body)
                self._send_json(200, self.emulator.config_view())
            elif name == "reset":
                state.reset(body)
                log.info("State reset")
                self._send_json(200, self.emulator.config_view())
            elif name == "faults":
                if method == "POST":
                    state.set_faults(parse_faults(body))
                self._send_json(200, {"faults": [rule.to_dict() for rule in state.faults]})
            elif name == "credits":
                self._set_credits(body)
            elif name == "keys":
                if not isinstance(body, dict):
                    raise ConfigError("body must be a JSON object")
                try:
                    spec = KeySpec(**body)
                except TypeError as exc:
                    raise ConfigError(str(exc)) from None
                account = state.add_key(spec)
                self._send_json(200, {"key": account.label, "tier": account.tier, "credits": account.credits})
        except ConfigError as exc:
            raise ApiError(400, "invalid_parameter", str(exc)) from None

    def _set_credits(self, body: Any) -> None:
        if not isinstance(body, dict) or set(body) - {"key", "credits"}:
            raise ConfigError('body must be {"key": KEY_OR_LABEL_OR_null, "credits": N}')
        credits, key = body.get("credits"), body.get("key")
        if not isinstance(credits, int) or isinstance(credits, bool) or credits < 0:
            raise ConfigError("credits must be a non-negative integer")
        if key is not None and not isinstance(key, str):
            raise ConfigError("key must be a string or null")
        try:
            account = self.state.set_credits(key, credits)
        except KeyError:
            raise ApiError(404, "not_found", "Unknown key.") from None
        self._send_json(200, {"key": account.label, "credits": account.credits})


class CerebraformEmulator:
    """A Cerebraform server in this process, on a background thread.

    :param config: configuration (defaults: loopback, ephemeral port, ``cf-dev-key`` enabled).
    :param overrides: field values applied on top of ``config``.
    """

    def __init__(self, config: EmulatorConfig | None = None, **overrides: Any) -> None:
        config = config or EmulatorConfig()
        if overrides:
            config = config.updated(overrides)
        self.state = EmulatorState(config)
        self.signer = UrlSigner(os.urandom(32))
        self.png_cache = PngCache()
        self.video_cache = VideoCache(config.media_dir)
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> EmulatorConfig:
        """The configuration in force (changes with ``/_emulator/config`` and ``reset``)."""
        return self.state.config

    def start(self) -> CerebraformEmulator:
        """Bind and serve on a daemon thread; return ``self``."""
        if self._server is not None:
            return self
        config = self.state.startup_config
        if not is_loopback(config.host):
            log.warning(
                "The Cerebraform emulator binds to %s, which is not a loopback address: anyone who can "
                "reach this machine can use it and its unauthenticated /_emulator/ control endpoints.",
                config.host,
            )
        self._server = EmulatorHTTPServer((config.host.strip("[]"), config.port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="cerebraform-emulator",
            daemon=True,
        )
        self._thread.start()
        log.info("Cerebraform emulator listening on %s", self.url)
        return self

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL clients use, e.g. ``http://127.0.0.1:PORT``."""
        host = self.state.startup_config.host.strip("[]")
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def admin(self) -> EmulatorAdmin:
        """An :class:`~airflow_provider_cerebraform.emulator.admin.EmulatorAdmin` for this server."""
        from .admin import EmulatorAdmin

        return EmulatorAdmin(self.url)

    def config_view(self) -> dict[str, Any]:
        """Return the config in force as JSON, keys shown by label only."""
        data = self.state.config.to_dict()
        data["keys"] = [
            {"key": account.label, "tier": account.tier, "credits": account.credits}
            for account in self.state.accounts.values()
        ]
        return data

    def stop(self) -> None:
        """Stop serving, close open connections and wait for the server thread."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        log.info("Cerebraform emulator stopped")

    def __enter__(self) -> CerebraformEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _allow(method: str, methods: tuple[str, ...]) -> None:
    """Refuse a method the endpoint does not take with 405 and its ``Allow`` header."""
    if method not in methods:
        raise ApiError(
            405,
            "method_not_allowed",
            f"Method {method} is not allowed here; use {', '.join(methods)}.",
            headers={"Allow": ", ".join(methods)},
        )
