"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``.

Exception tree::

    ApiError                    an error a client sees, with its HTTP status
     ├── InvalidRequest         400 invalid_request_error
     ├── Unauthorized           401 authentication_error
     ├── NotFound               404 not_found_error (model_not_found for models)
     ├── PayloadTooLarge        413
     ├── RateLimited            429, may carry Retry-After
     ├── UpstreamError          502 bad gateway from a provider
     ├── Unavailable            503 a dependency (NATS, Postgres, proxies) is down
     └── UpstreamTimeout        504
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict


class ErrorBody(BaseModel):
    model_config = ConfigDict(frozen=True)

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ApiError(Exception):
    status: int = 500
    error_type: str = "api_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status is not None:
            self.status = status
        if error_type is not None:
            self.error_type = error_type
        self.retry_after = retry_after
        # Set once a trajectory exists for the failed call, so the error response
        # still names it.
        self.trajectory_id: str | None = None
        # More response headers (the rate-limit ones on a 429).
        self.extra_headers: dict[str, str] = {}

    def body(self) -> ErrorBody:
        return ErrorBody(
            message=self.message, type=self.error_type, param=self.param, code=self.code
        )

    def to_json(self) -> bytes:
        return orjson.dumps({"error": self.body().model_dump()})

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return dict(self.extra_headers)
        return {"Retry-After": str(max(0, round(self.retry_after))), **self.extra_headers}

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "error": self.body().model_dump(),
            "retry_after": self.retry_after,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ApiError:
        err = raw.get("error") or {}
        return ApiError(
            str(err.get("message", "upstream error")),
            param=err.get("param"),
            code=err.get("code"),
            status=int(raw.get("status", 502)),
            error_type=str(err.get("type", "api_error")),
            retry_after=raw.get("retry_after"),
        )


class InvalidRequest(ApiError):
    status = 400
    error_type = "invalid_request_error"


class Unauthorized(ApiError):
    status = 401
    error_type = "authentication_error"


class NotFound(ApiError):
    status = 404
    error_type = "not_found_error"


class PayloadTooLarge(ApiError):
    status = 413
    error_type = "invalid_request_error"


class RateLimited(ApiError):
    status = 429
    error_type = "rate_limit_error"


class UpstreamError(ApiError):
    status = 502
    error_type = "upstream_error"


class Unavailable(ApiError):
    status = 503
    error_type = "service_unavailable"


class UpstreamTimeout(ApiError):
    status = 504
    error_type = "timeout_error"


class NotImplementedYet(ApiError):
    status = 501
    error_type = "not_implemented"
