"""
Typed errors of the Cerebraform provider.

Every message carries the API's ``msg`` where there is one and never the API key. Errors that a
retry of the same task instance cannot fix derive from ``AirflowFailException`` so Airflow does
not spend retries on them.
"""

from __future__ import annotations

from airflow_provider_cerebraform.version_compat import AirflowException, AirflowFailException


class CerebraformError(AirflowException):
    """
    Base class of every error the provider raises.

    :param message: what went wrong, for people.
    :param http_status: the HTTP status, when an answer came back.
    :param error: the API's ``error`` code (e.g. ``too_many_requests``), when it sent one.
    :param endpoint: which call failed, e.g. ``"status image"``.
    :param api_message: the API's own ``msg`` (or status message), when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        error: str | None = None,
        endpoint: str | None = None,
        api_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.error = error
        self.endpoint = endpoint
        self.api_message = api_message


class CerebraformValidationError(CerebraformError, AirflowFailException, ValueError):
    """A parameter is invalid: found before sending (the message names it) or answered with 400."""


class CerebraformAuthError(CerebraformError):
    """401 or 403: the key is missing, unknown or not allowed."""


class CerebraformInsufficientCreditsError(CerebraformError):
    """402: the account's balance does not cover the task. Nothing was created or charged."""


class CerebraformNotFoundError(CerebraformError):
    """404: the request_id is unknown (or belongs to the other kind, or to another key)."""


class CerebraformResultNotReadyError(CerebraformError):
    """409: the result was asked for before the task was done."""


class CerebraformRateLimitError(CerebraformError):
    """
    429, or the client's own pacing, asks for a wait longer than the caller allows in-process.

    :param retry_after: seconds until a request would be admitted.
    :param held: the id of the slot a shared budget keeps for the caller ``retry_after`` seconds from
        now (client-side pacing with ``hold``, see ``CerebraformProtocol.submit``); None when none is kept.
    """

    def __init__(
        self, message: str, *, retry_after: float = 0.0, held: str | None = None, **kwargs: object
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after
        self.held = held


class CerebraformServerError(CerebraformError):
    """5xx from the service, after the retries allowed for the request."""


class CerebraformSubmissionUncertainError(CerebraformServerError, AirflowFailException):
    """
    The task-creating POST got a 5xx, a read timeout or a dropped connection: the service may or
    may not have created (and charged for) the task. It is not retried blindly, because a second
    POST could pay twice; check the account before submitting again. For the same reason Airflow
    does not spend the task's retries on it (a retry would submit again).
    """


class CerebraformTransportError(CerebraformError):
    """The network failed (connect error, timeout, reset) for longer than the retries allowed."""


class CerebraformResponseError(CerebraformError):
    """The service answered with something the client cannot read (not JSON, missing fields)."""


class CerebraformSubmissionUnreadableError(CerebraformResponseError, CerebraformSubmissionUncertainError):
    """
    The task-creating POST was answered with success, but without a usable ``request_id``: the task
    was probably created and charged, yet cannot be followed. Not retried, like any uncertain
    submission.
    """


class CerebraformTaskFailedError(CerebraformError, AirflowFailException):
    """
    The task ended with status -1. The same request stays failed, so Airflow does not retry.

    :param request_id: the failed task.
    """

    def __init__(self, message: str, *, request_id: str | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.request_id = request_id


class CerebraformTimeoutError(CerebraformError):
    """The generation was not done within the time the operator was given to wait."""


class CerebraformMediaError(CerebraformError):
    """A media file could not be downloaded or stored completely."""


#: HTTP status -> error class for answers that are not 2xx (429 and 5xx are built separately).
ERRORS_BY_STATUS: dict[int, type[CerebraformError]] = {
    400: CerebraformValidationError,
    401: CerebraformAuthError,
    402: CerebraformInsufficientCreditsError,
    403: CerebraformAuthError,
    404: CerebraformNotFoundError,
    409: CerebraformResultNotReadyError,
    422: CerebraformValidationError,
}
