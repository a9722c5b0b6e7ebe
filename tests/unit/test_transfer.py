"""A result's validator and digests, and reading them back (RFC 9530, RFC 3230, RFC 9110)."""

from __future__ import annotations

import pytest

from export_tx import transfer

# The sha256 of no bytes at all, in hex and in base64 (a well-known test vector).
EMPTY_HEX = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EMPTY_B64 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


def test_the_headers_of_a_file() -> None:
    assert transfer.headers(EMPTY_HEX) == {
        "ETag": f'"sha256-{EMPTY_HEX}"',
        "Repr-Digest": f"sha-256=:{EMPTY_B64}:",
        "Digest": f"SHA-256={EMPTY_B64}",
    }
    assert transfer.headers(None) == {} and transfer.headers("") == {}


@pytest.mark.parametrize(
    ("value", "sha"),
    [
        (f"sha-256=:{EMPTY_B64}:", EMPTY_HEX),
        (f"sha-512=:{'A' * 88}:, sha-256=:{EMPTY_B64}:", EMPTY_HEX),  # several algorithms
        (f"SHA-256 = :{EMPTY_B64}:", EMPTY_HEX),
        (f"sha-256={EMPTY_B64}", None),  # not a byte sequence
        ("sha-256=:not base64!:", None),
        ("sha-256=:AAAA:", None),  # 3 bytes, not 32
        (f"sha-512=:{EMPTY_B64}:", None),
        ("", None),
        (None, None),
    ],
)
def test_reading_a_repr_digest(value: str | None, sha: str | None) -> None:
    assert transfer.sha256_of_repr_digest(value) == sha


@pytest.mark.parametrize(
    ("held", "match"),
    [
        ('"sha256-ab"', True),
        ('W/"sha256-ab"', True),  # If-None-Match compares weakly
        ('"x", "sha256-ab"', True),
        ("*", True),
        ('"sha256-abc"', False),
        ("sha256-ab", False),  # unquoted: another tag
        ("", False),
        (None, False),
    ],
)
def test_if_none_match(held: str | None, match: bool) -> None:
    assert transfer.none_match(held, '"sha256-ab"') is match
    assert transfer.none_match(held, None) is False  # a file without an ETag is always sent
