"""Suite-wide settings (every service on loopback) and shared fixtures.

Fixtures:
- ``s3_server`` (session): a moto S3 server on 127.0.0.1; sets AWS_ENDPOINT_URL and dummy credentials in os.environ
  for the session. ``s3_server.endpoint``, ``s3_server.client`` (boto3), ``s3_server.create_bucket(name=None) -> "s3://name"``.
- ``s3_server_strict`` (session): a second moto server, in its own process, that checks signatures: any key is
  rejected (InvalidAccessKeyId). Holds one bucket, ``s3_server_strict.bucket`` ("s3://guarded").
- ``ray_local`` (session): ``ray.init(num_cpus=4)`` on loopback, shared by every test that asks for it. Starts after
  ``s3_server`` so that Ray's workers inherit the S3 environment.
- ``tiny_imagenet`` (session): a ``TinyImageNet`` (see imagenet_fixture.py): ``.root`` with train/ (4 classes x 6
  RGB JPEGs, 40-120 px, plus a CMYK JPEG, a grayscale JPEG, a PNG named .JPEG and three bad files) and val/ in
  class folders (4 x 2). ``os.fspath(tiny_imagenet)`` is the root.
- ``mlflow_server`` (function): a real ``mlflow server`` on 127.0.0.1 with a sqlite store under tmp_path;
  ``.uri`` (http://127.0.0.1:PORT), ``.stop()`` (kills it, e.g. to test a server lost mid-run), ``.restart()``
  (a new server on the same port and store: the server coming back).
- ``prepared_shards`` (session): ``tiny_imagenet`` ingested with default options into a local directory; the
  value is the manifest's path as a string, for ``pipeline.manifest.load_manifest``.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Ray binds the machine's external interface unless told otherwise; tests must stay on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Never let a test reach a real AWS endpoint or pick up a developer's credentials.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

sys.path.insert(0, str(Path(__file__).parent / "support"))  # imagenet_fixture, jpeg_samples: test data makers

from imagenet_fixture import TinyImageNet, make_tiny_imagenet  # noqa: E402

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    """A running S3-compatible server: its endpoint URL and a boto3 client bound to it."""

    endpoint: str
    client: Any
    bucket: str | None = None
    _count: int = 0

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name if none is given) and return its ``s3://`` URI."""
        if name is None:
            self._count += 1
            name = f"bucket-{os.getpid()}-{self._count}"
        self.client.create_bucket(Bucket=name)
        return f"s3://{name}"


def _boto_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on loopback (a real HTTP endpoint, no in-process patching) with the session's AWS env set."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in (*env, "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN")}
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(k, None)
    os.environ.update(env)
    try:
        yield S3Server(endpoint, _boto_client(endpoint))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server_strict(s3_server: S3Server) -> Iterator[S3Server]:
    """A moto server that enforces request signatures (so a wrong key is refused), holding the bucket s3://guarded.

    moto checks credentials only after INITIAL_NO_AUTH_ACTION_COUNT unauthenticated requests; this server allows
    one (the bucket's creation) and then knows no key at all, as a store that was handed a wrong one. It runs in
    its own process because that setting is global to a moto process.
    """
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the strict moto server did not start") from None
                time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        server = S3Server(endpoint, _boto_client(endpoint))
        server.bucket = server.create_bucket("guarded")
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_local(s3_server: S3Server) -> Iterator[None]:
    """One local Ray instance (4 logical CPUs, no dashboard, loopback) for the whole session."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory: pytest.TempPathFactory) -> TinyImageNet:
    """A tiny ImageNet tree (val in class folders) with the real set's quirks; see imagenet_fixture.py."""
    return make_tiny_imagenet(tmp_path_factory.mktemp("tiny-imagenet"), val_layout="folders")


@pytest.fixture(scope="session")
def prepared_shards(tiny_imagenet: TinyImageNet, ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``tiny_imagenet`` ingested with default options (one shard per split); returns the manifest's local path."""
    from pipeline.prepare import PrepareConfig, prepare

    dst = tmp_path_factory.mktemp("tiny-shards")
    prepare(PrepareConfig(src=str(tiny_imagenet.root), dst=str(dst)))
    return str(dst / "manifest.json")


@dataclass
class MlflowServer:
    """A running MLflow tracking server: its URI and the process."""

    uri: str
    proc: subprocess.Popen
    root: Path
    store: str

    def stop(self) -> None:
        """Kill the server and its workers."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=30)

    def restart(self) -> None:
        """Stop the server if it runs, then start a new one on the same port over the same store."""
        self.stop()
        self.proc = start_mlflow_server(self.root, self.store, port=int(self.uri.rsplit(":", 1)[1])).proc


def start_mlflow_server(root: Path, backend_store_uri: str | None = None, port: int | None = None) -> MlflowServer:
    """``mlflow server`` on a loopback port (default: a free one) over ``backend_store_uri`` (default: a new sqlite
    store under ``root``), new artifacts under ``root``."""
    port = port or _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    store = backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", store, "--artifacts-destination", str(root / "artifacts")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", proc, root, store)
    import urllib.request

    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            server.stop()
            raise RuntimeError("the MLflow server did not start")
        time.sleep(0.5)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A real MLflow server on loopback for one test."""
    server = start_mlflow_server(tmp_path / "mlflow-server")
    try:
        yield server
    finally:
        server.stop()
