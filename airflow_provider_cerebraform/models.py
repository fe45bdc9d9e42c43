"""Typed values for what the Cerebraform API takes and returns."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any, NamedTuple


class GenerationKind(str, Enum):
    """What a task generates; selects the ``/ai/v1/to-<kind>`` endpoints."""

    IMAGE = "image"
    VIDEO = "video"

    @property
    def path(self) -> str:
        return f"/ai/v1/to-{self.value}"


class TaskStatus(IntEnum):
    """
    The integer status of a generation task.

    The reference names 2 (done) and -1 (failed); 0 and 1 are the project's reading of the
    rest (``api-open-questions.md`` #1). Any other integer becomes a pseudo-member named
    ``UNKNOWN_<code>`` that counts as still in progress, so a new code on the service never
    crashes a running DAG.
    """

    FAILED = -1
    QUEUED = 0
    RUNNING = 1
    DONE = 2

    @classmethod
    def _missing_(cls, value: object) -> TaskStatus | None:
        if isinstance(value, int) and not isinstance(value, bool):
            member = int.__new__(cls, value)
            member._name_ = f"UNKNOWN_{value}"
            member._value_ = value
            return member
        return None

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.DONE, TaskStatus.FAILED)

    @property
    def is_known(self) -> bool:
        return self._name_ in type(self).__members__


class Submission(NamedTuple):
    """
    One validated submission, as :func:`~airflow_provider_cerebraform.validation.build_submission`
    returns it and every layer (hook, client, protocol) takes it.

    :param kind: image or video.
    :param payload: the JSON body to send: ``prompt`` and the optional fields that are set.
    """

    kind: GenerationKind
    payload: dict[str, Any]

    def fingerprint(self, conn_id: str) -> str:
        """What a retry compares to know it is the same request to the same connection."""
        text = json.dumps([conn_id, self.kind.value, self.payload], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


class UncertainSubmissionPolicy(str, Enum):
    """
    What a retry does when an earlier try may have paid for a task whose id it never learned (the
    worker died between sending the POST and recording the answer, or the service forgot the id).

    ``fail``: fail without submitting, so nothing is paid twice; a person checks the account.
    ``resubmit``: submit again, accepting that the generation may be paid twice.
    """

    FAIL = "fail"
    RESUBMIT = "resubmit"


class Tier(str, Enum):
    """Account tier of an API key; it decides the published rate limits."""

    FREE = "free"
    PAID = "paid"


class Bucket(str, Enum):
    """The rate-limit bucket a request counts against (``api-open-questions.md`` #7)."""

    CREATE = "create"
    POLL = "poll"


@dataclass(frozen=True)
class RateLimit:
    """``limit`` requests in any sliding window of ``period`` seconds."""

    limit: int
    period: float


#: The reference's table of limits, per tier and bucket.
PUBLISHED_LIMITS: dict[Tier, dict[Bucket, RateLimit]] = {
    Tier.FREE: {Bucket.CREATE: RateLimit(10, 3600.0), Bucket.POLL: RateLimit(20, 60.0)},
    Tier.PAID: {Bucket.CREATE: RateLimit(200, 3600.0), Bucket.POLL: RateLimit(120, 60.0)},
}
#: Requests without a key share one global daily limit, whatever they do.
ANONYMOUS_LIMIT = RateLimit(200, 86400.0)


@dataclass(frozen=True)
class TaskState:
    """
    One answer of the status endpoint.

    :param kind: image or video.
    :param request_id: the task's id.
    :param status: the status; unknown codes are kept as ``UNKNOWN_<code>`` members.
    :param message: the API's message, if it sent one.
    """

    kind: GenerationKind
    request_id: str
    status: TaskStatus
    message: str | None = None

    @property
    def is_done(self) -> bool:
        return self.status is TaskStatus.DONE

    @property
    def is_failed(self) -> bool:
        return self.status is TaskStatus.FAILED

    @property
    def status_text(self) -> str:
        """The status in words, with the API's message quoted: ``done ("Task completed.")``.

        A known status is shown by name only; an unknown one keeps its code, the only thing known of it.
        """
        status = self.status
        text = status.name.lower() if status.is_known else f"in an unknown state (status code {int(status)})"
        return f'{text} ("{self.message}")' if self.message else text

    def describe(self) -> str:
        """``image task <id> is running ("Task is running (52%).")``: a clause that other text can follow."""
        return f"{self.kind.value} task {self.request_id} is {self.status_text}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for XCom and trigger events."""
        return {
            "kind": self.kind.value,
            "request_id": self.request_id,
            "status": int(self.status),
            "status_name": self.status.name.lower(),
            "message": self.message,
        }


@dataclass(frozen=True)
class MediaItem:
    """
    One generated file as the result endpoint lists it.

    :param url: where to download it (may be signed and expire).
    :param content_type: the MIME type, when the API says it.
    :param extra: every other key the API sent for the item (width, height, duration, ...).
    """

    url: str
    content_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "url": self.url, "content_type": self.content_type}


@dataclass(frozen=True)
class TaskResult:
    """The media of a finished task, in the order the API listed them."""

    kind: GenerationKind
    request_id: str
    items: tuple[MediaItem, ...]

    @property
    def urls(self) -> list[str]:
        return [item.url for item in self.items]


@dataclass(frozen=True)
class ConnectionSettings:
    """
    Everything the client needs from an Airflow connection. The key never shows in ``repr``.

    :param base_url: scheme, host and port of the API, without a trailing slash.
    :param api_key: the bearer key, or None for anonymous use.
    :param tier: the key's account tier; it sets the client-side pacing.
    :param timeout: seconds for connecting and for each read.
    :param max_retries: retries of a request that failed for a transient reason.
    :param retry_backoff: base seconds of the exponential backoff between those retries.
    :param rate_share: the fraction of the tier's limits this process may use (several
        triggerers or workers on one key each take a share).
    :param time_scale: divides the rate-limit windows; only for an emulator started with the same
        ``--time-scale``. Leave at 1 for the real service.
    :param verify_ssl: verify TLS certificates.
    :param budget: who shares the rate budget of the key: ``process`` (each process paces alone),
        ``host`` (every process on this machine, through a locked file) or ``redis`` (every process
        on every host, through Redis). See ``docs/scaling.md``.
    :param budget_dir: the directory of the ``host`` budget's files (default: under the temp dir).
    :param redis_url: the Redis of the ``redis`` budget; may hold a password, so never in ``repr``.
    """

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    tier: Tier = Tier.FREE
    timeout: float = 30.0
    max_retries: int = 3
    retry_backoff: float = 1.0
    rate_share: float = 1.0
    time_scale: float = 1.0
    verify_ssl: bool = True
    budget: str = "process"
    budget_dir: str | None = None
    redis_url: str | None = field(default=None, repr=False)

    @property
    def key_id(self) -> str:
        """A stable, non-secret name for the key: what pacing state and logs are keyed by."""
        if not self.api_key:
            return "anonymous"
        return "key#" + hashlib.sha256(self.api_key.encode()).hexdigest()[:8]
