"""The one exception hierarchy: every error carries its HTTP status and CLI exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ShipyardError(Exception):
    """Root of all Shipyard errors; the message names the problem and the next step."""

    status_code: int = 500
    exit_code: int = 1
    kind: str = "internal_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInputError(ShipyardError):
    """The caller sent something malformed: a bad reference, file, JSON or tensor."""

    status_code = 400
    exit_code = 2
    kind = "invalid_input"


class UnprocessableError(InvalidInputError):
    """Well-formed but semantically wrong input (e.g. a value outside its range)."""

    status_code = 422


class NotFoundError(ShipyardError):
    status_code = 404
    exit_code = 3
    kind = "not_found"


class ConflictError(ShipyardError):
    """The operation clashes with the registry's state (e.g. removing an aliased version)."""

    status_code = 409
    exit_code = 4
    kind = "conflict"


class PayloadTooLargeError(InvalidInputError):
    status_code = 413
    kind = "payload_too_large"


class UnsupportedMediaTypeError(InvalidInputError):
    status_code = 415
    kind = "unsupported_media_type"


class NotAcceptableError(InvalidInputError):
    """No media type the client accepts (its Accept header) is one the route can answer in."""

    status_code = 406
    kind = "not_acceptable"


class UnauthorizedError(ShipyardError):
    status_code = 401
    exit_code = 5
    kind = "unauthorized"


class ForbiddenError(ShipyardError):
    status_code = 403
    exit_code = 5
    kind = "forbidden"


class UntrustedArtifactError(ForbiddenError):
    """Loading the artifact would run arbitrary code and the user has not said it is trusted."""

    kind = "untrusted_artifact"


class MethodNotAllowedError(ShipyardError):
    """The route exists but not for this HTTP method; `allow` lists the methods it takes."""

    status_code = 405
    exit_code = 2
    kind = "method_not_allowed"

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class NotReadyError(ShipyardError):
    status_code = 503
    exit_code = 6
    kind = "not_ready"


class OverloadedError(NotReadyError):
    kind = "overloaded"


class QueueFullError(OverloadedError):
    """A model's queue holds as many requests as it may: more replicas or a larger queue help."""

    kind = "queue_full"


class InsufficientStorageError(ShipyardError):
    """Not enough memory or disk to load a model (SageMaker's multi-model load answers 507)."""

    status_code = 507
    exit_code = 6
    kind = "insufficient_storage"


class RateLimitedError(ShipyardError):
    """Too many requests for a key or model; `retry_after_s` says when a request will pass."""

    status_code = 429
    exit_code = 6
    kind = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(ShipyardError):
    """The request's deadline passed before its result was ready; its queued work is dropped."""

    status_code = 504
    exit_code = 6
    kind = "deadline_exceeded"


class ModelError(ShipyardError):
    """The model or its runtime failed on a request it should have handled: the server's fault,
    not the caller's. The message carries the detail (for the log and the CLI); over HTTP the
    caller gets `public` only, which names what failed without internals."""

    status_code = 500
    exit_code = 10
    kind = "model_error"

    def __init__(self, message: str, *, public: str) -> None:
        super().__init__(message)
        self.public = public


class CloudError(ShipyardError):
    """A cloud platform refused or failed a call (`shipyard deploy`); the message says what exists."""

    status_code = 502
    exit_code = 11
    kind = "cloud_error"


class IntegrityError(ShipyardError):
    """Stored bytes do not match their recorded digest: the artifact was altered or damaged."""

    status_code = 500
    exit_code = 7
    kind = "integrity_error"


class MissingDependencyError(ShipyardError):
    """An optional library is needed; the message names the extra that installs it."""

    status_code = 500
    exit_code = 8
    kind = "missing_dependency"

    def __init__(self, package: str, extra: str | None, purpose: str) -> None:
        fix = f"pip install 'shipyard[{extra}]'" if extra else "pip install --force-reinstall shipyard"
        super().__init__(f"{purpose} needs the '{package}' package; install it with `{fix}`")
        self.package = package
        self.extra = extra


class MissingToolError(ShipyardError):
    """A program Shipyard runs (a container engine) is not installed; the message names it."""

    status_code = 500
    exit_code = 8
    kind = "missing_tool"


class BudgetNotMetError(UnprocessableError):
    """No optimization candidate kept the metric within the budget (or beat the original)."""

    exit_code = 9
    kind = "budget_not_met"
    report: dict[str, Any] | None = None  # the search's report, already saved at report_path
    report_path: Path | None = None
