"""Fault injection: errors, latency, dropped connections and broken media downloads, per endpoint group."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import ConfigError

if TYPE_CHECKING:
    import random

#: Endpoint groups a fault can target.
FAULT_GROUPS = ("submit", "status", "result", "credits", "media")
#: Media-only actions.
MEDIA_ACTIONS = ("truncate", "reset")
#: Groups that answer JSON, where a ``malformed`` answer can replace the real one.
API_GROUPS = ("submit", "status", "result", "credits")
#: The built-in malformed answers: not JSON, a JSON array, an object without the expected fields,
#: the expected fields with the wrong types, an empty body, and JSON ``null``.
MALFORMED_KINDS = ("not_json", "array", "missing_fields", "wrong_types", "empty", "null")
_WRONG_TYPES = {
    "submit": {"request_id": ["not", "a", "string"]},
    "status": {"status": "done", "message": {"nested": True}},
    "result": {"results": {"url": "http://127.0.0.1/not-a-list.png"}},
    "credits": {"credits": "plenty"},
}


def malformed_body(kind: str, group: str) -> bytes:
    """The body of a built-in malformed answer.

    :param kind: one of :data:`MALFORMED_KINDS`.
    :param group: the endpoint group, which decides the fields of ``wrong_types``.
    """
    if kind == "not_json":
        return b"<html><body>502 Bad Gateway (not JSON)</body></html>"
    if kind == "array":
        return json.dumps([{"request_id": "0123456789abcdef", "status": 2, "credits": 1}]).encode()
    if kind == "missing_fields":
        return json.dumps({"unexpected": "field", "code": 200}).encode()
    if kind == "wrong_types":
        return json.dumps(_WRONG_TYPES.get(group, {"unexpected": True})).encode()
    if kind == "empty":
        return b""
    return b"null"


@dataclass
class FaultRule:
    """One fault. Counters (``*_next``) are consumed by matching requests; rates draw from the seeded RNG.

    For one request the rules are tried in order; the first that fires decides the action, while the
    ``latency`` of every matching rule is added up and slept before the response.

    :param endpoint: a group from :data:`FAULT_GROUPS`, a list of them, or ``"*"`` for all.
    :param status: HTTP status of injected errors (default 503).
    :param error_rate: probability that a matching request gets ``status``.
    :param fail_next: the next N matching requests get ``status``.
    :param after_commit: submit only: create and charge the task first, then answer the error or drop.
    :param latency: real seconds slept before answering.
    :param latency_next: if set, ``latency`` delays only the next N matching requests (``None``: all).
    :param drop_next: the next N matching requests get the connection closed without a response.
    :param drop_rate: probability of such a drop.
    :param truncate_next: media only: send the headers with the full Content-Length, half the body, close.
    :param reset_next: media only: send half the body, then reset the connection (TCP RST).
    :param malformed_next: API groups only (not media): the next N matching requests get a success
        status (201 for submit, else 200) with a malformed body instead of the real answer.
    :param malformed: which malformed body: one of :data:`MALFORMED_KINDS` (default ``not_json``).
    :param body: the exact body of a malformed answer, instead of a built-in one (e.g. an answer that
        is well-formed but hostile).
    :param retry_after: ``Retry-After`` header (seconds) on injected errors; ``None`` sends none.
    :param message: ``msg`` of injected errors.
    """

    endpoint: str | list[str] = "*"
    status: int = 503
    error_rate: float = 0.0
    fail_next: int = 0
    after_commit: bool = False
    latency: float = 0.0
    latency_next: int | None = None
    drop_next: int = 0
    drop_rate: float = 0.0
    truncate_next: int = 0
    reset_next: int = 0
    malformed_next: int = 0
    malformed: str = "not_json"
    body: str | None = None
    retry_after: int | None = None
    message: str | None = None
    groups: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        endpoints = [self.endpoint] if isinstance(self.endpoint, str) else self.endpoint
        if not isinstance(endpoints, list) or not endpoints:
            raise ConfigError("endpoint must be a group name, a list of them, or '*'")
        groups: list[str] = []
        for name in endpoints:
            if name == "*":
                groups.extend(FAULT_GROUPS)
            elif name in FAULT_GROUPS:
                groups.append(name)
            else:
                raise ConfigError(f"unknown fault endpoint {name!r}; use one of {', '.join(FAULT_GROUPS)}")
        self.groups = tuple(dict.fromkeys(groups))
        if _not_int(self.status) or not 400 <= self.status <= 599:
            raise ConfigError("status must be an integer between 400 and 599")
        for name in ("error_rate", "drop_rate"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be a number between 0 and 1")
        if not _is_number(self.latency) or not 0.0 <= self.latency <= 600.0:
            raise ConfigError("latency must be a number of seconds between 0 and 600")
        for name in ("fail_next", "drop_next", "truncate_next", "reset_next", "malformed_next"):
            value = getattr(self, name)
            if _not_int(value) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer")
        if self.latency_next is not None and (_not_int(self.latency_next) or self.latency_next < 0):
            raise ConfigError("latency_next must be a non-negative integer or null")
        if self.malformed not in MALFORMED_KINDS:
            raise ConfigError(f"malformed must be one of {', '.join(MALFORMED_KINDS)}")
        if self.body is not None and not isinstance(self.body, str):
            raise ConfigError("body must be a string or null")
        if not isinstance(self.after_commit, bool):
            raise ConfigError("after_commit must be a boolean")
        if self.retry_after is not None and (_not_int(self.retry_after) or self.retry_after < 0):
            raise ConfigError("retry_after must be a non-negative integer or null")
        if self.message is not None and not isinstance(self.message, str):
            raise ConfigError("message must be a string or null")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultRule:
        """Build a rule from its JSON form.

        :param data: field name to value.
        """
        if not isinstance(data, dict):
            raise ConfigError("each fault must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown fault option(s): {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form, with the counters as they are now."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}


def _not_int(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class FaultDecision:
    """What the server does to one request.

    :param latency: seconds to sleep first.
    :param action: ``None``, ``"error"``, ``"drop"``, ``"malformed"``, ``"truncate"`` or ``"reset"``.
    :param status: status of an ``"error"``.
    :param after_commit: submit: commit the task before the error or drop.
    :param retry_after: ``Retry-After`` of an error.
    :param message: ``msg`` of an error.
    :param body: the body of a ``"malformed"`` answer.
    """

    latency: float = 0.0
    action: str | None = None
    status: int = 503
    after_commit: bool = False
    retry_after: int | None = None
    message: str | None = None
    body: bytes = b""


def parse_faults(data: Any) -> list[FaultRule]:
    """Parse ``{"faults": [...]}``, a bare list, or a single rule object.

    :param data: decoded JSON.
    """
    if isinstance(data, dict) and "faults" in data and len(data) == 1:
        data = data["faults"]
    if data is None:
        return []
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ConfigError('faults must be a list of fault objects or {"faults": [...]}')
    return [rule if isinstance(rule, FaultRule) else FaultRule.from_dict(rule) for rule in data]


def decide(rules: list[FaultRule], group: str, rng: random.Random) -> FaultDecision:
    """Pick the fault for one request of ``group``, consuming counters. The caller holds the state lock.

    :param rules: the active rules.
    :param group: the request's endpoint group.
    :param rng: the seeded random generator.
    """
    decision = FaultDecision()
    for rule in rules:
        if group not in rule.groups:
            continue
        if rule.latency_next is None:
            decision.latency += rule.latency
        elif rule.latency_next > 0:
            rule.latency_next -= 1
            decision.latency += rule.latency
        if decision.action is not None:
            continue
        action = _fire(rule, group, rng)
        if action is not None:
            decision.action = action
            decision.status = rule.status
            decision.after_commit = rule.after_commit and group == "submit"
            decision.retry_after = rule.retry_after
            decision.message = rule.message
            if action == "malformed":
                decision.body = (
                    rule.body.encode("utf-8")
                    if rule.body is not None
                    else malformed_body(rule.malformed, group)
                )
    return decision


def _fire(rule: FaultRule, group: str, rng: random.Random) -> str | None:
    if rule.drop_next > 0:
        rule.drop_next -= 1
        return "drop"
    if rule.fail_next > 0:
        rule.fail_next -= 1
        return "error"
    if group in API_GROUPS and rule.malformed_next > 0:
        rule.malformed_next -= 1
        return "malformed"
    if group == "media":
        if rule.truncate_next > 0:
            rule.truncate_next -= 1
            return "truncate"
        if rule.reset_next > 0:
            rule.reset_next -= 1
            return "reset"
    if rule.drop_rate and rng.random() < rule.drop_rate:
        return "drop"
    if rule.error_rate and rng.random() < rule.error_rate:
        return "error"
    return None
