"""A result file on the wire: its validator and digests, as the API sends them and the CLI checks them.

All of them come from the sha256 recorded when the file was written (the header's
``result_sha256``): answering never reads the file to hash it.

* ``ETag: "sha256-<hex>"`` — a strong validator, equal exactly when the bytes are: ``If-Range``
  with it resumes a download of the same file, and any other file is sent whole. The prefix says
  what it is and tells it apart from an object store's own ETag (an MD5 on S3).
* ``Repr-Digest: sha-256=:<base64>:`` (RFC 9530) and ``Digest: SHA-256=<base64>`` (RFC 3230, for
  older clients): the sha256 of the whole file, on every answer about it — a 206 carrying one part
  of it too — so a client checks what it assembled without reading it twice.
"""

from __future__ import annotations

import base64
import binascii

ETAG_PREFIX = "sha256-"
#: RFC 9530's name of the algorithm (lower case, in a structured-field dictionary).
REPR_DIGEST_ALGORITHM = "sha-256"
#: RFC 3230's (RFC 5843's registry: upper case).
DIGEST_ALGORITHM = "SHA-256"


def etag(sha256_hex: str) -> str:
    """The strong entity tag of the file whose sha256 this is: ``"sha256-<hex>"``."""
    return f'"{ETAG_PREFIX}{sha256_hex}"'


def _base64(sha256_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")


def repr_digest(sha256_hex: str) -> str:
    """``sha-256=:<base64>:``, the value of RFC 9530's ``Repr-Digest``."""
    return f"{REPR_DIGEST_ALGORITHM}=:{_base64(sha256_hex)}:"


def legacy_digest(sha256_hex: str) -> str:
    """``SHA-256=<base64>``, the value of RFC 3230's ``Digest``."""
    return f"{DIGEST_ALGORITHM}={_base64(sha256_hex)}"


def headers(sha256_hex: str | None) -> dict[str, str]:
    """``ETag``, ``Repr-Digest`` and ``Digest`` of a file; none when its sha256 is not known."""
    if not sha256_hex:
        return {}
    return {"ETag": etag(sha256_hex), "Repr-Digest": repr_digest(sha256_hex), "Digest": legacy_digest(sha256_hex)}


def sha256_of_repr_digest(value: str | None) -> str | None:
    """The sha-256 a ``Repr-Digest`` value carries, as hex; None when it carries none or cannot be read."""
    for member in (value or "").split(","):
        name, sep, raw = member.partition("=")
        raw = raw.strip()
        if not sep or name.strip().lower() != REPR_DIGEST_ALGORITHM or len(raw) < 2:
            continue
        if not (raw.startswith(":") and raw.endswith(":")):
            return None
        try:
            digest = base64.b64decode(raw[1:-1], validate=True)
        except (binascii.Error, ValueError):
            return None
        return digest.hex() if len(digest) == 32 else None
    return None


def none_match(if_none_match: str | None, current: str | None) -> bool:
    """Whether ``If-None-Match`` names the current ETag (RFC 9110 §13.1.2: weak comparison, ``*`` any)."""
    if not if_none_match or not current:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == current:
            return True
    return False
