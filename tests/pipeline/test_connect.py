"""pipeline.cluster: one way to find Ray for every command, a local Ray that ends with its driver, job outputs.

The Ray tests run every driver in a child process with a Ray temp dir of its own (``RAY_TMPDIR``, short: Ray's socket
paths must stay under 108 bytes), so the suite's in-process Ray and any other Ray on the machine are untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from evaluation.config import parse_args as sweep_args
from pipeline import cluster
from pipeline.cluster import Choice, ClusterError, check_job_output, in_ray_job, resolve
from pipeline.prepare import parse_args as prepare_args
from trainer.config import parse_args as train_args
from trainer.config import to_params

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
JOB = {"RAY_JOB_CONFIG_JSON_ENV_VAR": '{"runtime_env": {}, "metadata": {}}'}

# A driver: connect() as the commands do, report what it got, then exit or stay until killed.
DRIVER = """
import json, sys, time
import ray
from pipeline.cluster import connect

connect(None if sys.argv[1] == "none" else sys.argv[1])
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "node_ip": ray.util.get_node_ip_address(),
                  "cpus": ray.cluster_resources().get("CPU", 0)}), flush=True)
if sys.argv[2:] == ["stay"]:
    time.sleep(600)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- resolution order, without Ray -----------------------------------------------------------------------------------


def test_resolution_order(tmp_path):
    recorded = tmp_path / "ray_current_cluster"
    alive = {"127.0.0.1:7001", "10.0.0.9:6379", "ray://10.0.0.9:10001"}
    probe = alive.__contains__

    def choose(address=None, env=None):
        return resolve(address, env or {}, recorded, probe)

    # Nothing given, nothing recorded: a local Ray, silently.
    assert choose() == Choice(None, "default")
    # A recorded head that answers is joined; one that does not is reported in one line and ignored.
    recorded.write_text("127.0.0.1:7001\n")
    assert choose() == Choice("127.0.0.1:7001", f"the running cluster recorded in {recorded}")
    recorded.write_text("127.0.0.1:7002")
    stale = choose()
    assert stale.address is None and "127.0.0.1:7002" in stale.note and str(recorded) in stale.note
    assert "\n" not in stale.note
    # RAY_ADDRESS beats the recorded cluster, the flag beats RAY_ADDRESS, and local beats everything below it.
    recorded.write_text("127.0.0.1:7001")
    assert choose(env={"RAY_ADDRESS": "10.0.0.9:6379"}) == Choice("10.0.0.9:6379", "RAY_ADDRESS")
    assert choose("ray://10.0.0.9:10001", {"RAY_ADDRESS": "10.0.0.9:6379"}) == \
        Choice("ray://10.0.0.9:10001", "--ray-address")
    assert choose("local", {"RAY_ADDRESS": "10.0.0.9:6379"}) == Choice(None, "--ray-address")
    assert choose(env={"RAY_ADDRESS": "local"}) == Choice(None, "RAY_ADDRESS")
    # auto joins the recorded cluster and insists on one.
    assert choose("auto").address == "127.0.0.1:7001"
    recorded.write_text("127.0.0.1:7002")
    with pytest.raises(ClusterError, match="no Ray cluster runs on this machine .*7002, where nothing answers"):
        choose("auto")
    # An explicit address that does not answer, or is no address, is one line, not minutes of retries.
    with pytest.raises(ClusterError, match=r"no Ray cluster answers at 10.0.0.8:6379 \(RAY_ADDRESS\)"):
        choose(env={"RAY_ADDRESS": "10.0.0.8:6379"})
    with pytest.raises(ClusterError, match="bad --ray-address 'http://10.0.0.9:8265'.*ray job submit"):
        choose("http://10.0.0.9:8265")


def test_the_stale_probe_is_quick():
    port = free_port()  # nothing listens there
    start = time.monotonic()
    assert not cluster.answers(f"127.0.0.1:{port}")
    assert time.monotonic() - start < cluster.PROBE_TIMEOUT_S + 0.5
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert cluster.answers(f"127.0.0.1:{s.getsockname()[1]}")


def test_every_command_has_the_flag():
    assert train_args(["--smoke", "--ray-address", "auto"]).cluster.ray_address == "auto"
    assert to_params(train_args(["--smoke", "--ray-address", "10.0.0.9:6379"]))["cluster.ray_address"] == \
        "10.0.0.9:6379"
    assert sweep_args(["--model", "m", "--data", "d", "--ray-address", "local"]).ray_address == "local"
    assert prepare_args(["--src", "a", "--dst", "b", "--ray-address", "ray://h:10001"]).ray_address == "ray://h:10001"
    with pytest.raises(SystemExit):
        train_args(["--smoke", "--ray-address", "somewhere"])
    with pytest.raises(SystemExit):
        sweep_args(["--model", "m", "--data", "d", "--ray-address", "somewhere"])
    with pytest.raises(SystemExit):
        prepare_args(["--src", "a", "--dst", "b", "--ray-address", "somewhere"])


# ---- outputs of a Ray job --------------------------------------------------------------------------------------------


def test_a_ray_job_is_recognised_by_its_env_or_working_dir():
    assert in_ray_job({}, "/home/me/verydeep") is None
    assert "RAY_JOB_CONFIG_JSON_ENV_VAR" in in_ray_job(JOB, "/home/me/verydeep")
    assert "RAY_JOB_ID" in in_ray_job({"RAY_JOB_ID": "02000000"}, "/home/me")
    unpacked = "/tmp/ray/session_2026/runtime_resources/working_dir_files/_ray_pkg_0123abcd"
    assert unpacked in in_ray_job({}, unpacked)


@pytest.mark.parametrize("uri, refused", [
    ("./runs", True), ("runs", True), ("sqlite:///mlflow.db", True), ("file:mlruns", True), ("~/runs", False),
    ("/shared/runs", False), ("s3://bucket/runs", False), ("sqlite:////shared/mlflow.db", False),
    ("http://mlflow:5000", False), ("file:///shared/mlruns", False),
])
def test_relative_outputs_are_refused_inside_a_job_only(uri, refused):
    check_job_output("--storage", uri, "s3://...", {}, "/home/me")  # outside a job: anything goes
    if refused:
        with pytest.raises(ClusterError) as info:
            check_job_output("--storage", uri, "an absolute path or s3://bucket/prefix", JOB, "/home/me")
        assert str(info.value).startswith(f"--storage {uri} is relative: inside a Ray job")
        assert "pass an absolute path or s3://bucket/prefix" in str(info.value) and "\n" not in str(info.value)
    else:
        check_job_output("--storage", uri, "s3://...", JOB, "/home/me")


def test_every_command_refuses_relative_outputs_inside_a_job_before_any_work(monkeypatch, tmp_path, capsys):
    from evaluation.sweep import main as sweep
    from pipeline.prepare import main as prepare
    from trainer.recipe import main as recipe
    from trainer.run import main as train

    for name, value in JOB.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    manifest = str(tmp_path / "shards" / "manifest.json")
    server = "http://127.0.0.1:9"  # never contacted: the refusal comes first
    cases = [
        (train, ["--smoke", "--data", manifest], "--tracking-uri sqlite:///mlflow.db is relative"),
        (train, ["--smoke", "--data", manifest, "--tracking-uri", server], "--storage ./runs is relative"),
        (train, ["--smoke", "--data", manifest, "--tracking-uri", server, "--storage", "ckpt"],
         "--storage ckpt is relative"),
        (recipe, ["paper", "--smoke", "--data", manifest], "--tracking-uri sqlite:///mlflow.db is relative"),
        (sweep, ["--model", "m", "--data", manifest], "--out sweep is relative"),
        (sweep, ["--model", "m", "--data", manifest, "--out", str(tmp_path / "out")],
         "--tracking-uri sqlite:///mlflow.db is relative"),
        (prepare, ["--src", str(tmp_path), "--dst", "shards"], "--dst shards is relative"),
    ]
    for command, argv, message in cases:
        assert command(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {message}: inside a Ray job (RAY_JOB_CONFIG_JSON_ENV_VAR is set)"), err
        assert "\n" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written, no Ray started


# ---- real Ray, in child processes ------------------------------------------------------------------------------------


@pytest.fixture
def ray_tmpdir() -> Iterator[str]:
    """A short Ray temp dir of the test's own (RAY_TMPDIR)."""
    path = tempfile.mkdtemp(prefix="vd-ray-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def ray_env(tmpdir: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(RAY_TMPDIR=tmpdir, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
               PATH=f"{BIN}{os.pathsep}{env['PATH']}", **extra)
    return env


def drive(tmpdir: str, address: str = "none", **extra: str) -> tuple[dict, list[str], float]:
    """Run a driver to completion: what it connected to, its ``ray:`` lines, seconds taken."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", DRIVER, address], env=ray_env(tmpdir, **extra), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ray: ")]
    return json.loads(proc.stdout.splitlines()[-1]), lines, time.monotonic() - start


@pytest.mark.ray
@pytest.mark.slow
def test_a_stale_address_file_gives_one_line_and_a_local_ray(ray_tmpdir):
    gone = f"127.0.0.1:{free_port()}"  # what a stopped head leaves behind: an address where nothing answers
    (Path(ray_tmpdir) / "ray").mkdir()
    (Path(ray_tmpdir) / "ray" / "ray_current_cluster").write_text(gone)
    got, lines, seconds = drive(ray_tmpdir)
    assert len(lines) == 2, lines
    assert lines[0].startswith("ray: ignoring ") and gone in lines[0]
    assert lines[1].startswith("ray: started a local Ray at ")
    # Loopback only, and the logical CPUs that keep Train and Ray Data from deadlocking on a small host.
    assert got["node_ip"] == "127.0.0.1" and got["gcs"].startswith("127.0.0.1:") and got["gcs"] != gone
    assert got["cpus"] == max(4, os.cpu_count() or 1)
    assert seconds < 30, f"{seconds:.0f} s: ray.init() alone retries a stale address for minutes"


def start_head(tmpdir: str, cpus: int) -> tuple[subprocess.Popen, str]:
    """`ray start --head` on loopback ports in its own process group; (process, GCS address) once it answers."""
    gcs = f"127.0.0.1:{free_port()}"
    ports = {"--port": gcs.rsplit(":", 1)[1], "--ray-client-server-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port(),
             "--node-manager-port": free_port(), "--object-manager-port": free_port()}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--include-dashboard",
         "false", "--num-cpus", str(cpus), "--disable-usage-stats", *[str(x) for kv in ports.items() for x in kv]],
        env=ray_env(tmpdir, RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    recorded = Path(tmpdir) / "ray" / "ray_current_cluster"
    deadline = time.monotonic() + 120
    while not (recorded.exists() and recorded.read_text().strip() == gcs and cluster.answers(gcs)):
        assert head.poll() is None, "ray start --head exited"
        assert time.monotonic() < deadline, "the head did not come up"
        time.sleep(0.5)
    return head, gcs


def stop(head: subprocess.Popen) -> None:
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)


@pytest.mark.ray
@pytest.mark.slow
def test_commands_join_a_running_head_and_local_starts_their_own(ray_tmpdir, tiny_imagenet, tmp_path):
    head, gcs = start_head(ray_tmpdir, cpus=3)  # 3 CPUs: not what a local Ray would have
    try:
        extra = {"RAY_AUTH_MODE": "disabled"}
        got, lines, _ = drive(ray_tmpdir, **extra)
        assert got["gcs"] == gcs and got["cpus"] == 3
        assert lines == [f"ray: joined the cluster at {gcs} (3 CPUs, 0 GPUs; from the running cluster recorded in "
                         f"{ray_tmpdir}/ray/ray_current_cluster)"]
        got, lines, _ = drive(ray_tmpdir, RAY_ADDRESS=gcs, **extra)
        assert got["gcs"] == gcs and lines[0].endswith("from RAY_ADDRESS)")
        got, lines, _ = drive(ray_tmpdir, "local", **extra)
        assert got["gcs"] != gcs and got["cpus"] == max(4, os.cpu_count() or 1) and got["node_ip"] == "127.0.0.1"
        assert len(lines) == 1 and lines[0].startswith("ray: started a local Ray")

        # The commands: trainer.run no longer dies on num_cpus when a head runs ...
        train = subprocess.run([sys.executable, "-m", "trainer.run", "--smoke", "--data",
                                str(tmp_path / "missing" / "manifest.json"), "--storage", str(tmp_path / "runs")],
                               env=ray_env(ray_tmpdir, **extra), cwd=tmp_path, capture_output=True, text=True,
                               timeout=300)
        assert train.returncode == 2 and "Traceback" not in train.stderr, train.stderr[-3000:]
        assert train.stderr.strip().splitlines()[-1].startswith("error: ") and "manifest" in train.stderr
        assert "ray: started" not in train.stderr
        # ... and prepare runs its Ray Data job on the head instead of a Ray of its own.
        prep = subprocess.run([sys.executable, "-m", "pipeline.prepare", "--src", os.fspath(tiny_imagenet), "--dst",
                               str(tmp_path / "shards")], env=ray_env(ray_tmpdir, **extra), cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert prep.returncode == 0, prep.stderr[-3000:]
        assert f"ray: joined the cluster at {gcs} (3 CPUs" in prep.stderr
        assert (tmp_path / "shards" / "manifest.json").exists()
    finally:
        stop(head)


def session_processes(session: str) -> list[psutil.Process]:
    """Processes whose command line or open files are in a Ray session directory (the agents rename themselves)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if session in " ".join(proc.info["cmdline"] or []) or any(
                    f.path.startswith(session + os.sep) for f in proc.open_files()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def start_driver(tmpdir: str) -> tuple[subprocess.Popen, str]:
    """A driver that started a local Ray and stays; (process, its session directory) once its agents run."""
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, "none", "stay"], env=ray_env(tmpdir), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline(), "the driver did not connect"
    session = os.path.realpath(Path(tmpdir) / "ray" / "session_latest")
    deadline = time.monotonic() + 60
    while True:  # the raylet starts the agents asynchronously: wait until they are there to outlive it
        names = {p.name() for p in session_processes(session) if p.is_running()}
        if {"ray::DashboardAgent", "ray::RuntimeEnvAgent", "raylet", "gcs_server"} <= names:
            return proc, session
        assert time.monotonic() < deadline, f"the session's processes did not all start: {names}"
        time.sleep(0.5)


def wait_gone(session: str, within: float) -> list[str]:
    """The names of the session's processes still alive after ``within`` seconds (empty as soon as none is)."""
    deadline = time.monotonic() + within
    while True:
        alive = [p for p in session_processes(session) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return [f"{p.pid} {p.name()}" for p in alive]
        time.sleep(0.25)


@pytest.mark.ray
@pytest.mark.slow
def test_a_local_ray_dies_with_its_driver_and_no_other_ray_does(ray_tmpdir):
    other_tmp = tempfile.mkdtemp(prefix="vd-ray-", dir="/tmp")
    other = None
    try:
        other, other_session = start_driver(other_tmp)
        driver, session = start_driver(ray_tmpdir)
        driver.kill()  # SIGKILL: no atexit, no ray.shutdown()
        driver.wait()
        assert wait_gone(session, within=10) == []
        # The other driver's Ray is untouched; SIGTERM (Python's default: no cleanup either) ends it the same way.
        assert {"raylet", "ray::DashboardAgent"} <= {p.name() for p in session_processes(other_session)}
        other.send_signal(signal.SIGTERM)
        other.wait()
        assert wait_gone(other_session, within=10) == []
    finally:
        if other is not None and other.poll() is None:
            other.kill()
        shutil.rmtree(other_tmp, ignore_errors=True)
