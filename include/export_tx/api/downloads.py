"""What the download route answers: the file with its ranges, validators and digests
(:mod:`export_tx.transfer`), 304 and 416, and how its OpenAPI description says so.

Ranges are Starlette's ``FileResponse``: one range, several (``multipart/byteranges``), a suffix
(``bytes=-N``), ``If-Range`` against the ETag. Two of its answers are made the API's own: a Range
it cannot read is ignored (the whole file, 200: RFC 9110 §14.2 lets a server ignore Range, where
Starlette answers a plain-text 400), and a range past the end is the API's JSON 416, which names
the file's size and carries the validators like every other answer about the file.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import Header, status
from fastapi.responses import JSONResponse, Response
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable

from export_tx import formats
from export_tx.api.views import ErrorBody

#: Bounds of the headers a download reads (longer: 422 naming the header). 100 ranges fit.
RANGE_MAX_CHARS = 4096
VALIDATOR_MAX_CHARS = 1024

RangeHeader = Annotated[
    str | None,
    Header(
        alias="Range",
        max_length=RANGE_MAX_CHARS,
        description="bytes=FIRST-LAST, bytes=FIRST- (to the end) or bytes=-N (the last N bytes), several "
        "comma-separated: 206 with those bytes; a first byte past the end: 416. A Range that cannot be read is "
        "ignored (the whole file, 200). On S3 the 303's Location answers Range itself",
    ),
]
IfRangeHeader = Annotated[
    str | None,
    Header(
        alias="If-Range",
        max_length=VALIDATOR_MAX_CHARS,
        description='the ETag ("sha256-<hex>") of the file the client holds a part of: the range is sent only '
        "while the file is that one, otherwise the whole file (200)",
    ),
]
IfNoneMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        max_length=VALIDATOR_MAX_CHARS,
        description="ETags the client holds (comma-separated, or *): 304 when one is the file's",
    ),
]


class FileDownload(FileResponse):
    """Starlette's ``FileResponse``, sent as stored: ``Content-Encoding: identity``.

    Airflow's api-server compresses every answer whose client accepts gzip (its GZipMiddleware
    wraps the plugin's app) unless the answer names its coding. A result is sent as it is stored
    instead: Parquet and ``.gz`` files are compressed already, and a recompressed 200 would lose
    its ``Content-Length`` and not be the bytes that ranges, the ETag and the digests describe."""

    def __init__(self, path: str, stat: os.stat_result, media_type: str, filename: str,
                 validators: dict[str, str]) -> None:  # fmt: skip
        super().__init__(path, stat_result=stat, media_type=media_type, filename=filename,
                         headers={**validators, "Content-Encoding": "identity"})  # fmt: skip

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader:
            return []  # ignored: the whole file

    def unsatisfiable(self, http_range: str | None, if_range: str | None) -> bool:
        """Whether the answer would be 416: a Range that applies (no If-Range, or one naming this
        file) and starts past the end. Decided before the answer starts, by Starlette's own rules."""
        if http_range is None or (if_range is not None and not self._should_use_range(if_range)):
            return False
        assert self.stat_result is not None
        try:
            self._parse_range_header(http_range, self.stat_result.st_size)
        except RangeNotSatisfiable:
            return True
        return False


def not_modified(validators: dict[str, str]) -> Response:
    """304: the client holds the file (its If-None-Match named the ETag)."""
    return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=validators)


def range_not_satisfiable(size: int, validators: dict[str, str]) -> JSONResponse:
    """416, naming the file's size (``Content-Range: bytes */SIZE``), never the Range asked for."""
    message = f"a requested range starts at or past the end of the file ({size:,} bytes)"
    body = {"detail": f"the range is not satisfiable: {message}", "errors": [{"field": "Range", "message": message}]}
    headers = {**validators, "Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"}
    return JSONResponse(body, status_code=status.HTTP_416_RANGE_NOT_SATISFIABLE, headers=headers)


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


_VALIDATORS = {
    "ETag": _header('strong validator of the file, from its sha256: "sha256-<64 hex digits>" (quotes included)'),
    "Repr-Digest": _header(
        "RFC 9530: the sha256 of the whole file, sha-256=:<base64 of the 32 bytes>: (a 206 too: the whole file's)"
    ),
    "Digest": _header("RFC 3230, for older clients: the same sha256, SHA-256=<base64 of the 32 bytes>"),
}
_FILE_HEADERS = {
    **_VALIDATORS,
    "Accept-Ranges": _header("bytes"),
    "Content-Disposition": _header('attachment; filename="<definition>-<token><suffix>"'),
    "Content-Encoding": _header("identity: the file as stored, never recompressed on the way"),
}
_FILE_CONTENT = {
    media_type: {"schema": {"type": "string", "format": "binary"}}
    for media_type in dict.fromkeys(f.media_type for f in formats.FORMATS.values())
}

#: The download's answers besides the errors every route shares, for ``responses=``.
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the whole file, in the format it was requested in (Content-Length: its size)",
        "content": _FILE_CONTENT,
        "headers": {**_FILE_HEADERS, "Content-Length": _header("the file's size in bytes")},
    },
    206: {
        "description": "the requested range of the file (Content-Range: bytes FIRST-LAST/SIZE), or several as "
        "multipart/byteranges; Range applied, and If-Range (when given) named the file's ETag",
        "content": {**_FILE_CONTENT, "multipart/byteranges": {"schema": {"type": "string", "format": "binary"}}},
        "headers": {**_FILE_HEADERS, "Content-Range": _header("bytes FIRST-LAST/SIZE (one range)")},
    },
    303: {
        "description": "the file is on object storage: Location is a 5-minute presigned URL of it, which answers "
        "Range as well (ask this route again for a fresh one). ETag, Repr-Digest and Digest are this API's, of the "
        "file, known before following; the object store's own ETag is another",
        "headers": {"Location": _header("the presigned URL"), **_VALIDATORS},
    },
    304: {"description": "If-None-Match named the file's ETag: the client holds the file", "headers": _VALIDATORS},
    416: {
        "model": ErrorBody,
        "description": "a requested range starts at or past the end of the file (e.g. resuming a download that is "
        "complete already); Content-Range: bytes */SIZE",
        "headers": {"Content-Range": _header("bytes */SIZE"), **_VALIDATORS},
    },
}
