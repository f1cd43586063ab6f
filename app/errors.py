"""One error shape, produced in one place: OpenAI's `{"error": {...}}` envelope.

Views and the engine raise exceptions; the handlers registered here turn each into a
response with the right status. Nothing else builds an error body, and no traceback or
internal path ever reaches a client: unexpected errors are logged with the request id.
"""

from __future__ import annotations

import logging

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


def register_error_handlers(app: Flask) -> None:
    """Map every exception the app can raise to the OpenAI error envelope."""

    @app.errorhandler(APIError)
    def handle_api_error(exc: APIError) -> Response:
        return error_response(exc)

    @app.errorhandler(ValidationError)
    def handle_validation_error(exc: ValidationError) -> Response:
        return error_response(_from_validation_error(exc))

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException) -> Response:
        return error_response(_from_http_exception(exc))

    @app.errorhandler(ModelLoading)
    def handle_model_loading(exc: ModelLoading) -> Response:
        return error_response(
            APIError(
                "The model is loading; retry shortly.",
                status=503,
                type="server_error",
                code="model_loading",
                headers={"Retry-After": str(exc.retry_after)},
            )
        )

    @app.errorhandler(ModelLoadFailed)
    def handle_model_load_failed(exc: ModelLoadFailed) -> Response:
        return error_response(
            APIError(str(exc), status=503, type="server_error", code="model_load_failed")
        )

    @app.errorhandler(UnsupportedParameter)
    def handle_unsupported_parameter(exc: UnsupportedParameter) -> Response:
        return error_response(APIError(str(exc), param=exc.param, code="unsupported_parameter"))

    @app.errorhandler(Overloaded)
    def handle_overloaded(exc: Overloaded) -> Response:
        current_app.extensions["metrics"].rejections.labels("queue_full").inc()
        return error_response(
            APIError(
                "The server is overloaded: its queue is full. Retry after the number of "
                "seconds in the Retry-After header.",
                status=429,
                type="server_overloaded",
                code="server_overloaded",
                headers={"Retry-After": str(exc.retry_after)},
            )
        )

    @app.errorhandler(Draining)
    def handle_draining(exc: Draining) -> Response:
        current_app.extensions["metrics"].rejections.labels("draining").inc()
        return error_response(
            APIError(
                "The server is shutting down and accepts no new generations; retry on "
                "another instance or after it restarts.",
                status=503,
                type="server_error",
                code="server_draining",
                headers={"Retry-After": "5"},
            )
        )

    @app.errorhandler(DeadlineExceeded)
    def handle_deadline(exc: DeadlineExceeded) -> Response:
        where = "while generating" if exc.ran else "while waiting in the queue"
        return error_response(
            APIError(
                f"The request timed out {where} (REQUEST_TIMEOUT_SECONDS="
                f"{current_app.config['REQUEST_TIMEOUT_SECONDS']:g}); ask for fewer, smaller "
                "images or fewer steps, or retry later.",
                status=504,
                type="timeout_error",
                code="request_timeout",
            )
        )

    @app.errorhandler(FatalDeviceError)
    def handle_fatal_device_error(exc: FatalDeviceError) -> Response:
        return error_response(
            APIError(
                "The accelerator failed; this worker is restarting. Retry shortly.",
                status=503,
                type="server_error",
                code="device_error",
                headers={"Retry-After": "10"},
            )
        )

    @app.errorhandler(GenerationOutOfMemory)
    def handle_out_of_memory(exc: GenerationOutOfMemory) -> Response:
        log.warning("generation ran out of device memory: %s", exc)
        return error_response(
            APIError(
                "The server ran out of accelerator memory for this request; retry, or ask "
                "for fewer or smaller images.",
                status=503,
                type="server_error",
                code="out_of_memory",
                headers={"Retry-After": "1"},
            )
        )

    @app.errorhandler(GenerationError)
    def handle_generation_error(exc: GenerationError) -> Response:
        log.error("generation failed", exc_info=exc.__cause__ or exc)
        return error_response(
            APIError(
                "Image generation failed; the error was logged with this request's id.",
                status=500,
                type="server_error",
                code="generation_failed",
            )
        )

    @app.errorhandler(StorageError)
    def handle_storage_error(exc: StorageError) -> Response:
        log.error("could not store images", exc_info=exc.__cause__ or exc)
        return error_response(
            APIError(
                "The generated images could not be stored; the error was logged.",
                status=500,
                type="server_error",
                code="storage_failed",
            )
        )

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(
            APIError(
                "Internal server error; the error was logged with this request's id.",
                status=500,
                type="server_error",
                code="internal_error",
            )
        )
