"""URLs and paths: the filesystem a URL is on, and the one way a run writes a path."""

from __future__ import annotations

import functools
import os
import re

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .registry import backend_class

#: ``s3://``, ``file://``...: a protocol, two letters or more (``C://`` is a Windows drive).
_PROTOCOL = re.compile(r"[A-Za-z][A-Za-z0-9+._-]+://")


def url_to_fs(url: str, storage_options: dict | None = None):
    """The filesystem and backend path for ``url`` (fsspec caches instances per options).

    A path without a protocol, or a ``file://`` URL, is local and kept as written, ``:`` and
    ``::`` included. fsspec reads every ``::`` as a link of a chained URL, so it opened
    ``sub/a`` for ``sub/a::b.wav`` and ``s3://b/a`` for ``s3://b/a::b.wav``; here a URL is
    chained only if it starts with a protocol name and ``::`` (``simplecache::s3://b/k``) or ends
    with a URL (``zip://a.wav::s3://b/x.zip``).

    The filesystem is made by the URL's backend
    (:func:`~spectroflow.storage.registry.backend_class`): on S3, s3fs's and botocore's own
    retries are off unless the options set them, since spectroflow retries each request itself
    (:meth:`~spectroflow.storage.s3.S3Backend.filesystem`). A chained URL goes to fsspec as it is.

    Examples
    --------
    >>> fs, path = url_to_fs("/data/sub/a::b.wav")
    >>> type(fs).__name__, path
    ('LocalFileSystem', '/data/sub/a::b.wav')
    >>> url_to_fs("file:///data/12:30:00.wav")[1]
    '/data/12:30:00.wav'
    >>> fs, path = url_to_fs("s3://bucket/rec/a::b.wav", {"anon": True})
    >>> path, fs.retries, fs.config_kwargs["retries"]
    ('bucket/rec/a::b.wav', 1, {'total_max_attempts': 1})
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
    return backend_class(protocol).filesystem(cls, kwargs), cls._strip_protocol(url)


@functools.cache
def _local_fs() -> LocalFileSystem:
    return LocalFileSystem()


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
