"""The README's MLflow screenshots, taken from a real demo store with headless Chromium, so that they show what the
code logs today. Run by hand after a change to what training or the sweep logs:

    python docs/screenshots.py                     # uses demo-out/ (from `make demo`), making it first if missing
    python docs/screenshots.py --store /tmp/demo   # another demo output directory

It starts an MLflow server on the store (on loopback, a free port; with the store's ``artifacts/`` as artifacts
destination when ``make demo-cluster`` made it), finds the demo's training run (``demo-A`` in ``verydeep``) and the
sweep's parent run (``demo-sweep`` in ``verydeep-eval``), and writes under docs/:

- ``mlflow-demo-run.png``     the training run's charts
- ``mlflow-sweep-run.png``    the sweep's parent run: its description holds Tables 3-5, its dataset input, metrics
- ``mlflow-sweep-table.png``  Table 3 in MLflow's table view (the logged ``tables/table3_single_scale.json``)
- ``mlflow-sweep-plot.png``   the error-vs-Q plot among the run's artifacts

Needs Chromium (Debian: ``apt-get install -y chromium``); the browser gets a fresh profile and a virtual-time budget,
without which it captures the UI's loading skeleton.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TRAIN_EXPERIMENT, TRAIN_RUN = "verydeep", "demo-A"
SWEEP_EXPERIMENT, SWEEP_RUN = "verydeep-eval", "demo-sweep"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=60000"]


class ScreenshotError(RuntimeError):
    """Something the screenshots need is missing; one line."""


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, body: dict | None = None) -> dict:
    """One call of MLflow's REST API (the UI's own): GET with query parameters, or POST a JSON body."""
    url = f"{base}/api/2.0/mlflow/{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def find_run(base: str, experiment: str, name: str) -> tuple[str, str]:
    """(experiment id, run id) of the latest run of that name."""
    try:
        exp = api(base, f"experiments/get-by-name?experiment_name={experiment}")["experiment"]
    except urllib.error.HTTPError:
        raise ScreenshotError(f"no experiment {experiment!r} in the store") from None
    runs = api(base, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1,
                                     "filter": f"attributes.run_name = '{name}'",
                                     "order_by": ["attributes.start_time DESC"]}).get("runs", [])
    if not runs:
        raise ScreenshotError(f"no run {name!r} in experiment {experiment!r}")
    return exp["experiment_id"], runs[0]["info"]["run_id"]


def start_server(store: Path, port: int, log: Path) -> subprocess.Popen:
    """``mlflow server`` on the demo's store, ready to answer."""
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}"]
    if (store / "artifacts").is_dir():  # `make demo-cluster`: its server proxied artifacts to this directory
        cmd += ["--artifacts-destination", str(store / "artifacts")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise ScreenshotError(f"mlflow server exited (code {proc.returncode}); see {log}") from None
            time.sleep(1)
    proc.terminate()
    raise ScreenshotError(f"mlflow server did not answer within 180 s; see {log}")


def shoot(chromium: str, url: str, png: Path, size: str) -> None:
    """One headless screenshot of ``url`` at ``size`` (width,height) into ``png``."""
    with tempfile.TemporaryDirectory(prefix="verydeep-chromium-") as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                        f"--screenshot={png}", url], check=True, capture_output=True, timeout=180)
    print(f"wrote {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}  ({url})", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Make the demo store if needed, serve it, take the screenshots; a missing piece is one error line, code 1."""
    parser = argparse.ArgumentParser(prog="python docs/screenshots.py", description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "demo-out",
                        help="a demo output directory holding mlflow.db (default: demo-out/, made by `make demo`)")
    parser.add_argument("--out", type=Path, default=DOCS, help="where the PNGs go (default: docs/)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"),
                        help="the Chromium binary (default: chromium on PATH)")
    args = parser.parse_args(argv)
    if not args.chromium:
        print("error: no chromium on PATH (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 1
    store = args.store.resolve()
    if not (store / "mlflow.db").exists():
        print(f"== no demo store in {store}: running the demo first", flush=True)
        if subprocess.call([sys.executable, "-m", "demo", "--out", str(store)], cwd=ROOT) != 0:
            print("error: the demo failed; see its output above", file=sys.stderr)
            return 1
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(store, port, store / "screenshots-mlflow.log")
    try:
        train_exp, train = find_run(base, TRAIN_EXPERIMENT, TRAIN_RUN)
        sweep_exp, sweep = find_run(base, SWEEP_EXPERIMENT, SWEEP_RUN)
        args.out.mkdir(parents=True, exist_ok=True)
        shots = [
            (f"#/experiments/{train_exp}/runs/{train}/model-metrics", "mlflow-demo-run.png", "1600,1000"),
            (f"#/experiments/{sweep_exp}/runs/{sweep}", "mlflow-sweep-run.png", "1600,1400"),
            (f"#/experiments/{sweep_exp}/runs/{sweep}/artifacts/tables/table3_single_scale.json",
             "mlflow-sweep-table.png", "2000,700"),
            (f"#/experiments/{sweep_exp}/runs/{sweep}/artifacts/report/error_vs_q.png", "mlflow-sweep-plot.png",
             "1600,900"),
        ]
        for page, name, size in shots:
            # The UI's machine-learning pages (it opens on its GenAI ones by default).
            shoot(args.chromium, f"{base}/{page}?workflowType=machine_learning", args.out / name, size)
    except ScreenshotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
