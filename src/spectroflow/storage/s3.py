"""S3 and the stores that speak its API (MinIO, Ceph, moto), through s3fs: listings a page at a
time, streamed multipart uploads, writes the store checks, deletes in bulk, and the unfinished
uploads of killed runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, ClassVar

import fsspec.asyn

from .. import names
from .backend import SequentialFile
from .errors import VersionConflict, answer, causes, check_version
from .generic import FsspecBackend
from .retry import retrying

logger = names.get_logger("spectroflow.storage")

#: Objects an S3 listing or bulk delete takes at once (S3's own maximum).
S3_PAGE = 1000
#: Size of the parts of an S3 upload, in bytes (S3 takes 5 MiB to 5 GiB a part, 10 000 parts):
#: what a streamed upload holds in memory. Each thousand parts, parts grow by as much again,
#: so an object of up to 880 GB fits in 10 000 parts.
PART_BYTES = 16 << 20
#: Error codes of a write refused because its condition no longer holds.
_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


class S3Backend(FsspecBackend):
    """S3, through s3fs. Every request goes through :meth:`request`, retried alone."""

    version_keys: ClassVar[tuple[str, ...]] = ("ETag",)

    @classmethod
    def filesystem(cls, fs_class: type, options: dict[str, Any]) -> Any:
        """s3fs's filesystem with its own retries off (``retries=1``: one attempt per request)
        and botocore's too (``config_kwargs={"retries": {"total_max_attempts": 1}}``), so that
        spectroflow's are the only ones. Options that set either keep their own."""
        from ._s3fs import S3FileSystem

        config = options.get("config_kwargs") or {}
        return S3FileSystem(**{
            "retries": 1, **options,
            "config_kwargs": {"retries": {"total_max_attempts": 1}, **config},
        })

    @retrying
    def request(self, operation: str, path: str, **kwargs: Any) -> dict:
        """The answer to one call of the S3 API (``operation`` as botocore names it:
        ``put_object``) about ``path``."""
        # fs.call_s3 would call S3FileSystem's own _call_s3, never a subclass's.
        return fsspec.asyn.sync(self.fs.loop, self.fs._call_s3, operation, **kwargs)

    def pages(self, path: str) -> Iterator[list[dict]]:
        """The objects under the prefix ``path`` (``bucket/key``) as S3 lists them: in key
        order, :data:`S3_PAGE` a request; a key ending in ``/`` (a folder marker) is no file."""
        bucket, _, key = path.partition("/")
        kwargs = {"Bucket": bucket, "Prefix": f"{key.rstrip('/')}/" if key else "",
                  "MaxKeys": S3_PAGE}
        while True:
            page = self.request("list_objects_v2", path, **kwargs)
            yield [{"name": f"{bucket}/{c['Key']}", "type": "file", "size": c["Size"],
                    "ETag": c.get("ETag"), "LastModified": c.get("LastModified")}
                   for c in page.get("Contents", ()) if not c["Key"].endswith("/")]
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def write(self, path: str, write: Callable[[BinaryIO], None], *, if_version: str | None = None,
              if_absent: bool = False) -> str | None:
        """Uploaded as it is written, a part at a time (:class:`_S3Upload`), the object appears
        whole when the upload completes; a failed write abandons the upload, whose parts S3 then
        deletes. S3 checks a condition itself (``If-Match`` / ``If-None-Match``, on PutObject
        and CompleteMultipartUpload). Some stores take a condition on PutObject and ignore it on
        CompleteMultipartUpload (moto's server does), so before completing a conditional
        multipart upload the object's version is checked too: a writer that replaced it while
        the parts were uploaded is then seen, but in the moment between that check and the
        completion."""
        conditions: dict = {}
        if if_version is not None:
            conditions = {"IfMatch": f'"{if_version}"'}
        elif if_absent:
            conditions = {"IfNoneMatch": "*"}
        upload = _S3Upload(self, path, conditions)
        try:
            write(upload)  # type: ignore[arg-type]  # a raw binary file, as writers need
            if conditions and upload.multipart:
                self.fs.invalidate_cache(path)
                check_version(self.url(path), self.current_version(path), if_version)
            done = upload.finish()
        except BaseException as exc:
            upload.abort()
            if conditions and _is_conflict(exc):
                raise VersionConflict(f"{self.url(path)} changed while it was written: "
                                      "not replaced") from exc
            raise
        return self.version(done) or self.version(self.info(path))

    def remove_many(self, paths: list[str]) -> None:
        """``delete_objects``, :data:`S3_PAGE` keys a request; a key already gone is no error."""
        keys: dict[str, list[str]] = {}
        for path in paths:
            bucket, key, _ = self.fs.split_path(path)
            keys.setdefault(bucket, []).append(key)
        for bucket, bucket_keys in keys.items():
            for start in range(0, len(bucket_keys), S3_PAGE):
                objects = [{"Key": key} for key in bucket_keys[start:start + S3_PAGE]]
                done = self.request("delete_objects", f"{bucket}/{objects[0]['Key']}",
                                    Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
                if done.get("Errors"):
                    raise OSError(f"removing {len(objects)} objects of s3://{bucket}: "
                                  f"{done['Errors'][:3]}")
        self.fs.invalidate_cache()

    def leftovers(self, path: str, older_than: float, skip: tuple[str, ...] = ()) -> list[str]:
        """Abort the multipart uploads of keys under the prefix ``path`` (``bucket/key``) that
        nothing has changed for ``older_than`` seconds: a killed run's, whose parts S3 keeps and
        bills, unseen, until they are aborted. One request when there are none."""
        bucket, _, key = path.partition("/")
        kwargs = {"Bucket": bucket, "Prefix": f"{key.rstrip('/')}/" if key else ""}
        cutoff = time.time() - older_than
        aborted = []
        while True:
            page = self.request("list_multipart_uploads", path, **kwargs)
            for upload in page.get("Uploads", ()):
                where = {"Bucket": bucket, "Key": upload["Key"], "UploadId": upload["UploadId"]}
                object_path = f"{bucket}/{upload['Key']}"
                if (upload["Initiated"].timestamp() >= cutoff
                        or self._last_part(object_path, where) >= cutoff):
                    continue
                try:
                    self.request("abort_multipart_upload", object_path, **where)
                except FileNotFoundError:  # completed or aborted meanwhile
                    continue
                aborted.append(f"s3://{object_path}")
            if not page.get("IsTruncated"):
                return aborted
            kwargs.update(KeyMarker=page["NextKeyMarker"],
                          UploadIdMarker=page["NextUploadIdMarker"])

    def _last_part(self, path: str, where: dict) -> float:
        """When the upload ``where`` last took a part (0 without parts), as a POSIX timestamp."""
        latest, kwargs = 0.0, dict(where)
        while True:
            page = self.request("list_parts", path, **kwargs)
            latest = max([latest, *(part["LastModified"].timestamp()
                                    for part in page.get("Parts", ()))])
            if not page.get("IsTruncated"):
                return latest
            kwargs["PartNumberMarker"] = page["NextPartNumberMarker"]


def _is_conflict(exc: BaseException) -> bool:
    for err in causes(exc):
        code = answer(err)
        if code is not None and (code[0] in _CONFLICT_CODES or code[1] in (409, 412)):
            return True
    return False


class _S3Upload(SequentialFile):
    """An S3 object written as a stream: held in memory up to one part, stored with one PUT if
    it ends there, else uploaded a part at a time (a multipart upload), each part retried alone.
    S3 shows the object only when the upload is completed: whole, or not at all."""

    def __init__(self, backend: S3Backend, path: str, conditions: dict):
        super().__init__()
        bucket, key, _ = backend.fs.split_path(path)
        self._backend, self._path = backend, path
        self._where = {"Bucket": bucket, "Key": key}
        self._conditions = conditions
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

    def _request(self, operation: str, **kwargs: Any) -> dict:
        return self._backend.request(operation, self._path, **self._where, **kwargs)

    def _send(self, n: int) -> None:
        if self._upload_id is None:
            self._upload_id = self._request("create_multipart_upload")["UploadId"]
        with memoryview(self._held) as view:
            body = bytes(view[:n])
        del self._held[:n]
        number = len(self._parts) + 1
        sent = self._request("upload_part", Body=body, PartNumber=number,
                             UploadId=self._upload_id)
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    @property
    def multipart(self) -> bool:
        """Whether the object is being uploaded in parts (its first part is sent)."""
        return self._upload_id is not None

    def finish(self) -> dict:
        """Store what was written; returns S3's answer (with the object's ETag)."""
        if self._upload_id is None:
            done = self._request("put_object", Body=bytes(self._held), **self._conditions)
        else:
            if self._held:
                self._send(len(self._held))
            done = self._request("complete_multipart_upload", UploadId=self._upload_id,
                                 MultipartUpload={"Parts": self._parts}, **self._conditions)
        self._backend.fs.invalidate_cache(self._path)
        return done

    def abort(self) -> None:
        """Give up: the parts uploaded are deleted, and no object appears."""
        if self._upload_id is None:
            return
        try:
            self._request("abort_multipart_upload", UploadId=self._upload_id)
        except Exception as exc:  # noqa: BLE001 - the write's own failure is what matters
            logger.warning(
                "the parts of an abandoned upload (s3://%s, UploadId %s) could not be deleted: "
                "%s: %s; S3 keeps them, unseen, until a lifecycle rule "
                "(AbortIncompleteMultipartUpload) or an abort_multipart_upload removes them",
                self._path, self._upload_id, type(exc).__name__, exc)
