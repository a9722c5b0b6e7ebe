"""Parts and results on a real S3-compatible server (moto over HTTP): written, merged,
published, parts removed, and a presigned download that serves the exact bytes."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

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


def test_a_failed_export_leaves_nothing_on_s3(s3_storage: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from export_tx import pipeline

    real = pipeline.export_batch

    def broken(st: object, tx_id: str, batch_no: int) -> pipeline.BatchResult:
        if batch_no == 2:
            raise OSError("the object store went away")
        return real(st, tx_id, batch_no)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "export_batch", broken)
    run = run_export({"definition": "demo_orders", "params": {"status": "paid"}, "batch_size": 1000})
    assert run.state == "failed" and store().get(run.run_id).state == State.FAILED
    listed = _client(s3_storage).list_objects_v2(  # type: ignore[attr-defined]
        Bucket="exports", Prefix=f"exports/{storage.tx_folder_name(run.run_id)}/"
    )
    assert listed.get("KeyCount", 0) == 0
