"""Where parts and results live: one layout, on a local folder or S3 via ObjectStoragePath.

``{base}/{tx}/parts/part-00001.parquet`` (fixed names: a retry overwrites, never duplicates)
and ``{base}/{tx}/result/{definition}.parquet`` (published by an atomic rename).
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from export_tx import config, formats
from export_tx.config import get_settings

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


#: The default format's suffix (a part's or a result's name ends with its format's).
DEFAULT_SUFFIX = formats.get().suffix


def _path(uri: str) -> ObjectStoragePath:
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(uri)


def tx_folder_name(tx_id: str) -> str:
    """A path segment safe on every store; the hash keeps distinct run ids distinct."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", tx_id).strip("._")[:80]
    return f"{readable}-{hashlib.sha256(tx_id.encode()).hexdigest()[:10]}"


def tx_root(tx_id: str) -> ObjectStoragePath:
    """The transaction's folder: its parts and its result."""
    return _path(f"{get_settings().storage_uri}/{tx_folder_name(tx_id)}")


def parts_dir(tx_id: str) -> ObjectStoragePath:
    return tx_root(tx_id) / "parts"


def part_path(tx_id: str, batch_no: int, suffix: str = DEFAULT_SUFFIX) -> ObjectStoragePath:
    return parts_dir(tx_id) / f"part-{batch_no:05d}{suffix}"


def result_path(tx_id: str, definition: str, suffix: str = DEFAULT_SUFFIX) -> ObjectStoragePath:
    return tx_root(tx_id) / "result" / f"{definition}{suffix}"


def temp_result_path(tx_id: str, definition: str, suffix: str = DEFAULT_SUFFIX) -> ObjectStoragePath:
    return tx_root(tx_id) / "result" / f".{definition}{suffix}.tmp"


def partial_dir(tx_id: str) -> ObjectStoragePath:
    """Where a cancelled transaction keeps its partial file (``keep_partial``)."""
    return tx_root(tx_id) / "partial"


def partial_path(tx_id: str, definition: str, suffix: str = DEFAULT_SUFFIX) -> ObjectStoragePath:
    return partial_dir(tx_id) / f"{definition}-partial{suffix}"


def remove_tree(path: ObjectStoragePath) -> bool:
    """Remove a folder and everything under it; False if there was nothing."""
    if not path.exists():
        return False
    path.fs.rm(path.path, recursive=True)
    return True


def remove(path: ObjectStoragePath) -> None:
    if path.exists():
        path.unlink()


def publish(tmp: ObjectStoragePath, final: ObjectStoragePath) -> None:
    """Make ``tmp`` visible as ``final`` in one step.

    A local rename is atomic; on S3 ``mv`` is a server-side copy that becomes visible only
    once complete, then the temporary object is deleted.
    """
    tmp.fs.mv(tmp.path, final.path)


class HashingWriter:
    """A write-only file wrapper that counts bytes and computes the sha256 on the way out."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()
        self.bytes = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self._sha.update(view)
        self._raw.write(view)
        self.bytes += len(view)
        return len(view)

    def tell(self) -> int:
        return self.bytes

    def flush(self) -> None:
        self._raw.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._raw.close()

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


def local_file(uri: str) -> str | None:
    """The local path of a ``file://`` result, or None for object storage."""
    return uri.removeprefix("file://") if uri.startswith("file://") else None


def presigned_url(uri: str, filename: str, media_type: str, expires_in: int = 300) -> str:
    """A short-lived GET URL for an ``s3://[conn_id@]bucket/key`` result."""
    from urllib.parse import urlsplit

    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    parts = urlsplit(uri)
    conn_id = parts.username or "aws_default"
    bucket = parts.hostname or ""
    key = parts.path.lstrip("/")
    hook = S3Hook(aws_conn_id=conn_id)
    params = {
        "Bucket": bucket,
        "Key": key,
        "ResponseContentDisposition": f'attachment; filename="{filename}"',
        "ResponseContentType": media_type,
    }
    public = config.s3_public_endpoint()
    if public:
        # The workers reach the object store at one address (e.g. http://minio:9000) and the
        # requester's browser at another: sign for the address the browser will use.
        client = hook.get_session().client("s3", endpoint_url=public, config=hook.config)
    else:
        client = hook.get_conn()
    return str(client.generate_presigned_url(ClientMethod="get_object", Params=params, ExpiresIn=expires_in))


def path_of(uri: str) -> ObjectStoragePath:
    return _path(uri)


SIZE_UNITS = ("kB", "MB", "GB", "TB", "PB")


def human_size(n: int) -> str:
    """Bytes in SI units with one decimal: 3,506,533 → ``3.5 MB`` (never KiB/MiB under a kB/MB name)."""
    if n < 1000:
        return f"{n:,} B"
    value = float(n)
    for unit in SIZE_UNITS:
        value /= 1000
        text = f"{value:,.1f}"
        # 999,960 bytes round to 1,000.0 kB: that is 1.0 MB.
        if float(text.replace(",", "")) < 1000 or unit == SIZE_UNITS[-1]:
            return f"{text} {unit}"
    raise AssertionError("unreachable")
