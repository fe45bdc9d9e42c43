"""
Checks of every parameter before anything is sent or paid for.

Each error names the parameter and what it accepts. The same functions run at DAG parse time
(operators, on literal values) and right before a request (the client core, on rendered values).
"""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_cerebraform.exceptions import CerebraformValidationError
from airflow_provider_cerebraform.models import GenerationKind, Submission, UncertainSubmissionPolicy

if TYPE_CHECKING:
    from collections.abc import Iterator

MAX_PROMPT_LENGTH = 1000
VIDEO_DURATIONS = (5, 10)
#: What the API uses when a video submission has no ``duration``.
DEFAULT_VIDEO_DURATION = 5
DEFAULT_ASPECT_RATIO = "9:16"
_ASPECT_RATIO = re.compile(r"^([1-9][0-9]{0,4}):([1-9][0-9]{0,4})$")
_WHITESPACE = re.compile(r"[\s\x00-\x1f\x7f]")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def _fail(param: str, value: Any, allowed: str) -> CerebraformValidationError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return CerebraformValidationError(f"Invalid {param}={shown}: {allowed}.", endpoint="validation")


def is_rendered_later(value: Any) -> bool:
    """
    True for a value only known at run time: a string Airflow will still render, or an object such
    as an ``XComArg``. Those are validated right before the request, not at parse time.
    """
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    return not isinstance(value, (int, float, GenerationKind, type(None)))


def validate_kind(kind: Any) -> GenerationKind:
    if isinstance(kind, GenerationKind):
        return kind
    if isinstance(kind, str):
        try:
            return GenerationKind(kind.strip().lower())
        except ValueError:
            pass
    raise _fail("kind", kind, "expected 'image' or 'video'")


def validate_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise _fail("prompt", prompt, f"expected a string of 1 to {MAX_PROMPT_LENGTH} characters")
    if not prompt.strip():
        raise _fail("prompt", prompt, "the prompt must not be empty or only whitespace")
    if len(prompt) > MAX_PROMPT_LENGTH:
        raise CerebraformValidationError(
            f"Invalid prompt: {len(prompt)} characters; the API allows at most {MAX_PROMPT_LENGTH}.",
            endpoint="validation",
        )
    return prompt


def validate_aspect_ratio(aspect_ratio: Any) -> str | None:
    if aspect_ratio is None:
        return None
    if isinstance(aspect_ratio, str) and _ASPECT_RATIO.match(aspect_ratio.strip()):
        return aspect_ratio.strip()
    raise _fail(
        "aspect_ratio",
        aspect_ratio,
        "expected 'W:H' with positive whole numbers, e.g. '9:16', '1:1', '16:9' "
        f"(default {DEFAULT_ASPECT_RATIO!r})",
    )


def validate_duration(kind: GenerationKind, duration: Any) -> int | None:
    """
    ``duration`` only for video and only 5 or 10: the API would silently turn any other value into 5
    and charge for a video nobody asked for (``api-open-questions.md`` #10).
    """
    if duration is None:
        return None
    if kind is not GenerationKind.VIDEO:
        raise _fail("duration", duration, "duration applies to kind='video' only; leave it unset for images")
    value: Any = duration
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value in VIDEO_DURATIONS:
        return value
    raise _fail("duration", duration, "expected 5 or 10 (seconds)")


def validate_image_url(image_url: Any) -> str | None:
    if image_url is None:
        return None
    if isinstance(image_url, str):
        url = image_url.strip()
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.netloc and not _WHITESPACE.search(url):
            return url
    raise _fail("image_url", image_url, "expected an absolute http:// or https:// URL without spaces")


def validate_request_id(request_id: Any) -> str:
    if isinstance(request_id, str) and _REQUEST_ID.match(request_id.strip()):
        return request_id.strip()
    raise _fail(
        "request_id",
        request_id,
        "expected the id returned by a submission (letters, digits, '.', '_', ':' or '-', at most 128)",
    )


def build_submission(
    kind: Any,
    prompt: Any,
    *,
    image_url: Any = None,
    aspect_ratio: Any = None,
    duration: Any = None,
) -> Submission:
    """Validate every parameter of a submission; the result holds the kind and the JSON body to send."""
    generation_kind = validate_kind(kind)
    payload: dict[str, Any] = {"prompt": validate_prompt(prompt)}
    optional = {
        "image_url": validate_image_url(image_url),
        "aspect_ratio": validate_aspect_ratio(aspect_ratio),
        "duration": validate_duration(generation_kind, duration),
    }
    payload.update({name: value for name, value in optional.items() if value is not None})
    return Submission(generation_kind, payload)


def as_submission(
    kind: Any,
    prompt: Any = None,
    *,
    image_url: Any = None,
    aspect_ratio: Any = None,
    duration: Any = None,
) -> Submission:
    """``kind`` if it is a :class:`Submission` (and nothing else is given), else one built from the rest."""
    if isinstance(kind, Submission):
        if (prompt, image_url, aspect_ratio, duration) != (None, None, None, None):
            raise CerebraformValidationError(
                "Pass either a Submission or its parameters (prompt, image_url, aspect_ratio, "
                "duration), not both.",
                endpoint="validation",
            )
        return kind
    return build_submission(kind, prompt, image_url=image_url, aspect_ratio=aspect_ratio, duration=duration)


def validate_uncertain_policy(policy: Any) -> UncertainSubmissionPolicy:
    if isinstance(policy, UncertainSubmissionPolicy):
        return policy
    try:
        return UncertainSubmissionPolicy(str(policy).strip().lower())
    except ValueError:
        raise _fail(
            "on_uncertain_submission",
            policy,
            "expected " + " or ".join(repr(member.value) for member in UncertainSubmissionPolicy),
        ) from None


def validate_literals(**params: Any) -> None:
    """
    Parse-time check used by operators: validate each value that is already final, skip templates.

    Accepts the submission parameters (``kind``, ``prompt``, ``image_url``, ``aspect_ratio``,
    ``duration``) and ``request_id``.
    """
    final = {name: value for name, value in params.items() if not is_rendered_later(value)}
    kind = validate_kind(final["kind"]) if "kind" in final else None
    if "prompt" in final:
        validate_prompt(final["prompt"])
    if "image_url" in final:
        validate_image_url(final["image_url"])
    if "aspect_ratio" in final:
        validate_aspect_ratio(final["aspect_ratio"])
    if "duration" in final and kind is not None:
        validate_duration(kind, final["duration"])
    if "request_id" in final:
        validate_request_id(final["request_id"])


@contextmanager
def naming_the_task(task_id: str) -> Iterator[None]:
    """
    Around an operator's parse-time checks: a :class:`CerebraformValidationError` raised inside names
    the task and the line of the DAG file that built it, so an import error points at the culprit.
    """
    try:
        yield
    except CerebraformValidationError as error:
        raise CerebraformValidationError(
            f"Task {task_id!r}{_dag_file_line()}: {error.message}", endpoint=error.endpoint
        ) from None


def _dag_file_line() -> str:
    """`` (in my_dag.py, line 12)``: the innermost caller that is not this provider, Airflow or contextlib."""
    frame = sys._getframe(1)
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module.split(".")[0] not in _NOT_THE_DAG_FILE:
            return f" (in {frame.f_code.co_filename}, line {frame.f_lineno})"
        frame = frame.f_back
    return ""


_NOT_THE_DAG_FILE = frozenset({"airflow_provider_cerebraform", "airflow", "contextlib", "functools"})
