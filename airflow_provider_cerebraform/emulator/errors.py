"""The error shape of every emulator response: ``{"code", "error", "msg"}`` (+ ``retry_after`` on 429)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An HTTP error answer in the reference's shape.

    :param code: HTTP status code.
    :param error: short snake_case name of the error.
    :param msg: human-readable explanation.
    :param headers: extra response headers (e.g. ``Retry-After``, ``Allow``).
    :param extra: extra body fields (e.g. ``retry_after``).
    """

    def __init__(
        self,
        code: int,
        error: str,
        msg: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(msg)
        self.code = code
        self.error = error
        self.msg = msg
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        """Return the JSON body."""
        return error_body(self.code, self.error, self.msg, **self.extra)


def error_body(code: int, error: str, msg: str, **extra: Any) -> dict[str, Any]:
    """Build an error body in the reference's shape.

    :param code: HTTP status code, repeated in the body.
    :param error: short snake_case name.
    :param msg: human-readable explanation.
    """
    body: dict[str, Any] = {"code": code, "error": error, "msg": msg}
    body.update(extra)
    return body


def status_error_name(code: int) -> str:
    """Return the snake_case name of an HTTP status (``503`` gives ``service_unavailable``)."""
    from http import HTTPStatus

    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        return "server_error" if code >= 500 else "client_error"
    return "".join(c if c.isalnum() else "_" for c in phrase.lower()).strip("_")


def rate_limited(retry_after: int) -> ApiError:
    """Return the 429 error with both the ``Retry-After`` header and the body's ``retry_after``.

    :param retry_after: whole seconds until a request would be admitted.
    """
    return ApiError(
        429,
        "too_many_requests",
        f"Rate limit exceeded. Try again in {retry_after} seconds.",
        headers={"Retry-After": str(retry_after)},
        extra={"retry_after": retry_after},
    )
