"""The errors torpor raises and how they map to HTTP.

    TorporError                      base; .status is the HTTP status a client sees
    ├── InvalidInput (400)           the caller sent something wrong; nothing was changed
    │   ├── PayloadTooLarge (413)    body over the configured limit
    │   └── DoesNotFit (400)         the model is larger than a device's budget
    ├── NotFound (404)               no such function / model
    ├── Unauthorized (401)           missing or wrong bearer token
    ├── Overloaded (429)             queue bound reached; retry later
    ├── DeadlineExceeded (504)       the request's deadline passed; says in which phase
    ├── RequestFailed (500)          the model raised while executing this request
    ├── WorkerLost (503)             the worker serving the request died or hung
    ├── Unavailable (503)            no device can serve (e.g. shutting down, function removed)
    │   ├── DroppedLate (503)        dropped early: it could no longer meet its SLO (drop_late)
    │   └── Shed (503)               the node is overloaded and sheds this function (admission)
    ├── ProtocolError (502)          a malformed frame crossed a worker socket
    └── DamagedImage (500)           a model image file is missing, of another format or corrupt

Errors cross the worker socket as data (kind + message) and are rebuilt here with
`from_wire`, so the gateway never sees a worker's traceback, and neither does a client.
"""

from __future__ import annotations


class TorporError(Exception):
    status = 500
    kind = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


class InvalidInput(TorporError):
    status = 400
    kind = "invalid_input"


class PayloadTooLarge(InvalidInput):
    status = 413
    kind = "payload_too_large"


class DoesNotFit(InvalidInput):
    kind = "does_not_fit"


class NotFound(TorporError):
    status = 404
    kind = "not_found"


class Overloaded(TorporError):
    status = 429
    kind = "overloaded"


class Unauthorized(TorporError):
    status = 401
    kind = "unauthorized"


class DeadlineExceeded(TorporError):
    status = 504
    kind = "deadline_exceeded"


class RequestFailed(TorporError):
    status = 500
    kind = "request_failed"


class WorkerLost(TorporError):
    status = 503
    kind = "worker_lost"


class Unavailable(TorporError):
    status = 503
    kind = "unavailable"


class DroppedLate(Unavailable):
    kind = "dropped_late"


class Shed(Unavailable):
    kind = "shed"


class ProtocolError(TorporError):
    status = 502
    kind = "protocol_error"


class DamagedImage(TorporError):
    status = 500
    kind = "damaged_image"


_BY_KIND: dict[str, type[TorporError]] = {
    cls.kind: cls
    for cls in (
        TorporError,
        InvalidInput,
        PayloadTooLarge,
        DoesNotFit,
        NotFound,
        Overloaded,
        Unauthorized,
        DeadlineExceeded,
        RequestFailed,
        WorkerLost,
        Unavailable,
        ProtocolError,
        DamagedImage,
    )
}


def from_wire(obj: object) -> TorporError:
    """Rebuild an error that crossed a socket; unknown shapes become ProtocolError."""
    if isinstance(obj, dict) and isinstance(obj.get("message"), str):
        cls = _BY_KIND.get(str(obj.get("kind")), TorporError)
        return cls(obj["message"])
    return ProtocolError(f"malformed error reply: {obj!r:.200}")
