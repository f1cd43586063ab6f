"""Every error a client can be answered with, as data: status, type, code, message, headers.

Modelled on werkzeug's `HTTPException`: each class carries its HTTP status, OpenAI error
`type` and `code`, a client-facing message and an optional `Retry-After`; an instance may
override any of them. The engine and the lane raise these without knowing about HTTP
responses; `app/errors.py` renders any of them with one function. A client-facing message
never holds internal details: those travel as the chained cause, which is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any


class APIError(Exception):
    """An error answered with OpenAI's `{"error": {...}}` envelope."""

    status: int = 400
    type: str = "invalid_request_error"
    code: str | None = "invalid_request"
    message: str = "The request is invalid."
    # Seconds for the Retry-After header; None sends none.
    retry_after: int | None = None
    # Label of the admission-refusal counter, for refusals made before any work started.
    rejection: str | None = None
    # Level at which rendering logs the error with its cause; None logs nothing.
    log_level: int | None = None

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.message)
        if message is not None:
            self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after
        self.param = param
        self.extra_headers = dict(headers or {})

    def describe(self, config: Mapping[str, Any]) -> str:
        """Return the client-facing message; `config` is the app's settings."""
        return self.message

    def headers(self) -> dict[str, str]:
        """Return the response headers this error adds."""
        headers = dict(self.extra_headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers


# -- the request ------------------------------------------------------------------------


class InvalidRequest(APIError):
    """A request field has a value the server cannot use (400)."""

    code = "invalid_value"


class UnsupportedParameter(InvalidRequest):
    """The served pipeline cannot honour a request parameter (400 naming it)."""

    code = "unsupported_parameter"

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message, param=param)


class LoraNotFound(InvalidRequest):
    """A request names an adapter that LORA_DIR does not hold, or adapters are off (400)."""

    code = "lora_not_found"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="loras")


class LoraLoadFailed(InvalidRequest):
    """An adapter file is not a LoRA for the served model; nothing was changed (400)."""

    code = "invalid_lora"

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(
            f"The adapter {name!r} cannot be used with the served model: {reason} Fix or "
            "replace its file; the server tries again once the file changes.",
            param="loras",
        )


class ModelNotFound(APIError):
    """The request names another model than the served one (404)."""

    status = 404
    code = "model_not_found"


# -- the model ---------------------------------------------------------------------------


class ModelLoading(APIError):
    """The shared pipeline is still loading (503 with Retry-After)."""

    status = 503
    type = "server_error"
    code = "model_loading"
    message = "The model is loading; retry shortly."

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after=retry_after)


class ModelLoadFailed(APIError):
    """The shared pipeline could not be loaded; the message says what to set (503)."""

    status = 503
    type = "server_error"
    code = "model_load_failed"


# -- admission and the lane ------------------------------------------------------------------


class Overloaded(APIError):
    """The queue is full; retry after `retry_after` seconds (429)."""

    status = 429
    type = "server_overloaded"
    code = "server_overloaded"
    message = (
        "The server is overloaded: its queue is full. Retry after the number of seconds "
        "in the Retry-After header."
    )
    rejection = "queue_full"

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after=retry_after)


class Draining(APIError):
    """The server is shutting down and admits no new work (503)."""

    status = 503
    type = "server_error"
    code = "server_draining"
    message = (
        "The server is shutting down and accepts no new generations; retry on another "
        "instance or after it restarts."
    )
    retry_after = 5
    rejection = "draining"


class DeadlineExceeded(APIError):
    """The request's deadline passed, queued (`ran=False`) or while running (504)."""

    status = 504
    type = "timeout_error"
    code = "request_timeout"

    def __init__(self, ran: bool) -> None:
        super().__init__("request deadline exceeded")
        self.ran = ran

    def describe(self, config: Mapping[str, Any]) -> str:
        where = "while generating" if self.ran else "while waiting in the queue"
        return (
            f"The request timed out {where} (REQUEST_TIMEOUT_SECONDS="
            f"{config['REQUEST_TIMEOUT_SECONDS']:g}); ask for fewer, smaller images or "
            "fewer steps, or retry later."
        )


# -- generation and storage ---------------------------------------------------------------


class GenerationError(APIError):
    """The pipeline call failed; the cause is chained for the log (500)."""

    status = 500
    type = "server_error"
    code = "generation_failed"
    message = "Image generation failed; the error was logged with this request's id."
    log_level = logging.ERROR


class GenerationOutOfMemory(GenerationError):
    """The pipeline call ran out of device memory; retrying may succeed (503)."""

    status = 503
    code = "out_of_memory"
    message = (
        "The server ran out of accelerator memory for this request; retry, or ask for "
        "fewer or smaller images."
    )
    retry_after = 1
    log_level = logging.WARNING


class FatalDeviceError(GenerationError):
    """The device is in an unrecoverable state; the worker restarts (503)."""

    status = 503
    code = "device_error"
    message = "The accelerator failed; this worker is restarting. Retry shortly."
    retry_after = 10
    log_level = None  # the engine logs it once, as critical


class StorageError(APIError):
    """Images could not be written to the image store (500)."""

    status = 500
    type = "server_error"
    code = "storage_failed"
    message = "The generated images could not be stored; the error was logged."
    log_level = logging.ERROR


class StorageUnavailable(APIError):
    """The image store (S3) cannot be reached or refuses us; nothing was stored (503).

    `reason` is for the log; the client is told to retry or to ask for `b64_json`, which
    never touches the store.
    """

    status = 503
    type = "server_error"
    code = "storage_unavailable"
    message = (
        "The image store is unavailable, so no image URL can be made; retry after the "
        "number of seconds in the Retry-After header, or ask for response_format=b64_json."
    )
    retry_after = 5
    log_level = logging.WARNING

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class InternalError(APIError):
    """Anything unexpected: answered without details, logged with the request id (500)."""

    status = 500
    type = "server_error"
    code = "internal_error"
    message = "Internal server error; the error was logged with this request's id."
    log_level = logging.ERROR
