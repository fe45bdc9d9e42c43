"""Configuration of the Cerebraform emulator: one dataclass, validated field by field."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

#: The documented development key, accepted (tier ``paid``) unless ``default_key`` is off.
DEFAULT_API_KEY = "cf-dev-key"
#: A prompt containing this marker fails its task when it would finish; ``#cf-fail:text`` sets the message.
FAIL_MARKER = "#cf-fail"
#: The account tiers the emulator knows.
TIERS = ("free", "paid")


class ConfigError(ValueError):
    """A configuration value has the wrong type or is out of range."""


@dataclass
class KeySpec:
    """An API key the emulator accepts.

    :param key: the secret a client sends as ``Authorization: Bearer <key>``.
    :param tier: ``"free"`` or ``"paid"``; it selects the rate limits.
    :param credits: starting credit balance; ``None`` takes :attr:`EmulatorConfig.credits`.
    """

    key: str
    tier: str = "paid"
    credits: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key or any(c.isspace() for c in self.key):
            raise ConfigError("key must be a non-empty string without whitespace")
        if self.tier not in TIERS:
            raise ConfigError(f"tier must be one of {', '.join(TIERS)}, not {self.tier!r}")
        if self.credits is not None and (_not_int(self.credits) or self.credits < 0):
            raise ConfigError("credits must be a non-negative integer or null")

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        """Parse the CLI form ``KEY=TIER`` or ``KEY=TIER:CREDITS``.

        :param text: the command-line value.
        """
        key, sep, rest = text.rpartition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=TIER or KEY=TIER:CREDITS, got {text!r}")
        tier, _, credits = rest.partition(":")
        if credits:
            try:
                amount: int | None = int(credits)
            except ValueError:
                raise ConfigError(f"credits must be an integer in {text!r}") from None
        else:
            amount = None
        return cls(key=key, tier=tier, credits=amount)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {"key": self.key, "tier": self.tier, "credits": self.credits}


def _not_int(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool)


@dataclass
class EmulatorConfig:
    """Everything the emulator can be told. Durations are *emulated* seconds, divided by ``time_scale``.

    :param host: address to bind; loopback by default.
    :param port: TCP port; 0 picks a free one.
    :param keys: extra API keys (:class:`KeySpec`).
    :param default_key: accept :data:`DEFAULT_API_KEY` (tier paid).
    :param credits: starting balance of every key that does not set its own.
    :param anonymous_credits: starting balance shared by all requests without a key.
    :param time_scale: divides every emulated duration: job durations, rate-limit windows and ``url_ttl``.
    :param image_seconds: time from submission to done for an image task.
    :param video_seconds: time from submission to done for a video task.
    :param queue_fraction: share of a task's duration spent queued (status 0) before running (status 1).
    :param images_per_task: number of images in an image result.
    :param failure_rate: probability that a task fails (status -1) when it would finish.
    :param seed: seed of the random generator behind ``failure_rate`` and random faults.
    :param url_ttl: lifetime of signed media URLs; ``None`` serves unsigned URLs that never expire.
    :param media_bytes: pad every served PNG to exactly this many bytes; ``None`` serves it as generated.
    :param image_credits: credits charged per image at submission.
    :param video_credits_per_5s: credits charged per started 5 seconds of video at submission.
    :param free_tasks_per_hour: task creations per hour for a free key.
    :param paid_tasks_per_hour: task creations per hour for a paid key.
    :param free_polls_per_minute: GET requests (status, result, credits) per minute for a free key.
    :param paid_polls_per_minute: GET requests per minute for a paid key.
    :param anonymous_requests_per_day: API requests per day for all requests without a key together.
    :param image_long_side: pixels of the longer side of a generated image.
    :param video_long_side: pixels of the longer side of a generated video.
    :param video_fps: frames per second of a generated video.
    :param public_url: base of result URLs; ``None`` uses the request's ``Host`` header.
    :param media_dir: cache directory for encoded videos; ``None`` uses one under the system temp dir.
    :param max_body_bytes: largest request body accepted (413 above it).
    """

    host: str = "127.0.0.1"
    port: int = 0
    keys: list[KeySpec] = field(default_factory=list)
    default_key: bool = True
    credits: int = 1000
    anonymous_credits: int = 1000
    time_scale: float = 1.0
    image_seconds: float = 12.0
    video_seconds: float = 60.0
    queue_fraction: float = 0.2
    images_per_task: int = 1
    failure_rate: float = 0.0
    seed: int | None = None
    url_ttl: float | None = None
    media_bytes: int | None = None
    image_credits: int = 1
    video_credits_per_5s: int = 5
    free_tasks_per_hour: int = 10
    paid_tasks_per_hour: int = 200
    free_polls_per_minute: int = 20
    paid_polls_per_minute: int = 120
    anonymous_requests_per_day: int = 200
    image_long_side: int = 512
    video_long_side: int = 320
    video_fps: int = 8
    public_url: str | None = None
    media_dir: str | None = None
    max_body_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        self.keys = [k if isinstance(k, KeySpec) else KeySpec(**k) for k in self.keys]
        for f in dataclasses.fields(self):
            if f.name != "keys":
                _check_field(f.name, getattr(self, f.name))

    def all_keys(self) -> list[KeySpec]:
        """Return the configured keys, the default dev key first when enabled."""
        keys = list(self.keys)
        if self.default_key and not any(k.key == DEFAULT_API_KEY for k in keys):
            keys.insert(0, KeySpec(DEFAULT_API_KEY, "paid"))
        return keys

    def scaled(self, seconds: float) -> float:
        """Convert emulated seconds to real seconds."""
        return seconds / self.time_scale

    def updated(self, changes: dict[str, Any], *, runtime: bool = False) -> EmulatorConfig:
        """Return a copy with ``changes`` applied, after validating them.

        :param changes: field name to new value (JSON types).
        :param runtime: refuse the fields that cannot change on a running server.
        """
        if not isinstance(changes, dict):
            raise ConfigError("configuration must be a JSON object")
        names = {f.name for f in dataclasses.fields(self)}
        for name in changes:
            if name not in names:
                raise ConfigError(f"unknown configuration field {name!r}")
            if runtime and name in STARTUP_ONLY_FIELDS:
                raise ConfigError(f"{name!r} can only be set when the emulator starts")
        data = dict(changes)
        if "keys" in data:
            if not isinstance(data["keys"], list):
                raise ConfigError("keys must be a list")
            try:
                data["keys"] = [k if isinstance(k, KeySpec) else KeySpec(**k) for k in data["keys"]]
            except TypeError as exc:
                raise ConfigError(f"bad key entry: {exc}") from None
        return dataclasses.replace(self, **data)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (keys included: this is the admin view)."""
        data = dataclasses.asdict(self)
        data["keys"] = [k.to_dict() for k in self.keys]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmulatorConfig:
        """Build a config from its JSON form.

        :param data: field name to value; missing fields take their defaults.
        """
        return cls().updated(data)


#: Fields fixed once the server runs.
STARTUP_ONLY_FIELDS = frozenset({"host", "port", "keys", "default_key", "media_dir"})

_FLOAT_RULES: dict[str, tuple[float, float, bool]] = {
    # name: (minimum, maximum, minimum excluded)
    "time_scale": (0.0, 1e9, True),
    "image_seconds": (0.0, 1e7, False),
    "video_seconds": (0.0, 1e7, False),
    "queue_fraction": (0.0, 1.0, False),
    "failure_rate": (0.0, 1.0, False),
    "url_ttl": (0.0, 1e9, True),
}
_INT_RULES: dict[str, tuple[int, int]] = {
    "port": (0, 65535),
    "credits": (0, 10**15),
    "anonymous_credits": (0, 10**15),
    "images_per_task": (1, 16),
    "seed": (-(2**63), 2**63),
    "media_bytes": (0, 2**50),
    "image_credits": (0, 10**9),
    "video_credits_per_5s": (0, 10**9),
    "free_tasks_per_hour": (1, 10**9),
    "paid_tasks_per_hour": (1, 10**9),
    "free_polls_per_minute": (1, 10**9),
    "paid_polls_per_minute": (1, 10**9),
    "anonymous_requests_per_day": (1, 10**9),
    "image_long_side": (16, 4096),
    "video_long_side": (16, 1920),
    "video_fps": (1, 60),
    "max_body_bytes": (1024, 2**31),
}
_OPTIONAL = frozenset({"seed", "url_ttl", "media_bytes", "public_url", "media_dir"})
_STRINGS = frozenset({"host", "public_url", "media_dir"})
_BOOLS = frozenset({"default_key"})


def _check_field(name: str, value: object) -> None:
    if value is None:
        if name in _OPTIONAL:
            return
        raise ConfigError(f"{name} must not be null")
    if name in _BOOLS:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be a boolean")
    elif name in _STRINGS:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{name} must be a non-empty string")
    elif name in _FLOAT_RULES:
        low, high, open_low = _FLOAT_RULES[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number")
        if value > high or value < low or (open_low and value == low):
            bound = f"> {low}" if open_low else f">= {low}"
            raise ConfigError(f"{name} must be {bound} and <= {high}")
    elif name in _INT_RULES:
        low_i, high_i = _INT_RULES[name]
        if _not_int(value):
            raise ConfigError(f"{name} must be an integer")
        assert isinstance(value, int)
        if not low_i <= value <= high_i:
            raise ConfigError(f"{name} must be between {low_i} and {high_i}")
