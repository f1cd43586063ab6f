"""One error shape, produced in one place: OpenAI's `{"error": {...}}` envelope.

Views and the engine raise exceptions; the handlers registered here turn each into a
response with the right status. Nothing else builds an error body, and no traceback or
internal path ever reaches a client: unexpected errors are logged with the request id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from app.engine import (
    FatalDeviceError,
    GenerationError,
    GenerationOutOfMemory,
    ModelLoadFailed,
    ModelLoading,
    UnsupportedParameter,
)
from app.images import StorageError
from app.lane import DeadlineExceeded, Draining, Overloaded

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error to answer with an OpenAI-shaped body."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_response(error: APIError) -> Response:
    """Render an APIError as the OpenAI error envelope."""
    body = {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }
    response = jsonify(body)
    response.status_code = error.status
    response.headers.update(error.headers)
    current_app.extensions["metrics"].errors.labels(error.code or "unknown").inc()
    return response


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
        response = exc.get_response()
        if "Allow" in response.headers:
            headers["Allow"] = response.headers["Allow"]
    error_type = "invalid_request_error" if status < 500 else "server_error"
    return APIError(message, status=status, type=error_type, code=code, headers=headers)


def _from_validation_error(exc: ValidationError) -> APIError:
    """Name the first offending field, the way OpenAI's API does."""
    messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    field, problems = next(iter(messages.items()))
    problem = problems[0] if isinstance(problems, list) and problems else str(problems)
    if field == "_schema":
        return APIError(str(problem), code="invalid_request")
    if problem == "Unknown field.":
        return APIError(f"Unknown parameter: '{field}'.", param=field, code="unknown_parameter")
    if problem == "Missing data for required field.":
        return APIError(
            f"Missing required parameter: '{field}'.",
            param=field,
            code="missing_required_parameter",
        )
    return APIError(f"Invalid value for '{field}': {problem}", param=field, code="invalid_value")


_BUILDERS: dict[type[BaseException], Callable[[Any], APIError]] = {}


def _builds(kind: type[BaseException]) -> Callable[[Callable[[Any], APIError]], Any]:
    """Register a function that turns one kind of exception into an APIError."""

    def register(build: Callable[[Any], APIError]) -> Callable[[Any], APIError]:
        _BUILDERS[kind] = build
        return build

    return register


def api_error_for(exc: BaseException) -> APIError:
    """Return the APIError for `exc`, from the builder of its most specific class."""
    for kind in type(exc).__mro__:
        if kind in _BUILDERS:
            return _BUILDERS[kind](exc)
    return _handle_unexpected(exc)


def register_error_handlers(app: Flask) -> None:
    """Answer every exception the app can raise with the OpenAI error envelope."""

    @app.errorhandler(Exception)
    def handle(exc: Exception) -> Response:
        return error_response(api_error_for(exc))


@_builds(APIError)
def _handle_api_error(exc: APIError) -> APIError:
    return exc


@_builds(ValidationError)
def _handle_validation_error(exc: ValidationError) -> APIError:
    return _from_validation_error(exc)


@_builds(HTTPException)
def _handle_http_exception(exc: HTTPException) -> APIError:
    return _from_http_exception(exc)


@_builds(ModelLoading)
def _handle_model_loading(exc: ModelLoading) -> APIError:
    return APIError(
        "The model is loading; retry shortly.",
        status=503,
        type="server_error",
        code="model_loading",
        headers={"Retry-After": str(exc.retry_after)},
    )


@_builds(ModelLoadFailed)
def _handle_model_load_failed(exc: ModelLoadFailed) -> APIError:
    return APIError(str(exc), status=503, type="server_error", code="model_load_failed")


@_builds(UnsupportedParameter)
def _handle_unsupported_parameter(exc: UnsupportedParameter) -> APIError:
    return APIError(str(exc), param=exc.param, code="unsupported_parameter")


@_builds(Overloaded)
def _handle_overloaded(exc: Overloaded) -> APIError:
    current_app.extensions["metrics"].rejections.labels("queue_full").inc()
    return APIError(
        "The server is overloaded: its queue is full. Retry after the number of "
        "seconds in the Retry-After header.",
        status=429,
        type="server_overloaded",
        code="server_overloaded",
        headers={"Retry-After": str(exc.retry_after)},
    )


@_builds(Draining)
def _handle_draining(exc: Draining) -> APIError:
    current_app.extensions["metrics"].rejections.labels("draining").inc()
    return APIError(
        "The server is shutting down and accepts no new generations; retry on "
        "another instance or after it restarts.",
        status=503,
        type="server_error",
        code="server_draining",
        headers={"Retry-After": "5"},
    )


@_builds(DeadlineExceeded)
def _handle_deadline(exc: DeadlineExceeded) -> APIError:
    where = "while generating" if exc.ran else "while waiting in the queue"
    return APIError(
        f"The request timed out {where} (REQUEST_TIMEOUT_SECONDS="
        f"{current_app.config['REQUEST_TIMEOUT_SECONDS']:g}); ask for fewer, smaller "
        "images or fewer steps, or retry later.",
        status=504,
        type="timeout_error",
        code="request_timeout",
    )


@_builds(FatalDeviceError)
def _handle_fatal_device_error(exc: FatalDeviceError) -> APIError:
    return APIError(
        "The accelerator failed; this worker is restarting. Retry shortly.",
        status=503,
        type="server_error",
        code="device_error",
        headers={"Retry-After": "10"},
    )


@_builds(GenerationOutOfMemory)
def _handle_out_of_memory(exc: GenerationOutOfMemory) -> APIError:
    log.warning("generation ran out of device memory: %s", exc)
    return APIError(
        "The server ran out of accelerator memory for this request; retry, or ask "
        "for fewer or smaller images.",
        status=503,
        type="server_error",
        code="out_of_memory",
        headers={"Retry-After": "1"},
    )


@_builds(GenerationError)
def _handle_generation_error(exc: GenerationError) -> APIError:
    log.error("generation failed", exc_info=exc.__cause__ or exc)
    return APIError(
        "Image generation failed; the error was logged with this request's id.",
        status=500,
        type="server_error",
        code="generation_failed",
    )


@_builds(StorageError)
def _handle_storage_error(exc: StorageError) -> APIError:
    log.error("could not store images", exc_info=exc.__cause__ or exc)
    return APIError(
        "The generated images could not be stored; the error was logged.",
        status=500,
        type="server_error",
        code="storage_failed",
    )


@_builds(Exception)
def _handle_unexpected(exc: Exception) -> APIError:
    log.error("unhandled error", exc_info=exc)
    return APIError(
        "Internal server error; the error was logged with this request's id.",
        status=500,
        type="server_error",
        code="internal_error",
    )
