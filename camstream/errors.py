"""Every error camstream raises on purpose, in one tree.

Library code raises these (mapping third-party errors at the boundary with
``raise ... from exc``); only the CLI turns them into a message and an exit code
(``camstream.cli``: ConfigError -> 2, any other CamstreamError -> 1).

    CamstreamError
    ├── ConfigError            settings, a cameras file, a command line: the message names the fix
    ├── FrameRejected          a frame that goes to the DLQ; ``kind`` is a DlqKind
    ├── ServiceError           a service (Kafka, Triton, Feast, a worker, a model env) failed
    │   └── StackRunning       a local stack already runs from that state folder
    ├── InferenceError         Triton could not classify a batch before the deadline
    └── PublishFailed          Kafka refused records (streams.publish)

Errors that are part of one room's own control flow stay there (producers.sources'
``SourceError`` tree, the breaker's ``CircuitOpen``), each a CamstreamError subclass.
"""

from __future__ import annotations

from enum import StrEnum


class CamstreamError(Exception):
    """Base of every error camstream raises on purpose."""


class ConfigError(CamstreamError, ValueError):
    """Configuration that cannot work; the message says what to change."""


class ServiceError(CamstreamError, RuntimeError):
    """A service did not start, did not become ready, or stopped."""


class StackRunning(ServiceError):
    """A local stack is already running from the same state folder."""


class InferenceError(CamstreamError, RuntimeError):
    """Triton could not classify a batch before the deadline."""


class DlqKind(StrEnum):
    """Why a frame went to the DLQ: the ``error-kind`` header and the metrics label."""

    MISSING_HEADERS = "missing_headers"
    BAD_HEADERS = "bad_headers"
    BAD_SCHEMA = "bad_schema"
    BAD_CONTENT_TYPE = "bad_content_type"
    EMPTY_VALUE = "empty_value"
    TOO_LARGE = "too_large"
    NOT_JPEG = "not_jpeg"
    CORRUPT_JPEG = "corrupt_jpeg"
    TRUNCATED_JPEG = "truncated_jpeg"
    TOO_MANY_PIXELS = "too_many_pixels"
    DIMENSION_MISMATCH = "dimension_mismatch"
    UNDECODABLE = "undecodable"
    DECODE_ERROR = "decode_error"
    ENCODE_FAILED = "encode_failed"
    NO_MODEL = "no_model"  # the camera routes to a model version that cannot serve it


class FrameRejected(CamstreamError, ValueError):
    """A frame that cannot be classified; it goes to the DLQ with ``kind`` and the message.

    The message names the header or the property and the value that failed, e.g.
    ``header width='0' must be a positive integer``.
    """

    def __init__(self, kind: DlqKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
