"""A tiny standard-library client for the emulator's ``/_emulator/`` control endpoints."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from .faults import FaultRule

# Loopback control calls must never go through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EmulatorAdminError(RuntimeError):
    """A control call answered with an error status.

    :param status: HTTP status code.
    :param body: decoded JSON body (or ``{"msg": text}``).
    """

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {body.get('msg', body)}")
        self.status = status
        self.body = body


class EmulatorAdmin:
    """Control a running emulator (in-process or subprocess) over HTTP; every method returns dicts.

    :param base_url: the emulator's base URL, e.g. ``http://127.0.0.1:8787``.
    :param timeout: seconds per call.
    """

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"EmulatorAdmin({self.base_url!r})"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"msg": raw.decode("utf-8", "replace")}
            raise EmulatorAdminError(exc.code, payload) from None

    def health(self) -> dict[str, Any]:
        """``GET /_emulator/health``."""
        return self._call("GET", "/_emulator/health")

    def wait_ready(self, timeout: float = 10.0) -> dict[str, Any]:
        """Poll ``health`` until it answers or ``timeout`` seconds pass.

        :param timeout: seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.health()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        """``GET /_emulator/stats``: counters, balances by key label, and every task."""
        return self._call("GET", "/_emulator/stats")

    def tasks(self) -> list[dict[str, Any]]:
        """Return the task list of ``stats``."""
        return self.stats()["tasks"]

    def task(self, request_id: str) -> dict[str, Any]:
        """Return one task of ``stats`` (KeyError when unknown).

        :param request_id: the task id.
        """
        for task in self.tasks():
            if task["request_id"] == request_id:
                return task
        raise KeyError(request_id)

    def config(self) -> dict[str, Any]:
        """``GET /_emulator/config``: the configuration in force (keys by label)."""
        return self._call("GET", "/_emulator/config")

    def configure(self, **changes: Any) -> dict[str, Any]:
        """``POST /_emulator/config``: change config values until the next reset.

        :param changes: field name to value, e.g. ``time_scale=100, media_bytes=10_000_000``.
        """
        return self._call("POST", "/_emulator/config", changes)

    def reset(self, **changes: Any) -> dict[str, Any]:
        """``POST /_emulator/reset``: clear tasks, counters, windows, faults; restore keys and credits.

        :param changes: config values applied on top of the startup config until the next reset.
        """
        return self._call("POST", "/_emulator/reset", changes)

    def faults(self) -> list[dict[str, Any]]:
        """``GET /_emulator/faults``: the active rules with their remaining counters."""
        return self._call("GET", "/_emulator/faults")["faults"]

    def set_faults(self, *rules: dict[str, Any] | FaultRule | list[Any]) -> list[dict[str, Any]]:
        """``POST /_emulator/faults``: replace the fault set.

        :param rules: rule dicts (or FaultRule objects, or one list of them); none clears the set.
        """
        items: list[Any] = list(rules[0]) if len(rules) == 1 and isinstance(rules[0], list) else list(rules)
        payload = [rule if isinstance(rule, dict) else rule.to_dict() for rule in items]
        return self._call("POST", "/_emulator/faults", {"faults": payload})["faults"]

    def clear_faults(self) -> list[dict[str, Any]]:
        """Remove every fault rule."""
        return self.set_faults()

    def set_credits(self, key: str | None, credits: int) -> dict[str, Any]:
        """``POST /_emulator/credits``: set a balance.

        :param key: the key, its ``key#...`` label, or ``None`` for the anonymous account.
        :param credits: the new balance.
        """
        return self._call("POST", "/_emulator/credits", {"key": key, "credits": credits})

    def add_key(self, key: str, tier: str = "free", credits: int | None = None) -> dict[str, Any]:
        """``POST /_emulator/keys``: accept a new key until the next reset.

        :param key: the secret.
        :param tier: ``"free"`` or ``"paid"``.
        :param credits: starting balance (``None``: the configured default).
        """
        return self._call("POST", "/_emulator/keys", {"key": key, "tier": tier, "credits": credits})

    def fail_task(self, request_id: str, message: str | None = None) -> dict[str, Any]:
        """``POST /_emulator/tasks/{request_id}/fail``: fail a queued or running task now.

        :param request_id: the task.
        :param message: the status message (``None``: a default).
        """
        body = {} if message is None else {"message": message}
        return self._call("POST", f"/_emulator/tasks/{quote(request_id, safe='')}/fail", body)

    def complete_task(self, request_id: str) -> dict[str, Any]:
        """``POST /_emulator/tasks/{request_id}/complete``: finish a queued or running task now.

        :param request_id: the task.
        """
        return self._call("POST", f"/_emulator/tasks/{quote(request_id, safe='')}/complete", {})
