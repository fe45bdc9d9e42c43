"""The ``cerebraform-emulator`` command (also ``python -m airflow_provider_cerebraform.emulator``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_API_KEY, FAIL_MARKER, ConfigError, EmulatorConfig, KeySpec

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_PORT = 8787
_SIZE_RE = re.compile(r"\s*([0-9]+)\s*([kmgt]i?b?|b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str) -> int:
    """Parse a byte count: ``1048576``, ``500k``, ``10MB``, ``1GiB``.

    :param text: the command-line value.
    """
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1000000, 10MB, 1GiB)")
    unit = (match.group(2) or "").lower()
    letter = "" if unit in ("", "b") else unit[0]
    if "i" in unit:
        return int(match.group(1)) * 1024 ** ("kmgt".index(letter) + 1)
    return int(match.group(1)) * _UNITS[letter]


def _key(text: str) -> KeySpec:
    try:
        return KeySpec.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _field(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    try:
        return name.strip(), json.loads(value)
    except ValueError:
        return name.strip(), value  # a bare string such as public_url=http://host:1


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (every flag is documented in ``docs/emulator.md``)."""
    parser = argparse.ArgumentParser(
        prog="cerebraform-emulator",
        description=(
            "A faithful local Cerebraform server for offline DAG runs and tests. "
            f"Default API key: {DEFAULT_API_KEY} (tier paid). "
            f"A prompt containing {FAIL_MARKER} (or {FAIL_MARKER}:message) fails its task."
        ),
    )
    add = parser.add_argument
    add("--host", help="address to bind (default 127.0.0.1; a warning is logged when not loopback)")
    add("--port", type=int, help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    add(
        "--key",
        action="append",
        type=_key,
        default=[],
        metavar="KEY=TIER[:CREDITS]",
        help="accept an API key of tier free or paid, optionally with its starting credits (repeatable)",
    )
    add("--no-default-key", action="store_true", help=f"do not accept the dev key {DEFAULT_API_KEY}")
    add("--credits", type=int, help="starting credits of every key without its own (default 1000)")
    add("--anonymous-credits", type=int, help="starting credits of the anonymous account (default 1000)")
    add(
        "--time-scale",
        type=float,
        help="divide every emulated duration (jobs, rate-limit windows, url ttl) by this (default 1)",
    )
    add("--image-seconds", type=float, help="emulated seconds from image submission to done (default 12)")
    add("--video-seconds", type=float, help="emulated seconds from video submission to done (default 60)")
    add("--images-per-task", type=int, help="images in an image result (default 1)")
    add("--failure-rate", type=float, help="probability that a task fails when it would finish (default 0)")
    add("--seed", type=int, help="seed of the random generator (failure rate, random faults)")
    add("--url-ttl", type=float, help="sign result URLs valid this many emulated seconds (default: unsigned)")
    add(
        "--media-bytes",
        type=parse_size,
        help="pad every served PNG to exactly this size, e.g. 1GiB (streamed, never held in memory)",
    )
    add("--media-dir", help="video cache directory (default: under the system temp dir)")
    add("--public-url", help="base of result URLs (default: from the request's Host header)")
    add("--config", metavar="FILE", help="JSON file of configuration fields; flags override it")
    add(
        "--set",
        action="append",
        type=_field,
        default=[],
        metavar="FIELD=VALUE",
        help="set any configuration field, VALUE read as JSON, e.g. paid_tasks_per_hour=100000 (repeatable)",
    )
    add("--ready-file", metavar="FILE", help="write the base URL to this file once listening")
    add("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    return parser


_FLAG_FIELDS = (
    "host",
    "port",
    "credits",
    "anonymous_credits",
    "time_scale",
    "image_seconds",
    "video_seconds",
    "images_per_task",
    "failure_rate",
    "seed",
    "url_ttl",
    "media_bytes",
    "media_dir",
    "public_url",
)


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Build the configuration: defaults, then ``--config FILE``, then flags.

    :param args: parsed command line.
    """
    data: dict[str, Any] = {"port": DEFAULT_PORT}
    if args.config:
        with open(args.config, encoding="utf-8") as handle:
            loaded = json.load(handle)
        if not isinstance(loaded, dict):
            raise ConfigError(f"{args.config} must hold a JSON object")
        data.update(loaded)
    data.update(dict(args.set))
    for name in _FLAG_FIELDS:
        value = getattr(args, name)
        if value is not None:
            data[name] = value
    if args.key:
        data["keys"] = [*data.get("keys", []), *args.key]
    if args.no_default_key:
        data["default_key"] = False
    return EmulatorConfig.from_dict(data)


def _write_ready_file(path: str, url: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(url + "\n")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGTERM or SIGINT; return the exit status.

    :param argv: arguments (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_from_args(args)
    except (ConfigError, OSError, ValueError) as exc:
        parser.error(str(exc))

    from .server import CerebraformEmulator

    emulator = CerebraformEmulator(config)
    try:
        emulator.start()
    except OSError as exc:
        print(f"cerebraform-emulator: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        if args.ready_file:
            _write_ready_file(args.ready_file, emulator.url)
        print(f"Cerebraform emulator listening on {emulator.url}", flush=True)
        if config.default_key:
            logging.getLogger(__name__).info("Default API key: %s (tier paid)", DEFAULT_API_KEY)
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
