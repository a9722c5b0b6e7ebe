"""Parts and results on a real S3-compatible server (moto over HTTP): written, merged,
published, parts removed, and a presigned download that serves the exact bytes, ranges too, and
resumes through the API's redirect."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit

import boto3
import httpx
import pyarrow.parquet as pq
import pytest

from export_tx import formats, storage
from export_tx.states import State
from tests.helpers import demo_source_rows, run_export, store

pytestmark = pytest.mark.usefixtures("airflow_db", "demo_db")


@pytest.fixture
def s3_storage(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("EXPORT_TX_STORAGE_URI", f"s3://{s3_server['conn_id']}@{s3_server['bucket']}/exports")
    return s3_server


def _client(s3: dict[str, str]) -> object:
    return boto3.client("s3", endpoint_url=s3["endpoint"], aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip


def test_export_to_s3_and_presigned_download(s3_storage: dict[str, str], demo_db: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    run = run_export({"definition": "demo_orders", "params": {"status": "shipped"}, "batch_size": 1000})
    assert run.state == "success"
    header = store().get(run.run_id)
    assert header.state == State.SUCCEEDED
    assert header.result_uri is not None and header.result_uri.startswith("s3://export_s3@exports/exports/")

    client = _client(s3_storage)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="exports")["Contents"]]  # type: ignore[attr-defined]
    folder = storage.tx_folder_name(run.run_id)
    mine = [k for k in keys if k.startswith(f"exports/{folder}/")]
    assert mine == [f"exports/{folder}/result/demo_orders.parquet"]  # parts and temp file removed

    body = client.get_object(Bucket="exports", Key=mine[0])["Body"].read()  # type: ignore[attr-defined]
    assert hashlib.sha256(body).hexdigest() == header.result_sha256 and len(body) == header.result_bytes
    table = pq.read_table(io.BytesIO(body))
    exported = [tuple(r.values()) for r in table.to_pylist()]
    assert exported == demo_source_rows(demo_db, "status = ?", ("shipped",))

    url = storage.presigned_url(header.result_uri, "demo_orders.parquet", formats.get().media_type, expires_in=60)
    assert url.startswith(s3_storage["endpoint"])
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == header.result_sha256
    assert 'filename="demo_orders.parquet"' in fetched.headers["content-disposition"]

    # Behind a proxy or in docker-compose the browser reaches the store at another address.
    public = f"http://localhost:{s3_storage['port']}"
    monkeypatch.setenv("EXPORT_TX_S3_PUBLIC_ENDPOINT", public)
    public_url = storage.presigned_url(
        header.result_uri, "demo_orders.parquet", formats.get().media_type, expires_in=60
    )
    assert public_url.startswith(public + "/")
    assert hashlib.sha256(httpx.get(public_url).content).hexdigest() == header.result_sha256


def test_a_failed_export_leaves_only_its_finished_parts_on_s3(
    s3_storage: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3 as on disk: nothing of a failed export but its finished batches' parts (for a resume)."""
    from export_tx import pipeline

    real = pipeline.export_batch

    def broken(st: object, tx_id: str, batch_no: int) -> pipeline.BatchResult:
        if batch_no == 2:
            raise OSError("the object store went away")
        return real(st, tx_id, batch_no)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "export_batch", broken)
    run = run_export({"definition": "demo_orders", "params": {"status": "paid"}, "batch_size": 1000})
    assert run.state == "failed" and store().get(run.run_id).state == State.FAILED
    prefix = f"exports/{storage.tx_folder_name(run.run_id)}/"
    listed = _client(s3_storage).list_objects_v2(Bucket="exports", Prefix=prefix)  # type: ignore[attr-defined]
    finished = [b.batch_no for b in store().plan(run.run_id) if b.state == "DONE"]
    assert 2 not in finished and finished  # batches 1 and maybe 3 or 4 had finished
    assert sorted(o["Key"] for o in listed.get("Contents", [])) == [
        f"{prefix}parts/part-{n:05d}.parquet" for n in finished
    ]


@contextmanager
def _api_server() -> Iterator[str]:
    """The real /exports app over HTTP on loopback (uvicorn in a thread), mounted as the api-server
    mounts it, on the session's header store; Airflow's authentication replaced by a fixed admin."""
    import uvicorn
    from airflow.api_fastapi.core_api.security import get_user
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from export_tx.api import app as api
    from tests.helpers import FakeUser
    from tests.smtp import free_port

    app = api.app
    for dep in (api.CanRead, api.CanRequest, api.CanCancel):
        app.dependency_overrides[dep.dependency] = lambda: None
    app.dependency_overrides[get_user] = lambda: FakeUser("admin", "ADMIN")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Mount("/exports", app=app)]), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="off"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True, name="exports-api")
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the API server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        app.dependency_overrides.clear()


def test_a_download_from_s3_answers_ranges_and_resumes_through_the_redirect(
    s3_storage: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The API's 303 carries our ETag and digests; the presigned URL it points at answers Range; and
    ``export-tx download`` whose S3 answer is cut halfway asks the API again (a fresh URL) and
    fetches only the rest from S3, with Range and without If-Range (S3's ETags are not ours)."""
    from export_tx import cli
    from tests.counting_proxy import CountingProxy

    run = run_export({"definition": "demo_orders", "params": {}, "batch_size": 5000})
    assert run.state == "success"
    header = store().get(run.run_id)
    assert header.result_uri is not None
    key = urlsplit(header.result_uri).path.lstrip("/")
    body = _client(s3_storage).get_object(Bucket="exports", Key=key)["Body"].read()  # type: ignore[attr-defined]
    digest = hashlib.sha256(body)
    assert digest.hexdigest() == header.result_sha256 and len(body) > 100_000
    b64 = base64.b64encode(digest.digest()).decode()

    # The browser's (and the CLI's) way to the object store, where the test can cut it.
    proxy = CountingProxy(int(s3_storage["port"]))
    monkeypatch.setenv("EXPORT_TX_S3_PUBLIC_ENDPOINT", proxy.endpoint)
    path = f"/exports/v1/transactions/{quote(run.run_id, safe='')}/download"
    try:
        with _api_server() as base, httpx.Client(base_url=base, headers={"Authorization": "Bearer t"},
                                                 timeout=30) as client:  # fmt: skip
            redirect = client.get(path)
            assert redirect.status_code == 303
            assert redirect.headers["etag"] == f'"sha256-{digest.hexdigest()}"'
            assert redirect.headers["repr-digest"] == f"sha-256=:{b64}:"
            assert redirect.headers["digest"] == f"SHA-256={b64}"
            location = redirect.headers["location"]
            assert location.startswith(proxy.endpoint + "/exports/")

            middle = httpx.get(location, headers={"Range": "bytes=100-199"})
            assert middle.status_code == 206 and middle.content == body[100:200]
            assert middle.headers["content-range"] == f"bytes 100-199/{len(body)}"
            suffix = httpx.get(location, headers={"Range": "bytes=-50"})
            assert suffix.status_code == 206 and suffix.content == body[-50:]

            before = len(proxy.exchanges)
            half = len(body) // 2
            proxy.cut_next(lambda e: e.method == "GET" and "range" not in e.headers, half)
            target = tmp_path / "from-s3.parquet"
            assert cli.download(client, run.run_id, target, backoff_s=0.05) == target
    finally:
        proxy.close()
    assert target.read_bytes() == body and sorted(p.name for p in tmp_path.iterdir()) == ["from-s3.parquet"]
    to_s3 = proxy.exchanges[before:]
    assert [(e.method, e.status, e.headers.get("range"), e.body_bytes, e.cut) for e in to_s3] == [
        ("GET", 200, None, half, True),  # cut halfway
        ("GET", 206, f"bytes={half}-", len(body) - half, False),  # only the rest
    ]
    assert all("if-range" not in e.headers and "authorization" not in e.headers for e in to_s3)
    # Each try asked the API again (a fresh presigned URL), and each 303 recorded the download: the
    # test's own and the CLI's two.
    assert [e.message for e in store().events(run.run_id, kind="download")] == ["downloaded by admin"] * 3
