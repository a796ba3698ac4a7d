"""The images infra/ builds, read as text (no Docker daemon): the Ray image (infra/ray/Dockerfile) carries verydeep
with the pinned stack on a CUDA base that matches torch's and DALI's build, and the MLflow image its pinned MLflow.
checkov scans both files as well (test_infra_checkov.py)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from infra_support import INFRA, REPO, load_module

RAY = INFRA / "ray" / "Dockerfile"
MLFLOW = INFRA / "mlflow" / "Dockerfile"


@dataclass
class Stage:
    """One FROM ... stage: its base image and its instructions as (keyword, argument text)."""

    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [text for kw, text in self.steps if kw == keyword]


def parse(path: Path) -> list[Stage]:
    """The Dockerfile's stages: continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(" ".join(current.split()))
        current = ""
    stages: list[Stage] = []
    for text in logical:
        keyword, _, rest = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            stages.append(Stage(words[0], words[2] if len(words) == 3 and words[1].upper() == "AS" else None))
        else:
            assert stages, f"{path}: {keyword} before FROM"
            stages[-1].steps.append((keyword, rest))
    return stages


def constraints() -> dict[str, str]:
    """constraints.txt as {package: version}."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def cuda_of_dali() -> str:
    """The CUDA major.minor that the pinned DALI package is built for (nvidia-dali-cuda130 -> 13.0)."""
    (name,) = [n for n in constraints() if n.startswith("nvidia-dali-cuda")]
    digits = name.removeprefix("nvidia-dali-cuda")
    return f"{digits[:-1]}.{digits[-1]}"


def test_the_ray_image_builds_on_a_pinned_cuda_base_of_torchs_and_dalis_cuda():
    stages = parse(RAY)
    cuda = cuda_of_dali()
    assert cuda == "13.0"
    for stage in stages:
        image, _, tag = stage.base.partition(":")
        assert image == "nvidia/cuda" and tag and not tag.startswith("latest"), stage.base
        assert tag.split("@")[0].startswith(f"{cuda}.") and "ubuntu" in tag, f"{stage.base}: not CUDA {cuda}"
    text = RAY.read_text()
    # torch and torchvision come from PyTorch's index for that same CUDA (cu130), the DALI pin from pyproject.
    assert f"https://download.pytorch.org/whl/cu{cuda.replace('.', '')}" in text
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"nvidia-dali-cuda{cuda.replace(".", "")}' in pyproject
    # Other images it copies from are pinned by version too.
    for ref in re.findall(r"COPY --from=(\S+)", text):
        assert ref in {s.name for s in stages} or re.search(r":\d+\.\d+\.\d+", ref), ref


def test_the_ray_image_has_python_311_and_the_pinned_stack():
    build, final = parse(RAY)
    run = " && ".join(build.args("RUN"))
    assert "uv python install 3.11" in run and "uv venv --seed --python 3.11 /opt/venv" in run
    assert any(c.split()[-1] == "/tmp/constraints.txt" and "constraints.txt" in c for c in final.args("COPY"))
    installs = [cmd for r in final.args("RUN") for cmd in r.split("&&") if " install " in cmd and "pip" in cmd]
    assert len(installs) == 2
    for cmd in installs:  # every version of both steps comes from constraints.txt
        words = shlex.split(cmd)
        assert words[words.index("-c") + 1] == "/tmp/constraints.txt", cmd
    assert "torch torchvision" in installs[0] and "/tmp/wheels/verydeep-*.whl" in installs[1]
    pins = constraints()
    assert {"torch", "torchvision", "ray", "pyarrow", "mlflow", "nvidia-dali-cuda130"} <= set(pins)
    # KubeRay starts the pods with the Ray of ray_version: the one pinned here.
    example = load_module(INFRA / "envs/example")
    assert example.variables["ray_version"]["default"] == pins["ray"]
    tfvars = (INFRA / "envs/example/terraform.tfvars.example").read_text()
    assert re.search(rf'ray_version\s*=\s*"{re.escape(pins["ray"])}"', tfvars)
    assert any(text.startswith("PATH=/opt/venv/bin:") for text in final.args("ENV"))


def test_the_ray_image_builds_and_requires_the_window_decode():
    build, final = parse(RAY)
    packages = " ".join(build.args("RUN"))
    assert re.search(r"apt-get install -y --no-install-recommends gcc libc6-dev libjpeg-turbo8-dev", packages)
    wheel = next(r for r in build.args("RUN") if "pip wheel" in r)
    assert "pipeline/_jpegwindow" in wheel and "sys.exit(not any(" in wheel  # optional in pyproject, required here
    runtime = " ".join(final.args("RUN"))
    assert "libjpeg-turbo8 " in runtime and "-dev" not in runtime.split("pip")[0]
    assert "from pipeline import _jpegwindow" in runtime and "import nvidia.dali" in runtime
    # The sources the build copies are all in the build context the ignore file lets through.
    allowed = {line[1:] for line in (INFRA / "ray" / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    copied = {w for stage in (build, final) for c in stage.args("COPY") if not c.startswith("--from")
              for w in c.split()[:-1]}
    assert copied <= allowed and (REPO / "pipeline" / "_jpegwindow.c").exists()


def test_the_ray_image_runs_as_a_user_and_is_referenced_by_the_cluster():
    *_, final = parse(RAY)
    user = final.args("USER")[-1]
    assert user.isdigit() and int(user) >= 1000
    assert final.args("HEALTHCHECK")
    manifest = (INFRA / "k8s" / "raycluster.yaml").read_text()
    assert manifest.count('image: "${ray_image}"') == 2 and "infra/ray/Dockerfile" in manifest
    docs = [d for d in yaml.safe_load_all(manifest.replace("${gpu_max_workers}", "1")) if d]
    (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    assert cluster["spec"]["rayVersion"] == "${ray_version}"
    assert "infra/ray/Dockerfile" in (INFRA / "envs/example/variables.tf").read_text()
    assert "docker build -f infra/ray/Dockerfile" in (INFRA / "README.md").read_text()


def test_the_mlflow_image_has_the_pinned_mlflow():
    (stage,) = parse(MLFLOW)
    assert ":" in stage.base and not stage.base.endswith(":latest")
    (version,) = [a.split("=", 1)[1] for a in stage.args("ARG") if a.startswith("MLFLOW_VERSION=")]
    assert version == constraints()["mlflow"]
    assert stage.args("USER")[-1] != "root"
