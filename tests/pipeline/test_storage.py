"""pipeline.storage: one API over local paths and s3:// (a real S3 server on loopback), one-line errors."""

from __future__ import annotations

import hashlib
import logging
import os
import socket

import pytest

from pipeline import storage
from pipeline.storage import StorageError

SECRET = "wJalrXUtnFEMI-very-secret-value"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: connections are refused


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and len(text) < 500, text
    return text


def test_join_and_split():
    assert storage.join("s3://b/root/", "train", "/x.parquet") == "s3://b/root/train/x.parquet"
    assert storage.join("s3://b", "m.json") == "s3://b/m.json"
    assert storage.join("/data/out", "val", "") == "/data/out/val"
    assert storage.split_s3("s3://bucket/a/b/") == ("bucket", "a/b")
    assert storage.split_s3("s3://bucket") == ("bucket", "")
    with pytest.raises(StorageError):
        storage.split_s3("s3:///key")


def test_endpoint_and_region_precedence(monkeypatch):
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(k, raising=False)
    assert storage.s3_endpoint() is None and storage.s3_region() is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    assert storage.s3_endpoint() == "http://generic:1"
    assert storage.s3_region() == "us-east-1"  # a custom endpoint still needs a signing region
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:2")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert storage.s3_endpoint() == "http://s3-specific:2" and storage.s3_region() == "eu-west-1"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert storage.s3_region() == "eu-central-1"
    assert storage.s3_endpoint("http://flag:3") == "http://flag:3" and storage.s3_region("ap-south-1") == "ap-south-1"


def test_redact_drops_userinfo():
    assert storage.redact("http://user:pw@host:9000/x") == "http://host:9000/x"
    assert storage.redact(None) == "the AWS default endpoint"


def _roundtrip(base: str) -> None:
    uri = storage.join(base, "dir", "a.bin")
    assert not storage.exists(uri)
    storage.write_bytes_atomic(uri, b"first")
    storage.write_bytes_atomic(uri, b"second version")  # overwrite in place
    assert storage.exists(uri) and storage.read_bytes(uri) == b"second version"
    assert storage.size(uri) == len(b"second version")
    assert storage.sha256_of(uri) == (hashlib.sha256(b"second version").hexdigest(), 14)
    storage.write_bytes_atomic(storage.join(base, "dir", "sub", "b.bin"), b"b")
    assert storage.listdir(storage.join(base, "dir")) == ["a.bin", "sub"]
    assert storage.walk(base) == [("dir/a.bin", 14), ("dir/sub/b.bin", 1)]
    storage.remove(uri)
    storage.remove(uri)  # absent: no error
    assert not storage.exists(uri) and storage.size(uri) is None
    with pytest.raises(StorageError) as info:
        storage.read_bytes(uri)
    assert _one_line(info.value).startswith("not found:")


def test_local_roundtrip_leaves_no_temp_files(tmp_path):
    _roundtrip(str(tmp_path / "root"))
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_stale_temps_are_removed(tmp_path):
    (tmp_path / "train").mkdir()
    stale = tmp_path / "train" / f".x.parquet.{'ab' * 16}.tmp"
    stale.write_bytes(b"partial")
    keep = tmp_path / "train" / "x.parquet"
    keep.write_bytes(b"whole")
    assert storage.remove_stale_temps(str(tmp_path)) == 1
    assert not stale.exists() and keep.exists()


@pytest.mark.s3
def test_s3_roundtrip(s3_server):
    _roundtrip(storage.join(s3_server.create_bucket(), "prefix"))


@pytest.mark.s3
def test_s3_endpoint_comes_from_the_environment(s3_server):
    bucket = s3_server.create_bucket()
    s3_server.client.put_object(Bucket=bucket[5:], Key="k", Body=b"via boto3")
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server.endpoint
    fs, path = storage.resolve(f"{bucket}/k")
    assert path == f"{bucket[5:]}/k"
    assert storage.read_bytes(f"{bucket}/k") == b"via boto3"
    storage.check_access(bucket)  # exists, credentials accepted


def test_check_access_local(tmp_path):
    storage.check_access(str(tmp_path))
    with pytest.raises(StorageError) as info:
        storage.check_access(str(tmp_path / "missing"))
    assert _one_line(info.value) == f"not found: {tmp_path / 'missing'}"
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        storage.check_access(str(tmp_path / "file"), create=True)
    storage.check_access(str(tmp_path / "new" / "dst"), create=True)
    assert (tmp_path / "new" / "dst").is_dir()


@pytest.mark.s3
def test_missing_bucket_is_one_line(s3_server):
    with pytest.raises(StorageError) as info:
        storage.check_access("s3://no-such-bucket/x")
    assert "bucket 'no-such-bucket' does not exist" in _one_line(info.value)
    with pytest.raises(StorageError) as info:
        storage.read_bytes("s3://no-such-bucket/x")
    _one_line(info.value)


@pytest.mark.s3
def test_bad_credentials_are_one_line_and_secret_free(s3_server_strict, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with pytest.raises(StorageError) as info:
        storage.check_access(s3_server_strict.bucket, endpoint=s3_server_strict.endpoint)
    text = _one_line(info.value)
    assert "rejected the credentials (InvalidAccessKeyId)" in text
    assert SECRET not in text and "AKIAWRONG" not in text
    with pytest.raises(StorageError) as info:
        storage.read_bytes(f"{s3_server_strict.bucket}/x", endpoint=s3_server_strict.endpoint)
    assert SECRET not in _one_line(info.value)


@pytest.mark.s3
def test_unreachable_endpoint_is_one_line(s3_server):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(StorageError) as info:
        storage.check_access("s3://any-bucket/x", endpoint=endpoint)
    assert _one_line(info.value) == f"cannot reach the S3 endpoint {endpoint} for s3://any-bucket/x"
    with pytest.raises(StorageError) as info:
        storage.exists("s3://any-bucket/x", endpoint=endpoint)
    _one_line(info.value)


def test_a_whole_object_is_read_in_one_request(s3_server, caplog):
    # A checkpoint of ~1 GB read in many ranged requests costs a round trip each on S3, and on servers that copy
    # the object per request (moto), time quadratic in its size. A server of its own that logs each request.
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=True)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        import boto3  # s3_server: the session's test credentials and region are in the environment

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="reads")
        data = os.urandom(24 << 20)
        storage.write_bytes_atomic("s3://reads/weights.pt", data, endpoint=endpoint)
        with caplog.at_level(logging.INFO, logger="werkzeug"):  # the server's access log: one line per request
            assert storage.read_bytes("s3://reads/weights.pt", endpoint=endpoint) == data
    finally:
        server.stop()
    gets = [r.getMessage() for r in caplog.records if "GET /" in r.getMessage() and "weights.pt" in r.getMessage()]
    assert len(gets) == 1, gets
