"""What the rest of spectroflow does with storage: list, read, write, remove and check, by URL,
each on the backend of its URL (:func:`~spectroflow.storage.registry.backend_for`)."""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, BinaryIO

from .backend import Backend
from .errors import StorageError
from .registry import backend_for
from .retry import retrying
from .urls import is_local, join, url_to_fs


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


def _backend(url: str, storage_options: dict | None) -> tuple[Backend, str]:
    fs, path = url_to_fs(url, storage_options)
    return backend_for(fs), path


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
    (or a local folder) at a time (see :meth:`Backend.pages`)."""
    fs, base = url_to_fs(root, storage_options)
    backend = backend_for(fs)
    try:
        if retrying(backend.kind)(base) != "folder":
            raise StorageError(f"{root!r} is not a folder or prefix that exists")
        lowered = tuple(s.lower() for s in suffixes)
        prefix = base.rstrip("/") + "/"
        last = ""
        for page in backend.pages(base):
            for info in page:
                path = info["name"]
                if info.get("type", "file") != "file" or not path.lower().endswith(lowered):
                    continue
                # The names below the root as listed: posixpath.relpath would resolve an object
                # key's "..", naming another object (the key itself is refused later, as an
                # output name).
                rel = path[len(prefix) :]
                if rel < last:  # what is up to date is decided by merging listings in this order
                    raise StorageError(
                        f"{root!r} was not listed in order of names ({last!r}, then {rel!r})")
                last = rel
                yield FileInfo(join(root, rel), rel, info.get("size"), backend.version(info),
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
    backend, path = _backend(url, storage_options)
    info = backend.info(path)
    return FileInfo(url, posixpath.basename(path), info.get("size"), backend.version(info))


def read_bytes(url: str, storage_options: dict | None = None, size: int | None = None) -> bytes:
    """The whole content of ``url``; a body shorter than the object is retried.

    ``size`` is the size a listing gave: a body of another size is a truncated transfer (retried),
    unless the object's size now is the body's: it changed since it was listed
    (:class:`~spectroflow.storage.errors.ChangedWhileReadingError`, not retried).
    """
    backend, path = _backend(url, storage_options)
    return backend.read(path, size)


def open_input(
    url: str, storage_options: dict | None = None, size: int | None = None
) -> AbstractContextManager[BinaryIO]:
    """A seekable binary file to read ``url`` from, in memory that does not grow with its size.

    A local file is opened as it is; another is read whole into memory up to
    :data:`~spectroflow.storage.generic.WHOLE_READ_BYTES`, else copied to a local temporary
    file (retried as :func:`read_bytes` is). ``size`` is as for :func:`read_bytes`: a file of
    another size is truncated (retried) or has changed since it was listed.
    """
    backend, path = _backend(url, storage_options)
    return backend.open_input(path, size)


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

    Locally, ``write`` fills a hidden temporary file renamed over the target when it is done
    (:meth:`LocalBackend.write <spectroflow.storage.local.LocalBackend.write>`). On S3, the
    object is uploaded as it is written, a part at a time, and appears whole when the upload
    completes (:meth:`S3Backend.write <spectroflow.storage.s3.S3Backend.write>`). Elsewhere
    ``write`` fills memory and the object is stored with one PUT, which is atomic on object
    stores (an object appears whole or not at all).

    With ``if_version`` (or ``if_absent``), the file is written only if it is still at that
    version (or still absent), else :class:`~spectroflow.storage.errors.VersionConflict` is
    raised and nothing is written: a read-modify-write that two processes may run at once.
    Locally the check and the rename hold a lock; on S3 the store checks; elsewhere the version
    is checked just before the write.
    """
    backend, path = _backend(url, storage_options)
    return backend.write(path, write, if_version=if_version, if_absent=if_absent)


def write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> str | None:
    """Write ``data`` to ``url`` atomically (see :func:`write_with`); returns its version."""
    def write(fh: BinaryIO) -> None:
        fh.write(data)

    return write_with(url, write, storage_options)


def touch(url: str, storage_options: dict | None = None) -> None:
    """Create an empty file or object (creating an empty file is atomic by nature)."""
    backend, path = _backend(url, storage_options)
    backend.touch(path)


def remove(url: str, storage_options: dict | None = None) -> None:
    backend, path = _backend(url, storage_options)
    backend.remove(path)


def remove_tree(url: str, storage_options: dict | None = None) -> None:
    """Remove ``url`` and everything below it, if anything is there (names taken as written,
    never as patterns)."""
    backend, path = _backend(url, storage_options)
    backend.remove_tree(path)


def remove_many(urls: list[str], storage_options: dict | None = None) -> None:
    """Remove ``urls`` (one backend), in bulk where the backend can (S3: 1 000 a request)."""
    if urls:
        backend, _ = _backend(urls[0], storage_options)
        backend.remove_many([url_to_fs(u, storage_options)[1] for u in urls])


#: Seconds a temporary file or an unfinished upload must be left unchanged before
#: :func:`remove_leftovers` takes it for a killed write's. A live write adds to it within
#: seconds (a MiB at a time locally, a 16 MiB part on S3); an hour leaves room for stalled
#: reads, retries, and the clocks of network file systems and S3, which may be minutes off ours.
LEFTOVER_AGE = 3600.0


def remove_leftovers(root: str, older_than: float = LEFTOVER_AGE, skip: tuple[str, ...] = (),
                     storage_options: dict | None = None) -> list[str]:
    """Remove what writes cut short (by a killed run) left under ``root``, once unchanged for
    ``older_than`` seconds; returns what was removed.

    Locally, the hidden temporary files of :func:`write_with` in every folder below ``root``,
    except the folders ``skip`` names (``/``-separated, below ``root``) and those reached
    through a symbolic link; on S3, the unfinished uploads of keys below ``root`` (see
    :meth:`Backend.leftovers`). A younger one may be a write in progress, by another run on the
    same destination. Elsewhere writes leave nothing behind.
    """
    backend, path = _backend(root, storage_options)
    return backend.leftovers(path, older_than, skip)


def zarr_store(url: str, storage_options: dict | None = None, read_only: bool = False) -> Any:
    """A zarr store rooted at ``url``: zarr's ``LocalStore`` for a local path, its
    ``FsspecStore`` (asynchronous) elsewhere."""
    backend, path = _backend(url, storage_options)
    return backend.zarr_store(path, read_only)


def kind(url: str, storage_options: dict | None = None, retry: bool = True) -> str | None:
    """``"folder"`` (a folder or a prefix with objects below it), ``"file"``, or None when
    nothing is there (a missing bucket included); :class:`StorageError` when access is refused.

    ``retry=False`` asks once (a user's typo in an endpoint fails in seconds, not a minute).
    """
    backend, path = _backend(url, storage_options)
    try:
        return retrying(backend.kind)(path) if retry else backend.kind(path)
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
    backend, path = _backend(url, storage_options)
    return backend.exists(path)


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
