"""The OpenAPI 3.0 description of the public Cerebraform API as the emulator implements it."""

from __future__ import annotations

from typing import Any

from .validation import (
    ASPECT_RATIO_PATTERN,
    DEFAULT_ASPECT_RATIO,
    IMAGE_URL_PATTERN,
    PROMPT_MAX_CHARS,
    PROMPT_PATTERN,
)

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error_response(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {_JSON: {"schema": _ref("Error")}},
    }
    if retry_after:
        response["headers"] = {
            "Retry-After": {
                "description": "Whole seconds to wait before a request would be admitted.",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return response


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref(schema)}}}


_REQUEST_ID = {
    "name": "request_id",
    "in": "path",
    "required": True,
    "description": "The id returned when the task was submitted.",
    "schema": {"type": "string"},
}
_SECURITY = [{"bearerAuth": []}, {}]


def _common_errors(*codes: str) -> dict[str, Any]:
    known = {
        "400": _error_response("Bad parameters or a body that is not a JSON object."),
        "401": _error_response("Malformed Authorization header or unknown API key."),
        "402": _error_response("Not enough credits: nothing was created or charged."),
        "404": _error_response("Unknown request_id (or one of the other kind, or another key's)."),
        "409": _error_response("The task is not done: still queued/running, or failed."),
        "413": _error_response("Request body too large."),
        "429": _error_response("Rate limit exceeded.", retry_after=True),
        "5XX": _error_response("Server trouble."),
    }
    return {code: known[code] for code in codes}


def _submit_operation(kind: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": f"submit_{kind}",
            "summary": f"Submit a {kind} generation task.",
            "description": (
                "Checked in this order: authentication, rate limit (task creation), parameters, credits. "
                "Credits are charged at submission."
            ),
            "security": _SECURITY,
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": _ref("ImageRequest" if kind == "image" else "VideoRequest")}},
            },
            "responses": {
                "201": {
                    **_ok("Task created.", "SubmitResponse"),
                    "links": {
                        what.capitalize(): {
                            "operationId": f"{kind}_{what}",
                            "parameters": {"request_id": "$response.body#/request_id"},
                        }
                        for what in ("status", "result")
                    },
                },
                **_common_errors("400", "401", "402", "413", "429", "5XX"),
            },
        }
    }


def _task_operation(kind: str, what: str) -> dict[str, Any]:
    if what == "status":
        ok = _ok("The task's status: 0 queued, 1 running, 2 done, -1 failed.", "StatusResponse")
        errors = _common_errors("401", "404", "429", "5XX")
    else:
        ok = _ok("The result URLs of a done task.", "ImageResult" if kind == "image" else "VideoResult")
        errors = _common_errors("401", "404", "409", "429", "5XX")
    return {
        "get": {
            "operationId": f"{kind}_{what}",
            "summary": f"{what.capitalize()} of a {kind} task.",
            "security": _SECURITY,
            "parameters": [_REQUEST_ID],
            "responses": {"200": ok, **errors},
        }
    }


def _schemas() -> dict[str, Any]:
    prompt = {
        "type": "string",
        "minLength": 1,
        "maxLength": PROMPT_MAX_CHARS,
        "pattern": PROMPT_PATTERN,
        "description": "The text description. At most 1000 characters; not empty or whitespace only.",
    }
    aspect_ratio = {
        "type": "string",
        "nullable": True,
        "pattern": ASPECT_RATIO_PATTERN,
        "default": DEFAULT_ASPECT_RATIO,
        "description": '"W:H" with positive integers, e.g. "9:16", "1:1", "16:9".',
    }
    image_url = {
        "type": "string",
        "nullable": True,
        "pattern": IMAGE_URL_PATTERN,
        "description": "Absolute http(s) URL of an initial image.",
    }
    image_item = {
        "type": "object",
        "required": ["url"],
        "properties": {
            "url": {"type": "string"},
            "content_type": {"type": "string", "enum": ["image/png"]},
            "width": {"type": "integer", "minimum": 1},
            "height": {"type": "integer", "minimum": 1},
        },
    }
    video_item = {
        "type": "object",
        "required": ["url"],
        "properties": {
            "url": {"type": "string"},
            "content_type": {"type": "string", "enum": ["video/mp4"]},
            "width": {"type": "integer", "minimum": 1},
            "height": {"type": "integer", "minimum": 1},
            "duration": {"type": "integer", "enum": [5, 10]},
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["code", "error", "msg"],
            "properties": {
                "code": {"type": "integer", "description": "The HTTP status code."},
                "error": {"type": "string", "description": "Short snake_case name of the error."},
                "msg": {"type": "string", "description": "Human-readable explanation."},
                "retry_after": {"type": "integer", "minimum": 1, "description": "On 429: seconds to wait."},
            },
        },
        "ImageRequest": {
            "type": "object",
            "required": ["prompt"],
            "properties": {"prompt": prompt, "image_url": image_url, "aspect_ratio": aspect_ratio},
        },
        "VideoRequest": {
            "type": "object",
            "required": ["prompt"],
            "properties": {
                "prompt": prompt,
                "image_url": image_url,
                "aspect_ratio": aspect_ratio,
                "duration": {
                    "description": (
                        "Video seconds: 5 or 10. Any other value (or none) is silently replaced by 5."
                    ),
                    "nullable": True,
                    "default": 5,
                    "example": 10,
                },
            },
        },
        "SubmitResponse": {
            "type": "object",
            "required": ["request_id"],
            "properties": {"request_id": {"type": "string"}},
        },
        "StatusResponse": {
            "type": "object",
            "required": ["status", "message"],
            "properties": {
                "status": {"type": "integer", "enum": [-1, 0, 1, 2]},
                "message": {"type": "string"},
            },
        },
        "ImageResult": {
            "type": "object",
            "required": ["results"],
            "properties": {"results": {"type": "array", "minItems": 1, "items": image_item}},
        },
        "VideoResult": {
            "type": "object",
            "required": ["results"],
            "properties": {"results": {"type": "array", "minItems": 1, "items": video_item}},
        },
        "CreditsResponse": {
            "type": "object",
            "required": ["credits"],
            "properties": {"credits": {"type": "integer", "minimum": 0}},
        },
    }


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    """Return the OpenAPI 3.0 document (the public API and media; not the ``/_emulator/`` controls).

    :param server_url: base URL listed under ``servers``.
    """
    paths: dict[str, Any] = {}
    for kind in ("image", "video"):
        paths[f"/ai/v1/to-{kind}"] = _submit_operation(kind)
        for what in ("status", "result"):
            paths[f"/ai/v1/to-{kind}/{what}/{{request_id}}"] = _task_operation(kind, what)
    paths["/ai/v1/user/credits"] = {
        "get": {
            "operationId": "user_credits",
            "summary": "The credit balance of the caller's account.",
            "security": _SECURITY,
            "responses": {
                "200": _ok("The balance.", "CreditsResponse"),
                **_common_errors("401", "429", "5XX"),
            },
        }
    }
    paths["/media/{file}"] = {
        "get": {
            "operationId": "media",
            "summary": "Download a result file (the URLs a result lists).",
            "parameters": [
                {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "exp", "in": "query", "required": False, "schema": {"type": "string"}},
                {"name": "sig", "in": "query", "required": False, "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "The file, streamed with a Content-Length.",
                    "content": {
                        "image/png": {"schema": {"type": "string", "format": "binary"}},
                        "video/mp4": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                "403": _error_response("Tampered or expired signed URL: fetch the result again."),
                "404": _error_response("Unknown media."),
                "5XX": _error_response("Server trouble (e.g. the video encoder is not installed)."),
            },
        }
    }
    document: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "Cerebraform API (emulated)",
            "version": "1.0.0",
            "description": (
                "Generative image and video API. Asynchronous tasks: submit, poll the status, fetch the "
                "result. Requests without an Authorization header run on the global anonymous quota."
            ),
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(),
        },
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document
