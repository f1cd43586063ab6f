"""One error shape, produced in one place: OpenAI's `{"error": {...}}` envelope.

Views, the engine and the lane raise the exceptions of `app/exceptions.py`; werkzeug's
HTTP errors and marshmallow's validation errors are translated into them here. One
function renders any of them (and counts it); nothing else builds an error body, and no
traceback or internal path reaches a client: unexpected errors are logged with the
request id.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from app.exceptions import APIError, InternalError

log = logging.getLogger(__name__)

# werkzeug's HTTP errors carry messages meant for HTML pages; these read better in JSON.
_HTTP_MESSAGES: dict[int, tuple[str, str]] = {
    400: ("The request body is not valid JSON.", "invalid_json"),
    404: ("Not found: no such endpoint or file.", "not_found"),
    405: ("Method not allowed for this endpoint.", "method_not_allowed"),
    413: ("Request body too large.", "request_too_large"),
    415: (
        "Unsupported Content-Type: send the body as JSON with 'Content-Type: application/json'.",
        "unsupported_media_type",
    ),
}


def _from_http_exception(exc: HTTPException) -> APIError:
    status = exc.code or 500
    message, code = _HTTP_MESSAGES.get(status, (exc.name, exc.name.lower().replace(" ", "_")))
    if status == 413 and exc.description and "limit" in exc.description:
        message = exc.description
    headers = {}
    if status == 405:
        allow = exc.get_response().headers.get("Allow")
        if allow:
            headers["Allow"] = allow
    error_type = "invalid_request_error" if status < 500 else "server_error"
    return APIError(message, status=status, type=error_type, code=code, headers=headers)


def _from_validation_error(exc: ValidationError) -> APIError:
    """Name the first offending field, the way OpenAI's API does."""
    messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    field, problems = next(iter(messages.items()))
    problem = problems[0] if isinstance(problems, list) and problems else str(problems)
    if field == "_schema":
        return APIError(str(problem))
    if problem == "Unknown field.":
        return APIError(f"Unknown parameter: '{field}'.", param=field, code="unknown_parameter")
    if problem == "Missing data for required field.":
        return APIError(
            f"Missing required parameter: '{field}'.",
            param=field,
            code="missing_required_parameter",
        )
    return APIError(f"Invalid value for '{field}': {problem}", param=field, code="invalid_value")


def api_error_for(exc: BaseException) -> APIError:
    """Return the APIError that answers `exc`."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ValidationError):
        return _from_validation_error(exc)
    if isinstance(exc, HTTPException):
        return _from_http_exception(exc)
    error = InternalError()
    error.__cause__ = exc
    return error


def error_body(error: APIError) -> dict[str, Any]:
    """Return the OpenAI error object for `error` (also used by stream error events)."""
    return {
        "message": error.describe(current_app.config),
        "type": error.type,
        "param": error.param,
        "code": error.code,
    }


def render_error(exc: BaseException) -> tuple[APIError, dict[str, Any]]:
    """Log and count `exc`; return its APIError and its envelope's body."""
    error = api_error_for(exc)
    if error.log_level is not None:
        cause = error.__cause__ or error
        log.log(error.log_level, "%s: %s", error.code, cause, exc_info=cause)
    metrics = current_app.extensions["metrics"]
    metrics.errors.labels(error.code or "unknown").inc()
    if error.rejection:
        metrics.rejections.labels(error.rejection).inc()
    return error, error_body(error)


def error_response(exc: BaseException) -> Response:
    """Answer `exc` with the OpenAI error envelope and its status and headers."""
    error, body = render_error(exc)
    response = jsonify({"error": body})
    response.status_code = error.status
    response.headers.update(error.headers())
    return response


def register_error_handlers(app: Flask) -> None:
    """Answer every exception the app can raise with the OpenAI error envelope."""
    app.register_error_handler(Exception, error_response)
