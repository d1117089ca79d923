"""The server's error answers: ``APIError`` carries a status, a message naming the input and what is
wrong, and a code; the app turns it into JSON in OpenAI's shape::

    {"error": {"message": "input[2]: not valid base64 (...)", "type": "invalid_request_error",
               "code": "invalid_base64", "param": "input[2]"}}
"""

from __future__ import annotations

from typing import Any

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An answer with ``status`` (4xx, or 503 while warming up) and a JSON error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str = "invalid_request",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.code, self.param)


def error_body(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


def bad_item(param: str, message: str, code: str = "invalid_input") -> APIError:
    """A 400 for one item of a request, naming it (``input[3]: ...``)."""
    return APIError(400, f"{param}: {message}", code=code, param=param)
