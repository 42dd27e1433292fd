"""s3fs's filesystem with its retry count as an option (imported with s3fs, when S3 is used)."""

from __future__ import annotations

import s3fs


class S3FileSystem(s3fs.S3FileSystem):
    """``s3fs.S3FileSystem`` that takes ``retries``: the attempts its ``_call_s3`` and reads make
    of each request before raising (s3fs's class attribute, 5, otherwise). As an option it is
    part of the instance's identity: fsspec keeps one instance per class and options, and a
    pickled instance (on its way to a worker) is made again with it."""

    def __init__(self, *args, retries: int = s3fs.S3FileSystem.retries, **kwargs):
        super().__init__(*args, **kwargs)
        self.retries = retries
