"""The S3 backend against a real S3-compatible server (moto's server mode, started here):
the SDK's parts land as sealed objects, download intact, and leave the bucket on delete
and on ``teams delete``; the canary is in no object and nowhere in the database."""

from __future__ import annotations

import sqlite3

import boto3
import httpx
import pytest
from llama_api_client import LlamaAPIClient

from conftest import free_port, start_server
from upload_helpers import MiB, assert_absent_in, canary, dataset, upload

BUCKET = "llamahost-files"
CREDENTIALS = {"LLAMAHOST_S3_ACCESS_KEY_ID": "test-key", "LLAMAHOST_S3_SECRET_ACCESS_KEY": "test-secret"}


@pytest.fixture
def s3():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="test-key", aws_secret_access_key="test-secret",
    )
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()


def _objects(client) -> list[str]:
    return [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]


def test_s3_backend_stores_sealed_chunks(tmp_path, s3):
    endpoint, bucket = s3
    config = (
        f'[files]\nbackend = "s3"\n[files.s3]\nendpoint_url = "{endpoint}"\nbucket = "{BUCKET}"\n'
        'region = "us-east-1"\nprefix = "llh/"\n'
    )
    server = start_server(tmp_path, config=config, env=CREDENTIALS)
    try:
        mark = canary()
        data = dataset(3 * MiB + 12345, mark)
        client = LlamaAPIClient(api_key=server.key, base_url=server.base_url, max_retries=0, timeout=120)
        file_id = upload(client, data, filename=f"{mark}.jsonl")
        keys = _objects(bucket)
        assert len(keys) == 4 and all(k.startswith("llh/") and file_id in k for k in keys), keys
        for key in keys:
            assert_absent_in(bucket.get_object(Bucket=BUCKET, Key=key)["Body"].read(), mark, key)
        with httpx.Client(base_url=server.url, headers=server.headers(), timeout=120) as http:
            assert http.get(f"/v1/files/{file_id}/content").content == data
            assert http.get(f"/v1/files/{file_id}").json()["status"] == "processed"
        with sqlite3.connect(server.data_dir / "llamahost.db") as db:
            assert db.execute("select count(*) from file_chunks").fetchone()[0] == 0
        for path in server.data_dir.glob("llamahost.db*"):
            assert_absent_in(path.read_bytes(), mark, path.name)
        # Deleting the file deletes its objects; deleting the team deletes the rest.
        with httpx.Client(base_url=server.url, headers=server.headers(), timeout=120) as http:
            assert http.delete(f"/v1/files/{file_id}").status_code == 200
        assert _objects(bucket) == []
        kept = upload(client, b"kept\n", purpose="attachment", mime="text/plain")
        assert len(_objects(bucket)) == 1
        deleted = server.cli("teams", "delete", "test", "--yes", "--config", str(tmp_path / "llamahost.toml"))
        assert "1 files" in deleted.stdout, deleted.stdout
        assert _objects(bucket) == []
        with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as http:
            assert http.get(f"/v1/files/{kept}").status_code == 401  # the team and its keys are gone
    finally:
        server.stop()
