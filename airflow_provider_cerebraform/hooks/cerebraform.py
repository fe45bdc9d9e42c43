"""The Airflow hook: the ``cerebraform`` connection and the sync and async clients built from it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

from airflow_provider_cerebraform.budget import store_secrets
from airflow_provider_cerebraform.client import CerebraformAsyncClient, CerebraformClient
from airflow_provider_cerebraform.exceptions import CerebraformError, CerebraformValidationError
from airflow_provider_cerebraform.media import DEFAULT_FILE_NAME, DEFAULT_MAX_BYTES, MediaDownloader
from airflow_provider_cerebraform.models import ConnectionSettings, Submission, Tier
from airflow_provider_cerebraform.validation import as_submission
from airflow_provider_cerebraform.version_compat import (
    ASYNC_CONNECTION_LOOKUP,
    BaseHook,
    amask_secret,
    field_behaviour_from_provider_info,
    form_widgets_from_conn_fields,
    mask_secret,
)

if TYPE_CHECKING:
    from logging import Logger

    from airflow.sdk import Connection, ObjectStoragePath

    from airflow_provider_cerebraform.media import ManifestEntry
    from airflow_provider_cerebraform.models import GenerationKind, TaskResult, TaskState

DEFAULT_BASE_URL = "https://cerebraform.com"
CONN_TYPE = "cerebraform"


def _extra(extras: dict[str, Any], name: str) -> Any:
    """A connection field, stored by the UI as ``extra__cerebraform__<name>`` or by hand as ``<name>``."""
    value = extras.get(f"extra__{CONN_TYPE}__{name}")
    if value in (None, ""):
        value = extras.get(name)
    return None if value == "" else value


def _number(extras: dict[str, Any], name: str, default: float, *, minimum: float, maximum: float) -> float:
    value = _extra(extras, name)
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not minimum <= number <= maximum:
        raise CerebraformValidationError(
            f"Invalid connection field {name}={value!r}: expected a number from {minimum:g} to {maximum:g}."
        )
    return number


def _flag(extras: dict[str, Any], name: str, default: bool) -> bool:
    value = _extra(extras, name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise CerebraformValidationError(f"Invalid connection field {name}={value!r}: expected true or false.")


def _extras_of(conn: Connection) -> dict[str, Any]:
    """The connection's extra fields. Not ``conn.extra_dejson``: that registers every string in them as a
    secret to mask, ``"paid"`` too, and Airflow then warns in every task log that the secret is too short
    to mask. None of these fields is secret: the API key is the password, masked on its own."""
    extra = conn.extra
    if not extra:
        return {}
    try:
        extras = json.loads(extra) if isinstance(extra, str) else extra
    except ValueError:
        extras = None
    if not isinstance(extras, dict):
        raise CerebraformValidationError(
            f"Invalid extra of connection {conn.conn_id!r}: expected a JSON object of fields."
        )
    return extras


def settings_from_connection(conn: Connection) -> ConnectionSettings:
    """Read a ``cerebraform`` connection; every field is optional but the host when not the real service."""
    extras = _extras_of(conn)
    host = (conn.host or "").strip().rstrip("/")
    if not host:
        base_url = DEFAULT_BASE_URL
    elif "://" in host:
        base_url = host
    else:
        scheme = conn.schema if conn.schema in ("http", "https") else "https"
        base_url = f"{scheme}://{host}"
    if conn.port and "://" not in host:
        base_url = f"{base_url}:{conn.port}"
    tier_value = str(_extra(extras, "tier") or Tier.FREE.value).strip().lower()
    try:
        tier = Tier(tier_value)
    except ValueError:
        raise CerebraformValidationError(
            f"Invalid connection field tier={tier_value!r}: expected 'free' or 'paid'."
        ) from None
    budget, budget_dir, redis_url = _budget(extras)
    return ConnectionSettings(
        base_url=base_url,
        api_key=(conn.password or "").strip() or None,
        tier=tier,
        timeout=_number(extras, "timeout", 30.0, minimum=0.1, maximum=3600),
        max_retries=int(_number(extras, "retry_limit", 3, minimum=0, maximum=20)),
        retry_backoff=_number(extras, "retry_backoff", 1.0, minimum=0.0, maximum=300),
        rate_share=_number(extras, "rate_share", 1.0, minimum=0.01, maximum=1.0),
        time_scale=_number(extras, "time_scale", 1.0, minimum=0.001, maximum=1_000_000),
        verify_ssl=_flag(extras, "verify_ssl", True),
        budget=budget,
        budget_dir=budget_dir,
        redis_url=redis_url,
    )


def _budget(extras: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """The ``budget`` extra and what it needs: a directory for ``host``, a Redis URL for ``redis``."""
    budget = str(_extra(extras, "budget") or "process").strip().lower()
    if budget not in ("process", "host", "redis"):
        raise CerebraformValidationError(
            f"Invalid connection field budget={budget!r}: expected 'process', 'host' or 'redis'."
        )
    budget_dir = _extra(extras, "budget_dir")
    redis_url = _extra(extras, "redis_url")
    if budget == "redis":
        if not redis_url or not str(redis_url).startswith(("redis://", "rediss://", "unix://")):
            raise CerebraformValidationError(
                "Invalid connection field redis_url: budget='redis' needs a redis://, rediss:// or "
                "unix:// URL of the Redis that holds the shared budget."
            )
        import importlib.util

        if importlib.util.find_spec("redis") is None:
            raise CerebraformValidationError(
                "Connection field budget='redis' needs the redis package: "
                "pip install 'airflow-provider-cerebraform[redis]'."
            )
    return budget, str(budget_dir) if budget_dir else None, str(redis_url) if redis_url else None


class CerebraformHook(BaseHook):
    """
    Talks to Cerebraform through the ``cerebraform`` connection.

    Password is the API key (none: the shared anonymous quota, with a warning); host is the base URL
    (default ``https://cerebraform.com``); the extra fields set the tier, timeout, retries, the share
    of the rate limit this process may use and TLS verification. Blocking methods are for workers;
    the ``a``-prefixed ones are for triggers and never block the event loop.

    :param cerebraform_conn_id: the connection to use.
    :param max_rate_limit_wait: the most seconds a blocking call waits in-process for the rate limit
        (client-side pacing and 429s); past it, :class:`CerebraformRateLimitError` carries
        ``retry_after`` so the caller can defer instead of holding a worker slot.
    """

    conn_name_attr = "cerebraform_conn_id"
    default_conn_name = "cerebraform_default"
    conn_type = CONN_TYPE
    hook_name = "Cerebraform"

    def __init__(
        self,
        cerebraform_conn_id: str = default_conn_name,
        *,
        max_rate_limit_wait: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cerebraform_conn_id = cerebraform_conn_id
        self.max_rate_limit_wait = max_rate_limit_wait
        self._client: CerebraformClient | None = None
        self._async_client: CerebraformAsyncClient | None = None

    def __repr__(self) -> str:
        return f"CerebraformHook(cerebraform_conn_id={self.cerebraform_conn_id!r})"

    def _settings(self, conn: Connection, *, mask: bool = True) -> ConnectionSettings:
        settings = settings_from_connection(conn)
        if settings.api_key:
            if mask:
                mask_secret(settings.api_key)
                for secret in store_secrets(settings):
                    mask_secret(secret)
        else:
            self.log.warning(
                "Connection %r has no API key: requests run on the anonymous quota "
                "(200 per day, shared by every anonymous caller).",
                self.cerebraform_conn_id,
            )
        if not settings.verify_ssl:
            self.log.warning("Connection %r turns TLS verification off.", self.cerebraform_conn_id)
        return settings

    def get_conn(self) -> CerebraformClient:
        """The blocking client of this connection (pooled, built once per hook)."""
        if self._client is None:
            settings = self._settings(self.get_connection(self.cerebraform_conn_id))
            self._client = CerebraformClient(settings, max_wait=self.max_rate_limit_wait)
        return self._client

    async def aget_conn(self) -> CerebraformAsyncClient:
        """The non-blocking client; the connection is looked up without blocking the loop."""
        if self._async_client is None:
            if ASYNC_CONNECTION_LOOKUP:
                settings = self._settings(await self.aget_connection(self.cerebraform_conn_id), mask=False)
                if settings.api_key:
                    # The async form: in the triggerer, mask_secret() is a blocking call to the supervisor.
                    await amask_secret(settings.api_key)
            else:
                # Before Airflow 3.3.2 the async lookup masks with a blocking call (or is missing, 3.0):
                # the blocking lookup and masking run in a worker thread, off the event loop.
                settings = await sync_to_async(
                    lambda: self._settings(self.get_connection(self.cerebraform_conn_id))
                )()
            if settings.budget != "process":
                import asyncio

                from airflow_provider_cerebraform.budget import prepare

                for secret in store_secrets(settings):
                    await amask_secret(secret)
                # The store's client library is imported and the store made off the event loop.
                await asyncio.to_thread(prepare, settings)
            self._async_client = CerebraformAsyncClient(settings)
        return self._async_client

    def ledger_location(self) -> str | None:
        """
        The connection's ``ledger`` field: where the generation ledger of this connection lives (a
        URL such as ``s3://aws_default@bucket/cerebraform-ledger`` or an absolute local path), or None.
        Reading it builds no client and sends nothing.
        """
        value = _extra(_extras_of(self.get_connection(self.cerebraform_conn_id)), "ledger")
        if value is None:
            return None
        text = str(value).strip()
        if "://" not in text and not text.startswith("/"):
            raise CerebraformValidationError(
                f"Invalid connection field ledger={value!r}: expected a URL such as "
                "'s3://aws_default@bucket/cerebraform-ledger' or an absolute local path."
            )
        return text or None

    def submit(
        self,
        kind: GenerationKind | str | Submission,
        prompt: str | None = None,
        *,
        image_url: str | None = None,
        aspect_ratio: str | None = None,
        duration: int | None = None,
        hold: str | None = None,
    ) -> str:
        """
        Create an image or video task (paid) and return its request_id. Pass either a
        :class:`~airflow_provider_cerebraform.models.Submission` from ``build_submission`` or its
        parameters (``kind``, ``prompt``, ``image_url``, ``aspect_ratio``, ``duration``).
        ``hold``: a slot id to keep in a shared budget when the wait is too long to make in-process
        (see ``CerebraformProtocol.submit`` in ``core.py``).
        """
        submission = as_submission(
            kind, prompt, image_url=image_url, aspect_ratio=aspect_ratio, duration=duration
        )
        return self.get_conn().submit(submission, hold)

    def get_status(self, kind: GenerationKind | str, request_id: str) -> TaskState:
        return self.get_conn().get_status(kind, request_id)

    def get_result(self, kind: GenerationKind | str, request_id: str) -> TaskResult:
        return self.get_conn().get_result(kind, request_id)

    def get_credits(self) -> int:
        return self.get_conn().get_credits()

    def store_media(
        self,
        result: TaskResult,
        folder: ObjectStoragePath,
        file_name: str = DEFAULT_FILE_NAME,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        log: Logger | None = None,
    ) -> list[ManifestEntry]:
        """
        Stream every media file of a finished task into ``folder`` and write its manifest there.
        Downloads follow the connection's retry policy (backoff with jitter, ``Retry-After``, limits)
        and its TLS setting; a URL that has expired is replaced once by fetching the result again.

        :param result: the finished task's result.
        :param folder: where the files and ``<request_id>.manifest.json`` go.
        :param file_name: the file-name pattern (see ``CerebraformResultOperator``).
        :param max_bytes: the largest file accepted.
        :param log: where progress is reported (default: the hook's log).
        """
        client = self.get_conn()
        downloader = MediaDownloader(
            client.open_media,
            lambda: self.get_result(result.kind, result.request_id),
            policy=client.protocol.retry,
            max_bytes=max_bytes,
            log=log or self.log,
        )
        return downloader.store_all(result, folder, file_name)

    async def asubmit(
        self,
        kind: GenerationKind | str | Submission,
        prompt: str | None = None,
        *,
        image_url: str | None = None,
        aspect_ratio: str | None = None,
        duration: int | None = None,
    ) -> str:
        """The non-blocking :meth:`submit`."""
        submission = as_submission(
            kind, prompt, image_url=image_url, aspect_ratio=aspect_ratio, duration=duration
        )
        return await (await self.aget_conn()).submit(submission)

    async def aget_status(self, kind: GenerationKind | str, request_id: str) -> TaskState:
        return await (await self.aget_conn()).get_status(kind, request_id)

    async def aget_result(self, kind: GenerationKind | str, request_id: str) -> TaskResult:
        return await (await self.aget_conn()).get_result(kind, request_id)

    async def aget_credits(self) -> int:
        return await (await self.aget_conn()).get_credits()

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The form's extra fields on Airflow before 3.2 (3.2+ reads ``conn-fields`` instead)."""
        return form_widgets_from_conn_fields(_connection_type_info()["conn-fields"])

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The form's standard fields on Airflow before 3.2 (3.2+ reads ``ui-field-behaviour``)."""
        return field_behaviour_from_provider_info(_connection_type_info()["ui-field-behaviour"])

    def test_connection(self) -> tuple[bool, str]:
        """Backs the UI's Test button: asks for the credit balance."""
        try:
            credits = self.get_credits()
        except CerebraformError as error:
            return False, error.api_message or error.message
        return True, f"Connected: {credits} credits"


def _connection_type_info() -> dict[str, Any]:
    """This connection type's entry in the provider info: the one definition of its form."""
    from airflow_provider_cerebraform.get_provider_info import get_provider_info

    return next(t for t in get_provider_info()["connection-types"] if t["connection-type"] == CONN_TYPE)
