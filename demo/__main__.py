"""``make demo``: the whole system on one machine, on real images, with embedded defaults.

    python -m demo                  # local Ray, local storage, a local MLflow store, under demo-out/
    python -m demo --cluster        # the same job as a cluster user runs it: S3 (loopback), a Ray head,
                                    # an MLflow server, and `ray job submit` for the training

Stages, each the command a user would type (printed before it runs), each reused when rerun:

1. ``python -m pipeline.digits``   scikit-learn's digits rendered as an ImageNet-layout tree (no download)
2. ``python -m pipeline.prepare``  that tree -> Parquet shards + manifest (Sec. 3.1's data, as for ImageNet)
3. ``python -m trainer.run``       net A scaled down (trainer/recipes/demo_digits.yaml), the paper's schedule logic
4. ``python -m evaluation.sweep``  dense and multi-crop at three Q, flips as in training (Sec. 3.2, Tables 3-5)

and finally the results table and the command that opens the MLflow UI on these runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "demo_digits"
RUN_NAME = "demo-A"
BUCKET = "verydeep-demo"


class DemoError(RuntimeError):
    """A stage failed; the message says which and how to rerun it."""


def run(cmd: Sequence[str], what: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    """Run one stage's command in the foreground in ``cwd`` (MLflow's local artifacts land there), output
    streaming; stop the demo if it fails."""
    print(f"\n== {what}\n$ {' '.join(cmd)}", flush=True)
    code = subprocess.call(list(cmd), env=env, cwd=cwd)
    if code != 0:
        raise DemoError(f"{what} failed (exit code {code}); rerun `make demo` to continue from here")


def python(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter (the project's environment)."""
    return [sys.executable, "-m", module, *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout: float = 180) -> None:
    """Poll ``check()`` until it is true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise DemoError(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(0.5)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def background(stack: ExitStack, cmd: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a service in its own process group, stopped when the demo ends."""
    out = stack.enter_context(open(log, "ab"))
    proc = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    stack.callback(stop)
    return proc


def model_run(storage: str, tracking: str) -> str:
    """The training run's MLflow id, from its latest checkpoint (the sweep resolves the model through it)."""
    from trainer.checkpoint import find_latest

    latest = find_latest(storage, RUN_NAME)
    if latest is None or latest[1].mlflow_run_id is None:
        raise DemoError(f"no finished training run {RUN_NAME} in {storage}")
    return latest[1].mlflow_run_id


def ui_command(out: Path, artifacts: Path | None = None) -> str:
    """The command that opens the MLflow UI on the demo's store, with every artifact: a server's runs keep theirs
    under its ``--artifacts-destination``, which the UI must be given too (local runs record absolute paths)."""
    return (f"{Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri sqlite:///{out / 'mlflow.db'}"
            + (f" --artifacts-destination {artifacts}" if artifacts is not None else "") + " --port 5000")


def local(out: Path, train_flags: list[str], sweep_flags: list[str]) -> str:
    """The demo on embedded defaults; returns the command that opens the MLflow UI on its runs."""
    tracking = f"sqlite:///{out / 'mlflow.db'}"
    out.mkdir(parents=True, exist_ok=True)
    # Each stage starts a local Ray; token authentication, Ray's default for it, chosen explicitly (Ray warns in
    # every stage when the mode is left unset).
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    run(python("pipeline.digits", "--dst", str(out / "digits")), "1/4 render the digits as an ImageNet tree", out,
        env)
    run(python("pipeline.prepare", "--src", str(out / "digits"), "--dst", str(out / "shards")),
        "2/4 ingest: Parquet shards + manifest", out, env)
    run(python("trainer.run", "--config", RECIPE, "--data", str(out / "shards"), "--storage", str(out / "runs"),
               "--name", RUN_NAME, "--tracking-uri", tracking, *train_flags),
        "3/4 train net A (scaled down) with the paper's schedule", out, env)
    run_id = model_run(str(out / "runs"), tracking)
    run(python("evaluation.sweep", "--model", f"runs:/{run_id}", "--data", str(out / "shards"), "--out",
               str(out / "sweep"), "--tracking-uri", tracking, "--run-name", "demo-sweep", *sweep_flags),
        "4/4 evaluation sweep: dense and multi-crop at three Q, flips as in training", out, env)
    return ui_command(out)


def cluster(out: Path, train_flags: list[str], sweep_flags: list[str]) -> str:
    """The same job against real services on loopback: S3, a Ray head, an MLflow server; returns the command that
    opens the MLflow UI on its runs once the services are gone."""
    out.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    s3, mlflow_port, dashboard = free_port(), free_port(), free_port()
    endpoint = f"http://127.0.0.1:{s3}"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
           "AWS_DEFAULT_REGION": "us-east-1", "RAY_AUTH_MODE": "disabled",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           # The head is this machine alone: no node to drain, so no preemption to watch (its watcher's start logs
           # a core_worker error line in the job's output).
           "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    env.pop("RAY_ADDRESS", None)
    tracking = f"http://127.0.0.1:{mlflow_port}"
    with ExitStack() as stack:
        print(f"\n== services on loopback: S3 {endpoint}, MLflow {tracking}, Ray dashboard :{dashboard}", flush=True)
        background(stack, [str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(s3)], env, out / "s3.log")
        wait_for(lambda: port_open(s3), "the S3 server")
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="demo",
                     aws_secret_access_key="demo").create_bucket(Bucket=BUCKET)
        background(stack, [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                           str(mlflow_port), "--workers", "1", "--backend-store-uri",
                           f"sqlite:///{out / 'mlflow.db'}", "--artifacts-destination", str(out / "artifacts")],
                   env, out / "mlflow.log")
        background(stack, [str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--port",
                           str(free_port()), "--ray-client-server-port", str(free_port()), "--num-cpus",
                           str(max(4, os.cpu_count() or 1)), "--disable-usage-stats"], env, out / "ray.log")
        wait_for(lambda: port_open(mlflow_port), "the MLflow server")
        wait_for(lambda: port_open(dashboard), "the Ray head")
        shards, ckpts = f"s3://{BUCKET}/shards", f"s3://{BUCKET}/checkpoints"
        run(python("pipeline.digits", "--dst", str(out / "digits")), "1/4 render the digits", out, env)
        run(python("pipeline.prepare", "--src", str(out / "digits"), "--dst", shards), "2/4 ingest into S3", out, env)
        run([str(bin_dir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--",
             "python", "-m", "trainer.run", "--config", RECIPE, "--data", shards, "--storage", ckpts, "--name",
             RUN_NAME, "--tracking-uri", tracking, *train_flags], "3/4 ray job submit: train net A", out, env)
        os.environ.update({k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                               "AWS_DEFAULT_REGION")})
        run_id = model_run(ckpts, tracking)
        run(python("evaluation.sweep", "--model", f"runs:/{run_id}", "--data", shards, "--out",
                   f"s3://{BUCKET}/sweep", "--tracking-uri", tracking, "--run-name", "demo-sweep", *sweep_flags),
            "4/4 evaluation sweep", out, env)
    return ui_command(out, out / "artifacts")  # the server is gone; its store and artifacts open with `mlflow ui`


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; a failed stage prints one line and returns 1."""
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-out", help="where everything goes (default: demo-out/)")
    parser.add_argument("--cluster", action="store_true", help="run against S3, a Ray head and an MLflow server")
    parser.add_argument("--epochs", type=int, help="cap the training epochs (the recipe's 50 by default)")
    parser.add_argument("--max-images", type=int, help="evaluate only this many held-out images")
    args = parser.parse_args(argv)
    out = (ROOT / args.out).resolve() if not os.path.isabs(args.out) else Path(args.out)
    train_flags = ["--epochs", str(args.epochs)] if args.epochs else []
    sweep_flags = ["--max-images", str(args.max_images)] if args.max_images else []
    started = time.monotonic()
    try:
        ui = (cluster if args.cluster else local)(out, train_flags, sweep_flags)
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    minutes = (time.monotonic() - started) / 60
    print(f"\ndemo finished in {minutes:.1f} min. Open the MLflow UI on its runs with:\n  {ui}\n"
          "then browse http://127.0.0.1:5000 (experiments 'verydeep': training, 'verydeep-eval': the sweep)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
