"""Operators: submit a generation, store its results, or both with the wait deferred in between."""

from __future__ import annotations

import random
import secrets
import time
from typing import TYPE_CHECKING, Any

import pendulum
from airflow.sdk import Asset, BaseOperator

from airflow_provider_cerebraform import metrics
from airflow_provider_cerebraform.exceptions import (
    CerebraformError,
    CerebraformInsufficientCreditsError,
    CerebraformNotFoundError,
    CerebraformRateLimitError,
    CerebraformSubmissionUncertainError,
    CerebraformTimeoutError,
)
from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook
from airflow_provider_cerebraform.ledger import (
    LedgerEntry,
    StaleLedgerEntryError,
    generation_fingerprint,
    ledger_for,
    submission_fingerprint,
    submission_request,
)
from airflow_provider_cerebraform.links import (
    MEDIA_URL_KEY,
    REQUEST_URL_KEY,
    CerebraformMediaLink,
    CerebraformRequestLink,
)
from airflow_provider_cerebraform.media import (
    DEFAULT_FILE_NAME,
    DEFAULT_MAX_BYTES,
    as_storage_path,
    manifest_for_xcom,
    validate_destination,
    validate_location,
)
from airflow_provider_cerebraform.models import TaskStatus, UncertainSubmissionPolicy
from airflow_provider_cerebraform.submissions import (
    SUBMISSION_KEY,
    SubmissionRecord,
    submission_store,
    task_state,
)
from airflow_provider_cerebraform.triggers.cerebraform import defer_until_finished, raise_for_event
from airflow_provider_cerebraform.validation import (
    build_submission,
    is_rendered_later,
    naming_the_task,
    validate_kind,
    validate_literals,
    validate_request_id,
    validate_uncertain_policy,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from airflow_provider_cerebraform.ledger import GenerationLedger
    from airflow_provider_cerebraform.media import ManifestEntry
    from airflow_provider_cerebraform.models import GenerationKind, Submission, TaskState
    from airflow_provider_cerebraform.submissions import SubmissionRecordStore

__all__ = [
    "SUBMISSION_KEY",
    "CerebraformGenerateOperator",
    "CerebraformResultOperator",
    "CerebraformSubmitOperator",
]

#: Key that remembers when the first 429 of this task instance deferred it, for ``max_rate_limit_wait``.
RATE_LIMITED_SINCE_KEY = "cerebraform_rate_limited_since"

#: Seconds a task deferred for a slot that a shared budget keeps for it comes back ahead of that slot:
#: the time Airflow takes to resume a deferred task (trigger fired, task queued, a worker process
#: started: 1 to 7 s on a 2-core CeleryExecutor at a load average of 11, but 65 to 104 s at 20 to 26,
#: ``docs/scaling.md``). It then waits the rest in-process, so a worker slot is held at most this long
#: (and never past ``max_in_process_wait``).
RESUME_AHEAD = 30.0

#: Retries these operators get when neither the task nor the DAG's ``default_args`` set ``retries``.
#: A retry reconnects to the paid generation instead of paying again, so it costs nothing; and it is
#: what rescues a task that Airflow 3.3 marks failed after resuming from deferral (apache/airflow#72716).
DEFAULT_RETRIES = 2


class CerebraformSubmitOperator(BaseOperator):
    """
    Submits an image or video generation and returns its ``request_id`` (so ``.output`` feeds the
    sensor or the result operator); the id is also pushed to XCom under ``request_id``.

    Retry-safe: an intent is recorded in the task state store right before the POST and the
    request id right after the service accepts it, so a retry of the same task instance reconnects
    to it instead of paying again (unless it failed, or the inputs or the connection changed). A
    retry that finds the intent without an id (the worker died between the POST and the record,
    or the service no longer knows the id) cannot know whether it paid, and follows
    ``on_uncertain_submission``. Airflow before 3.3 has no task state store: there the record is
    kept in object storage under ``state_location`` (:mod:`airflow_provider_cerebraform.state_storage`).
    When the rate limit asks for a longer wait than the hook will hold a worker for, the task defers
    on a timer for ``Retry-After`` plus jitter and tries again, for up to ``max_rate_limit_wait``
    seconds in all.

    With a generation ledger (``ledger``, or the connection's ``ledger`` field; see
    ``docs/ledger.md``), a generation already stored there is not submitted again: the operator
    returns the ledger's original ``request_id`` and pays nothing (the log says so), and the result
    operator and the sensor downstream serve that request from the ledger as well.

    :param prompt: what to generate, 1 to 1000 characters (templated).
    :param kind: ``"image"`` or ``"video"`` (templated).
    :param image_url: an absolute http(s) URL of a starting image (templated).
    :param aspect_ratio: ``"W:H"``, e.g. ``"16:9"``; the API's default is ``"9:16"`` (templated).
    :param duration: video only, 5 or 10 seconds (templated).
    :param min_credits: if set, check the balance first and fail before spending when it is lower.
    :param max_rate_limit_wait: seconds this task may spend deferred on rate limits before failing.
    :param max_in_process_wait: seconds one submission may hold the worker waiting for the rate limit
        (client pacing and ``Retry-After``); a longer wait defers instead.
    :param on_uncertain_submission: what a retry does when an earlier try may have paid without
        learning the request id: ``"fail"`` (default: fail, submit nothing) or ``"resubmit"``
        (submit again, which may pay twice) (templated, e.g. from a Variable, so that it can be
        changed for one clear without editing the DAG).
    :param state_location: Airflow before 3.3 only: where the retry record is kept (an
        ``ObjectStoragePath``, a URL or an absolute local path, shared by the workers); records go
        under ``<state_location>/.cerebraform-state/``. Without it a retry there may pay again.
        :class:`CerebraformGenerateOperator` defaults it to its ``output`` (templated).
    :param ledger: the generation ledger's folder (an ``ObjectStoragePath``, a URL or an absolute
        local path); None uses the connection's ``ledger`` field, ``False`` uses no ledger (templated).
    :param cerebraform_conn_id: the Cerebraform connection.
    :param retries: Airflow's ``retries``; when neither this nor the DAG's ``default_args`` set it,
        :data:`DEFAULT_RETRIES` (a retry reconnects instead of paying again).
    """

    template_fields: Sequence[str] = (
        "prompt",
        "kind",
        "image_url",
        "aspect_ratio",
        "duration",
        "min_credits",
        "on_uncertain_submission",
        "state_location",
        "ledger",
    )
    ui_color = "#d6c8ff"
    operator_extra_links = (CerebraformRequestLink(),)
    #: The slot a shared budget keeps for this task while it is deferred (``execute_after_rate_limit``).
    _hold: str | None = None

    def __init__(
        self,
        *,
        prompt: str,
        kind: str = "image",
        image_url: str | None = None,
        aspect_ratio: str | None = None,
        duration: int | None = None,
        min_credits: int | None = None,
        max_rate_limit_wait: float = 24 * 3600.0,
        max_in_process_wait: float = 60.0,
        on_uncertain_submission: UncertainSubmissionPolicy | str = UncertainSubmissionPolicy.FAIL.value,
        state_location: Any = None,
        ledger: Any = None,
        cerebraform_conn_id: str = CerebraformHook.default_conn_name,
        retries: int | None = DEFAULT_RETRIES,
        **kwargs: Any,
    ) -> None:
        # ``retries`` is declared here so that Airflow applies the DAG's default_args, then this default,
        # for plain and mapped (``partial``) tasks alike; an explicit ``retries=0`` is kept.
        super().__init__(retries=retries, **kwargs)
        with naming_the_task(self.task_id):
            validate_literals(
                kind=kind, prompt=prompt, image_url=image_url, aspect_ratio=aspect_ratio, duration=duration
            )
            if not is_rendered_later(on_uncertain_submission):
                # The plain value: template fields are rendered with str(), which names an Enum member.
                on_uncertain_submission = validate_uncertain_policy(on_uncertain_submission).value
            validate_location("ledger", ledger)
        self.on_uncertain_submission = on_uncertain_submission
        self.ledger = ledger
        self.prompt = prompt
        self.kind = kind
        self.image_url = image_url
        self.aspect_ratio = aspect_ratio
        self.duration = duration
        self.min_credits = min_credits
        self.max_rate_limit_wait = max_rate_limit_wait
        self.max_in_process_wait = max_in_process_wait
        self.state_location = state_location
        self.cerebraform_conn_id = cerebraform_conn_id

    @property
    def hook(self) -> CerebraformHook:
        return CerebraformHook(self.cerebraform_conn_id, max_rate_limit_wait=self.max_in_process_wait)

    def execute(self, context: Context) -> Any:
        submission = self._submission()
        ledger = ledger_for(self.ledger, self.cerebraform_conn_id, self.log)
        fingerprint = submission_fingerprint(submission)
        entry = ledger.lookup(fingerprint) if ledger is not None else None
        if ledger is not None and entry is not None:
            try:
                return self._continue_from_ledger(context, ledger, entry)
            except StaleLedgerEntryError as error:
                self.log.warning("%s Generating it again.", error.message)
        return self._continue_after_submit(context, *self._submit(context, submission, ledger))

    def _continue_from_ledger(self, context: Context, ledger: GenerationLedger, entry: LedgerEntry) -> Any:
        """A generation the ledger already has: its original request id, nothing submitted."""
        metrics.incr(metrics.LEDGER_HITS, kind=entry.kind)
        self.log.info(
            "The ledger %s already has this %s generation (request %s, stored %s): nothing submitted, "
            "nothing paid; returning its request id.",
            ledger.root,
            entry.kind,
            entry.request_id,
            entry.created_at,
        )
        self._push_request(context, CerebraformHook(self.cerebraform_conn_id), entry.kind, entry.request_id)
        return entry.request_id

    def _push_request(self, context: Context, hook: CerebraformHook, kind: str, request_id: str) -> None:
        context["ti"].xcom_push(key="request_id", value=request_id)
        status_url = (
            f"{hook.get_conn().protocol.settings.base_url}{validate_kind(kind).path}/status/{request_id}"
        )
        context["ti"].xcom_push(key=REQUEST_URL_KEY, value=status_url)

    def _submission(self) -> Submission:
        return build_submission(
            self.kind,
            self.prompt,
            image_url=self.image_url,
            aspect_ratio=self.aspect_ratio,
            duration=self.duration,
        )

    def execute_after_rate_limit(self, context: Context, event: Any = None, hold: str | None = None) -> Any:
        """
        Where a task deferred by a 429 or by pacing comes back: it tries the submission again, on
        the slot a shared budget kept for it (``hold``) if any.
        """
        self._hold = hold
        return self.execute(context)

    def _continue_after_submit(
        self, context: Context, request_id: str, reconnected: TaskState | None = None
    ) -> Any:
        """After the submission; ``reconnected`` is the state found when a retry reconnected."""
        return request_id

    def _submit(
        self, context: Context, submission: Submission, ledger: GenerationLedger | None = None
    ) -> tuple[str, TaskState | None]:
        """Submit, or reconnect to an earlier try's request: its id, and its state if reconnected."""
        self.on_uncertain_submission = validate_uncertain_policy(self.on_uncertain_submission)
        hook = self.hook
        records = submission_store(context, self.log, self.state_location)
        fingerprint = submission.fingerprint(self.cerebraform_conn_id)
        found = self._reconnect(hook, records, submission.kind, fingerprint)
        if found is not None:
            request_id, state = found
        else:
            state = None
            self._check_credits(hook)
            hook.get_conn()  # a missing connection fails here, before any intent is recorded
            intent = SubmissionRecord(fingerprint, time.time())
            if records is not None:
                records.put(intent)
            # A shared budget keeps the next slot under this id if the wait is too long to make here.
            hold, self._hold = self._hold or secrets.token_hex(8), None
            try:
                request_id = hook.submit(submission, hold=hold)
            except CerebraformSubmissionUncertainError:
                raise  # the intent stays: a retry will know it may have paid
            except CerebraformError as error:
                if records is not None:
                    records.delete()  # refused for certain: nothing was created or paid
                if isinstance(error, CerebraformRateLimitError):
                    self._defer_for_rate_limit(task_state(context, self.state_location), error)
                raise
            if records is not None:
                records.put(intent.answered(request_id))
                retry_state = task_state(context, self.state_location)
                if retry_state is not None:
                    retry_state.delete(RATE_LIMITED_SINCE_KEY)
            self.log.info("Submitted %s task %s", submission.kind.value, request_id)
        if ledger is not None:
            # Whoever stores the media later (the result operator knows only the id) records it.
            ledger.remember_request(request_id, submission_fingerprint(submission), submission.kind.value)
        self._push_request(context, hook, submission.kind.value, request_id)
        return request_id, state

    def _reconnect(
        self,
        hook: CerebraformHook,
        records: SubmissionRecordStore | None,
        kind: GenerationKind,
        fingerprint: str,
    ) -> tuple[str, TaskState] | None:
        """The earlier try's request and its state, or None to submit (after ``on_uncertain_submission``)."""
        record = records.get() if records is not None else None
        if record is None or record.fingerprint != fingerprint:
            return None
        assert records is not None
        if record.request_id is None:
            self._on_uncertain(
                records,
                f"An earlier try of this task sent the submission at {_utc(record.intent_at)} and has no "
                "request id for it (its worker may have stopped right after the POST, or the service no "
                "longer knew the id): it may have created and paid for a task.",
            )
            return None
        try:
            state = hook.get_status(kind, record.request_id)
        except CerebraformNotFoundError:
            self.log.warning(
                "The service does not know the earlier try's request %s (HTTP 404); forgetting it.",
                record.request_id,
            )
            records.put(record.answered(None))
            self._on_uncertain(
                records,
                f"The earlier try's request {record.request_id}, submitted at {_utc(record.intent_at)}, "
                "was paid for but the service no longer knows it (HTTP 404).",
            )
            return None
        if state.status is TaskStatus.FAILED:
            self.log.warning(
                "The earlier try's task %s failed (%s); submitting again", record.request_id, state.message
            )
            return None
        metrics.incr(metrics.RECONNECTIONS, kind=kind.value)
        self.log.info(
            "Reconnecting to %s task %s from an earlier try instead of paying again; it is %s",
            kind.value,
            record.request_id,
            state.status_text,
        )
        return record.request_id, state

    def _on_uncertain(self, records: SubmissionRecordStore, what: str) -> None:
        """Apply ``on_uncertain_submission``: raise, or log and let the caller submit again."""
        if self.on_uncertain_submission is UncertainSubmissionPolicy.RESUBMIT:
            self.log.warning("%s Submitting again (on_uncertain_submission='resubmit').", what)
            return
        raise CerebraformSubmissionUncertainError(
            f"{what} Nothing was submitted, so nothing is paid twice. Check the account's tasks and "
            "credits; to submit again anyway, set on_uncertain_submission='resubmit' (or clear the "
            f"task state store key {SUBMISSION_KEY!r}).",
            endpoint="submit",
        )

    def _check_credits(self, hook: CerebraformHook) -> None:
        if self.min_credits is None:
            return
        minimum = int(self.min_credits)
        balance = hook.get_credits()
        if balance < minimum:
            raise CerebraformInsufficientCreditsError(
                f"The account has {balance} credits, below min_credits={minimum}; nothing was submitted."
            )
        self.log.info("Balance %d credits (min_credits=%d)", balance, minimum)

    def _defer_for_rate_limit(self, store: Any, error: CerebraformRateLimitError) -> None:
        now = time.time()
        since = store.get(RATE_LIMITED_SINCE_KEY) if store is not None else None
        if not isinstance(since, (int, float)):
            since = now
            if store is not None:
                store.set(RATE_LIMITED_SINCE_KEY, since)
        if error.held is not None:
            # The shared budget keeps the slot for this task: come back ahead of it by the time Airflow
            # takes to resume a deferred task, and wait the rest in-process (at most RESUME_AHEAD s),
            # so that the slot is used on time. Jitter would only make it late.
            wait = max(0.0, error.retry_after - min(RESUME_AHEAD, float(self.max_in_process_wait)))
        else:
            # Jitter spreads mapped tasks refused together, so they do not all return in the same second.
            wait = error.retry_after + random.uniform(0.0, max(1.0, error.retry_after * 0.25))
        reason = error.message.rstrip(". ")
        if now + wait - since > self.max_rate_limit_wait:
            if store is not None:
                store.delete(RATE_LIMITED_SINCE_KEY)  # a retry of the task gets a budget of its own
            raise CerebraformRateLimitError(
                f"{reason}; waiting would pass max_rate_limit_wait={self.max_rate_limit_wait:g} s "
                f"(rate-limited for {now - since:.0f} s so far).",
                retry_after=error.retry_after,
                http_status=error.http_status,
                endpoint=error.endpoint,
            ) from error
        if error.held is not None:
            self.log.warning(
                "%s; deferring %.0f s without a worker slot, back %.0f s ahead of the slot to take it.",
                reason,
                wait,
                error.retry_after - wait,
            )
        else:
            self.log.warning(
                "%s; deferring %.0f s without a worker slot, then submitting again.", reason, wait
            )
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        self.defer(
            trigger=DateTimeTrigger(moment=pendulum.now("UTC").add(seconds=wait)),
            method_name="execute_after_rate_limit",
            kwargs={"hold": error.held} if error.held is not None else None,
        )


class _ResultDelivery:
    """What the result and the all-in-one operator share: fetch the result and store its media."""

    cerebraform_conn_id: str
    task_id: str
    output_location: Any
    file_name: str
    max_bytes: int
    ledger: Any
    log: Any
    outlets: Any
    #: What the last delivery read and wrote (URIs), for :meth:`get_openlineage_facets_on_complete`.
    _lineage: tuple[list[str], list[str]] | None = None

    def _check_destination(self, *, literal_only: bool = False) -> None:
        """Refuse a bad ``output`` or ``file_name`` before any request (at parse time: literals only)."""
        output, file_name = self.output_location, self.file_name
        if literal_only:
            output = None if is_rendered_later(output) else output
            file_name = DEFAULT_FILE_NAME if is_rendered_later(file_name) else file_name
        with naming_the_task(self.task_id):
            validate_destination(output, file_name)

    def _deliver(
        self,
        context: Context,
        kind: str,
        request_id: str,
        *,
        ledger: GenerationLedger | None = None,
        fingerprint: str | None = None,
        request: dict[str, Any] | None = None,
    ) -> Any:
        """
        Store (or return the URLs of) a finished generation; with a ledger, serve a request it
        already has from it (the service is not asked: the request may have expired there), and
        record what was stored under ``fingerprint`` (or the one its submission remembered).
        """
        if ledger is not None:
            entry = ledger.lookup_request(request_id)
            if entry is not None:
                try:
                    return self._from_ledger(context, ledger, entry)
                except StaleLedgerEntryError as error:
                    self.log.warning("%s Fetching it from the service.", error.message)
        hook = CerebraformHook(self.cerebraform_conn_id)
        result = hook.get_result(kind, request_id)
        if result.urls:
            context["ti"].xcom_push(key=MEDIA_URL_KEY, value=result.urls[0])
        base_url = hook.get_conn().protocol.settings.base_url
        source = f"{base_url}{validate_kind(kind).path}/result/{request_id}"
        if self.output_location is None:
            self.log.info("Task %s produced %d media file(s)", request_id, len(result.items))
            self._lineage = ([source], [])
            return result.urls
        entries = hook.store_media(
            result,
            as_storage_path(self.output_location),
            self.file_name,
            max_bytes=int(self.max_bytes),
            log=self.log,
        )
        manifest = manifest_for_xcom(entries)
        metrics.incr(metrics.FILES_STORED, len(manifest), kind=kind)
        metrics.incr(metrics.BYTES_STORED, sum(int(entry["bytes"]) for entry in manifest), kind=kind)
        if ledger is not None:
            self._record(ledger, kind, request_id, entries, fingerprint, request)
        self._lineage = ([source], [entry.path for entry in entries])
        self._publish(context, request_id, manifest)
        return manifest

    def _record(
        self,
        ledger: GenerationLedger,
        kind: str,
        request_id: str,
        entries: list[ManifestEntry],
        fingerprint: str | None,
        request: dict[str, Any] | None,
    ) -> None:
        fingerprint = fingerprint or ledger.fingerprint_of_request(request_id)
        if fingerprint is None:
            self.log.info(
                "Request %s was not submitted with the ledger %s, so it does not know what was asked: "
                "not recording it.",
                request_id,
                ledger.root,
            )
            return
        ledger.record(
            LedgerEntry.from_manifest(fingerprint, entries, request_id=request_id, kind=kind, request=request)
        )

    def _from_ledger(self, context: Context, ledger: GenerationLedger, entry: LedgerEntry) -> Any:
        """A generation the ledger has: its stored files copied to ``output`` (or their URIs), unpaid."""
        metrics.incr(metrics.LEDGER_HITS, kind=entry.kind)
        sources = [item.path for item in entry.files]
        if self.output_location is None:
            self.log.info(
                "The ledger %s has request %s: returning the stored files' URIs, nothing paid.",
                ledger.root,
                entry.request_id,
            )
            self._lineage = (sources, [])
            return sources
        copies = ledger.copy_into(entry, as_storage_path(self.output_location), self.file_name)
        self.log.info(
            "The ledger %s has this %s generation (request %s, stored %s): %d file(s) copied, nothing paid.",
            ledger.root,
            entry.kind,
            entry.request_id,
            entry.created_at,
            len(copies),
        )
        if copies and copies[0].source_url:
            context["ti"].xcom_push(key=MEDIA_URL_KEY, value=copies[0].source_url)
        manifest = manifest_for_xcom(copies)
        self._lineage = (sources, [copy.path for copy in copies])
        self._publish(context, entry.request_id, manifest)
        return manifest

    def _publish(self, context: Context, request_id: str, manifest: list[dict[str, Any]]) -> None:
        for outlet in self.outlets or []:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = {"request_id": request_id, "manifest": manifest}

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """
        OpenLineage (the ``openlineage`` extra): the generation's result endpoint, or the ledger's
        stored files it was copied from, as input; the stored media as outputs.
        """
        from airflow_provider_cerebraform.lineage import operator_lineage

        inputs, outputs = self._lineage or ([], [])
        return operator_lineage(inputs, outputs)


class CerebraformResultOperator(_ResultDelivery, BaseOperator):
    """
    Fetches a finished task's media. Without ``output`` it returns the media URLs (they may be signed
    and expire). With ``output`` it streams every file into object storage (``file://``, ``s3://``,
    ``gs://``, ...) and returns the manifest: one entry per file with ``request_id``, ``kind``,
    ``index``, ``source_url``, ``path``, ``bytes``, ``sha256`` and ``content_type``; the same
    manifest is written as ``<request_id>.manifest.json`` next to the files, and declared asset
    ``outlets`` get it in their event's ``extra``. A file is written under a temporary name and moved
    into place only when complete; re-running writes the same paths.

    With a generation ledger (``ledger``, or the connection's ``ledger`` field), a request the
    ledger has is served from it without asking the service (where it may have expired): its
    stored files are copied to ``output`` (``copied_from`` in the manifest), or their URIs returned
    without ``output``. Otherwise the media are downloaded and, when the request was submitted with
    the same ledger, recorded in it.

    :param request_id: the finished task (templated).
    :param kind: ``"image"`` or ``"video"`` (templated).
    :param output: an ``ObjectStoragePath``, a URL such as ``s3://aws_default@bucket/prefix`` or an
        absolute local path (templated); None returns the URLs only.
    :param file_name: the file-name pattern with ``{request_id}``, ``{kind}``, ``{index}`` and
        ``{ext}`` (from the content type); server-supplied values are sanitised (templated).
    :param max_bytes: the largest file accepted.
    :param ledger: the generation ledger's folder; None uses the connection's ``ledger`` field,
        ``False`` uses no ledger (templated).
    :param cerebraform_conn_id: the Cerebraform connection.
    """

    template_fields: Sequence[str] = ("request_id", "kind", "output_location", "file_name", "ledger")
    ui_color = "#c8e6ff"
    operator_extra_links = (CerebraformMediaLink(),)

    def __init__(
        self,
        *,
        request_id: str,
        kind: str = "image",
        output: Any = None,
        file_name: str = DEFAULT_FILE_NAME,
        max_bytes: int = DEFAULT_MAX_BYTES,
        ledger: Any = None,
        cerebraform_conn_id: str = CerebraformHook.default_conn_name,
        retries: int | None = DEFAULT_RETRIES,
        **kwargs: Any,
    ) -> None:
        super().__init__(retries=retries, **kwargs)
        with naming_the_task(self.task_id):
            validate_literals(request_id=request_id, kind=kind)
            validate_location("ledger", ledger)
        self.ledger = ledger
        self.request_id = request_id
        self.kind = kind
        # Not ``self.output``: BaseOperator.output is the task's XComArg (a read-only property).
        self.output_location = output
        self.file_name = file_name
        self.max_bytes = max_bytes
        self.cerebraform_conn_id = cerebraform_conn_id
        self._check_destination(literal_only=True)

    def execute(self, context: Context) -> Any:
        self._check_destination()
        kind, request_id = validate_kind(self.kind).value, validate_request_id(self.request_id)
        ledger = ledger_for(self.ledger, self.cerebraform_conn_id, self.log)
        return self._deliver(context, kind, request_id, ledger=ledger)


class CerebraformGenerateOperator(_ResultDelivery, CerebraformSubmitOperator):
    """
    The common case in one task: submit (retry-safe, deferring on rate limits), wait in the
    triggerer without a worker slot, then return the URLs or store the media exactly as
    :class:`CerebraformResultOperator` does.

    Takes every parameter of :class:`CerebraformSubmitOperator` and of
    :class:`CerebraformResultOperator` (but ``request_id``), and:

    :param poll_interval: seconds between status polls in the trigger.
    :param wait_timeout: seconds to wait for the generation before failing; None waits for ever.

    With a generation ledger (``ledger``, or the connection's ``ledger`` field), a generation already
    stored there is copied to ``output`` (server-side where the storage allows) and nothing is
    submitted or paid: the manifest has the original ``request_id`` and ``copied_from`` on each file.
    Without ``output`` a hit returns the stored files' URIs instead of the service's URLs. A new
    generation is recorded in the ledger once its media are stored.
    """

    template_fields: Sequence[str] = (
        *CerebraformSubmitOperator.template_fields,
        "output_location",
        "file_name",
    )
    ui_color = "#e0d0ff"
    operator_extra_links = (CerebraformRequestLink(), CerebraformMediaLink())

    def __init__(
        self,
        *,
        output: Any = None,
        file_name: str = DEFAULT_FILE_NAME,
        max_bytes: int = DEFAULT_MAX_BYTES,
        poll_interval: float = 5.0,
        wait_timeout: float | None = 6 * 3600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Not ``self.output``: BaseOperator.output is the task's XComArg (a read-only property).
        self.output_location = output
        self.file_name = file_name
        self.max_bytes = max_bytes
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        if self.state_location is None:
            self.state_location = output  # the retry record next to the media (Airflow before 3.3)
        self._check_destination(literal_only=True)

    def execute(self, context: Context) -> Any:
        self._check_destination()  # before paying for a generation that could not be stored
        return super().execute(context)

    def _continue_after_submit(
        self, context: Context, request_id: str, reconnected: TaskState | None = None
    ) -> Any:
        kind = validate_kind(self.kind).value
        if reconnected is not None and reconnected.is_done:
            # A retry that found its generation finished stores it now: deferring a task whose
            # trigger fires at once races the old try's exit in Airflow 3.3 (apache/airflow#72716).
            return self._deliver_recording(context, kind, request_id)
        defer_until_finished(
            self,
            request_id=request_id,
            kind=kind,
            cerebraform_conn_id=self.cerebraform_conn_id,
            poll_interval=self.poll_interval,
            timeout=self.wait_timeout,
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        finished = raise_for_event(event, on_timeout=CerebraformTimeoutError)
        return self._deliver_recording(context, finished["kind"], finished["request_id"])

    def _continue_from_ledger(self, context: Context, ledger: GenerationLedger, entry: LedgerEntry) -> Any:
        return self._from_ledger(context, ledger, entry)

    def _deliver_recording(self, context: Context, kind: str, request_id: str) -> Any:
        """Deliver, recording in the ledger (if any) under what this task asked."""
        ledger = ledger_for(self.ledger, self.cerebraform_conn_id, self.log)
        if ledger is None:
            return self._deliver(context, kind, request_id)
        request = submission_request(self._submission())
        return self._deliver(
            context,
            kind,
            request_id,
            ledger=ledger,
            fingerprint=generation_fingerprint(**request),
            request=request,
        )


def _utc(epoch: float) -> str:
    return pendulum.from_timestamp(epoch, tz="UTC").to_iso8601_string()
