"""
The one place that decides how to talk to Cerebraform.

:class:`CerebraformProtocol` builds every request, paces it, reads every answer, maps errors to
typed exceptions and decides each retry and wait. It does no I/O: each call returns a
*conversation*, a generator that yields :class:`Send` and :class:`Sleep` steps and receives what
the network answered (and, with a budget shared through a store, ``PacerCall`` steps that ask the
store). The sync and async clients (``client.py``) only carry those steps out, so
both follow the same rules by construction.

Retry rules:

* GETs retry on 5xx, connect errors, timeouts and dropped connections, with exponential backoff
  and jitter, up to ``max_retries``.
* The POST that creates a (paid) task retries only on 429 and on connect errors, where the request
  certainly never reached the service; after a 5xx, a read timeout or a dropped connection the
  task may exist, so it raises :class:`CerebraformSubmissionUncertainError` instead.
* 429 waits ``Retry-After``, else the body's ``retry_after``, else the backoff. In-process waits
  (pacing plus 429s) add up to at most ``max_wait`` seconds; a longer wait raises
  :class:`CerebraformRateLimitError` with ``retry_after`` so an operator can defer instead of
  holding a worker slot.

:class:`RetryPolicy` holds these waits and limits; media downloads (``media.py``) follow the same one.
"""

from __future__ import annotations

import functools
import json
import math
import platform
import random
import re
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from airflow_provider_cerebraform import __version__, metrics
from airflow_provider_cerebraform.exceptions import (
    ERRORS_BY_STATUS,
    CerebraformError,
    CerebraformRateLimitError,
    CerebraformResponseError,
    CerebraformServerError,
    CerebraformSubmissionUncertainError,
    CerebraformSubmissionUnreadableError,
    CerebraformTransportError,
    CerebraformValidationError,
)
from airflow_provider_cerebraform.models import (
    Bucket,
    ConnectionSettings,
    GenerationKind,
    MediaItem,
    Submission,
    TaskResult,
    TaskState,
    TaskStatus,
)
from airflow_provider_cerebraform.pacing import Pacer, PacerCall, Reservation, Window, pace, pacer_for
from airflow_provider_cerebraform.validation import validate_kind, validate_request_id

T = TypeVar("T")

BACKOFF_CAP = 30.0
# A 429 storm longer than this many answers in a row is reported rather than waited out.
MAX_RATE_LIMITED_ANSWERS = 20
# The longest Retry-After honoured: the longest published window (the anonymous quota's day).
MAX_RETRY_AFTER = 86400.0
_INTEGER = re.compile(r"^-?[0-9]+$")


@dataclass(frozen=True)
class ApiRequest:
    """
    One call of the API.

    :param method: ``GET`` or ``POST``.
    :param path: the path below the base URL.
    :param endpoint: a short name for messages, e.g. ``"status image"``.
    :param bucket: the rate-limit bucket it counts against.
    :param json: the JSON body of a POST.
    """

    method: str
    path: str
    endpoint: str
    bucket: Bucket
    json: dict[str, Any] | None = None

    @property
    def creates_task(self) -> bool:
        return self.method == "POST"


@dataclass(frozen=True)
class HttpResponse:
    """What came back. ``headers`` keys are lower-case."""

    status_code: int
    headers: Mapping[str, str]
    body: bytes


class FailureKind(str, Enum):
    """How a request failed without an HTTP answer."""

    CONNECT = "connect"  # no connection was made: the request never reached the service
    TIMEOUT = "timeout"  # sent, no answer in time
    DISCONNECTED = "disconnected"  # the connection broke after the request went out


@dataclass(frozen=True)
class TransportFailure:
    kind: FailureKind
    detail: str


@dataclass(frozen=True)
class Send:
    request: ApiRequest


@dataclass(frozen=True)
class Sleep:
    seconds: float


Step = Send | Sleep | PacerCall
# What a PacerCall answered (a reservation, a delay or None) is sent back into the conversation too.
Outcome = HttpResponse | TransportFailure | Any
Conversation = Generator[Step, Outcome, T]


class RetryPolicy:
    """
    The one retry policy: how long to wait before the next try, and when to stop.

    Transient failures (5xx, connection errors, timeouts, cut bodies) wait an exponential backoff
    with jitter, up to ``max_retries`` of them. A 429 waits ``Retry-After`` (else the body's
    ``retry_after``, else the backoff), up to ``MAX_RATE_LIMITED_ANSWERS`` answers in a row, and
    all waits of one call add up to at most ``max_wait`` seconds (None: no cap).

    :param settings: the connection's settings (``max_retries``, ``retry_backoff``).
    :param max_wait: the most seconds one call may wait in-process.
    :param rng: a source of floats in [0, 1) for jitter.
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        max_wait: float | None = 60.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.max_retries = settings.max_retries
        self.retry_backoff = settings.retry_backoff
        self.max_wait = max_wait
        self._rng = rng

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: between half and all of base * 2^(attempt-1), capped."""
        ceiling = min(BACKOFF_CAP, self.retry_backoff * 2 ** (attempt - 1))
        return ceiling * (0.5 + self._rng() / 2)

    def wait_left(self, waited: float) -> float | None:
        return None if self.max_wait is None else max(0.0, self.max_wait - waited)

    def retry_after(self, response: HttpResponse, answers: int) -> float:
        """
        Retry-After header first, then the body's retry_after, then the backoff. A value that is
        not a finite number is ignored, and none waits longer than ``MAX_RETRY_AFTER`` (a bogus
        ``inf`` or ``1e400`` would otherwise park a trigger for ever).
        """
        header = response.headers.get("retry-after", "").strip()
        try:
            seconds = float(header)
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):
            return min(MAX_RETRY_AFTER, max(0.0, seconds))
        body = _json_object(response.body)
        value = body.get("retry_after") if body else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return min(MAX_RETRY_AFTER, max(0.0, float(value)))
        return self.backoff(answers)

    def rate_limit_exceeded(self, wait: float, answers: int, waited: float) -> bool:
        """True when the ``answers``-th 429 in a row, asking for ``wait`` s, is reported, not waited out."""
        wait_left = self.wait_left(waited)
        return answers >= MAX_RATE_LIMITED_ANSWERS or (wait_left is not None and wait > wait_left)


@functools.cache
def user_agent() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        airflow_version = version("apache-airflow")
    except PackageNotFoundError:  # pragma: no cover - the provider always runs inside Airflow
        airflow_version = "unknown"
    return (
        f"airflow-provider-cerebraform/{__version__} apache-airflow/{airflow_version} "
        f"python/{platform.python_version()}"
    )


class CerebraformProtocol:
    """
    Requests, answers, errors, retries and pacing of the Cerebraform API, without I/O.

    :param settings: the connection's settings.
    :param max_wait: the most seconds one call may wait in-process for pacing and 429s before it
        raises :class:`CerebraformRateLimitError`; None waits as long as the service asks (triggers,
        where waiting costs nothing).
    :param pacer: the key's pacer; by default the process-wide one for these settings.
    :param rng: a source of floats in [0, 1) for jitter.
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        max_wait: float | None = 60.0,
        pacer: Pacer | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.max_wait = max_wait
        self.pacer = pacer or pacer_for(settings)
        self.retry = RetryPolicy(settings, max_wait=max_wait, rng=rng)
        self.headers = {"User-Agent": user_agent(), "Accept": "application/json"}
        if settings.api_key:
            self.headers["Authorization"] = f"Bearer {settings.api_key}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.settings.base_url!r}, key={self.settings.key_id})"

    def url(self, request: ApiRequest) -> str:
        return self.settings.base_url + request.path

    # -- the calls -------------------------------------------------------------------------------

    def submit(self, submission: Submission, hold: str | None = None) -> Conversation[str]:
        """
        Create a task; answers its request_id. ``submission`` comes validated from ``build_submission``.

        :param hold: a slot id of the caller's choosing. When the creation window has no slot within
            ``max_wait``, a shared budget keeps the next one under this id and the
            :class:`CerebraformRateLimitError` names it (``held``); submitting again with the same
            ``hold`` (after deferring about ``retry_after``) takes that slot rather than queueing
            behind everyone who asked since.
        """
        kind, payload = submission
        request = ApiRequest("POST", kind.path, f"submit {kind.value}", Bucket.CREATE, dict(payload))
        return self._exchange(request, lambda response: self._parse_submit(request, response), hold)

    def status(self, kind: GenerationKind | str, request_id: str) -> Conversation[TaskState]:
        return self._task_get("status", kind, request_id, self._parse_status)

    def result(self, kind: GenerationKind | str, request_id: str) -> Conversation[TaskResult]:
        return self._task_get("result", kind, request_id, self._parse_result)

    def _task_get(
        self,
        what: str,
        kind: GenerationKind | str,
        request_id: str,
        parse: Callable[[ApiRequest, GenerationKind, str, HttpResponse], T],
    ) -> Conversation[T]:
        generation_kind, rid = validate_kind(kind), validate_request_id(request_id)
        path = f"{generation_kind.path}/{what}/{rid}"
        request = ApiRequest("GET", path, f"{what} {generation_kind.value}", Bucket.POLL)
        return self._exchange(request, lambda response: parse(request, generation_kind, rid, response))

    def credits(self) -> Conversation[int]:
        request = ApiRequest("GET", "/ai/v1/user/credits", "credits", Bucket.POLL)
        return self._exchange(request, lambda response: self._parse_credits(request, response))

    # -- the conversation: pacing, sending, retrying ---------------------------------------------

    def _exchange(
        self, request: ApiRequest, parse: Callable[[HttpResponse], T], hold: str | None = None
    ) -> Conversation[T]:
        window = self.pacer.window(request.bucket)
        waited = 0.0
        transient_retries = 0
        rate_limited_answers = 0
        while True:
            reservation = yield from pace(window, "reserve", self.retry.wait_left(waited), hold)
            if not reservation.admitted:
                raise self._paced_out(
                    request, reservation.delay, held=hold if reservation.slot is not None else None
                )
            # Only the first request may take a kept slot: once sent, that slot is spent.
            hold = None
            outcome, waited = yield from self._send_in_slot(window, request, reservation, waited)
            if isinstance(outcome, TransportFailure):
                if (
                    not self._may_retry_failure(request, outcome)
                    or transient_retries >= self.settings.max_retries
                ):
                    raise self._transport_error(request, outcome, transient_retries)
                transient_retries += 1
                yield Sleep(self.retry.backoff(transient_retries))
                continue
            assert outcome is not None
            if outcome.status_code == 429:
                metrics.incr(metrics.RATE_LIMITED, bucket=request.bucket.value)
                rate_limited_answers += 1
                wait = self.retry.retry_after(outcome, rate_limited_answers)
                yield from pace(window, "on_rate_limited", wait)
                if self.retry.rate_limit_exceeded(wait, rate_limited_answers, waited):
                    raise self._error(request, outcome, retry_after=wait)
                # Retry-After is when the window opens; the pacer queues this call behind it.
                continue
            retry_5xx = not request.creates_task and transient_retries < self.settings.max_retries
            if outcome.status_code >= 500 and retry_5xx:
                transient_retries += 1
                yield Sleep(self.retry.backoff(transient_retries))
                continue
            if 200 <= outcome.status_code < 300:
                yield from pace(window, "on_success")
                return parse(outcome)
            raise self._error(request, outcome)

    def _send_in_slot(
        self, window: Window, request: ApiRequest, reservation: Reservation, waited: float
    ) -> Generator[Step, Outcome, tuple[Outcome, float]]:
        """
        Wait for the reserved slot, send, and settle the slot: (the outcome, the time waited so far).
        A conversation abandoned on the way (its task or trigger cancelled while it slept or sent)
        gives its slot back, or settles it if the request may have left: an unsettled slot would hold
        the callers behind it back for a while (``WindowRules.bound``). Only an in-memory window can be
        told so here; a shared budget's steps are I/O that the abandoned caller no longer runs, and
        its bound covers it.
        """
        sending = released = False
        try:
            delay = reservation.delay
            paced = 0.0
            while delay > 0:
                wait_left = self.retry.wait_left(waited)
                if wait_left is not None and delay > wait_left:
                    yield from pace(window, "cancel", reservation)
                    released = True
                    raise self._paced_out(request, delay)
                waited += delay
                paced += delay
                yield Sleep(delay)
                # Requests ahead answered late, or a 429 elsewhere paused this key: the slot moves.
                delay = yield from pace(window, "confirm", reservation)
            if paced:
                metrics.incr(metrics.PACED_WAITS, bucket=request.bucket.value)
                metrics.timing(metrics.PACED_WAIT_TIME, paced, bucket=request.bucket.value)
            sending = True
            outcome = yield Send(request)
            yield from pace(window, "settle", reservation)
            released = True
            return outcome, waited
        finally:
            if not released and not window.does_io:
                if sending:
                    window.settle(reservation)
                else:
                    window.cancel(reservation)

    @staticmethod
    def _may_retry_failure(request: ApiRequest, failure: TransportFailure) -> bool:
        return failure.kind is FailureKind.CONNECT or not request.creates_task

    # -- answers -> values or typed errors -------------------------------------------------------

    def _parse_submit(self, request: ApiRequest, response: HttpResponse) -> str:
        body = _json_object(response.body)
        if body is None:
            raise self._unreadable_submission(request, "the answer is not a JSON object", response)
        request_id = body.get("request_id")
        if isinstance(request_id, int) and not isinstance(request_id, bool):
            request_id = str(request_id)
        if not isinstance(request_id, str) or not request_id.strip():
            raise self._unreadable_submission(request, "the answer has no request_id", response)
        try:
            request_id = validate_request_id(request_id.strip())
        except CerebraformValidationError:
            raise self._unreadable_submission(
                request, "the answer's request_id is not a usable id", response
            ) from None
        metrics.incr(metrics.SUBMISSIONS)
        return request_id

    def _parse_status(
        self, request: ApiRequest, kind: GenerationKind, request_id: str, response: HttpResponse
    ) -> TaskState:
        body = self._body(request, response)
        code = body.get("status")
        if isinstance(code, str) and _INTEGER.match(code.strip()):
            code = int(code.strip())
        if not isinstance(code, int) or isinstance(code, bool):
            raise self._malformed(request, "'status' is missing or not an integer", response)
        message = body.get("message")
        return TaskState(kind, request_id, TaskStatus(code), None if message is None else str(message))

    def _parse_result(
        self, request: ApiRequest, kind: GenerationKind, request_id: str, response: HttpResponse
    ) -> TaskResult:
        body = self._body(request, response)
        results = body.get("results")
        if not isinstance(results, list):
            raise self._malformed(request, "'results' is missing or not a list", response)
        items = []
        for position, entry in enumerate(results):
            url = entry.get("url") if isinstance(entry, dict) else None
            if not isinstance(url, str) or not url.strip():
                raise self._malformed(request, f"result item {position} has no 'url'", response)
            extra = {key: value for key, value in entry.items() if key not in ("url", "content_type")}
            content_type = entry.get("content_type")
            items.append(
                MediaItem(url.strip(), content_type if isinstance(content_type, str) else None, extra)
            )
        if not items:
            raise CerebraformResponseError(
                f"Cerebraform {request.endpoint}: task {request_id} is done but the API returned no media.",
                http_status=response.status_code,
                endpoint=request.endpoint,
            )
        return TaskResult(kind, request_id, tuple(items))

    def _parse_credits(self, request: ApiRequest, response: HttpResponse) -> int:
        credits = self._body(request, response).get("credits")
        if isinstance(credits, float) and credits.is_integer():
            credits = int(credits)
        if not isinstance(credits, int) or isinstance(credits, bool):
            raise self._malformed(request, "'credits' is missing or not an integer", response)
        metrics.gauge(metrics.CREDITS_BALANCE, credits)
        return credits

    def _body(self, request: ApiRequest, response: HttpResponse) -> dict[str, Any]:
        body = _json_object(response.body)
        if body is None:
            raise self._malformed(request, "the answer is not a JSON object", response)
        return body

    def _malformed(
        self, request: ApiRequest, problem: str, response: HttpResponse
    ) -> CerebraformResponseError:
        return CerebraformResponseError(
            f"Cerebraform {request.endpoint} returned an unreadable answer (HTTP {response.status_code}): "
            f"{problem}. Body starts: {self._redact(response.body[:200].decode('utf-8', 'replace'))!r}",
            http_status=response.status_code,
            endpoint=request.endpoint,
        )

    def _unreadable_submission(
        self, request: ApiRequest, problem: str, response: HttpResponse
    ) -> CerebraformSubmissionUnreadableError:
        malformed = self._malformed(request, problem, response)
        return CerebraformSubmissionUnreadableError(
            f"{malformed.message}. {_UNCERTAIN}", http_status=response.status_code, endpoint=request.endpoint
        )

    def _error(
        self, request: ApiRequest, response: HttpResponse, *, retry_after: float | None = None
    ) -> CerebraformError:
        status = response.status_code
        body = _json_object(response.body) or {}
        error = body.get("error") if isinstance(body.get("error"), str) else None
        msg = body.get("msg") if isinstance(body.get("msg"), str) else None
        if msg is None:
            msg = response.body[:200].decode("utf-8", "replace").strip() or "(no message)"
        msg = self._redact(msg)
        text = f"Cerebraform {request.endpoint} failed with HTTP {status}: {msg}"
        details: dict[str, Any] = {
            "http_status": status,
            "error": error,
            "endpoint": request.endpoint,
            "api_message": msg,
        }
        if status == 429:
            # The API's own message often names the wait already; ours leads, the API's is quoted after.
            limited = (
                f"Cerebraform {request.endpoint} was rate-limited (HTTP 429), retry after {retry_after:.0f} s"
            )
            return CerebraformRateLimitError(
                f'{limited}; the API said "{msg}"', retry_after=retry_after or 0.0, **details
            )
        if status >= 500 and request.creates_task:
            return CerebraformSubmissionUncertainError(f"{text}. {_UNCERTAIN}", **details)
        if status >= 500:
            return CerebraformServerError(f"{text} (after {self.settings.max_retries} retries)", **details)
        return ERRORS_BY_STATUS.get(status, CerebraformError)(text, **details)

    def _paced_out(
        self, request: ApiRequest, delay: float, held: str | None = None
    ) -> CerebraformRateLimitError:
        rate = self.pacer.window(request.bucket)
        kept = " (the shared budget keeps it for this caller)" if held else ""
        return CerebraformRateLimitError(
            f"Cerebraform {request.endpoint}: the {self.settings.tier.value} tier's {request.bucket.value} "
            f"limit has no free slot (client-side pacing, including any pause a 429 asked for); the next "
            f"opens in {delay:.0f} s{kept} "
            f"(window {rate.period:.0f} s), longer than the {self.max_wait:.0f} s allowed to wait "
            "in-process.",
            retry_after=delay,
            held=held,
            http_status=None,
            error="paced",
            endpoint=request.endpoint,
        )

    def _transport_error(
        self, request: ApiRequest, failure: TransportFailure, retries: int
    ) -> CerebraformError:
        text = self._redact(f"Cerebraform {request.endpoint}: {failure.kind.value} error: {failure.detail}")
        if request.creates_task and failure.kind is not FailureKind.CONNECT:
            return CerebraformSubmissionUncertainError(f"{text}. {_UNCERTAIN}", endpoint=request.endpoint)
        return CerebraformTransportError(f"{text} (after {retries} retries)", endpoint=request.endpoint)

    def _redact(self, text: str) -> str:
        key = self.settings.api_key
        return text.replace(key, "***") if key else text


_UNCERTAIN = (
    "The request reached the service, so the task may have been created and charged; it was not "
    "retried, because a second submission could pay twice."
)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
