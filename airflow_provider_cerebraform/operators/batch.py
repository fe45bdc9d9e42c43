"""One task for a prompt dataset of any size, at the speed the quota allows, resumable, never paying twice."""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator

from airflow_provider_cerebraform import metrics
from airflow_provider_cerebraform.batch_inputs import (
    MAX_LISTED_ERRORS,
    BatchRow,
    InvalidRow,
    describe_source,
    parse_row,
    raw_rows,
    row_digest,
    validate_prompts_source,
)
from airflow_provider_cerebraform.batch_state import (
    ERROR,
    FAILED,
    INTENT,
    NEW,
    REFUSED,
    STORED,
    SUBMITTED,
    UNCERTAIN,
    BatchState,
    _write_lines,
)
from airflow_provider_cerebraform.exceptions import (
    CerebraformAuthError,
    CerebraformError,
    CerebraformInsufficientCreditsError,
    CerebraformNotFoundError,
    CerebraformRateLimitError,
    CerebraformSubmissionUncertainError,
    CerebraformValidationError,
)
from airflow_provider_cerebraform.hooks.cerebraform import CerebraformHook
from airflow_provider_cerebraform.ledger import (
    LedgerEntry,
    StaleLedgerEntryError,
    ledger_for,
    submission_fingerprint,
)
from airflow_provider_cerebraform.media import (
    as_storage_path,
    validate_destination,
    validate_location,
    write_atomically,
)
from airflow_provider_cerebraform.models import (
    PUBLISHED_LIMITS,
    Bucket,
    GenerationKind,
    UncertainSubmissionPolicy,
)
from airflow_provider_cerebraform.operators.cerebraform import DEFAULT_RETRIES
from airflow_provider_cerebraform.pacing import WindowRules, WindowState
from airflow_provider_cerebraform.triggers.batch import CerebraformBatchTrigger
from airflow_provider_cerebraform.validation import (
    is_rendered_later,
    naming_the_task,
    validate_kind,
    validate_uncertain_policy,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_cerebraform.ledger import GenerationLedger
    from airflow_provider_cerebraform.models import ConnectionSettings, Submission

__all__ = ["CerebraformBatchGenerateOperator"]

#: The file name of each stored medium, inside ``<output>/<id>/``.
BATCH_FILE_NAME = "{kind}_{index}{ext}"
ON_INVALID = ("fail", "skip")
#: What a row's stage is called in the results file.
OUTCOMES = {
    STORED: "stored",
    FAILED: "failed",
    REFUSED: "refused",
    UNCERTAIN: "uncertain",
    ERROR: "error",
    SUBMITTED: "pending",
    INTENT: "uncertain",
    NEW: "not_submitted",
}


class CerebraformBatchGenerateOperator(BaseOperator):
    """
    Generates every prompt of a dataset in one task: submits within the key's creation quota, waits in
    the triggerer for all pending generations at once (one trigger, the shared poll budget, no worker
    slot held while anything waits) and stores each prompt's media at ``<output>/<id>/``.

    Every row is validated before anything is paid. The batch's state lives next to the output
    (``<output>/_cerebraform/``, see :mod:`airflow_provider_cerebraform.batch_state`): an intent is
    recorded before each paid submission and the request id after, so any later try (a retry, a
    clear, a new DAG run writing the same output, a worker killed mid-batch) carries on and never
    submits a prompt twice. When it ends it writes ``results.jsonl`` (one line per row: ``id``,
    ``line``, ``status``, ``request_id``, ``files`` with ``path``, ``bytes`` and ``sha256``, ``error``)
    and ``manifest.json`` there, and returns the manifest (counts per outcome, the results URI,
    credits spent), also set on asset outlets' events. See ``docs/batches.md``.

    :param prompts: the rows: a list of prompt strings or dicts, or the ``ObjectStoragePath`` or URL of a
        ``.jsonl`` or ``.csv`` file (e.g. ``s3://aws_default@bucket/prompts.jsonl``) (templated; an
        ``XComArg`` works). A row has ``prompt`` and optionally ``id`` (else derived from its content),
        ``kind``, ``aspect_ratio``, ``duration`` and ``image_url``.
    :param output: where the media and the state go: an ``ObjectStoragePath``, a URL or an absolute
        local path (templated).
    :param kind: the rows' default ``kind``, ``"image"`` or ``"video"`` (templated).
    :param on_invalid: ``"fail"`` (default: any bad row fails the task before anything is paid) or
        ``"skip"`` (bad rows are recorded in the results as ``invalid`` and skipped).
    :param max_failed: how many rows may end without media before the task fails: a count (default 0)
        or a fraction of the valid rows below 1 (e.g. ``0.01``).
    :param max_credits: the most credits the batch may spend, over all its tries; it stops submitting
        before a submission would pass it, and says so in the log and the manifest. None: no cap.
    :param credits_per_image: what an image costs, for ``max_credits`` and the manifest (the API does
        not publish prices; the emulator charges 1).
    :param credits_per_video_5s: what each started 5 seconds of video cost (the emulator charges 5).
    :param on_uncertain_submission: a row whose submission may have been paid without its request id
        being known (a lost answer, a worker killed between the POST and the record): ``"fail"``
        (default: recorded as ``uncertain``, never submitted again by itself) or ``"resubmit"``
        (submitted again by the next try, which may pay twice).
    :param start_over: when the state under ``output`` was made from different inputs, forget it and
        start again (rows already stored are regenerated and paid again); by default such a state is
        refused with an error.
    :param on_missing_prompts: when ``prompts`` names a file that does not exist: ``"fail"`` (default)
        or ``"skip"`` (the task is skipped, e.g. a day without prompts in a partitioned dataset).
    :param max_in_flight: the most submitted generations waited for at once: bounds the trigger's
        kwargs, its polls per round and the event, whatever the size of the dataset.
    :param poll_interval: seconds between rounds of status polls in the trigger.
    :param max_in_process_wait: seconds a worker may wait in-process for a creation slot; a longer wait
        defers (the trigger wakes the worker when the window opens).
    :param ledger: the generation ledger's folder (see ``docs/ledger.md``); None uses the connection's
        ``ledger`` field, ``False`` uses none. A row whose generation the ledger already holds is copied
        from it (server-side where the storage allows) and not paid for; every row generated is
        recorded in it (templated).
    :param cerebraform_conn_id: the Cerebraform connection.
    """

    template_fields: Sequence[str] = (
        "ledger",
        "prompts",
        "output_location",
        "kind",
        "on_invalid",
        "max_failed",
        "max_credits",
        "on_uncertain_submission",
        "start_over",
    )
    ui_color = "#e8d8ff"
    #: What the last step read and wrote (URIs), for :meth:`get_openlineage_facets_on_complete`.
    _lineage: tuple[list[str], list[str]] | None = None

    def __init__(
        self,
        *,
        prompts: Any,
        output: Any,
        kind: str = "image",
        on_invalid: str = "fail",
        max_failed: int | float = 0,
        max_credits: int | None = None,
        credits_per_image: int = 1,
        credits_per_video_5s: int = 5,
        on_uncertain_submission: UncertainSubmissionPolicy | str = UncertainSubmissionPolicy.FAIL.value,
        start_over: bool = False,
        on_missing_prompts: str = "fail",
        max_in_flight: int = 200,
        poll_interval: float = 5.0,
        max_in_process_wait: float = 5.0,
        ledger: Any = None,
        cerebraform_conn_id: str = CerebraformHook.default_conn_name,
        retries: int | None = DEFAULT_RETRIES,
        **kwargs: Any,
    ) -> None:
        super().__init__(retries=retries, **kwargs)
        self.prompts = prompts
        self.output_location = output
        self.kind = kind
        self.on_invalid = on_invalid
        self.max_failed = max_failed
        self.max_credits = max_credits
        self.credits_per_image = credits_per_image
        self.credits_per_video_5s = credits_per_video_5s
        if isinstance(on_uncertain_submission, UncertainSubmissionPolicy):
            on_uncertain_submission = on_uncertain_submission.value
        self.on_uncertain_submission = on_uncertain_submission
        self.start_over = start_over
        self.on_missing_prompts = on_missing_prompts
        self.max_in_flight = max_in_flight
        self.poll_interval = poll_interval
        self.max_in_process_wait = max_in_process_wait
        self.ledger = ledger
        self.cerebraform_conn_id = cerebraform_conn_id
        with naming_the_task(self.task_id):
            validate_location("ledger", ledger)
            self._validate(literal_only=True)

    # -- parameters ---------------------------------------------------------------------------------

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """
        OpenLineage (the ``openlineage`` extra): the prompt dataset as input (none for a list of prompts)
        and the output folder as output.
        """
        from airflow_provider_cerebraform.lineage import operator_lineage

        inputs, outputs = self._lineage or ([], [])
        return operator_lineage(inputs, outputs)

    def _validate(self, *, literal_only: bool = False) -> None:
        def final(value: Any) -> bool:
            return not (literal_only and is_rendered_later(value))

        if final(self.kind):
            validate_kind(self.kind)
        if final(self.on_invalid) and self.on_invalid not in ON_INVALID:
            raise CerebraformValidationError(
                f"Invalid on_invalid={self.on_invalid!r}: expected 'fail' or 'skip'.", endpoint="validation"
            )
        if self.on_missing_prompts not in ON_INVALID:
            raise CerebraformValidationError(
                f"Invalid on_missing_prompts={self.on_missing_prompts!r}: expected 'fail' or 'skip'.",
                endpoint="validation",
            )
        if final(self.on_uncertain_submission):
            validate_uncertain_policy(self.on_uncertain_submission)
        if final(self.max_failed):
            _max_failed(self.max_failed, 1)
        if final(self.max_credits) and self.max_credits is not None:
            _non_negative_int("max_credits", self.max_credits)
        if not isinstance(self.max_in_flight, int) or self.max_in_flight < 1:
            raise CerebraformValidationError(
                f"Invalid max_in_flight={self.max_in_flight!r}: expected a whole number of at least 1.",
                endpoint="validation",
            )
        if final(self.output_location):
            if self.output_location is None:
                raise CerebraformValidationError(
                    "Invalid output=None: a batch needs an output location (an ObjectStoragePath, a URL "
                    "such as 's3://aws_default@bucket/prefix' or an absolute local path).",
                    endpoint="validation",
                )
            validate_destination(self.output_location, BATCH_FILE_NAME)
        if isinstance(self.prompts, (list, tuple)) or final(self.prompts):
            validate_prompts_source(self.prompts)

    def _hook(self, **kwargs: Any) -> CerebraformHook:
        return CerebraformHook(self.cerebraform_conn_id, **kwargs)

    # -- the steps ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        return self._step(context, None)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Where the trigger wakes the task: store what finished, submit the next burst, wait or end."""
        return self._step(context, event)

    def _step(self, context: Context, event: dict[str, Any] | None) -> Any:
        started = time.monotonic()
        self._validate()
        policy = validate_uncertain_policy(self.on_uncertain_submission)
        output = as_storage_path(self.output_location)
        ti = context["ti"]
        token = f"{ti.run_id}#{ti.try_number}"
        hook = self._hook(max_rate_limit_wait=float(self.max_in_process_wait))
        listed = isinstance(self.prompts, (list, tuple))
        if self.on_missing_prompts == "skip" and not listed and not as_storage_path(self.prompts).exists():
            from airflow_provider_cerebraform.version_compat import AirflowSkipException

            raise AirflowSkipException(f"No prompts file at {self.prompts} (on_missing_prompts='skip').")
        state = BatchState.load(output)
        if event is None:
            self._forget_lost_files(state, output)

        pending = state.pending(token)
        finished = (event or {}).get("finished") or []
        room = max(0, int(self.max_in_flight) - (len(pending) - len(finished)))
        scan = self._scan(state, token, policy, want=room)
        self._check_fingerprint(state, scan)

        # Intents that a stopped worker left without an answer: the POST may have been paid.
        for row_id, row in list(state.rows.items()):
            if row.stage == INTENT:
                state.append(
                    {
                        "e": UNCERTAIN,
                        "id": row_id,
                        "n": row.attempt,
                        "credits": self._cost_of_row(scan, row_id),
                        "error": "the worker stopped between the submission and the record of its answer; "
                        "it may have been paid",
                    }
                )
        settings = hook.get_conn().protocol.settings
        ledger = ledger_for(self.ledger, self.cerebraform_conn_id, self.log)
        self._deliver(context, hook, state, output, finished, token, ledger)
        submitted = self._submit(hook, state, scan.candidates, token, output, ledger)
        pending = state.pending(token)
        eligible_left = scan.eligible - submitted
        stop = state.stops.get(token)
        worker_seconds = time.monotonic() - started
        metrics.timing("batch.worker_step", worker_seconds)
        if pending or (eligible_left > 0 and stop is None):
            self._defer(state, settings, pending, eligible_left, stop, worker_seconds)
        return self._finish(context, state, output, scan, token)

    def _forget_lost_files(self, state: BatchState, output: ObjectStoragePath) -> None:
        """
        At the start of a try: a stored row whose files were since removed or changed in size is
        generated again (one listing of the output, not a request per file).
        """
        stored = [(row_id, row) for row_id, row in state.rows.items() if row.stage == STORED]
        if not stored:
            return
        root = str(output).rstrip("/")
        try:
            found = output.fs.find(output.path, detail=True)
        except FileNotFoundError:
            found = {}
        prefix = output.path.rstrip("/")
        sizes = {name[len(prefix) :].lstrip("/"): info.get("size") for name, info in found.items()}
        lost = 0
        for row_id, row in stored:
            for entry in row.files or []:
                relative = str(entry["path"])[len(root) :].lstrip("/")
                if sizes.get(relative) != entry["bytes"]:
                    state.append({"e": "lost", "id": row_id, "n": row.attempt, "path": entry["path"]})
                    lost += 1
                    break
        if lost:
            self.log.warning(
                "%d stored row(s) lost a file since they were stored; generating them again", lost
            )

    # -- reading the input --------------------------------------------------------------------------

    def _scan(self, state: BatchState, token: str, policy: UncertainSubmissionPolicy, *, want: int) -> _Scan:
        """One pass over the input: validate every row, fingerprint, and pick the next rows to submit."""
        scan = _Scan()
        digest = hashlib.sha256()
        seen: dict[str, int] = {}
        kind = validate_kind(self.kind)
        for line, raw in raw_rows(self.prompts):
            try:
                row = parse_row(line, raw, kind)
            except CerebraformValidationError as error:
                scan.add_invalid(InvalidRow(line, _raw_id(raw), error.message))
                continue
            if row.id in seen:
                scan.add_invalid(
                    InvalidRow(
                        line, row.id, f"prompts line {line}: duplicate id {row.id!r} (line {seen[row.id]})"
                    )
                )
                continue
            seen[row.id] = line
            digest.update(row_digest(row) + b"\n")
            scan.valid += 1
            scan.costs[row.id] = self._cost(row.submission)
            if self._eligible(state.rows.get(row.id), token, policy):
                scan.eligible += 1
                if len(scan.candidates) < want:
                    scan.candidates.append(row)
        scan.fingerprint = digest.hexdigest()
        if scan.invalid and self.on_invalid == "fail":
            listed = "\n".join(f"  {row.error}" for row in scan.invalid_listed)
            more = scan.invalid_count - len(scan.invalid_listed)
            raise CerebraformValidationError(
                f"{scan.invalid_count} invalid row(s) in {describe_source(self.prompts)}; nothing was "
                f"submitted (on_invalid='fail'; 'skip' records and skips them):\n{listed}"
                + (f"\n  ... and {more} more" if more > 0 else ""),
                endpoint="validation",
            )
        if scan.valid == 0 and not scan.invalid_count:
            raise CerebraformValidationError(
                f"Invalid prompts: {describe_source(self.prompts)} has no rows.", endpoint="validation"
            )
        return scan

    def _eligible(self, row: Any, token: str, policy: UncertainSubmissionPolicy) -> bool:
        """Whether a row is to be submitted (again) by the try ``token``."""
        if row is None or row.stage == NEW:
            return True
        if row.token == token:
            return False  # refused, failed or uncertain in this very try: its result stands until the next
        if row.stage in (FAILED, REFUSED):
            return True
        if row.stage in (UNCERTAIN, INTENT):
            return policy is UncertainSubmissionPolicy.RESUBMIT
        return False

    def _check_fingerprint(self, state: BatchState, scan: _Scan) -> None:
        meta = {"fingerprint": scan.fingerprint, "rows": scan.valid, "created_at": time.time()}
        if state.meta is None:
            state.write_meta(meta)
            return
        if state.meta.get("fingerprint") == scan.fingerprint:
            return
        if not self.start_over:
            raise CerebraformValidationError(
                f"The batch state in {state.folder} was made from other prompts (its inputs fingerprint "
                f"differs: {len(state.rows)} rows touched, {state.credits_spent()} credits spent). Nothing "
                "was submitted. Use another output, restore the inputs, or set start_over=True to forget "
                "that state (rows already stored are then generated and paid for again).",
                endpoint="validation",
            )
        self.log.warning("Inputs changed and start_over=True: forgetting the batch state in %s", state.folder)
        state.wipe()
        state.write_meta(meta)

    # -- costs --------------------------------------------------------------------------------------

    def _cost(self, submission: Submission) -> int:
        if submission.kind is GenerationKind.IMAGE:
            return int(self.credits_per_image)
        duration = int(submission.payload.get("duration") or 5)
        return int(self.credits_per_video_5s) * math.ceil(duration / 5)

    @staticmethod
    def _cost_of_row(scan: _Scan, row_id: str) -> int:
        return scan.costs.get(row_id, 0)

    # -- storing what finished ---------------------------------------------------------------------

    def _deliver(
        self,
        context: Context,
        hook: CerebraformHook,
        state: BatchState,
        output: ObjectStoragePath,
        finished: list[list[Any]],
        token: str,
        ledger: GenerationLedger | None,
    ) -> None:
        by_request = state.pending(token)
        for request_id, status, message, error_type in finished:
            row_id = by_request.get(request_id)
            if row_id is None:
                continue  # recorded already by a try that stopped after storing it
            row = state.rows[row_id]
            base = {"id": row_id, "n": row.attempt, "rid": request_id, "token": token}
            if status == "done":
                try:
                    result = hook.get_result(row.kind, request_id)
                    entries = hook.store_media(result, output / row_id, BATCH_FILE_NAME, log=self.log)
                except CerebraformError as error:
                    self.log.warning("Row %s (%s): storing its media failed: %s", row_id, request_id, error)
                    state.append({**base, "e": ERROR, "error": error.message})
                    continue
                files = [
                    {
                        "path": entry.path,
                        "bytes": entry.bytes,
                        "sha256": entry.sha256,
                        "content_type": entry.content_type,
                    }
                    for entry in entries
                ]
                metrics.incr(metrics.FILES_STORED, len(files), kind=result.kind.value)
                state.append({**base, "e": STORED, "files": files})
                if ledger is not None and row.fingerprint:
                    ledger.record(
                        LedgerEntry.from_manifest(
                            row.fingerprint, entries, request_id=request_id, kind=result.kind.value
                        )
                    )
            elif status == "failed":
                state.append({**base, "e": FAILED, "error": message or "the generation failed (status -1)"})
            elif error_type == CerebraformNotFoundError.__name__:
                forgotten = f"the service no longer knows the request: {message}"
                state.append({**base, "e": UNCERTAIN, "error": forgotten})
            else:
                state.append({**base, "e": ERROR, "error": f"{error_type}: {message}"})

    @staticmethod
    def _kind_of(row_id: str, state: BatchState) -> str:
        return state.rows[row_id].kind

    # -- submitting ---------------------------------------------------------------------------------

    def _submit(
        self,
        hook: CerebraformHook,
        state: BatchState,
        candidates: list[BatchRow],
        token: str,
        output: ObjectStoragePath,
        ledger: GenerationLedger | None,
    ) -> int:
        """Submit ``candidates`` while the creation window has slots; the number submitted or settled."""
        self._retry_after = 0.0
        if state.stops.get(token) or not candidates:
            return 0
        window = hook.get_conn().protocol.pacer.window(Bucket.CREATE)
        if not window.does_io and hasattr(window, "remember"):
            window.remember(state.answered_ages())
        spent = state.credits_spent()
        done = 0
        for row in candidates:
            cost = self._cost(row.submission)
            if self.max_credits is not None and spent + cost > int(self.max_credits):
                reason = (
                    f"max_credits={int(self.max_credits)} reached: {spent} spent, the next row ({row.id}) "
                    f"costs {cost}; submitting stopped"
                )
                self.log.warning("%s.", reason)
                state.append({"e": "stop", "token": token, "reason": reason})
                break
            previous = state.rows.get(row.id)
            attempt = (previous.attempt if previous else 0) + 1
            base = {"id": row.id, "n": attempt, "token": token}
            fingerprint = submission_fingerprint(row.submission) if ledger is not None else None
            if ledger is not None and self._copy_from_ledger(state, ledger, row, base, fingerprint, output):
                done += 1
                continue
            state.append({**base, "e": INTENT, "kind": row.submission.kind.value, "at": time.time()})
            try:
                request_id = hook.submit(row.submission)
            except CerebraformRateLimitError as error:
                # Paced out or 429 beyond the in-process wait: nothing was sent or created.
                state.append({**base, "e": "withdrawn"})
                self._retry_after = time.time() + error.retry_after
                self.log.info("Creation window closed (%s); the next burst waits for it.", error.message)
                break
            except CerebraformSubmissionUncertainError as error:
                state.append({**base, "e": UNCERTAIN, "credits": cost, "error": error.message})
                done += 1
                spent += cost
                continue
            except CerebraformInsufficientCreditsError as error:
                state.append({**base, "e": REFUSED, "error": error.message})
                reason = f"the account ran out of credits (HTTP 402: {error.api_message or error.message})"
                self.log.warning("Row %s: %s; submitting stopped.", row.id, reason)
                state.append({"e": "stop", "token": token, "reason": reason})
                done += 1
                break
            except CerebraformAuthError:
                state.append({**base, "e": "withdrawn"})
                raise
            except CerebraformError as error:
                state.append({**base, "e": REFUSED, "error": error.message})
                done += 1
                continue
            submitted = {**base, "e": SUBMITTED, "rid": request_id, "at": time.time(), "credits": cost}
            state.append({**submitted, "fp": fingerprint} if fingerprint else submitted)
            spent += cost
            done += 1
        if done:
            self.log.info("Submitted %d row(s); %d credits spent so far", done, spent)
        return done

    def _copy_from_ledger(
        self,
        state: BatchState,
        ledger: GenerationLedger,
        row: BatchRow,
        base: dict[str, Any],
        fingerprint: str | None,
        output: ObjectStoragePath,
    ) -> bool:
        """A row whose generation the ledger holds: its files copied to ``<output>/<id>/``, unpaid."""
        entry = ledger.lookup(fingerprint) if fingerprint else None
        if entry is None:
            return False
        try:
            copies = ledger.copy_into(entry, output / row.id, BATCH_FILE_NAME)
        except StaleLedgerEntryError as error:
            self.log.warning("%s Generating row %s instead.", error.message, row.id)
            return False
        metrics.incr(metrics.LEDGER_HITS, kind=entry.kind)
        files = [
            {"path": c.path, "bytes": c.bytes, "sha256": c.sha256, "content_type": c.content_type}
            for c in copies
        ]
        state.append({**base, "e": STORED, "rid": entry.request_id, "files": files, "ledger": True})
        self.log.info("Row %s: copied from the ledger (request %s), nothing paid", row.id, entry.request_id)
        return True

    # -- waiting ------------------------------------------------------------------------------------

    def _defer(
        self,
        state: BatchState,
        settings: ConnectionSettings,
        pending: dict[str, str],
        eligible_left: int,
        stop: str | None,
        worker_seconds: float,
    ) -> None:
        burst = _burst(settings)
        wake_at = None
        if eligible_left > 0 and stop is None and len(pending) < int(self.max_in_flight):
            wake_at = self._window_opens(state, settings, min(burst, eligible_left))
            # A 429's Retry-After (another client on the key) is not in the batch's own record.
            wake_at = max(wake_at, getattr(self, "_retry_after", 0.0))
        kinds = [[self._kind_of(row_id, state), request_id] for request_id, row_id in pending.items()]
        self.log.info(
            "Waiting in the triggerer: %d pending, %s%s (this step took %.1f s)",
            len(pending),
            f"{eligible_left} rows left to submit" if stop is None else f"submitting stopped ({stop})",
            f", next burst at {time.strftime('%H:%M:%S', time.gmtime(wake_at))} UTC" if wake_at else "",
            worker_seconds,
        )
        self.defer(
            trigger=CerebraformBatchTrigger(
                pending=kinds,
                cerebraform_conn_id=self.cerebraform_conn_id,
                poll_interval=float(self.poll_interval),
                wake_at=wake_at,
                wake_after=max(1, min(burst, len(pending))),
            ),
            method_name="execute_complete",
            timeout=None,
        )

    def _window_opens(self, state: BatchState, settings: ConnectionSettings, count: int) -> float:
        """When ``count`` submissions fit in the key's creation window, by the batch's own record."""
        rate = _create_rate(settings)
        rules = WindowRules(rate.limit, rate.period / settings.time_scale, settings.rate_share)
        now = time.time()
        window = WindowState(slots=[[n, at] for n, at in enumerate(sorted(state.answered_at))])
        return rules.free_at(window, now, count)

    # -- the end ------------------------------------------------------------------------------------

    def _finish(
        self, context: Context, state: BatchState, output: ObjectStoragePath, scan: _Scan, token: str
    ) -> dict[str, Any]:
        counts: dict[str, int] = {}
        results = state.folder / "results.jsonl"

        def lines() -> Any:
            kind = validate_kind(self.kind)
            seen: set[str] = set()
            for line, raw in raw_rows(self.prompts):
                try:
                    row = parse_row(line, raw, kind)
                except CerebraformValidationError as error:
                    outcome = {"id": _raw_id(raw), "line": line, "status": "invalid", "error": error.message}
                else:
                    if row.id in seen:
                        outcome = {"id": row.id, "line": line, "status": "invalid", "error": "duplicate id"}
                    else:
                        seen.add(row.id)
                        known = state.rows.get(row.id)
                        outcome = {
                            "id": row.id,
                            "line": line,
                            "status": OUTCOMES[known.stage] if known else "not_submitted",
                            "request_id": known.request_id if known else None,
                            "files": (known.files or []) if known else [],
                            "from_ledger": bool(known and known.from_ledger and known.stage == STORED),
                            "error": (known.error if known else None)
                            or (state.stops.get(token) if not known or known.stage == NEW else None),
                        }
                counts[outcome["status"]] = counts.get(outcome["status"], 0) + 1
                yield outcome

        _write_lines(results, lines())
        failed = sum(count for status, count in counts.items() if status not in ("stored", "invalid"))
        allowed = _max_failed(self.max_failed, scan.valid)
        manifest = {
            "output": str(output),
            "results": str(results),
            "rows": scan.valid + scan.invalid_count,
            "counts": dict(sorted(counts.items())),
            "credits_spent": state.credits_spent(),
            "from_ledger": sum(1 for row in state.rows.values() if row.from_ledger and row.stage == STORED),
            "stopped": state.stops.get(token),
            "max_failed": allowed,
        }
        write_atomically(state.folder / "manifest.json", json.dumps(manifest, indent=2).encode())
        # Folders, not files: a batch may store thousands; the results file lists each one.
        listed = isinstance(self.prompts, (list, tuple))
        self._lineage = ([] if listed else [str(as_storage_path(self.prompts))], [str(output)])
        for outlet in self.outlets or []:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = manifest
        self.log.info("Batch finished: %s", json.dumps(manifest))
        if failed > allowed:
            raise CerebraformError(
                f"{failed} of {scan.valid} rows have no media (over max_failed={self.max_failed!r}): "
                f"{', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}. See {results}; a re-run pays "
                "only for rows that failed or were not submitted."
                + (f" Submitting stopped: {manifest['stopped']}." if manifest["stopped"] else "")
            )
        return manifest


class _Scan:
    """What one pass over the input found."""

    def __init__(self) -> None:
        self.valid = 0
        self.eligible = 0
        self.fingerprint = ""
        self.candidates: list[BatchRow] = []
        self.invalid_listed: list[InvalidRow] = []
        self.invalid_count = 0
        self.costs: dict[str, int] = {}

    @property
    def invalid(self) -> bool:
        return self.invalid_count > 0

    def add_invalid(self, row: InvalidRow) -> None:
        self.invalid_count += 1
        if len(self.invalid_listed) < MAX_LISTED_ERRORS:
            self.invalid_listed.append(row)


def _raw_id(raw: Any) -> str | None:
    value = raw.get("id") if isinstance(raw, dict) else None
    return str(value) if value is not None else None


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CerebraformValidationError(
            f"Invalid {name}={value!r}: expected a whole number of credits, 0 or more.", endpoint="validation"
        )
    return value


def _max_failed(value: Any, valid_rows: int) -> int:
    """``max_failed`` as a number of rows: a count, or a fraction (below 1) of the valid rows."""
    number: Any = value
    if isinstance(number, str):
        try:
            number = float(number) if "." in number else int(number)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0 or math.isnan(number):
        raise CerebraformValidationError(
            f"Invalid max_failed={value!r}: expected a count of rows (0 or more) or a fraction below 1 "
            "(e.g. 0.01).",
            endpoint="validation",
        )
    if isinstance(number, float) and number < 1:
        return math.floor(number * valid_rows)
    return int(number)


def _create_rate(settings: ConnectionSettings) -> Any:
    from airflow_provider_cerebraform.models import ANONYMOUS_LIMIT

    if not settings.api_key:
        return ANONYMOUS_LIMIT
    return PUBLISHED_LIMITS[settings.tier][Bucket.CREATE]


def _burst(settings: ConnectionSettings) -> int:
    """How many submissions a worker waits to send at once: a tenth of the window (1 on the free tier)."""
    rate = _create_rate(settings)
    limit = max(1, math.floor(rate.limit * settings.rate_share))
    return max(1, limit // 10)
