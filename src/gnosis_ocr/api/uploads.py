"""UPLOAD -> STAGING: a multipart/form-data body streamed to files, with hard size limits.

The body is parsed as it arrives with python-multipart's push parser; each file part goes to
``staging_dir / f"{index}.upload"`` in ~1 MiB writes done on a worker thread, so memory stays bounded whatever the
upload's size. Bytes are counted as they come and reading stops at the first limit crossed. Whatever goes wrong
(a limit, a malformed body, the client going away, a cancelled task), every file this call wrote is deleted before
the error leaves.

The client's file name is only ever displayed (``safe_display_name``); it never takes part in a path.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import anyio
import anyio.to_thread
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from gnosis_ocr.api.errors import ServiceError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

logger = logging.getLogger(__name__)

FLUSH_BYTES = 1024 * 1024  # buffered per file before a write
MAX_NAME_CHARS = 120
_MAX_EXTENSION_CHARS = 16  # a longer "extension" is just part of the name when capping
_SEND_AS_MULTIPART = "Send the documents as multipart/form-data with one `file` field per document."


class UploadTooLargeError(ServiceError):
    """A file, the whole body, the number of files or a form field is over its limit."""

    status = 413


class BadUploadError(ServiceError):
    """The body is not a well-formed multipart upload of the expected fields (or the client went away)."""

    status = 400


@dataclass(frozen=True)
class UploadLimits:
    max_files: int  # files per request (GNOSIS_MAX_FILES)
    max_file_bytes: int  # per file (GNOSIS_MAX_BYTES)
    max_total_bytes: int  # whole request body (GNOSIS_MAX_UPLOAD_BYTES)
    max_field_bytes: int = 4096  # each non-file form field


@dataclass(frozen=True)
class UploadedFile:
    index: int  # 0-based order in the request
    name: str  # sanitised original file name, for display only
    path: Path  # staging_dir / f"{index}.upload"
    size: int
    content_type: str | None


@dataclass(frozen=True)
class ReceivedUpload:
    files: tuple[UploadedFile, ...]
    fields: dict[str, str]


def safe_display_name(filename: str | None, index: int) -> str:
    """A file name fit to show and to put in Content-Disposition; never a path.

    Keeps the last component after ``/`` or ``\\``, NFC-normalised, whitespace collapsed to single spaces, control,
    format (e.g. right-to-left override) and other unprintable characters dropped, no leading dots or spaces, at most
    120 characters with the extension kept. ``document-N`` (1-based) when nothing is left.
    """
    text = re.split(r"[/\\]", filename or "")[-1]
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if ch.isspace() else ch for ch in text if ch.isspace() or ch.isprintable())
    text = " ".join(text.split()).lstrip(". ")
    if len(text) > MAX_NAME_CHARS:
        stem, dot, extension = text.rpartition(".")
        if dot and stem and 0 < len(extension) < _MAX_EXTENSION_CHARS:
            text = stem[: MAX_NAME_CHARS - len(extension) - 1].rstrip(" ") + "." + extension
        else:
            text = text[:MAX_NAME_CHARS].rstrip(" ")
    return text or f"document-{index + 1}"


async def receive_upload(
    request: Request,
    staging_dir: Path,
    limits: UploadLimits,
    *,
    file_field: str = "file",
    fields: frozenset[str] = frozenset({"engine", "pages", "text_layer", "callback_url"}),
) -> ReceivedUpload:
    """Stream ``request``'s multipart body into ``staging_dir`` (created if missing) and return what it held.

    Raises ``BadUploadError`` (400) or ``UploadTooLargeError`` (413) with nothing left on disk.
    """
    boundary = _boundary(request.headers.get("content-type"))
    _check_declared_length(request.headers.get("content-length"), limits)
    receiver = _Receiver(staging_dir, limits, file_field, fields)
    try:
        try:
            parser = MultipartParser(boundary, receiver.callbacks())
        except FormParserError as exc:  # a boundary over the parser's length limit
            raise BadUploadError(f"The multipart boundary is not usable: {exc}.", hint=_SEND_AS_MULTIPART) from exc
        async for chunk in request.stream():
            receiver.body_bytes += len(chunk)
            if receiver.body_bytes > limits.max_total_bytes:
                raise UploadTooLargeError(
                    f"The upload is larger than the {_size_text(limits.max_total_bytes)} a request may be "
                    "(GNOSIS_MAX_UPLOAD_BYTES).",
                    hint="Send fewer or smaller documents per request, or raise GNOSIS_MAX_UPLOAD_BYTES on the server.",
                )
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise BadUploadError(f"The multipart body is malformed: {exc}.", hint=_SEND_AS_MULTIPART) from exc
            await receiver.flush()
        receiver.finish()
        await receiver.flush()
    except ClientDisconnect as exc:
        await receiver.discard()
        logger.info("upload into %s: the client disconnected after %d bytes", staging_dir, receiver.body_bytes)
        raise BadUploadError(
            "The client disconnected before the upload was complete.", hint="Send the upload again."
        ) from exc
    except BaseException:
        await receiver.discard()
        raise
    return receiver.result()


def _boundary(content_type: str | None) -> bytes:
    kind, options = parse_options_header((content_type or "").encode("latin-1"))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        shown = _shown(content_type) if content_type else "none"
        problem = "has no boundary" if kind == b"multipart/form-data" else "is not multipart/form-data"
        raise BadUploadError(f"The request's content type ({shown}) {problem}.", hint=_SEND_AS_MULTIPART)
    return boundary


def _check_declared_length(content_length: str | None, limits: UploadLimits) -> None:
    try:
        declared = int(content_length or "")
    except ValueError:
        return  # absent (chunked) or unreadable: the running count while reading still holds
    if declared > limits.max_total_bytes:
        raise UploadTooLargeError(
            f"The upload is {_size_text(declared)} (Content-Length), larger than the "
            f"{_size_text(limits.max_total_bytes)} a request may be (GNOSIS_MAX_UPLOAD_BYTES).",
            hint="Send fewer or smaller documents per request, or raise GNOSIS_MAX_UPLOAD_BYTES on the server.",
        )


@dataclass(eq=False)
class _Staged:
    """One file part being written. The event loop fills ``buffer``; ``write`` runs on a worker thread."""

    index: int
    name: str
    path: Path
    content_type: str | None
    size: int = 0
    buffer: bytearray = field(default_factory=bytearray)
    handle: BinaryIO | None = None
    complete: bool = False  # its part has ended
    closed: bool = False

    def write(self, data: bytearray, close: bool) -> None:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = self.path.open("wb")
        self.handle.write(data)
        if close:
            self.handle.close()
            self.closed = True

    def discard(self) -> None:
        if self.handle is not None:
            self.handle.close()
        self.path.unlink(missing_ok=True)


@dataclass(eq=False)
class _Part:
    """The part the parser is in: its raw headers, then what kind of part they made it."""

    headers: dict[bytes, bytes] = field(default_factory=dict)
    header_name: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    field_name: str | None = None  # a form field (not a file)
    value: bytearray = field(default_factory=bytearray)
    is_file: bool = False
    filename: str | None = None
    content_type: str | None = None
    staged: _Staged | None = None  # begun on the first byte, or at once when it has a file name


class _Receiver:
    """The parser's callbacks: sort parts into files and fields and enforce the limits. No I/O happens here."""

    def __init__(self, staging_dir: Path, limits: UploadLimits, file_field: str, fields: frozenset[str]) -> None:
        self.staging_dir = staging_dir
        self.limits = limits
        self.file_field = file_field
        self.allowed = fields
        self.files: list[_Staged] = []
        self.fields: dict[str, str] = {}
        self.part = _Part()
        self.ended = False
        self.body_bytes = 0

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    # -- parser callbacks (data[start:end] is the parser's buffer, valid only during the call) --

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.part.header_name += memoryview(data)[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.part.header_value += memoryview(data)[start:end]

    def on_header_end(self) -> None:
        part = self.part
        part.headers[bytes(part.header_name).strip().lower()] = bytes(part.header_value).strip()
        part.header_name.clear()
        part.header_value.clear()

    def on_headers_finished(self) -> None:
        part = self.part
        disposition, options = parse_options_header(part.headers.get(b"content-disposition"))
        raw_name = options.get(b"name")
        if disposition != b"form-data" or raw_name is None:
            raise BadUploadError(
                "A part of the multipart body has no `Content-Disposition: form-data` header with a name.",
                hint=_SEND_AS_MULTIPART,
            )
        name = raw_name.decode("utf-8", "replace")
        if name == self.file_field:
            part.is_file = True
            raw_filename = options.get(b"filename")
            part.filename = None if raw_filename is None else raw_filename.decode("utf-8", "replace")
            content_type = part.headers.get(b"content-type")
            part.content_type = content_type.decode("latin-1") if content_type else None
            if part.filename:
                self._begin_file(part)
            return
        if name not in self.allowed:
            allowed = ", ".join(f"`{n}`" for n in (self.file_field, *sorted(self.allowed)))
            raise BadUploadError(
                f"The upload has a field `{_shown(name)}` that is not taken here; the fields are {allowed}.",
                hint="Remove that field, or check its spelling.",
            )
        if name in self.fields:
            raise BadUploadError(f"The field `{name}` appears more than once.", hint="Send each option once.")
        part.field_name = name
        self.fields[name] = ""  # claimed now, so a repeat is caught at its headers

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        size = end - start
        if part.is_file:
            staged = part.staged or self._begin_file(part)
            staged.size += size
            if staged.size > self.limits.max_file_bytes:
                raise UploadTooLargeError(
                    f"{staged.name} is larger than the {_size_text(self.limits.max_file_bytes)} a file may be "
                    "(GNOSIS_MAX_BYTES).",
                    hint="Split the document, or raise GNOSIS_MAX_BYTES on the server.",
                )
            staged.buffer += memoryview(data)[start:end]
        elif part.field_name is not None:
            if len(part.value) + size > self.limits.max_field_bytes:
                raise UploadTooLargeError(
                    f"The field `{part.field_name}` is longer than the {_size_text(self.limits.max_field_bytes)} "
                    "a form field may be.",
                    hint="Send a shorter value.",
                )
            part.value += memoryview(data)[start:end]

    def on_part_end(self) -> None:
        part = self.part
        if part.staged is not None:
            part.staged.complete = True
        elif part.field_name is not None:
            try:
                self.fields[part.field_name] = part.value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadUploadError(
                    f"The field `{part.field_name}` is not UTF-8 text.", hint="Send form fields as UTF-8."
                ) from exc
        # a file part with no file name and no bytes is a browser's empty file input: not a file

    def on_end(self) -> None:
        self.ended = True

    def _begin_file(self, part: _Part) -> _Staged:
        index = len(self.files)
        if index + 1 > self.limits.max_files:
            raise UploadTooLargeError(
                f"The upload has more than the {self.limits.max_files} files a request may carry (GNOSIS_MAX_FILES).",
                hint="Send the documents in several requests, or raise GNOSIS_MAX_FILES on the server.",
            )
        part.staged = _Staged(
            index=index,
            name=safe_display_name(part.filename, index),
            path=self.staging_dir / f"{index}.upload",
            content_type=part.content_type,
        )
        self.files.append(part.staged)
        return part.staged

    # -- the event loop's side --

    def finish(self) -> None:
        """The body has been read to its end: it must have closed properly and carried at least one file."""
        if not self.ended:
            raise BadUploadError(
                "The multipart body ended before its closing boundary: the upload was cut short or is malformed.",
                hint=_SEND_AS_MULTIPART,
            )
        if not self.files:
            raise BadUploadError(
                f"The upload has no `{self.file_field}` field with a document.", hint=_SEND_AS_MULTIPART
            )

    async def flush(self) -> None:
        """Write out every buffer that is full, and the rest of every file whose part has ended."""
        for staged in self.files:
            if staged.closed or not (staged.complete or len(staged.buffer) >= FLUSH_BYTES):
                continue
            data, staged.buffer = staged.buffer, bytearray()
            await anyio.to_thread.run_sync(staged.write, data, staged.complete)

    async def discard(self) -> None:
        """Delete every file this call wrote, even while the calling task is being cancelled."""
        staged = list(self.files)

        def delete() -> None:
            for item in staged:
                item.discard()

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(delete)

    def result(self) -> ReceivedUpload:
        uploaded = tuple(
            UploadedFile(index=s.index, name=s.name, path=s.path, size=s.size, content_type=s.content_type)
            for s in self.files
        )
        return ReceivedUpload(files=uploaded, fields=dict(self.fields))


def _size_text(size: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            value = size / factor
            return f"{value:,.0f} {unit}" if value.is_integer() else f"{value:,.1f} {unit}"
    return f"{size} bytes"


def _shown(text: str) -> str:
    """A client-chosen string made safe for a message and a log line."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned if len(cleaned) <= 60 else cleaned[:57] + "..."
