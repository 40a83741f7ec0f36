"""Conditional writes on object stores: the store itself decides who wrote first, never a lock through a mount.

One primitive, used by job ownership (``jobs/store.py``) and by the model cache's download lease
(``modelcache/objectlease.py``). A *version token* names the object read or written; a write or delete that
carries it succeeds only while the object is still at that version (``ABSENT``: only while there is none).

* ``gs://``: the token is the object's generation; writes are one multipart upload with ``ifGenerationMatch``
  (``0`` for ABSENT). Multipart, not ``uploadType=media``: GCS honours the precondition on both, fake-gcs-server
  only on multipart and resumable uploads. Deletes carry ``ifGenerationMatch`` too.
* ``s3://``: the token is the ETag; writes are a PutObject with ``If-Match`` (``If-None-Match: *`` for ABSENT),
  deletes a DeleteObject with ``If-Match``. A 409 ConditionalRequestConflict is retried, as AWS advises. moto (the
  tests' emulator) enforces the preconditions one request at a time but not atomically under concurrency.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Final, Literal
from urllib.parse import quote

ABSENT: Final = "absent"
"""``expect=ABSENT``: create only, fail if the object exists."""

StoreKind = Literal["gcs", "s3"]

_CONFLICT_RETRIES = 3  # S3 409 ConditionalRequestConflict: "retry the request" (AWS PutObject reference)


class PreconditionFailed(Exception):
    """The store refused a conditional write: the object is no longer at the expected version (or is gone)."""


class ConditionalConflict(Exception):
    """S3 409 ConditionalRequestConflict: a concurrent operation on the key; the write may be retried."""


def store_kind(fs: Any) -> StoreKind | None:
    """Which conditional-write protocol an fsspec filesystem speaks (None: none known here)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if {"gs", "gcs"} & set(protocols):
        return "gcs"
    if "s3" in protocols:
        return "s3"
    return None


def read_versioned(fs: Any, kind: StoreKind, path: str) -> tuple[bytes, str] | None:
    """Body and version of one object, from one read (never a stat and a read that could straddle a write);
    None when there is no such object."""
    try:
        if kind == "gcs":
            headers, data = fs.call("GET", fs.url(path))
            generation = headers.get("x-goog-generation")
            if not generation:
                raise OSError(f"GCS sent {path} without an x-goog-generation header")
            return bytes(data), str(generation)
        import fsspec.asyn

        bucket, key, _ = fs.split_path(path)
        body, etag = fsspec.asyn.sync(fs.loop, _s3_get, fs, bucket, key)
        return body, etag
    except (FileNotFoundError, NotADirectoryError):
        return None


async def _s3_get(fs: Any, bucket: str, key: str) -> tuple[bytes, str]:
    out = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    async with out["Body"] as body:
        data: bytes = await body.read()
    return data, str(out["ETag"])


def put_if(fs: Any, kind: StoreKind, path: str, data: bytes, expect: str) -> str:
    """Write ``data`` only if ``path`` is at version ``expect`` (ABSENT: does not exist); the new version.

    PreconditionFailed when the store refuses."""
    for attempt in range(_CONFLICT_RETRIES):
        try:
            token = _gcs_put_if(fs, path, data, expect) if kind == "gcs" else _s3_put_if(fs, path, data, expect)
        except ConditionalConflict:
            if attempt == _CONFLICT_RETRIES - 1:
                raise PreconditionFailed from None
            time.sleep(0.05 * (attempt + 1))
            continue
        fs.invalidate_cache(path)
        return token
    raise AssertionError("unreachable")


def delete_if(fs: Any, kind: StoreKind, path: str, expect: str) -> None:
    """Delete ``path`` only if it is still at version ``expect``. PreconditionFailed when it is not; nothing when
    it is already gone."""
    bucket, key, _ = fs.split_path(path)
    try:
        if kind == "gcs":
            fs.call(
                "DELETE",
                f"{fs._location}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(key, safe='')}",
                ifGenerationMatch=expect,
            )
        else:
            try:
                fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=expect)
            except OSError as exc:
                code = s3_error_code(exc)
                if code == "PreconditionFailed":
                    raise PreconditionFailed from exc
                if code != "NoSuchKey":
                    raise
    except FileNotFoundError:
        pass
    except FileExistsError as exc:  # gcsfs raises this for HTTP 412 Precondition Failed
        raise PreconditionFailed from exc
    fs.invalidate_cache(path)


def _gcs_put_if(fs: Any, path: str, data: bytes, expect: str) -> str:
    bucket, key, _ = fs.split_path(path)
    boundary = secrets.token_hex(16)
    head = (
        f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json.dumps({'name': key})}\r\n"
        f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    try:
        out = fs.call(
            "POST",
            f"{fs._location}/upload/storage/v1/b/{quote(bucket, safe='')}/o",
            uploadType="multipart",
            ifGenerationMatch="0" if expect == ABSENT else expect,
            headers={"Content-Type": f'multipart/related; boundary="{boundary}"'},
            data=head.encode() + data + f"\r\n--{boundary}--\r\n".encode(),
            json_out=True,
        )
    except FileExistsError as exc:  # gcsfs raises this for HTTP 412 Precondition Failed
        raise PreconditionFailed from exc
    return str(out["generation"])


def _s3_put_if(fs: Any, path: str, data: bytes, expect: str) -> str:
    bucket, key, _ = fs.split_path(path)
    condition = {"IfNoneMatch": "*"} if expect == ABSENT else {"IfMatch": expect}
    try:
        out = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
    except OSError as exc:  # s3fs translates the ClientError and keeps it as __cause__
        code = s3_error_code(exc)
        if code == "PreconditionFailed" or (code == "NoSuchKey" and expect != ABSENT):
            raise PreconditionFailed from exc  # NoSuchKey: If-Match on a deleted object
        if code == "ConditionalRequestConflict":
            raise ConditionalConflict from exc
        raise
    return str(out["ETag"])


def s3_error_code(exc: BaseException) -> str | None:
    response = getattr(exc.__cause__, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None
