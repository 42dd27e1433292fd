"""Every read, listing and write of the project, through fsspec.

Paths are URLs (``/local/dir``, ``s3://bucket/prefix``, ``memory://x``); ``storage_options`` go to
fsspec untouched. Nothing outside this module knows which backend it is on. Transient faults
(HTTP 5xx, SlowDown, connection resets, truncated bodies) are retried here with exponential backoff
and jitter; anything else is raised at once.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import io
import logging
import mmap
import os
import posixpath
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import fsspec
import fsspec.asyn
import tenacity
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict, Field

from . import names
from .shared_setup import SharedSetup

logger = names.get_logger("spectroflow.storage")
T = TypeVar("T")

#: Attempts per storage operation, and the backoff cap in seconds.
RETRY_ATTEMPTS = 6
RETRY_MAX_WAIT = 8.0

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


@dataclass(frozen=True)
class Backend:
    """What spectroflow knows of one storage protocol beyond fsspec's common interface."""

    #: Error codes of a botocore-style ``response`` that mean "try again".
    transient_codes: frozenset[str] = frozenset()
    #: Texts of errors that mean "try again" when the code is lost (s3fs rewraps some errors).
    transient_text: tuple[str, ...] = ()
    #: Keys of a listing's details that hold the object's version (its ETag).
    version_keys: tuple[str, ...] = ()
    #: A logger the backend reports its own retries to, at DEBUG (see :class:`_BackendRetries`).
    retry_logger: str | None = None
    #: ``pages(fs, path)``: every file under ``path`` a page at a time, in name order, detailed
    #: as ``fs.find`` details them. Without it, ``find`` lists everything before the first file.
    pages: Callable[[Any, str], Iterator[list[dict]]] | None = None
    #: ``upload(what, fs, path, write, conditions)``: store what ``write(file)`` writes as it
    #: comes, appearing whole or not at all, under the request parameters ``conditions`` (see
    #: ``conditions``); returns the store's answer. Without it, it is gathered in memory and
    #: stored with one request.
    upload: Callable[[str, Any, str, Callable[[BinaryIO], None], dict], dict] | None = None
    #: ``conditions(version)``: the request parameters of a write that succeeds only if the object
    #: is still at ``version`` (None: absent). Without it, a conditional write checks the version
    #: just before it writes, which another writer can slip between.
    conditions: Callable[[str | None], dict] | None = None
    #: Error codes of a write refused because its condition no longer holds.
    conflict_codes: frozenset[str] = frozenset()
    #: ``delete(what, fs, paths)``: remove these objects in bulk, each path taken as written
    #: (fsspec's ``rm`` reads ``*``, ``?`` and ``[`` in a path as a pattern). Without it, each is
    #: removed with ``rm_file``.
    delete: Callable[[str, Any, list[str]], None] | None = None
    #: ``leftovers(fs, path, older_than)``: remove what writes cut short left under ``path``,
    #: unchanged for ``older_than`` seconds; returns their URLs. Without it, writes leave nothing.
    leftovers: Callable[[Any, str, float], list[str]] | None = None


#: Objects an S3 listing asks for at once (S3's own maximum).
S3_PAGE = 1000


def _s3_pages(fs, path: str) -> Iterator[list[dict]]:
    """The objects under the prefix ``path`` (``bucket/key``) a page (1 000) at a time, in key
    order, as S3 lists them; each page is one retried request."""
    bucket, _, key = path.partition("/")
    kwargs = {"Bucket": bucket, "Prefix": f"{key.rstrip('/')}/" if key else "", "MaxKeys": S3_PAGE}
    while True:
        page = _s3_page(f"listing s3://{path}", fs, kwargs)
        yield [{"name": f"{bucket}/{c['Key']}", "type": "file", "size": c["Size"],
                "ETag": c.get("ETag"), "LastModified": c.get("LastModified")}
               for c in page.get("Contents", ()) if not c["Key"].endswith("/")]
        if not page.get("IsTruncated"):
            return
        kwargs["ContinuationToken"] = page["NextContinuationToken"]


#: Size of the parts of an S3 upload, in bytes (S3 takes 5 MiB to 5 GiB a part, 10 000 parts):
#: what a streamed upload holds in memory. Each thousand parts, parts grow by as much again,
#: so an object of up to 880 GB fits in 10 000 parts.
PART_BYTES = 16 << 20


class _Sequential(io.RawIOBase):
    """A file written in order, as output writers need: it counts what it was given
    (``tell``) and cannot seek."""

    def __init__(self) -> None:
        super().__init__()
        self._written = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written


class _S3Upload(_Sequential):
    """An S3 object written as a stream: held in memory up to one part, stored with one PUT if
    it ends there, else uploaded a part at a time (a multipart upload), each part retried alone.
    S3 shows the object only when the upload is completed: whole, or not at all."""

    def __init__(self, what: str, fs, path: str, conditions: dict | None = None):
        super().__init__()
        bucket, key, _ = fs.split_path(path)
        self._what, self._fs, self._where = what, fs, {"Bucket": bucket, "Key": key}
        self._conditions = conditions or {}
        self._held = bytearray()
        self._parts: list[dict] = []
        self._upload_id: str | None = None

    def write(self, data) -> int:
        with memoryview(data) as view:
            self._held += view.cast("B")
            n = view.nbytes
        self._written += n
        while len(self._held) >= self._part_bytes():
            self._send(self._part_bytes())
        return n

    def _part_bytes(self) -> int:
        return PART_BYTES * (1 + len(self._parts) // 1000)

    def _send(self, n: int) -> None:
        if self._upload_id is None:
            answer = _s3_call(self._what, self._fs, "create_multipart_upload", **self._where)
            self._upload_id = answer["UploadId"]
        with memoryview(self._held) as view:
            body = bytes(view[:n])
        del self._held[:n]
        number = len(self._parts) + 1
        answer = _s3_call(self._what, self._fs, "upload_part", Body=body, PartNumber=number,
                          UploadId=self._upload_id, **self._where)
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def finish(self) -> dict:
        """Store what was written; returns S3's answer (with the object's ETag)."""
        if self._upload_id is None:
            answer = _s3_call(self._what, self._fs, "put_object", Body=bytes(self._held),
                              **self._where, **self._conditions)
        else:
            if self._held:
                self._send(len(self._held))
            answer = _s3_call(self._what, self._fs, "complete_multipart_upload",
                              UploadId=self._upload_id, MultipartUpload={"Parts": self._parts},
                              **self._where, **self._conditions)
        self._fs.invalidate_cache(f"{self._where['Bucket']}/{self._where['Key']}")
        return answer

    def abort(self) -> None:
        """Give up: the parts uploaded are deleted, and no object appears."""
        if self._upload_id is None:
            return
        try:
            _s3_call(f"abandoning {self._what}", self._fs, "abort_multipart_upload",
                     UploadId=self._upload_id, **self._where)
        except Exception as exc:  # noqa: BLE001 - the write's own failure is what matters
            logger.warning(
                "the parts of an abandoned upload (%s, UploadId %s) could not be deleted: %s: %s; "
                "S3 keeps them, unseen, until a lifecycle rule (AbortIncompleteMultipartUpload) "
                "or an abort_multipart_upload removes them",
                self._what, self._upload_id, type(exc).__name__, exc)


def _s3_upload(what: str, fs, path: str, write: Callable[[BinaryIO], None],
               conditions: dict) -> dict:
    upload = _S3Upload(what, fs, path, conditions)
    try:
        write(upload)  # type: ignore[arg-type]  # a raw binary file, as writers need
        return upload.finish()
    except BaseException:
        upload.abort()
        raise


def _s3_delete(what: str, fs, paths: list[str]) -> None:
    """Delete objects with ``delete_objects``, 1 000 a request (S3's maximum)."""
    keys: dict[str, list[str]] = {}
    for path in paths:
        bucket, key, _ = fs.split_path(path)
        keys.setdefault(bucket, []).append(key)
    for bucket, bucket_keys in keys.items():
        for start in range(0, len(bucket_keys), S3_PAGE):
            objects = [{"Key": key} for key in bucket_keys[start:start + S3_PAGE]]
            answer = _s3_call(what, fs, "delete_objects", Bucket=bucket,
                              Delete={"Objects": objects, "Quiet": True})
            if answer.get("Errors"):
                raise OSError(f"{what}: {answer['Errors'][:3]}")
    fs.invalidate_cache()


def _s3_leftovers(fs, path: str, older_than: float) -> list[str]:
    """Abort the multipart uploads of keys under the prefix ``path`` (``bucket/key``) that
    nothing has changed for ``older_than`` seconds: a killed run's, whose parts S3 keeps and
    bills, unseen, until they are aborted. One request when there are none."""
    bucket, _, key = path.partition("/")
    what = f"listing the unfinished uploads under s3://{path}"
    kwargs = {"Bucket": bucket, "Prefix": f"{key.rstrip('/')}/" if key else ""}
    cutoff = time.time() - older_than
    aborted = []
    while True:
        page = _s3_call(what, fs, "list_multipart_uploads", **kwargs)
        for upload in page.get("Uploads", ()):
            where = {"Bucket": bucket, "Key": upload["Key"], "UploadId": upload["UploadId"]}
            url = f"s3://{bucket}/{upload['Key']}"
            if (upload["Initiated"].timestamp() >= cutoff
                    or _s3_last_part(f"listing the parts of {url}", fs, where) >= cutoff):
                continue
            try:
                _s3_call(f"aborting the upload of {url}", fs, "abort_multipart_upload", **where)
            except FileNotFoundError:  # completed or aborted meanwhile
                continue
            aborted.append(url)
        if not page.get("IsTruncated"):
            return aborted
        kwargs.update(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])


def _s3_last_part(what: str, fs, where: dict) -> float:
    """When the upload ``where`` last took a part (0 without parts), as a POSIX timestamp."""
    latest, kwargs = 0.0, dict(where)
    while True:
        page = _s3_call(what, fs, "list_parts", **kwargs)
        latest = max([latest, *(part["LastModified"].timestamp() for part in page.get("Parts", ()))])
        if not page.get("IsTruncated"):
            return latest
        kwargs["PartNumberMarker"] = page["NextPartNumberMarker"]


_S3 = Backend(
    transient_codes=frozenset({"InternalError", "RequestTimeout", "ServiceUnavailable", "SlowDown",
                               "Throttling", "ThrottlingException"}),
    transient_text=("SlowDown", "Service Unavailable", "reduce your request rate", "InternalError"),
    version_keys=("ETag",),
    retry_logger="s3fs",
    pages=_s3_pages,
    upload=_s3_upload,
    # AWS S3 takes both on PutObject and CompleteMultipartUpload (since 2024).
    conditions=lambda version: ({"IfNoneMatch": "*"} if version is None
                                else {"IfMatch": f'"{version}"'}),
    conflict_codes=frozenset({"PreconditionFailed", "ConditionalRequestConflict"}),
    delete=_s3_delete,
    leftovers=_s3_leftovers,
)
#: Backends by fsspec protocol; any other (local files, memory) is :data:`_PLAIN`.
BACKENDS: dict[str, Backend] = {
    "s3": _S3,
    "s3a": _S3,
    "gs": Backend(version_keys=("etag",)),
    "gcs": Backend(version_keys=("etag",)),
    "abfs": Backend(version_keys=("etag",)),
    "az": Backend(version_keys=("etag",)),
}
_PLAIN = Backend()
_TRANSIENT_CODES = frozenset().union(*(b.transient_codes for b in BACKENDS.values()))
_TRANSIENT_TEXT = tuple(dict.fromkeys(t for b in BACKENDS.values() for t in b.transient_text))


class TruncatedBodyError(OSError):
    """A read returned fewer bytes than the object holds."""


class ChangedWhileReadingError(OSError):
    """A file's size now is not the size it was listed with: it changed during the run."""


class VersionConflict(RuntimeError):
    """A conditional write found the file at another version than the one it was to replace."""


class StorageError(RuntimeError):
    """Storage cannot be used as asked: missing bucket, denied access, read-only destination."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _answer(err: BaseException) -> tuple[str, int] | None:
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
    for err in _chain(exc):
        if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
            return False
        if type(err).__name__ in _TRANSIENT_TYPES:
            return True
        answer = _answer(err)
        if answer is not None and (answer[0] in _TRANSIENT_CODES or answer[1] >= 500):
            return True
        if any(text in str(err) for text in _TRANSIENT_TEXT):
            return True
    return False


def _log_retry(state: tenacity.RetryCallState) -> None:
    assert state.outcome is not None and state.next_action is not None  # tenacity's, before a sleep
    exc = state.outcome.exception()
    logger.warning(
        "transient storage error during %s (attempt %d of %d), retrying in %.2f s: %s: %s",
        state.args[0] if state.args else "a storage operation",
        state.attempt_number,
        RETRY_ATTEMPTS,
        state.next_action.sleep,
        type(exc).__name__,
        exc,
    )


def _retrying(func):
    """Retry ``func(what, ...)`` on transient faults; ``what`` names the operation in the log."""
    return tenacity.retry(
        retry=tenacity.retry_if_exception(is_transient),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=RETRY_MAX_WAIT),
        stop=tenacity.stop_after_attempt(RETRY_ATTEMPTS),
        before_sleep=_log_retry,
        reraise=True,
    )(func)


class _BackendRetries(logging.Filter):
    """Surface the retries s3fs makes below spectroflow's own as warnings of ``spectroflow.storage``.

    s3fs retries throttling, 5xx answers and dropped connections itself, reporting each at DEBUG
    level only. This filter, on the ``s3fs`` logger, re-logs those reports as warnings and drops
    the other DEBUG records unless the user asked for them (so nothing else changes). s3fs also
    reports every other client error (NoSuchBucket, AccessDenied) as "maybe retryable" and then
    retries only those whose text names throttling: only those are retries.
    """

    RETRIED = "Retryable error"
    MAYBE = "Client error (maybe retryable)"
    #: What s3fs retries among client errors (``s3fs.core._error_wrapper``).
    RETRIED_CLIENT_ERRORS = ("SlowDown", "reduce your request rate", "XAmzContentSHA256Mismatch")

    def __init__(self, keep_debug: bool):
        super().__init__()
        self.keep_debug = keep_debug

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.DEBUG:
            return True
        message = record.getMessage()
        if message.startswith(self.RETRIED) or (
            message.startswith(self.MAYBE) and any(t in message for t in self.RETRIED_CLIENT_ERRORS)
        ):
            logger.warning("transient storage error, retried by s3fs: %s", message.split(": ", 1)[-1])
        return self.keep_debug


def _log_backend_retries(undo: ExitStack) -> None:
    """Put :class:`_BackendRetries` on each backend's retry logger, at DEBUG, until ``undo``."""
    for name in sorted({b.retry_logger for b in BACKENDS.values() if b.retry_logger}):
        backend = logging.getLogger(name)
        retries = _BackendRetries(keep_debug=backend.isEnabledFor(logging.DEBUG))
        undo.callback(backend.setLevel, backend.level)
        undo.callback(backend.removeFilter, retries)
        backend.addFilter(retries)
        backend.setLevel(logging.DEBUG)


_retry_logging = SharedSetup(_log_backend_retries)


def backend_retries_logged() -> AbstractContextManager[None]:
    """Within the block, the retries a backend makes on its own (s3fs retries throttling and
    dropped connections, logging each at DEBUG) are logged as warnings of this module."""
    return _retry_logging.active()


#: ``s3://``, ``file://``...: a protocol, two letters or more (``C://`` is a Windows drive).
_PROTOCOL = re.compile(r"[A-Za-z][A-Za-z0-9+._-]+://")


def url_to_fs(url: str, storage_options: dict | None = None):
    """The filesystem and backend path for ``url`` (fsspec caches instances per options).

    A path without a protocol, or a ``file://`` URL, is local and kept as written, ``:`` and
    ``::`` included. fsspec reads every ``::`` as a link of a chained URL, so it opened
    ``sub/a`` for ``sub/a::b.wav`` and ``s3://b/a`` for ``s3://b/a::b.wav``; here a URL is
    chained only if it starts with a protocol name and ``::`` (``simplecache::s3://b/k``) or ends
    with a URL (``zip://a.wav::s3://b/x.zip``).

    Examples
    --------
    >>> fs, path = url_to_fs("/data/sub/a::b.wav")
    >>> type(fs).__name__, path
    ('LocalFileSystem', '/data/sub/a::b.wav')
    >>> url_to_fs("file:///data/12:30:00.wav")[1]
    '/data/12:30:00.wav'
    >>> url_to_fs("s3://bucket/rec/a::b.wav", {"anon": True})[1]
    'bucket/rec/a::b.wav'
    """
    url = fsspec.utils.stringify_path(url)
    options = storage_options or {}
    head, chained, rest = url.partition("::")
    if chained and (
        head in fsspec.available_protocols() or _PROTOCOL.match(rest.rpartition("::")[2])
    ):
        return fsspec.core.url_to_fs(url, **options)
    match = _PROTOCOL.match(url)
    if match is None and not options:  # a local path: a tenth of a tiny recording's time otherwise
        return _local_fs(), LocalFileSystem._strip_protocol(url)
    protocol = match.group()[:-3] if match else "file"
    cls = fsspec.get_filesystem_class(protocol)
    # As fsspec does: options under the protocol's name (``{"s3": {...}}``) apply to it alone.
    own = {k: v for k, v in options.items() if k != protocol}
    kwargs = {**cls._get_kwargs_from_urls(url), **options.get(protocol, {}), **own}
    return cls(**kwargs), cls._strip_protocol(url)


@functools.cache
def _local_fs() -> LocalFileSystem:
    return LocalFileSystem()


def _backend(fs) -> Backend:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return BACKENDS.get(protocol, _PLAIN)


def is_local(url: str) -> bool:
    """Whether ``url`` is on this machine's file system.

    Examples
    --------
    >>> is_local("12:30:00.wav"), is_local("file:///data/a.wav"), is_local("memory://data/a.wav")
    (True, True, False)
    """
    return isinstance(url_to_fs(url)[0], LocalFileSystem)


def absolute(url: str) -> str:
    """``url`` written the one way a run records it: a local path made absolute (a ``file://``
    URL as its plain path), any other URL as it is.

    Examples
    --------
    >>> absolute("file:///data/a.wav"), absolute("s3://lab/a.wav")
    ('/data/a.wav', 's3://lab/a.wav')
    >>> absolute("a.wav") == os.path.join(os.getcwd(), "a.wav")
    True
    """
    if not is_local(url):
        return url
    return os.path.abspath(url.removeprefix("file://"))


def join(root: str, relpath: str) -> str:
    """``relpath`` (``/``-separated) under ``root``, keeping the root's own spelling."""
    if "://" in root:
        return root.rstrip("/") + "/" + relpath
    return os.path.join(root, *relpath.split("/"))


def safe_relpath(relpath: str) -> str:
    """Refuse a relative output path that could leave its destination (``..``, absolute, empty).

    Backslashes separate folders, as on Windows. Every other name is kept, ``:`` included
    (``12:30:00.wav``, as field recorders name their files), except a drive (``C:``, ``C:x``)
    where :func:`join` would start again from it (Windows: ``os.path.join(root, "C:x")`` is on
    drive C, not under ``root``).

    Examples
    --------
    >>> safe_relpath("Bird0/Wave/0.wav.spect.npz")
    'Bird0/Wave/0.wav.spect.npz'
    >>> safe_relpath("12:30:00.wav.spect.npz"), safe_relpath("sub/a::b.wav.spect.npz")
    ('12:30:00.wav.spect.npz', 'sub/a::b.wav.spect.npz')
    >>> safe_relpath("../../etc/x.spect.npz")
    Traceback (most recent call last):
    ...
    ValueError: unsafe relative path '../../etc/x.spect.npz': it must stay inside the destination
    """
    parts = relpath.replace("\\", "/").split("/")
    # A leading "/" (absolute) or "//" leaves an empty part.
    if any(p in ("", ".", "..") or os.path.splitdrive(p)[0] for p in parts):
        raise ValueError(f"unsafe relative path {relpath!r}: it must stay inside the destination")
    return "/".join(parts)


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A file found by listing: where it is, where it sits under its root, and its version.

    ``version`` is the object's ETag where the backend has one, else ``size:mtime:inode``: it
    changes whenever the content is replaced (a local file is replaced by renaming a new file
    over it, which gives it a new inode), which is what up-to-date checks need.
    """

    url: str
    relpath: str
    size: int | None = None
    version: str | None = None
    error: str | None = None


def _version(info: dict, backend: Backend = _PLAIN) -> str | None:
    for name in backend.version_keys:
        if info.get(name):
            return str(info[name]).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
    if mtime is None:
        return None
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    version = f"{info.get('size')}:{float(mtime):.6f}"
    return f"{version}:{info['ino']}" if info.get("ino") else version


@_retrying
def _find(what: str, fs, path: str) -> dict:
    return fs.find(path, detail=True)


@_retrying
def _s3_page(what: str, fs, kwargs: dict) -> dict:
    return _s3_call.__wrapped__(what, fs, "list_objects_v2", **kwargs)


@_retrying
def _s3_call(what: str, fs, method: str, **kwargs) -> dict:
    # fs.call_s3 would call S3FileSystem's own _call_s3, never a subclass's.
    return fsspec.asyn.sync(fs.loop, fs._call_s3, method, **kwargs)


def _local_files(fs: LocalFileSystem, top: str) -> Iterator[dict]:
    """The details of the files under the local folder ``top``, in order of their paths below it,
    following symbolic links.

    vak's glob follows links, so ``top/x.wav -> /elsewhere/x.wav`` and ``top/dir -> /elsewhere``
    are listed, under the names seen through them (``top/dir/a.wav``) with their targets'
    details. A link to a folder of ``top``'s own tree is not followed (that folder is listed
    where it is), and no folder is listed twice however many links lead to it, so a loop of
    links ends. A broken link is listed, with no size, so that a recording it stood for fails
    and is reported instead of vanishing. A subfolder that cannot be read is logged and left out,
    as vak's glob leaves it out. One folder's entries per level of depth are held at once.
    """
    walk = _LocalWalk(fs, top)
    open_folders = [iter(walk.entries(top, linked=False))]
    while open_folders:
        info = next(open_folders[-1], None)
        if info is None:
            open_folders.pop()
        elif info["type"] == "directory":
            open_folders.append(iter(walk.entries(info["name"], info["linked"])))
        else:
            yield info


class _LocalWalk:
    """The folders of a local walk (:func:`_local_files`), listed one at a time."""

    def __init__(self, fs: LocalFileSystem, top: str):
        self.fs, self.top = fs, top
        self.top_real = os.path.realpath(top)
        #: ``top`` and the folders listed through a link or below one. The tree's own folders
        #: are reached once (a link into the tree is not followed, and any other way in passes
        #: through ``top``), so only these can be reached twice, or loop: a set that does not
        #: grow with the tree.
        self.seen: set[tuple[int, int]] = set()

    def entries(self, folder: str, linked: bool) -> list[dict]:
        """``folder``'s files and subfolders to walk, in the order of the paths below them (a
        subfolder's paths all start with its name and ``/``); ``linked`` if a link leads to it."""
        try:
            if linked or folder == self.top:
                stat = os.stat(folder)
                if (stat.st_dev, stat.st_ino) in self.seen:
                    logger.info("not listing %s again: links lead to it more than once", folder)
                    return []
                self.seen.add((stat.st_dev, stat.st_ino))
            entries = os.scandir(folder)
        except OSError as exc:
            if folder == self.top:
                raise
            logger.warning("cannot list %s, its files are left out: %s", folder, exc)
            return []
        found: list[tuple[str, dict[str, Any]]] = []
        with entries:
            for entry in entries:
                path = f"{folder.rstrip('/')}/{entry.name}"
                link = entry.is_symlink()
                try:
                    info = self.fs.info(path if link else entry)  # a path's details are its target's
                except OSError as exc:
                    if link:  # dangling, a loop, or a target this user may not see
                        error = f"broken symlink -> {os.readlink(path)}: {exc.strerror}"
                        logger.warning("%s is a %s", path, error)
                        found.append((entry.name, {"name": path, "type": "file", "size": None,
                                                   "error": error}))
                    elif not isinstance(exc, FileNotFoundError):  # else removed since listed
                        raise
                    continue
                if info["type"] != "directory":
                    found.append((entry.name, info))
                elif link and os.path.commonpath([self.top_real, os.path.realpath(path)]) == self.top_real:
                    logger.info("not following %s: the folder it links to is listed as it is", path)
                else:
                    found.append((f"{entry.name}/", {"name": path, "type": "directory",
                                                     "linked": linked or link}))
        return [info for _, info in sorted(found, key=lambda pair: pair[0])]


def _listing(what: str, fs, path: str) -> Iterator[dict]:
    """The details (``name``, ``type``, ``size``, ...) of every file under ``path``, in order of
    name.

    A local tree is walked a folder at a time (:func:`_local_files`); an object store with
    :attr:`Backend.pages` is listed a page at a time. Either way, only a folder's or a page's
    details are held at once; ``find`` gathers every file's before returning.
    """
    pages = _backend(fs).pages
    if isinstance(fs, LocalFileSystem):
        yield from _local_files(fs, path)
    elif pages is not None:
        for page in pages(fs, path):
            yield from page
    else:
        yield from sorted(_find(what, fs, path).values(), key=lambda info: info["name"])


def list_files(
    root: str, suffixes: tuple[str, ...], storage_options: dict | None = None
) -> list[FileInfo]:
    """Files under ``root`` (recursively) whose names end with one of ``suffixes``, ignoring case.

    Sorted by relative path. Raises :class:`StorageError` if ``root`` does not exist.
    """
    return list(iter_files(root, suffixes, storage_options))


def iter_files(
    root: str, suffixes: tuple[str, ...], storage_options: dict | None = None
) -> Iterator[FileInfo]:
    """:func:`list_files` as the listing arrives: in order of relative path, holding a page
    (or a local folder) at a time."""
    fs, base = url_to_fs(root, storage_options)
    try:
        if not fs.isdir(base):
            raise StorageError(f"{root!r} is not a folder or prefix that exists")
        lowered = tuple(s.lower() for s in suffixes)
        prefix = base.rstrip("/") + "/"
        backend = _backend(fs)
        last = ""
        for info in _listing(f"listing {root}", fs, base):
            path = info["name"]
            if info.get("type", "file") != "file" or not path.lower().endswith(lowered):
                continue
            # The names below the root as listed: posixpath.relpath would resolve an object key's
            # "..", naming another object (the key itself is refused later, as an output name).
            rel = path[len(prefix) :]
            if rel < last:  # what is up to date is decided by merging listings in this order
                raise StorageError(f"{root!r} was not listed in order of names ({last!r}, then {rel!r})")
            last = rel
            yield FileInfo(join(root, rel), rel, info.get("size"), _version(info, backend),
                           info.get("error"))
    except (PermissionError, FileNotFoundError) as exc:
        raise StorageError(f"cannot list {root!r}: {exc}") from exc
    finally:
        # s3fs keeps what it listed for the life of the (cached) filesystem: stale for every
        # later call in this process that consults it (a replaced object kept its old size, a
        # new one did not exist). The listing is read once, here.
        fs.invalidate_cache()


def file_info(url: str, storage_options: dict | None = None) -> FileInfo:
    """Size and version of one file; raises ``FileNotFoundError`` if it is missing."""
    fs, path = url_to_fs(url, storage_options)
    info = _info(f"reading metadata of {url}", fs, path)
    return FileInfo(url, posixpath.basename(path), info.get("size"), _version(info, _backend(fs)))


@_retrying
def _info(what: str, fs, path: str) -> dict:
    return fs.info(path)


@_retrying
def _cat(what: str, fs, path: str, expected_size: int | None) -> bytes:
    data = fs.cat_file(path)
    _check_size(fs, path, len(data), expected_size)
    return data


def _check_size(fs, path: str, got: int, expected_size: int | None) -> None:
    """Raise if ``got`` bytes were read of a file listed with ``expected_size``."""
    if expected_size is None or got == expected_size:
        return
    now = fs.info(path).get("size")
    if now != got:
        raise TruncatedBodyError(f"got {got} of {now} bytes")
    raise _changed(expected_size, now)


def _changed(expected_size: int, now: int) -> ChangedWhileReadingError:
    # Replaced, or still being written (a recorder appending): its output could not be marked
    # with the version it was made from. The next run computes it.
    return ChangedWhileReadingError(
        f"changed while the run went on ({expected_size} bytes when listed, {now} now): "
        "run again to compute it"
    )


def read_bytes(url: str, storage_options: dict | None = None, size: int | None = None) -> bytes:
    """The whole content of ``url``; a body shorter than the object is retried.

    ``size`` is the size a listing gave: a body of another size is a truncated transfer (retried),
    unless the object's size now is the body's: it changed since it was listed
    (:class:`ChangedWhileReadingError`, not retried).
    """
    fs, path = url_to_fs(url, storage_options)
    return _cat(f"reading {url}", fs, path, size)


#: Largest file not on this machine that :func:`open_input` reads into memory; a larger one is
#: copied to a local temporary file first.
WHOLE_READ_BYTES = 64 << 20


@contextmanager
def open_input(
    url: str, storage_options: dict | None = None, size: int | None = None
) -> Iterator[BinaryIO]:
    """A seekable binary file to read ``url`` from, in memory that does not grow with its size.

    A local file is opened as it is; another is read whole into memory up to
    :data:`WHOLE_READ_BYTES`, else copied to a local temporary file (retried as
    :func:`read_bytes` is). ``size`` is as for :func:`read_bytes`: a file of another size is
    truncated (retried) or has changed since it was listed (:class:`ChangedWhileReadingError`).
    """
    fs, path = url_to_fs(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        with open(path, "rb") as fh:
            now = os.fstat(fh.fileno()).st_size
            if size is not None and now != size:
                raise _changed(size, now)
            yield fh
        return
    if size is None:
        size = _info(f"reading metadata of {url}", fs, path).get("size")
    if size is not None and size <= WHOLE_READ_BYTES:
        yield io.BytesIO(_cat(f"reading {url}", fs, path, size))
        return
    with tempfile.TemporaryFile() as fh:
        _copy_to(f"reading {url}", fs, path, fh, size)
        fh.seek(0)
        yield fh


@_retrying
def _copy_to(what: str, fs, path: str, fh: BinaryIO, expected_size: int | None) -> None:
    fh.seek(0)
    fh.truncate()
    with fs.open(path, "rb", block_size=PART_BYTES) as source:
        shutil.copyfileobj(source, fh, PART_BYTES)
    _check_size(fs, path, fh.tell(), expected_size)


@_retrying
def _pipe(what: str, fs, path: str, data):
    return fs.pipe_file(path, data)


#: Longest file name, in bytes, on common local file systems (ext4, XFS, btrfs, tmpfs, APFS;
#: NTFS's 255 UTF-16 units are never fewer than 255 UTF-8 bytes).
NAME_MAX = 255
#: The names :func:`_temporary_name` gives.
_TEMPORARY = re.compile(r"\..*\.[0-9a-f]{32}\.tmp", re.DOTALL)


def _temporary_name(name: str) -> str:
    """A hidden, unique name to write ``name`` under before renaming it, no longer than allowed.

    ``.{name}.{32 hex digits}.tmp`` is 38 bytes longer than ``name``: a long name is shortened,
    by whole characters, to keep within :data:`NAME_MAX` bytes (as the file system encodes it).

    Examples
    --------
    >>> _temporary_name("0.wav.spect.npz")[:17], len(_temporary_name("0.wav.spect.npz"))
    ('.0.wav.spect.npz.', 53)
    >>> long = _temporary_name("é" * 127)  # 254 bytes: the longest name of é allowed
    >>> len(os.fsencode(long)), long[:3], long[-4:]  # 108 é kept, whole
    (254, '.éé', '.tmp')
    >>> bool(_TEMPORARY.fullmatch(long)), bool(_TEMPORARY.fullmatch(".notes.tmp"))
    (True, False)
    """
    suffix = f".{uuid.uuid4().hex}.tmp"
    while len(os.fsencode(f".{name}{suffix}")) > NAME_MAX:
        name = name[:-1]
    return f".{name}{suffix}"


def write_with(
    url: str,
    write: Callable[[BinaryIO], None],
    storage_options: dict | None = None,
    *,
    if_version: str | None = None,
    if_absent: bool = False,
) -> str | None:
    """Write ``url`` through ``write(file)`` so that no reader ever sees a partial file.

    Returns the version of the file written (as a listing reports it, see :class:`FileInfo`),
    taken from the write itself, so that a concurrent writer's file is never mistaken for it.
    ``file`` takes writes in order (it cannot seek), in memory that does not grow with their
    total.

    Locally: ``write`` fills a temporary file in the same folder (see :class:`_NewFile`), which
    is then renamed over the target, so a reader or a killed run never finds a partial file under
    the target name (no fsync per file: it cost a third of the run time; durability across power
    loss is left to the filesystem). On S3, the object is uploaded as it is written, a part at a
    time, and appears whole when the upload completes; a failed write abandons the upload, whose
    parts S3 then deletes. Elsewhere ``write`` fills memory and the object is stored with one PUT,
    which is atomic on object stores (an object appears whole or not at all).

    With ``if_version`` (or ``if_absent``), the file is written only if it is still at that
    version (or still absent), else :class:`VersionConflict` is raised and nothing is written:
    a read-modify-write that two processes may run at once. Locally the check and the rename
    hold a lock (``fcntl.flock`` on a hidden ``.<name>.lock`` beside the file); on S3 the store
    checks (``If-Match`` / ``If-None-Match``); elsewhere the version is checked just before
    the write.
    """
    conditional = if_version is not None or if_absent
    fs, path = url_to_fs(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, _temporary_name(name))
        try:
            with _NewFile(tmp) as fh:
                write(fh)  # type: ignore[arg-type]  # a raw binary file, as writers need
            # Its details once closed (network and FUSE file systems may set mtime at close), as
            # a listing gives them; the temporary name is this call's alone.
            version = _version(fs.info(tmp))
            with _local_lock(folder, name) if conditional else nullcontext():
                if conditional:
                    _check_version(url, _local_version(fs, path), if_version)
                os.replace(tmp, path)  # keeps the inode and mtime
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return version
    backend = _backend(fs)
    conditions: dict = {}
    if conditional and backend.conditions is not None:
        conditions = backend.conditions(if_version)
    elif conditional:
        try:
            current = _version(_info(f"reading metadata of {url}", fs, path), backend)
        except FileNotFoundError:
            current = None
        _check_version(url, current, if_version)
    try:
        if backend.upload is not None:
            answer = backend.upload(f"writing {url}", fs, path, write, conditions)
        else:
            buf = io.BytesIO()
            write(buf)
            answer = _pipe(f"writing {url}", fs, path, buf.getvalue())
    except Exception as exc:
        if conditions and _is_conflict(exc, backend):
            raise VersionConflict(f"{url} changed while it was written: not replaced") from exc
        raise
    if isinstance(answer, dict) and (version := _version(answer, backend)):
        return version
    return file_info(url, storage_options).version


@contextmanager
def _local_lock(folder: str, name: str) -> Iterator[None]:
    """Hold an exclusive lock on ``name`` in ``folder`` (a hidden lock file beside it)."""
    with open(os.path.join(folder, f".{name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _local_version(fs: LocalFileSystem, path: str) -> str | None:
    try:
        return _version(fs.info(path))
    except FileNotFoundError:
        return None


def _check_version(url: str, current: str | None, expected: str | None) -> None:
    if current != expected:
        now = "absent" if current is None else f"at version {current}"
        raise VersionConflict(f"{url} is {now}, not {expected or 'absent'}: not replaced")


def _is_conflict(exc: BaseException, backend: Backend) -> bool:
    for err in _chain(exc):
        answer = _answer(err)
        if answer is not None and (answer[0] in backend.conflict_codes or answer[1] in (409, 412)):
            return True
    return False


#: Local file systems on block devices, where a file's data past its first
#: :data:`DIRECT_CHUNK` bytes may be written past the page cache (see :class:`_NewFile`), when
#: :data:`DIRECT_WRITES` asks for it. Elsewhere (tmpfs, overlay, network file systems, where a
#: direct write may wait on a server) writes always go through the page cache.
DIRECT_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs"})
#: The environment variable that turns direct writes on (``1``, ``true``, ``yes`` or ``on``).
#: Off by default: whether they beat the page cache depends on the disk and the machine
#: (``benchmarks/run.py --methods library library-direct disk`` measures both where it runs).
DIRECT_WRITES = "SPECTROFLOW_DIRECT_WRITES"
#: Bytes gathered before each direct write: a multiple of every device's block size.
DIRECT_CHUNK = 1 << 20
_staging = threading.local()


class _NewFile(_Sequential):
    """A new local file, written in order, a :data:`DIRECT_CHUNK` at a time.

    Writes go through the page cache, unless :data:`DIRECT_WRITES` is set and the file is on one
    of :data:`DIRECT_FILESYSTEMS` (Linux): then every chunk but the last goes straight from this
    buffer to the disk (``O_DIRECT``), with no copy into the page cache. That is faster on some
    disks and slower on others (docs/performance.md). A file system that refuses a direct write
    gets it, and the rest, through the page cache. A file that fits in one chunk is written
    through the page cache with one call.
    """

    def __init__(self, path: str):
        super().__init__()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._direct = _direct_filesystem(self._fd)
        self._direct_on = False
        # One buffer per thread, kept: fresh pages for each file would each be a page fault.
        self._buf = getattr(_staging, "buf", None) or mmap.mmap(-1, DIRECT_CHUNK)
        _staging.buf = None  # this file's until it is closed
        self._fill = 0

    def write(self, data) -> int:
        with memoryview(data) as view, view.cast("B") as raw:
            n, start = raw.nbytes, 0
            while start < n:
                take = min(DIRECT_CHUNK - self._fill, n - start)
                self._buf[self._fill : self._fill + take] = raw[start : start + take]
                self._fill += take
                start += take
                if self._fill == DIRECT_CHUNK:
                    self._flush_chunk()
        self._written += n
        return n

    def _flush_chunk(self) -> None:
        with memoryview(self._buf) as chunk:
            done = 0
            if self._direct:
                try:
                    if not self._direct_on:
                        _set_direct(self._fd, True)
                        self._direct_on = True
                    done = os.write(self._fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                if done < len(chunk):  # refused, or short: the next offset would be unaligned
                    self._direct = False
                    if self._direct_on:
                        _set_direct(self._fd, False)
                        self._direct_on = False
            _write_all(self._fd, chunk[done:])
        self._fill = 0

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._fill:
                if self._direct_on:
                    _set_direct(self._fd, False)  # an unaligned tail
                with memoryview(self._buf) as chunk:
                    _write_all(self._fd, chunk[: self._fill])
        finally:
            os.close(self._fd)
            _staging.buf = self._buf
            super().close()


def _write_all(fd: int, data) -> None:
    with memoryview(data) as view:
        start = 0
        while start < view.nbytes:
            start += os.write(fd, view[start:])


def _set_direct(fd: int, on: bool) -> None:
    import fcntl

    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)


def _direct_filesystem(fd: int) -> bool:
    """Whether direct writes are asked for (:data:`DIRECT_WRITES`) and the file open as ``fd``
    is on one of :data:`DIRECT_FILESYSTEMS`."""
    if not hasattr(os, "O_DIRECT") or not _direct_writes_asked():
        return False
    device = os.fstat(fd).st_dev
    if device not in _filesystem_types():  # mounted since the table was read
        _filesystem_types.cache_clear()
    return _filesystem_types().get(device) in DIRECT_FILESYSTEMS


def _direct_writes_asked() -> bool:
    return os.environ.get(DIRECT_WRITES, "").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def _filesystem_types() -> dict[int, str]:
    """The type of each mounted file system, by device number (Linux's mountinfo)."""
    types = {}
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                fields, _, rest = line.partition(" - ")
                major, minor = fields.split()[2].split(":")
                types[os.makedev(int(major), int(minor))] = rest.split()[0]
    except (OSError, ValueError, IndexError):
        return {}
    return types


def write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> str | None:
    """Write ``data`` to ``url`` atomically (see :func:`write_with`); returns its version."""
    def write(fh: BinaryIO) -> None:
        fh.write(data)

    return write_with(url, write, storage_options)


def touch(url: str, storage_options: dict | None = None) -> None:
    """Create an empty file or object (creating an empty file is atomic by nature)."""
    fs, path = url_to_fs(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()
        return
    _pipe(f"writing {url}", fs, path, b"")


@_retrying
def _rm(what: str, fs, path: str) -> None:
    fs.rm_file(path)


def remove(url: str, storage_options: dict | None = None) -> None:
    fs, path = url_to_fs(url, storage_options)
    _rm(f"removing {url}", fs, path)


def remove_tree(url: str, storage_options: dict | None = None) -> None:
    """Remove ``url`` and everything below it, if anything is there (names taken as written,
    never as patterns)."""
    fs, path = url_to_fs(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        shutil.rmtree(path, ignore_errors=True)
        return
    what = f"removing {url}"
    try:
        files = [info["name"] for info in _listing(what, fs, path)]
    except FileNotFoundError:
        return
    _rm_many(what, fs, files)  # in requests of 1 000 on S3
    fs.invalidate_cache()  # what the listing cached


#: Seconds a temporary file or an unfinished upload must be left unchanged before
#: :func:`remove_leftovers` takes it for a killed write's. A live write adds to it within
#: seconds (a MiB at a time locally, a 16 MiB part on S3); an hour leaves room for stalled
#: reads, retries, and the clocks of network file systems and S3, which may be minutes off ours.
LEFTOVER_AGE = 3600.0


def remove_leftovers(root: str, older_than: float = LEFTOVER_AGE, skip: tuple[str, ...] = (),
                     storage_options: dict | None = None) -> list[str]:
    """Remove what writes cut short (by a killed run) left under ``root``, once unchanged for
    ``older_than`` seconds; returns what was removed.

    Locally, the hidden temporary files of :func:`write_with` (``.<name>.<id>.tmp``) in every
    folder below ``root``, except the folders ``skip`` names (``/``-separated, below ``root``)
    and those reached through a symbolic link; on S3, the unfinished uploads of keys below
    ``root`` (see :attr:`Backend.leftovers`). A younger one may be a write in progress, by
    another run on the same destination. Elsewhere writes leave nothing behind.
    """
    fs, path = url_to_fs(root, storage_options)
    if isinstance(fs, LocalFileSystem):
        return _local_leftovers(path, older_than, {os.path.join(path, *s.split("/")) for s in skip})
    leftovers = _backend(fs).leftovers
    return leftovers(fs, path, older_than) if leftovers is not None else []


def _local_leftovers(top: str, older_than: float, skip: set[str]) -> list[str]:
    cutoff = time.time() - older_than
    removed = []
    folders = [top]
    while folders:
        try:
            entries = os.scandir(folders.pop())
        except FileNotFoundError:  # not made yet, or removed since it was listed
            continue
        with entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.path not in skip:
                        folders.append(entry.path)
                elif (_TEMPORARY.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
                      and entry.stat(follow_symlinks=False).st_mtime < cutoff):
                    try:
                        os.remove(entry.path)
                    except FileNotFoundError:  # renamed into place, or removed, meanwhile
                        continue
                    removed.append(entry.path)
    return removed


@_retrying
def retried(what: str, func: Callable[[], T]) -> T:
    """``func()``, called again (with backoff, logged under ``what``) on transient faults: for
    work that goes through a library's own storage calls, whole."""
    return func()


def zarr_store(url: str, storage_options: dict | None = None, read_only: bool = False) -> Any:
    """A zarr store rooted at ``url``: zarr's ``LocalStore`` for a local path, its
    ``FsspecStore`` (asynchronous) elsewhere."""
    import zarr.storage

    fs, path = url_to_fs(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        return zarr.storage.LocalStore(path, read_only=read_only)
    if fs.async_impl:  # the same filesystem, asynchronous, as zarr needs it; path as found here
        fs = type(fs)(**{**fs.storage_options, "asynchronous": True})
        return zarr.storage.FsspecStore(fs, read_only=read_only, path=path)
    return zarr.storage.FsspecStore.from_url(url, storage_options=storage_options,
                                             read_only=read_only)


@_retrying
def _rm_many(what: str, fs, paths: list[str]) -> None:
    backend = _backend(fs)
    if backend.delete is not None:  # in bulk; a key already gone is no error
        backend.delete(what, fs, paths)
        return
    for path in paths:
        try:
            fs.rm_file(path)
        except FileNotFoundError:  # another run removed it first
            pass


def remove_many(urls: list[str], storage_options: dict | None = None) -> None:
    """Remove ``urls`` (one backend), in bulk where the backend can (S3: 1 000 a request)."""
    if urls:
        fs, _ = url_to_fs(urls[0], storage_options)
        paths = [url_to_fs(u, storage_options)[1] for u in urls]
        _rm_many(f"removing {len(urls)} files under {urls[0]}", fs, paths)


@_retrying
def _exists(what: str, fs, path: str) -> bool:
    return fs.exists(path)


@_retrying
def _isdir(what: str, fs, path: str) -> bool:
    return fs.isdir(path)


def kind(url: str, storage_options: dict | None = None, retry: bool = True) -> str | None:
    """``"folder"`` (a folder or a prefix with objects below it), ``"file"``, or None when
    nothing is there (a missing bucket included); :class:`StorageError` when access is refused.

    ``retry=False`` asks once (a user's typo in an endpoint fails in seconds, not a minute).
    """
    fs, path = url_to_fs(url, storage_options)
    isdir, exists = (_isdir, _exists) if retry else (_isdir.__wrapped__, _exists.__wrapped__)
    try:
        if isdir(f"checking {url}", fs, path):
            return "folder"
        return "file" if exists(f"checking {url}", fs, path) else None
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise StorageError(f"cannot read {url!r}: {exc}") from exc


def source_kind(url: str, storage_options: dict | None = None, retry: bool = True) -> str:
    """:func:`kind` of a run's source, which must exist: :class:`StorageError` names it if not."""
    found = kind(url, storage_options, retry)
    if found is None:
        raise StorageError(f"source {url} does not exist (no folder, prefix or file there)")
    return found


def exists(url: str, storage_options: dict | None = None) -> bool:
    fs, path = url_to_fs(url, storage_options)
    return _exists(f"checking {url}", fs, path)


#: Size of the probe :func:`check_writable` writes: about one output of a 3 s recording, so a
#: full disk is found before any work (an empty probe fits on a full disk).
PROBE_BYTES = 1 << 20


def check_writable(root: str, storage_options: dict | None = None,
                   leave_nothing: bool = False) -> None:
    """Write and remove a probe object under ``root``; raise :class:`StorageError` if refused.

    Run once before any work so that a missing bucket, wrong credentials, a read-only or full
    destination fail the run at the start, not after computing every spectrogram. With
    ``leave_nothing``, local folders the probe made are removed with it (a check before a run
    that may then write nothing); else ``root`` is left in place for the run.
    """
    probe = join(root, f".spectroflow-probe-{uuid.uuid4().hex}")
    made = _missing_folders(root) if leave_nothing and is_local(root) else []
    try:
        write_bytes(probe, bytes(PROBE_BYTES), storage_options)
        remove(probe, storage_options)
    except Exception as exc:
        raise StorageError(
            f"destination {root!r} cannot take a file (not writable, or full): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for folder in made:  # the deepest first; one another run wrote into stays
            try:
                os.rmdir(folder)
            except OSError:
                break


def _missing_folders(root: str) -> list[str]:
    """The local folder ``root`` and those of its parents that do not exist, the deepest
    first."""
    missing = []
    path = os.path.abspath(url_to_fs(root)[1])
    while not os.path.exists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


class Location(BaseModel):
    """A URL bound to the storage options that reach it: a folder, prefix or file.

    Every run's sources and destination are locations; what they hold is read and written
    through their methods, so the options travel with the URL and no caller handles them.

    Examples
    --------
    >>> out = Location(url="s3://lab/spect", options={"anon": True})
    >>> out.join("day1/a.wav.spect.npz").url, out.join("x").options
    ('s3://lab/spect/day1/a.wav.spect.npz', {'anon': True})
    >>> str(out.at("s3://lab/audio/a.wav"))
    's3://lab/audio/a.wav'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    options: dict[str, Any] = Field(default_factory=dict)

    def __str__(self) -> str:
        return self.url

    def join(self, relpath: str) -> Location:
        """``relpath`` (``/``-separated) below this location (see :func:`join`)."""
        return self.at(join(self.url, relpath))

    def at(self, url: str) -> Location:
        """Another URL reached with the same options."""
        return Location(url=url, options=self.options)

    @property
    def is_local(self) -> bool:
        return is_local(self.url)

    def kind(self, retry: bool = True) -> str | None:
        return kind(self.url, self.options, retry)

    def exists(self) -> bool:
        return exists(self.url, self.options)

    def info(self) -> FileInfo:
        return file_info(self.url, self.options)

    def list_files(self, suffixes: tuple[str, ...]) -> list[FileInfo]:
        return list_files(self.url, suffixes, self.options)

    def iter_files(self, suffixes: tuple[str, ...]) -> Iterator[FileInfo]:
        return iter_files(self.url, suffixes, self.options)

    def read_bytes(self, size: int | None = None) -> bytes:
        return read_bytes(self.url, self.options, size)

    def open_input(self, size: int | None = None) -> AbstractContextManager[BinaryIO]:
        """A seekable binary file to read this location from (see :func:`open_input`)."""
        return open_input(self.url, self.options, size)

    def write_with(self, write: Callable[[BinaryIO], None], *, if_version: str | None = None,
                   if_absent: bool = False) -> str | None:
        """Write this location whole or not at all (see :func:`write_with`)."""
        return write_with(self.url, write, self.options, if_version=if_version,
                          if_absent=if_absent)

    def write_bytes(self, data: bytes) -> str | None:
        return write_bytes(self.url, data, self.options)

    def touch(self) -> None:
        touch(self.url, self.options)

    def remove(self) -> None:
        remove(self.url, self.options)

    def remove_tree(self) -> None:
        remove_tree(self.url, self.options)

    def zarr_store(self, read_only: bool = False) -> Any:
        """A zarr store rooted here (see :func:`zarr_store`)."""
        return zarr_store(self.url, self.options, read_only)

    def remove_leftovers(self, older_than: float = LEFTOVER_AGE,
                         skip: tuple[str, ...] = ()) -> list[str]:
        """Remove what killed writes left here (see :func:`remove_leftovers`)."""
        return remove_leftovers(self.url, older_than, skip, self.options)

    def remove_many(self, urls: list[str]) -> None:
        """Remove ``urls``, reached with this location's options."""
        remove_many(urls, self.options)

    def check_writable(self) -> None:
        check_writable(self.url, self.options)


def as_location(where: str | Location) -> Location:
    """A location as given, or a URL reached with no options."""
    return where if isinstance(where, Location) else Location(url=str(where))
