"""Files on this machine's file systems: a folder walked one folder at a time, writes to a hidden
temporary file renamed into place, conditional writes under a lock."""

from __future__ import annotations

import errno
import fcntl
import functools
import mmap
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, BinaryIO, ClassVar

from .. import names
from .backend import SequentialFile
from .errors import ChangedWhileReadingError, check_version
from .generic import FsspecBackend

logger = names.get_logger("spectroflow.storage")

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


class LocalBackend(FsspecBackend):
    """A local file system, through fsspec's ``LocalFileSystem`` where it serves and the ``os``
    module where a file's name, lock or rename matters."""

    version_keys: ClassVar[tuple[str, ...]] = ()

    def url(self, path: str) -> str:
        return path

    def pages(self, path: str) -> Iterator[list[dict]]:
        """The files under the folder ``path``, in order of their paths below it, following
        symbolic links; a page is a folder's files up to its next subfolder.

        vak's glob follows links, so ``top/x.wav -> /elsewhere/x.wav`` and ``top/dir ->
        /elsewhere`` are listed, under the names seen through them (``top/dir/a.wav``) with their
        targets' details. A link to a folder of ``path``'s own tree is not followed (that folder
        is listed where it is), and no folder is listed twice however many links lead to it, so
        a loop of links ends. A broken link is listed, with no size, so that a recording it
        stood for fails and is reported instead of vanishing. A subfolder that cannot be read is
        logged and left out, as vak's glob leaves it out. One folder's entries per level of
        depth are held at once.
        """
        walk = _LocalWalk(self.fs, path)
        open_folders = [iter(walk.entries(path, linked=False))]
        page: list[dict] = []
        while open_folders:
            info = next(open_folders[-1], None)
            if info is None:
                open_folders.pop()
            elif info["type"] == "directory":
                if page:
                    yield page
                    page = []
                open_folders.append(iter(walk.entries(info["name"], info["linked"])))
            else:
                page.append(info)
        if page:
            yield page

    @contextmanager
    def open_input(self, path: str, size: int | None = None) -> Iterator[BinaryIO]:
        """The file itself, opened."""
        with open(path, "rb") as fh:
            now = os.fstat(fh.fileno()).st_size
            if size is not None and now != size:
                raise ChangedWhileReadingError.sizes(size, now)
            yield fh

    def write(self, path: str, write: Callable[[BinaryIO], None], *, if_version: str | None = None,
              if_absent: bool = False) -> str | None:
        """``write`` fills a temporary file in the same folder (see :class:`_NewFile`), which is
        then renamed over ``path``, so a reader or a killed run never finds a partial file under
        its name (no fsync per file: it cost a third of the run time; durability across power
        loss is left to the file system). A conditional write's check and rename hold a lock
        (``fcntl.flock`` on a hidden ``.<name>.lock`` beside the file)."""
        conditional = if_version is not None or if_absent
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, _temporary_name(name))
        try:
            with _NewFile(tmp) as fh:
                write(fh)  # type: ignore[arg-type]  # a raw binary file, as writers need
            # Its details once closed (network and FUSE file systems may set mtime at close), as
            # a listing gives them; the temporary name is this call's alone.
            version = self.version(self.fs.info(tmp))
            with _lock(folder, name) if conditional else nullcontext():
                if conditional:
                    check_version(path, self.current_version(path), if_version)
                os.replace(tmp, path)  # keeps the inode and mtime
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return version

    def touch(self, path: str) -> None:
        """An empty file, made in place: creating one is atomic by nature."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()

    def remove_tree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def leftovers(self, path: str, older_than: float, skip: tuple[str, ...] = ()) -> list[str]:
        """Remove the hidden temporary files of :meth:`write` (``.<name>.<id>.tmp``) in every
        folder below ``path``, except the folders ``skip`` names (``/``-separated, below
        ``path``) and those reached through a symbolic link."""
        skipped = {os.path.join(path, *folder.split("/")) for folder in skip}
        cutoff = time.time() - older_than
        removed = []
        folders = [path]
        while folders:
            try:
                entries = os.scandir(folders.pop())
            except FileNotFoundError:  # not made yet, or removed since it was listed
                continue
            with entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.path not in skipped:
                            folders.append(entry.path)
                    elif (_TEMPORARY.fullmatch(entry.name)
                          and entry.is_file(follow_symlinks=False)
                          and entry.stat(follow_symlinks=False).st_mtime < cutoff):
                        try:
                            os.remove(entry.path)
                        except FileNotFoundError:  # renamed into place, or removed, meanwhile
                            continue
                        removed.append(entry.path)
        return removed

    def zarr_store(self, path: str, read_only: bool = False) -> Any:
        """zarr's ``LocalStore``."""
        import zarr.storage

        return zarr.storage.LocalStore(path, read_only=read_only)


@contextmanager
def _lock(folder: str, name: str) -> Iterator[None]:
    """Hold an exclusive lock on ``name`` in ``folder`` (a hidden lock file beside it)."""
    with open(os.path.join(folder, f".{name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _LocalWalk:
    """The folders of a local walk (:meth:`LocalBackend.pages`), listed one at a time."""

    def __init__(self, fs: Any, top: str):
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


#: Local file systems on block devices, where a file's data past its first
#: :data:`DIRECT_CHUNK` bytes may be written past the page cache (see :class:`_NewFile`).
#: Elsewhere (tmpfs, overlay, network file systems, where a direct write may wait on a server)
#: writes always go through the page cache.
DIRECT_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs"})
#: The environment variable that chooses how outputs reach such a file system: ``auto`` (or
#: unset) as measured (:class:`WriteTimes`), ``1`` / ``on`` past the page cache always, ``0`` /
#: ``off`` through it always.
DIRECT_WRITES = "SPECTROFLOW_DIRECT_WRITES"
#: Bytes gathered before each direct write: a multiple of every device's block size.
DIRECT_CHUNK = 1 << 20
_staging = threading.local()


class WriteTimes:
    """Which way this process writes its next file to a device: through the page cache or past
    it (``O_DIRECT``), whichever has brought its recent files to the disk faster.

    Which is faster depends on the disk, the memory and the writes already waiting in the page
    cache, and changes as a run goes on: each way's seconds per byte are kept as a moving average
    per device. A write past the page cache ends on the disk, and is timed as it goes; a write
    into it ends in memory, and the disk's share of its cost comes later, in other writes: the
    files that time the page cache are synced (``fdatasync``) before they count. The first file
    goes through the page cache, timed, the second past it; then (once each has been timed) each
    goes the faster way, but every :attr:`RETRY`-th goes the other way, timed, so that both
    averages follow the disk.

    Examples
    --------
    >>> times = WriteTimes()
    >>> times.choose(1)
    (False, True)
    >>> times.wrote(1, False, seconds=2.0, nbytes=100)
    >>> times.choose(1)
    (True, True)
    >>> times.wrote(1, True, seconds=1.0, nbytes=100)
    >>> [times.choose(1) for _ in range(WriteTimes.RETRY)].count((False, True))
    1
    """

    #: Every how many files the slower way is tried again.
    RETRY = 16
    #: Weight of the latest file in a way's moving average.
    WEIGHT = 0.25

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pace: dict[tuple[int, bool], float] = {}  # (device, direct) -> seconds per byte
        self._files: dict[int, int] = {}

    def choose(self, device: int) -> tuple[bool, bool]:
        """For the next file to ``device``: whether to write it past the page cache, and whether
        to time it (:meth:`wrote`)."""
        with self._lock:
            n = self._files[device] = self._files.get(device, 0) + 1
            cached, direct = self._pace.get((device, False)), self._pace.get((device, True))
            if cached is None or direct is None:
                return cached is not None, True
            retry = n % self.RETRY == 0
            if direct < cached:
                return not retry, True
            # Through the page cache, untimed but now and then: timing syncs the file.
            return retry, retry or n % self.RETRY == self.RETRY // 2

    def wrote(self, device: int, direct: bool, seconds: float, nbytes: int) -> None:
        """Count a file's writes: ``nbytes`` written one way in ``seconds``."""
        if nbytes <= 0:
            return
        with self._lock:
            pace, old = seconds / nbytes, self._pace.get((device, direct))
            self._pace[device, direct] = (pace if old is None
                                          else old + self.WEIGHT * (pace - old))

    def refused(self, device: int) -> None:
        """``device`` refused a direct write: its files go through the page cache."""
        with self._lock:
            self._pace[device, True] = float("inf")


_write_times = WriteTimes()


class _NewFile(SequentialFile):
    """A new local file, written in order, a :data:`DIRECT_CHUNK` at a time.

    On one of :data:`DIRECT_FILESYSTEMS` (Linux), every chunk but the last may go straight from
    this buffer to the disk (``O_DIRECT``), with no copy into the page cache, as
    :data:`DIRECT_WRITES` says: by default, when that has been the faster way of late
    (:class:`WriteTimes`, which this file tells how long its chunks took). A file system that
    refuses a direct write gets it, and the rest, through the page cache. A file that fits in
    one chunk is written through the page cache with one call.
    """

    def __init__(self, path: str):
        super().__init__()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self._device, self._direct, self._timed = _write_path(self._fd)
        self._direct_on = False
        self._seconds = 0.0  # spent writing whole chunks
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
        start = time.perf_counter()
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
                    if self._device is not None:
                        _write_times.refused(self._device)
                    if self._direct_on:
                        _set_direct(self._fd, False)
                        self._direct_on = False
            _write_all(self._fd, chunk[done:])
        self._fill = 0
        self._seconds += time.perf_counter() - start

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._device is not None and self._timed and self._written > DIRECT_CHUNK:
                if not self._direct:  # the disk's share of the chunks' cost
                    start = time.perf_counter()
                    os.fdatasync(self._fd)
                    self._seconds += time.perf_counter() - start
                chunks = self._written // DIRECT_CHUNK * DIRECT_CHUNK
                _write_times.wrote(self._device, self._direct, self._seconds, chunks)
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
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)


def _write_path(fd: int) -> tuple[int | None, bool, bool]:
    """The device of the file open as ``fd`` when it is on one of :data:`DIRECT_FILESYSTEMS`
    (else None), whether to write it past the page cache (:data:`DIRECT_WRITES`), and whether
    to time it (:class:`WriteTimes`)."""
    asked = os.environ.get(DIRECT_WRITES, "").strip().lower()
    if not hasattr(os, "O_DIRECT") or asked in ("0", "false", "no", "off"):
        return None, False, False
    device = os.fstat(fd).st_dev
    if device not in _filesystem_types():  # mounted since the table was read
        _filesystem_types.cache_clear()
    if _filesystem_types().get(device) not in DIRECT_FILESYSTEMS:
        return None, False, False
    if asked in ("1", "true", "yes", "on"):
        return device, True, False
    return (device, *_write_times.choose(device))


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
