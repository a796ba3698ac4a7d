"""benchmarks/gpu_check.py where there is no GPU: one line and exit 0, its arithmetic, its section runner's limits."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vgg.model import build, multiply_adds

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its process pool pickles its functions by module name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_without_cuda_one_line_and_exit_0(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == [f"gpu_check: no CUDA device here (torch {torch.__version__}): nothing to check"]
    assert not out.exists()


def test_vgg16_training_flops_and_mfu(gpu_check):
    macs = multiply_adds(build("D", init="none"))
    flops = gpu_check.train_flops_per_image(macs)
    # VGG-16's "15.5 G" at 224 is multiply-adds: 31 GFLOP forward, three times that for forward + backward.
    assert 15.4e9 < macs < 15.6e9 and flops == 6 * macs and round(flops / 1e9, 1) == 92.8
    # 2,000 img/s of VGG-16 on a 989 TFLOP/s part is 18.8 % of its peak.
    assert gpu_check.mfu(2000.0, flops, 989.0) == pytest.approx(2000 * flops / 989e12)
    assert round(gpu_check.mfu(2000.0, flops, 989.0), 3) == 0.188


@pytest.mark.parametrize("name, peak", [("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0),
                                        ("NVIDIA H100 PCIe", 756.0), ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0),
                                        ("Tesla T4", None)])
def test_datasheet_peak_by_device_name(gpu_check, name, peak):
    assert gpu_check.peak_bf16_tflops(name) == peak


def test_parity_statistics(gpu_check):
    ref = torch.rand(4, 3, 8, 8, dtype=torch.float64) * 255
    same = gpu_check.diff_stats(ref.float(), ref)
    assert same["max"] < 1e-3 and same["within_tolerance"]
    off = ref.clone()
    off[2] += 2.0  # one image off by 2 everywhere: its MAD (2) is over the tolerance (1), the others are exact
    stats = gpu_check.diff_stats(off, ref)
    assert stats["max"] == 2.0 and stats["worst_image_mad"] == 2.0 and stats["mean"] == 0.5
    assert not stats["within_tolerance"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks how the GPU tests read where they cannot run")
def test_tests_section_does_not_count_skipped_gpu_tests_as_a_pass(gpu_check, tmp_path):
    result = gpu_check.check_tests({}, torch.device("cpu"), tmp_path)
    assert result["files"] == ["tests/pipeline/test_decode.py"]
    assert result["passed"] == 0 and result["failed"] == 0 and result["skipped"] >= 2
    assert result["status"] == "failed" and "no CUDA-marked test passed" in result["reason"]


def test_a_section_over_its_time_limit_is_killed_and_reported(gpu_check, tmp_path):
    # No section starts within 0.2 s (the child alone imports torch): the limit ends it, the reason says so.
    result = gpu_check.spawn("step", True, 0.2, tmp_path / "step.log")
    assert result["status"] == "failed" and result["reason"].startswith("timed out after 0.2 s")
    assert (tmp_path / "step.log").exists()
