"""The emulator's state: keys, tiers, credits, tasks, rate-limit windows and counters, behind one lock."""

from __future__ import annotations

import hashlib
import math
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_API_KEY, FAIL_MARKER, ConfigError, EmulatorConfig, KeySpec
from .errors import ApiError, rate_limited
from .faults import FaultDecision, FaultRule, decide
from .ratelimit import SlidingWindow, retry_after_seconds

if TYPE_CHECKING:
    from collections.abc import Callable

    from .validation import Submission

ANONYMOUS = "anonymous"
QUEUED, RUNNING, DONE, FAILED = 0, 1, 2, -1
DEFAULT_FAIL_MESSAGE = "Generation failed: prompt flagged by content policy (emulated)"
RANDOM_FAIL_MESSAGE = "Generation failed: the model crashed (emulated random failure)"
ADMIN_FAIL_MESSAGE = "Generation failed (emulated: failed by the emulator's admin endpoint)"
HOUR, MINUTE, DAY = 3600.0, 60.0, 86400.0
#: Request headers whose values ``stats()["client_headers"]`` counts (never ``Authorization``).
COUNTED_HEADERS = ("User-Agent", "Accept")
#: Endpoint groups always listed in ``stats()["requests"]`` (others appear once seen).
API_GROUPS = ("submit", "status", "result", "credits", "media")


def key_label(key: str) -> str:
    """Return the loggable name of an API key: ``key#`` and the first 8 hex digits of its sha256.

    :param key: the secret key.
    """
    return "key#" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]


@dataclass
class Account:
    """A key (or the shared anonymous account) with its balance and rate-limit windows.

    :param label: loggable name (never the key itself).
    :param tier: ``"free"``, ``"paid"`` or ``"anonymous"``.
    :param credits: current balance.
    :param configured: the key comes from the startup configuration (kept on reset).
    """

    label: str
    tier: str
    credits: int
    configured: bool = True
    submissions: int = 0
    submit_window: SlidingWindow = field(default_factory=SlidingWindow)
    poll_window: SlidingWindow = field(default_factory=SlidingWindow)


@dataclass
class Task:
    """One generation job. Times are monotonic seconds; the status follows from the clock.

    :param request_id: the id returned at submission.
    :param kind: ``"image"`` or ``"video"``.
    :param owner: label of the account that submitted it.
    :param submission: the validated parameters.
    :param width: pixel width of the result.
    :param height: pixel height of the result.
    :param count: number of result items.
    :param cost: credits charged.
    :param created: submission time.
    :param running: time the task leaves the queue.
    :param finished: time the task finishes (done or failed).
    :param fail_message: set when the task fails at ``finished``.
    """

    request_id: str
    kind: str
    owner: str
    submission: Submission
    width: int
    height: int
    count: int
    cost: int
    created: float
    running: float
    finished: float
    fail_message: str | None = None
    polls: int = 0
    result_fetches: int = 0
    media_fetches: int = 0
    last_poll: float | None = None
    terminal_seen: float | None = None

    def status(self, now: float) -> tuple[int, str]:
        """Return ``(status, message)`` at time ``now``.

        :param now: monotonic seconds.
        """
        if now >= self.finished:
            if self.fail_message is not None:
                return FAILED, self.fail_message
            return DONE, "Task completed."
        if now >= self.running:
            span = self.finished - self.running
            percent = int(100 * (now - self.running) / span) if span > 0 else 99
            return RUNNING, f"Task is running ({min(percent, 99)}%)."
        return QUEUED, "Task is queued."


def fail_marker_message(prompt: str) -> str | None:
    """Return the failure message a prompt asks for with :data:`FAIL_MARKER`, or ``None``.

    ``#cf-fail`` gives the default message; ``#cf-fail:text`` gives ``text`` (up to the end of the line).

    :param prompt: the submitted prompt.
    """
    index = prompt.find(FAIL_MARKER)
    if index < 0:
        return None
    rest = prompt[index + len(FAIL_MARKER) :]
    if rest.startswith(":"):
        text = rest[1:].splitlines()[0].strip() if rest[1:].strip() else ""
        if text:
            return text
    return DEFAULT_FAIL_MESSAGE


class EmulatorState:
    """Thread-safe state of one emulator. Every public method takes the lock.

    :param config: the startup configuration (``reset`` returns to it).
    :param clock: monotonic time source, in real seconds.
    """

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.startup_config = config
        self.config = config
        self._wall_offset = time.time() - clock()
        self.accounts: dict[str, Account] = {}
        self.anonymous = Account(ANONYMOUS, ANONYMOUS, config.anonymous_credits)
        self.anonymous_window = SlidingWindow()
        self.tasks: dict[str, Task] = {}
        self.faults: list[FaultRule] = []
        self.rng = random.Random(config.seed)
        self.requests: Counter[str] = Counter()
        self.client_headers: dict[str, Counter[str]] = {name: Counter() for name in COUNTED_HEADERS}
        self.responses: Counter[int] = Counter()
        self.rate_limited: Counter[str] = Counter()
        self.faults_injected: Counter[str] = Counter()
        self.submissions_total = 0
        self.started_at = time.time()
        self.reset()

    # -- configuration ---------------------------------------------------------------------------

    def reset(self, changes: dict[str, Any] | None = None) -> EmulatorConfig:
        """Clear tasks, counters, windows and faults; restore keys and credits of the startup config.

        :param changes: config values applied on top of the startup config (until the next reset).
        """
        with self.lock:
            config = self.startup_config.updated(changes or {}, runtime=True)
            self.config = config
            self.accounts = {
                spec.key: Account(key_label(spec.key), spec.tier, _credits(spec, config))
                for spec in config.all_keys()
            }
            self.anonymous = Account(ANONYMOUS, ANONYMOUS, config.anonymous_credits)
            self.anonymous_window = SlidingWindow()
            self.tasks.clear()
            self.faults = []
            self.rng = random.Random(config.seed)
            self.requests.clear()
            for counter in self.client_headers.values():
                counter.clear()
            self.responses.clear()
            self.rate_limited.clear()
            self.faults_injected.clear()
            self.submissions_total = 0
            return config

    def configure(self, changes: dict[str, Any]) -> EmulatorConfig:
        """Change configuration values at runtime (until the next reset).

        :param changes: field name to new value.
        """
        with self.lock:
            self.config = self.config.updated(changes, runtime=True)
            if "seed" in changes:
                self.rng = random.Random(self.config.seed)
            return self.config

    def set_faults(self, rules: list[FaultRule]) -> None:
        """Replace the active fault rules.

        :param rules: the new rules, in priority order.
        """
        with self.lock:
            self.faults = list(rules)

    def decide_fault(self, group: str) -> FaultDecision:
        """Return the fault for one request of ``group`` (consuming counters).

        :param group: endpoint group.
        """
        with self.lock:
            if not self.faults:
                return FaultDecision()
            decision = decide(self.faults, group, self.rng)
            if decision.action is not None:
                self.faults_injected[f"{group}:{decision.action}"] += 1
            return decision

    def add_key(self, spec: KeySpec) -> Account:
        """Add (or replace) a key until the next reset.

        :param spec: key, tier and optional starting credits.
        """
        with self.lock:
            account = Account(key_label(spec.key), spec.tier, _credits(spec, self.config), configured=False)
            self.accounts[spec.key] = account
            return account

    def set_credits(self, key: str | None, credits: int) -> Account:
        """Set the balance of a key (its secret or its label), or of the anonymous account.

        :param key: the key, its ``key#...`` label, or ``None``/``"anonymous"``.
        :param credits: the new balance.
        """
        with self.lock:
            account = self.find_account(key)
            account.credits = credits
            return account

    def find_account(self, key: str | None) -> Account:
        """Return the account for a key, a label or ``None``/``"anonymous"``; KeyError when unknown.

        :param key: the key, its label, or ``None``/``"anonymous"``.
        """
        with self.lock:
            if key is None or key == ANONYMOUS:
                return self.anonymous
            if key in self.accounts:
                return self.accounts[key]
            for account in self.accounts.values():
                if account.label == key:
                    return account
            raise KeyError(key)

    def credits_of(self, key: str | None = DEFAULT_API_KEY) -> int:
        """Return the balance of a key (or label, or ``None`` for anonymous).

        :param key: the key, its label, or ``None``/``"anonymous"``.
        """
        return self.find_account(key).credits

    # -- the API ---------------------------------------------------------------------------------

    def authenticate(self, header: str | None) -> Account:
        """Return the account of an ``Authorization`` header; ``None`` means anonymous.

        :param header: the header value, or ``None`` when absent.
        """
        if header is None:
            return self.anonymous
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401, "unauthorized", "Malformed Authorization header: expected 'Bearer <YOUR_API_KEY>'."
            )
        with self.lock:
            account = self.accounts.get(token)
        if account is None:
            raise ApiError(401, "invalid_api_key", "Unknown API key.")
        return account

    def admit(self, account: Account, bucket: str) -> None:
        """Count one request against its limit or raise the 429 (refused requests are not counted).

        :param account: the caller.
        :param bucket: ``"submit"`` or ``"poll"``.
        """
        with self.lock:
            config = self.config
            now = self.clock()
            if account.tier == ANONYMOUS:
                window, limit = config.scaled(DAY), config.anonymous_requests_per_day
                bucket, sliding = ANONYMOUS, self.anonymous_window
            elif bucket == "submit":
                window = config.scaled(HOUR)
                limit = config.paid_tasks_per_hour if account.tier == "paid" else config.free_tasks_per_hour
                sliding = account.submit_window
            else:
                window = config.scaled(MINUTE)
                limit = (
                    config.paid_polls_per_minute if account.tier == "paid" else config.free_polls_per_minute
                )
                sliding = account.poll_window
            wait = sliding.try_admit(now, limit, window)
            if wait is not None:
                self.rate_limited[bucket] += 1
                raise rate_limited(retry_after_seconds(wait))

    def create_task(self, account: Account, submission: Submission, width: int, height: int) -> Task:
        """Charge the account and create a task, or raise 402 (nothing created, nothing charged).

        :param account: the caller.
        :param submission: validated parameters.
        :param width: result width in pixels.
        :param height: result height in pixels.
        """
        with self.lock:
            config = self.config
            if submission.kind == "video":
                assert submission.duration is not None
                count = 1
                cost = config.video_credits_per_5s * math.ceil(submission.duration / 5)
                seconds = config.video_seconds
            else:
                count = config.images_per_task
                cost = config.image_credits * count
                seconds = config.image_seconds
            if account.credits < cost:
                raise ApiError(
                    402,
                    "insufficient_credits",
                    f"Not enough credits: this task costs {cost}, the balance is {account.credits}.",
                )
            fail_message = fail_marker_message(submission.prompt)
            if fail_message is None and config.failure_rate and self.rng.random() < config.failure_rate:
                fail_message = RANDOM_FAIL_MESSAGE
            now = self.clock()
            total = config.scaled(seconds)
            task = Task(
                request_id=uuid.uuid4().hex,
                kind=submission.kind,
                owner=account.label,
                submission=submission,
                width=width,
                height=height,
                count=count,
                cost=cost,
                created=now,
                running=now + total * config.queue_fraction,
                finished=now + total,
                fail_message=fail_message,
            )
            account.credits -= cost
            account.submissions += 1
            self.submissions_total += 1
            self.tasks[task.request_id] = task
            return task

    def lookup(self, account: Account, kind: str, request_id: str) -> Task:
        """Return the caller's task of that kind, or raise 404.

        :param account: the caller.
        :param kind: ``"image"`` or ``"video"`` from the path.
        :param request_id: from the path.
        """
        with self.lock:
            task = self.tasks.get(request_id)
            if task is None or task.kind != kind or task.owner != account.label:
                raise ApiError(404, "task_not_found", f"No {kind} task with this request_id.")
            return task

    def poll(self, task: Task) -> tuple[int, str]:
        """Return the status of a task and record the poll.

        :param task: the task.
        """
        with self.lock:
            now = self.clock()
            status, message = task.status(now)
            task.polls += 1
            task.last_poll = now
            if status in (DONE, FAILED) and task.terminal_seen is None:
                task.terminal_seen = now
            return status, message

    def result_state(self, task: Task) -> tuple[int, str]:
        """Return the status of a task for a result request and record the fetch.

        :param task: the task.
        """
        with self.lock:
            task.result_fetches += 1
            return task.status(self.clock())

    def media_task(self, request_id: str) -> Task | None:
        """Return a done task for a media download (recording it), else ``None``.

        :param request_id: the task id from the media URL.
        """
        with self.lock:
            task = self.tasks.get(request_id)
            if task is None or task.status(self.clock())[0] != DONE:
                return None
            task.media_fetches += 1
            return task

    def force_finish(self, request_id: str, message: str | None, *, fail: bool) -> Task:
        """Fail (or complete) a task that is still queued or running, now.

        :param request_id: the task.
        :param message: the failure message (``None``: a default).
        :param fail: fail it; otherwise complete it.
        """
        with self.lock:
            task = self.tasks.get(request_id)
            if task is None:
                raise ApiError(404, "task_not_found", "No task with this request_id.")
            now = self.clock()
            status, _ = task.status(now)
            if status in (DONE, FAILED):
                raise ApiError(409, "task_finished", f"The task already finished with status {status}.")
            task.running = min(task.running, now)
            task.finished = now
            task.fail_message = (message or ADMIN_FAIL_MESSAGE) if fail else None
            return task

    # -- counters --------------------------------------------------------------------------------

    def count_request(self, group: str, headers: Any = None) -> None:
        """Count a request of an endpoint group and, for API groups, its client headers.

        :param group: endpoint group.
        :param headers: the request's headers; the values of :data:`COUNTED_HEADERS` are counted.
        """
        with self.lock:
            self.requests[group] += 1
            if headers is not None and group in API_GROUPS:
                for name in COUNTED_HEADERS:
                    self.client_headers[name][headers.get(name, "")] += 1

    def count_response(self, code: int | str) -> None:
        """Count a response by status code (or ``"dropped"``).

        :param code: status code or a word.
        """
        with self.lock:
            self.responses[code] += 1  # type: ignore[index]

    def epoch(self, mono: float | None) -> float | None:
        """Convert a monotonic time to epoch seconds.

        :param mono: monotonic seconds or ``None``.
        """
        return None if mono is None else round(mono + self._wall_offset, 6)

    def task_view(self, task: Task, now: float) -> dict[str, Any]:
        """Return the stats view of a task.

        :param task: the task.
        :param now: monotonic seconds.
        """
        status, message = task.status(now)
        terminal = status in (DONE, FAILED)
        sub = task.submission
        return {
            "request_id": task.request_id,
            "kind": task.kind,
            "status": status,
            "message": message,
            "prompt": sub.prompt,
            "key": task.owner,
            "aspect_ratio": sub.aspect_ratio,
            "duration": sub.duration,
            "image_url": sub.image_url,
            "width": task.width,
            "height": task.height,
            "cost": task.cost,
            "created_at": self.epoch(task.created),
            "done_at": self.epoch(task.finished) if terminal else None,
            "planned_done_at": self.epoch(task.finished),
            "polls": task.polls,
            "last_poll_at": self.epoch(task.last_poll),
            "first_terminal_poll_at": self.epoch(task.terminal_seen),
            "result_fetches": task.result_fetches,
            "media_fetches": task.media_fetches,
        }

    def stats(self) -> dict[str, Any]:
        """Return every counter, balance and task as JSON-ready data (keys only by label)."""
        with self.lock:
            now = self.clock()
            accounts = [*self.accounts.values(), self.anonymous]
            return {
                "now": self.epoch(now),
                "started_at": round(self.started_at, 6),
                "submissions": {
                    "total": self.submissions_total,
                    "by_key": {a.label: a.submissions for a in accounts if a.submissions},
                },
                "requests": {**dict.fromkeys(API_GROUPS, 0), **self.requests},
                "responses": {str(code): n for code, n in self.responses.items()},
                "rate_limited": dict(self.rate_limited),
                "faults_injected": dict(self.faults_injected),
                "client_headers": {name: dict(counter) for name, counter in self.client_headers.items()},
                "credits": {a.label: a.credits for a in accounts},
                "keys": {a.label: {"tier": a.tier, "credits": a.credits} for a in accounts},
                "tasks": [self.task_view(t, now) for t in self.tasks.values()],
                "faults": [rule.to_dict() for rule in self.faults],
            }


def _credits(spec: KeySpec, config: EmulatorConfig) -> int:
    return config.credits if spec.credits is None else spec.credits


__all__ = [
    "ANONYMOUS",
    "DONE",
    "FAILED",
    "QUEUED",
    "RUNNING",
    "Account",
    "ConfigError",
    "EmulatorState",
    "Task",
    "fail_marker_message",
    "key_label",
]
