"""Request ids: taken from a well-formed incoming `x-request-id`, else made, and logged."""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, has_request_context, request

HEADER = "x-request-id"
# Letters, digits and a few separators: nothing that could split a header or a log line.
_WELL_FORMED = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def current_request_id() -> str:
    """Return the id of the request being served, or "-" outside a request."""
    if has_request_context():
        return getattr(g, "request_id", "-")
    return "-"


def init_request_ids(app: Flask) -> None:
    """Give every request an id and every response the `x-request-id` header."""

    @app.before_request
    def assign_request_id() -> None:
        incoming = request.headers.get(HEADER, "")
        g.request_id = incoming if _WELL_FORMED.match(incoming) else uuid.uuid4().hex

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        response.headers[HEADER] = current_request_id()
        return response
