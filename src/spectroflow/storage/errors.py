"""The errors of storage, and which faults are worth retrying (:func:`is_transient`)."""

from __future__ import annotations

from collections.abc import Iterator

#: Exception types, by name, of dropped or cut-off transfers on any backend (the standard
#: library's, aiohttp's, botocore's, urllib3's).
_TRANSIENT_TYPES = {
    "BrokenPipeError",
    "ClientConnectionError",
    "ClientOSError",
    "ClientPayloadError",
    "ConnectTimeoutError",
    "ConnectionAbortedError",
    "ConnectionClosedError",
    "ConnectionError",
    "ConnectionResetError",
    "ContentLengthError",
    "EndpointConnectionError",
    "IncompleteRead",
    "IncompleteReadError",
    "ProtocolError",
    "ReadTimeoutError",
    "ResponseStreamingError",
    "ServerDisconnectedError",
    "ServerTimeoutError",
    "TimeoutError",
    "TransferEncodingError",
    "TruncatedBodyError",
}
#: Error codes of a botocore-style answer (S3's) that mean "try again".
_TRANSIENT_CODES = frozenset({"InternalError", "RequestTimeout", "ServiceUnavailable", "SlowDown",
                              "Throttling", "ThrottlingException"})
#: Texts of errors that mean "try again" when the code is lost (s3fs rewraps some errors).
_TRANSIENT_TEXT = ("SlowDown", "Service Unavailable", "reduce your request rate", "InternalError")


class TruncatedBodyError(OSError):
    """A read returned fewer bytes than the object holds."""


class ChangedWhileReadingError(OSError):
    """A file's size now is not the size it was listed with: it changed during the run."""

    @classmethod
    def sizes(cls, listed: int, now: int | None) -> ChangedWhileReadingError:
        # Replaced, or still being written (a recorder appending): its output could not be
        # marked with the version it was made from. The next run computes it.
        return cls(f"changed while the run went on ({listed} bytes when listed, {now} now): "
                   "run again to compute it")


class VersionConflict(RuntimeError):
    """A conditional write found the file at another version than the one it was to replace."""


class StorageError(RuntimeError):
    """Storage cannot be used as asked: missing bucket, denied access, read-only destination."""


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during, each once."""
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def answer(err: BaseException) -> tuple[str, int] | None:
    """The error code and HTTP status of a botocore-style error's ``response``, if it has one."""
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return response.get("Error", {}).get("Code", ""), status


def is_transient(exc: BaseException) -> bool:
    """True for faults worth retrying: throttling, 5xx answers, dropped or truncated transfers.

    Examples
    --------
    >>> is_transient(ConnectionResetError()), is_transient(FileNotFoundError("x.wav"))
    (True, False)
    >>> is_transient(OSError("An error occurred (SlowDown) when calling the PutObject operation"))
    True
    """
    for err in causes(exc):
        if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
            return False
        if type(err).__name__ in _TRANSIENT_TYPES:
            return True
        code = answer(err)
        if code is not None and (code[0] in _TRANSIENT_CODES or code[1] >= 500):
            return True
        if any(text in str(err) for text in _TRANSIENT_TEXT):
            return True
    return False


def check_version(where: str, current: str | None, expected: str | None) -> None:
    """Raise :class:`VersionConflict` unless the file ``where`` is at version ``expected`` (None:
    absent)."""
    if current != expected:
        now = "absent" if current is None else f"at version {current}"
        raise VersionConflict(f"{where} is {now}, not {expected or 'absent'}: not replaced")
