"""What the benchmarks ran on, and writing their JSON: shared by the scripts in this folder (on sys.path as theirs)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


# Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) from the vendors' data sheets, by device-name fragment;
# the first fragment found in the name wins, so the more specific ones come first.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                    "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0}


def peak_bf16_tflops(device_name: str) -> float | None:
    """The datasheet's dense bf16 peak of a GPU by its name (``torch.cuda.get_device_name``); None when unknown."""
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


def write_results(path: Path, result: dict) -> None:
    """Write a benchmark's results as indented JSON (making the folder) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    path = path.resolve()
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def use_s3(endpoint: str, bucket: str) -> None:
    """Point this process and the Ray workers it starts (they inherit the environment) at a loopback S3 server with
    test credentials, and create ``bucket`` there."""
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(k, None)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint})
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
