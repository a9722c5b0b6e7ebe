"""Resumable downloads of a local result: ranges, If-Range, 416, validators and digests checked
against the file's sha256 computed here, If-None-Match, what is recorded as a download, the
OpenAPI description; and ``export-tx download`` resuming a part, against the same app.

The app is mounted at /exports behind Starlette's GZipMiddleware configured as Airflow's
api-server configures it (so the file must come as stored, not recompressed); Airflow's
authentication is replaced by a fixed user (the real one is tested in tests/e2e); the header store
is a real SQLite file and the result a real file on disk."""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import Mount

from export_tx import cli
from export_tx.errors import CliError
from export_tx.states import State
from export_tx.store import HeaderStore
from tests.helpers import FakeUser, signed_in

SIZE = 200_003  # three of FileResponse's 64 KiB chunks and a few bytes
TX = "exp_20260101T000000_0123abcd"
URL = f"/exports/v1/transactions/{TX}/download"


@pytest.fixture
def data() -> bytes:
    return random.Random(12).randbytes(SIZE)


@pytest.fixture
def client(tmp_path: Path, data: bytes) -> Iterator[Any]:
    store = HeaderStore(f"sqlite:///{tmp_path / 'store.db'}")
    store.ensure_schema()
    result = tmp_path / "exports" / "result.parquet"
    result.parent.mkdir()
    result.write_bytes(data)
    store.create(TX, definition="demo_orders", params={}, batch_size=1000, requested_by="ana")
    store.transition(TX, State.RUNNING, "x")
    store.transition(TX, State.MERGING, "x")
    store.transition(TX, State.SUCCEEDED, "x", result_uri=f"file://{result}", result_rows=1,
                     result_bytes=len(data), result_sha256=hashlib.sha256(data).hexdigest())  # fmt: skip
    with signed_in(store, {"user": FakeUser("ana", "USER")}) as app:
        # As Airflow's api-server serves a plugin's app: mounted, behind its GZipMiddleware.
        server = Starlette(routes=[Mount("/exports", app=app)],
                           middleware=[Middleware(GZipMiddleware, minimum_size=1024, compresslevel=5)])  # fmt: skip
        with TestClient(server, base_url="http://airflow.test") as c:
            c.store, c.result = store, result  # type: ignore[attr-defined]
            yield c


def _validators(data: bytes) -> dict[str, str]:
    digest = hashlib.sha256(data)
    b64 = base64.b64encode(digest.digest()).decode()
    return {"etag": f'"sha256-{digest.hexdigest()}"', "repr-digest": f"sha-256=:{b64}:", "digest": f"SHA-256={b64}"}


def _assert_validators(answer: httpx.Response, data: bytes) -> None:
    for name, value in _validators(data).items():
        assert answer.headers[name] == value, name


def _downloads(client: Any) -> int:
    return len(client.store.events(TX, kind="download"))


def test_the_whole_file_comes_as_stored_with_its_validators(client: Any, data: bytes) -> None:
    # Airflow's GZipMiddleware is in front: JSON is compressed ...
    assert client.get("/exports/openapi.json").headers.get("content-encoding") == "gzip"
    # ... the file is not, whatever the client accepts: its length and bytes are the stored file's.
    answer = client.get(URL, headers={"Accept-Encoding": "gzip"})
    assert answer.status_code == 200
    assert answer.headers["content-encoding"] == "identity"
    assert answer.headers["content-length"] == str(SIZE) and answer.content == data
    assert answer.headers["accept-ranges"] == "bytes"
    _assert_validators(answer, data)
    assert client.store.get(TX).downloaded_at is not None and _downloads(client) == 1


@pytest.mark.parametrize(
    ("asked", "first", "last"),
    [("bytes=0-99", 0, 99), ("bytes=100-", 100, SIZE - 1), ("bytes=-50", SIZE - 50, SIZE - 1),
     ("bytes=199990-300000", 199_990, SIZE - 1)],
)  # fmt: skip
def test_a_range_is_206_with_those_bytes_and_the_whole_files_digests(
    client: Any, data: bytes, asked: str, first: int, last: int
) -> None:
    answer = client.get(URL, headers={"Range": asked})
    assert answer.status_code == 206
    assert answer.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert answer.content == data[first : last + 1]
    assert answer.headers["content-length"] == str(last + 1 - first)
    _assert_validators(answer, data)  # of the whole file, not of the part
    assert _downloads(client) == 1  # a part is a download too


def test_several_ranges_come_as_multipart_byteranges(client: Any, data: bytes) -> None:
    answer = client.get(URL, headers={"Range": "bytes=0-9,1000-1009"})
    assert answer.status_code == 206
    assert answer.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert f"Content-Range: bytes 0-9/{SIZE}".encode() in answer.content
    assert f"Content-Range: bytes 1000-1009/{SIZE}".encode() in answer.content
    assert data[0:10] in answer.content and data[1000:1010] in answer.content
    _assert_validators(answer, data)


def test_if_range_resumes_the_same_file_and_sends_another_whole(client: Any, data: bytes) -> None:
    etag = _validators(data)["etag"]
    same = client.get(URL, headers={"Range": "bytes=150000-", "If-Range": etag})
    assert same.status_code == 206 and same.content == data[150_000:]
    other = _validators(b"another file")["etag"]
    changed = client.get(URL, headers={"Range": "bytes=150000-", "If-Range": other})
    assert changed.status_code == 200 and changed.content == data
    weak = client.get(URL, headers={"Range": "bytes=150000-", "If-Range": "W/" + etag})  # never for If-Range
    assert weak.status_code == 200 and weak.content == data


def test_a_range_past_the_end_is_416_naming_the_size_and_recording_nothing(client: Any, data: bytes) -> None:
    answer = client.get(URL, headers={"Range": f"bytes={SIZE}-"})
    assert answer.status_code == 416
    assert answer.headers["content-range"] == f"bytes */{SIZE}"
    message = (
        "a requested range starts at or past the end of the file (200,003 bytes)"  # the size, never the Range asked
    )
    assert answer.json() == {"detail": f"the range is not satisfiable: {message}",
                             "errors": [{"field": "Range", "message": message}]}  # fmt: skip
    _assert_validators(answer, data)
    assert client.store.get(TX).downloaded_at is None and _downloads(client) == 0
    # The range applies only to the file If-Range names: another file comes whole, not a 416.
    other = client.get(URL, headers={"Range": f"bytes={SIZE}-", "If-Range": '"sha256-00"'})
    assert other.status_code == 200 and other.content == data


@pytest.mark.parametrize("asked", ["bytes=abc", "items=0-1", "bytes=50-10", "0-99"])
def test_a_range_that_cannot_be_read_is_ignored(client: Any, data: bytes, asked: str) -> None:
    answer = client.get(URL, headers={"Range": asked})
    assert answer.status_code == 200 and answer.content == data


def test_a_range_header_too_long_is_refused_naming_it(client: Any) -> None:
    answer = client.get(URL, headers={"Range": "bytes=" + ",".join(["0-1"] * 2000)})
    assert answer.status_code == 422
    assert [e["field"] for e in answer.json()["errors"]] == ["Range"]


@pytest.mark.parametrize("held", ["{etag}", "W/{etag}", '"sha256-00", {etag}', "*"])
def test_if_none_match_with_the_etag_is_304(client: Any, data: bytes, held: str) -> None:
    etag = _validators(data)["etag"]
    answer = client.get(URL, headers={"If-None-Match": held.format(etag=etag)})
    assert answer.status_code == 304 and answer.content == b""
    _assert_validators(answer, data)
    assert client.store.get(TX).downloaded_at is None and _downloads(client) == 0
    assert client.get(URL, headers={"If-None-Match": '"sha256-00"'}).status_code == 200


def test_the_openapi_description_documents_ranges_validators_and_digests(client: Any) -> None:
    operation = client.get("/exports/openapi.json").json()["paths"]["/v1/transactions/{tx_id}/download"]["get"]
    assert {"Range", "If-Range", "If-None-Match"} <= {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    answers = operation["responses"]
    for code in ("200", "206", "303", "304", "416"):
        assert {"ETag", "Repr-Digest", "Digest"} <= set(answers[code]["headers"]), code
    assert "Content-Range" in answers["206"]["headers"] and "Content-Range" in answers["416"]["headers"]
    assert "Location" in answers["303"]["headers"]
    assert "application/vnd.apache.parquet" in answers["200"]["content"]
    assert "application/json" not in answers["200"]["content"]
    assert "sha256-" in answers["200"]["headers"]["ETag"]["description"]


# -- export-tx download, in-process against the same app ---------------------------------------


@pytest.fixture
def seen(client: Any) -> list[tuple[int, dict[str, str]]]:
    """Every answer the CLI gets: its status and the request's headers."""
    answers: list[tuple[int, dict[str, str]]] = []

    def record(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/download"):
            answers.append((response.status_code, dict(response.request.headers)))

    client.event_hooks = {"request": [], "response": [record]}
    return answers


def _part(target: Path, data: bytes, etag: str | None) -> None:
    target.with_name(target.name + ".part").write_bytes(data)
    if etag is not None:
        target.with_name(target.name + ".part.etag").write_text(etag + "\n")


@pytest.fixture
def target(tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    return tmp_path / "out" / "orders.parquet"


def _left(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir())


def _asked(seen: list[tuple[int, dict[str, str]]]) -> list[tuple[int, str | None]]:
    return [(status, headers.get("range")) for status, headers in seen]


def test_cli_downloads_into_a_part_and_renames_it(client: Any, data: bytes, seen: list[Any], target: Path) -> None:
    assert cli.download(client, TX, target) == target
    assert target.read_bytes() == data and _left(target) == ["orders.parquet"]
    assert _asked(seen) == [(200, None)]
    assert seen[0][1]["accept-encoding"] == "identity"


def test_cli_resumes_a_part_with_range_and_if_range(
    client: Any, data: bytes, seen: list[Any], target: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etag = _validators(data)["etag"]
    _part(target, data[:123_456], etag)
    cli.download(client, TX, target)
    assert target.read_bytes() == data and _left(target) == ["orders.parquet"]
    assert _asked(seen) == [(206, "bytes=123456-")] and seen[0][1]["if-range"] == etag
    assert f"resuming {target}.part at 123,456 of {SIZE:,} bytes" in capsys.readouterr().err


def test_cli_starts_over_when_the_part_is_of_another_file(
    client: Any, data: bytes, seen: list[Any], target: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = b"x" * 5000
    _part(target, stale, _validators(stale + b"more")["etag"])
    cli.download(client, TX, target)
    assert target.read_bytes() == data and _left(target) == ["orders.parquet"]
    assert _asked(seen) == [(200, "bytes=5000-")]  # If-Range named another file: the whole file came
    assert "the server sent the whole file" in capsys.readouterr().err


def test_cli_starts_over_when_the_part_does_not_say_which_file_it_is_of(
    client: Any, data: bytes, seen: list[Any], target: Path
) -> None:
    _part(target, data[:1000], None)
    cli.download(client, TX, target)
    assert target.read_bytes() == data and _asked(seen) == [(200, None)]


def test_cli_finishes_a_complete_part_without_downloading_and_restarts_a_longer_one(
    client: Any, data: bytes, seen: list[Any], target: Path
) -> None:
    _part(target, data, _validators(data)["etag"])
    cli.download(client, TX, target)
    assert target.read_bytes() == data and seen == []  # only the rename was left
    assert _left(target) == ["orders.parquet"]
    target.unlink()
    _part(target, data + b"tail", _validators(data)["etag"])
    cli.download(client, TX, target)
    assert target.read_bytes() == data and _asked(seen) == [(200, None)]


def test_cli_refuses_a_file_that_does_not_add_up_and_removes_the_part(
    client: Any, data: bytes, seen: list[Any], target: Path
) -> None:
    corrupt = bytes(1000)  # the right ETag, the wrong bytes: only the sha256 shows it
    _part(target, corrupt, _validators(data)["etag"])
    with pytest.raises(CliError) as refused:
        cli.download(client, TX, target)
    got, want = hashlib.sha256(corrupt + data[1000:]).hexdigest(), hashlib.sha256(data).hexdigest()
    assert str(refused.value) == f"downloaded file's sha256 {got} differs from the status' {want}"
    assert _left(target) == []  # no file, and no part to resume into the same mistake
    cli.download(client, TX, target)  # the next run starts over
    assert target.read_bytes() == data
    assert _asked(seen) == [(206, "bytes=1000-"), (200, None)]


def test_cli_refuses_a_stored_file_that_changed(client: Any, data: bytes, target: Path) -> None:
    client.result.write_bytes(data[:-1] + b"!")
    with pytest.raises(CliError, match="differs from the status'"):
        cli.download(client, TX, target)
    assert _left(target) == []


def test_cli_no_resume_starts_over(client: Any, data: bytes, seen: list[Any], target: Path) -> None:
    _part(target, data[:1000], _validators(data)["etag"])
    cli.download(client, TX, target, resume=False)
    assert target.read_bytes() == data and _asked(seen) == [(200, None)]
