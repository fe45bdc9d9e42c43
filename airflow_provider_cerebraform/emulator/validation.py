"""Validation of submission bodies. The patterns are shared with ``openapi.py`` so both say the same."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import ApiError

PROMPT_MAX_CHARS = 1000
DEFAULT_ASPECT_RATIO = "9:16"
VIDEO_DURATIONS = (5, 10)
DEFAULT_VIDEO_DURATION = 5

# Python's str.isspace() set, spelled so that Python and ECMA regex engines read it alike.
_SPACE_CLASS = (
    "\\t\\n\\u000b\\u000c\\r \\u001c-\\u001f\\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000"
)
#: A prompt must contain at least one character that is not whitespace.
PROMPT_PATTERN = f"[^{_SPACE_CLASS}]"
#: ``W:H`` with positive integers (leading zeros allowed).
ASPECT_RATIO_PATTERN = "^0*([1-9][0-9]*):0*([1-9][0-9]*)$"
#: An absolute http(s) URL with a non-empty authority and no whitespace.
IMAGE_URL_PATTERN = f"^[Hh][Tt][Tt][Pp][Ss]?://[^{_SPACE_CLASS}/?#]+([/?#][^{_SPACE_CLASS}]*)?$"

_PROMPT_RE = re.compile(PROMPT_PATTERN)
_ASPECT_RE = re.compile(ASPECT_RATIO_PATTERN)
_IMAGE_URL_RE = re.compile(IMAGE_URL_PATTERN)
_MAX_INT_DIGITS = 4000


@dataclass(frozen=True)
class Submission:
    """A validated submission.

    :param kind: ``"image"`` or ``"video"``.
    :param prompt: the prompt as sent.
    :param aspect_ratio: ``"W:H"`` as sent, or the default.
    :param ratio: the aspect ratio as a pair of positive integers (approximated when huge).
    :param image_url: the initial image URL, if any.
    :param duration: video seconds (5 or 10); ``None`` for images.
    """

    kind: str
    prompt: str
    aspect_ratio: str
    ratio: tuple[int, int]
    image_url: str | None
    duration: int | None


def _parse_int(text: str) -> int | float:
    # Integers too long for int() (Python's digit limit) become infinity: never valid anywhere.
    return int(text) if len(text) <= _MAX_INT_DIGITS else float("inf")


def parse_json(raw: bytes) -> Any:
    """Decode a JSON request body or raise a 400.

    :param raw: the body bytes.
    """
    try:
        text = raw.decode("utf-8")
        if text.startswith("\ufeff"):
            text = text[1:]
        return json.loads(text, parse_int=_parse_int)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "invalid_request", "Request body must be valid JSON (UTF-8).") from None


def parse_ratio(text: str) -> tuple[int, int] | None:
    """Return ``(W, H)`` for a valid aspect ratio, else ``None``; huge numbers are scaled down alike.

    :param text: the ``"W:H"`` string.
    """
    match = _ASPECT_RE.search(text)
    if match is None:
        return None
    width, height = match.group(1), match.group(2)
    cut = max(len(width), len(height)) - 15
    if cut > 0:
        # Only the ratio matters for pixel sizes: drop the same number of digits from both.
        return int(width[:-cut] or "0"), int(height[:-cut] or "0")
    return int(width), int(height)


def validate_submission(kind: str, body: Any) -> Submission:
    """Check a submission body against the reference and the project's decisions.

    :param kind: ``"image"`` or ``"video"``.
    :param body: the decoded JSON body.
    """
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "Request body must be a JSON object.")
    if "prompt" not in body or body["prompt"] is None:
        raise ApiError(400, "invalid_parameter", "prompt is required.")
    prompt = body["prompt"]
    if not isinstance(prompt, str):
        raise ApiError(400, "invalid_parameter", "prompt must be a string.")
    if len(prompt) > PROMPT_MAX_CHARS:
        raise ApiError(
            400,
            "invalid_parameter",
            f"prompt is too long: {len(prompt)} characters, at most {PROMPT_MAX_CHARS} allowed.",
        )
    if not _PROMPT_RE.search(prompt):
        raise ApiError(400, "invalid_parameter", "prompt must not be empty or whitespace only.")

    aspect_ratio = body.get("aspect_ratio")
    if aspect_ratio is None:
        aspect_ratio = DEFAULT_ASPECT_RATIO
    if not isinstance(aspect_ratio, str):
        raise ApiError(400, "invalid_parameter", 'aspect_ratio must be a string such as "9:16".')
    ratio = parse_ratio(aspect_ratio)
    if ratio is None:
        raise ApiError(
            400, "invalid_parameter", 'aspect_ratio must be "W:H" with positive integers, e.g. "16:9".'
        )

    image_url = body.get("image_url")
    if image_url is not None and (not isinstance(image_url, str) or not _IMAGE_URL_RE.search(image_url)):
        raise ApiError(400, "invalid_parameter", "image_url must be an absolute http(s) URL.")

    duration: int | None = None
    if kind == "video":
        raw = body.get("duration")
        duration = DEFAULT_VIDEO_DURATION
        # The reference: "Defaults to 5 if omitted or an invalid value is provided."
        if type(raw) in (int, float) and raw in VIDEO_DURATIONS:
            duration = int(raw)
    return Submission(kind, prompt, aspect_ratio, ratio, image_url, duration)


def dimensions(ratio: tuple[int, int], long_side: int, *, even: bool = False) -> tuple[int, int]:
    """Return ``(width, height)`` with the given long side and aspect ratio.

    :param ratio: ``(W, H)``.
    :param long_side: pixels of the longer side.
    :param even: round both sides to even numbers (H.264 with yuv420p needs it).
    """
    w, h = ratio
    w, h = max(w, 1), max(h, 1)
    if w >= h:
        width, height = long_side, max(1, (long_side * h + w // 2) // w)
    else:
        width, height = max(1, (long_side * w + h // 2) // h), long_side
    if even:
        width, height = max(2, width - width % 2), max(2, height - height % 2)
    return width, height
