"""Fixtures for the offline infra checks (Terraform, HCL invariants, checkov, manifests)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from infra_support import INFRA, find_plugin_dir, find_terraform, offline_terraform_env


@pytest.fixture(scope="session")
def terraform_bin() -> str:
    """The terraform binary; its absence is a failure, not a skip."""
    binary = find_terraform()
    if not binary:
        pytest.fail(
            "terraform not found on PATH (or VERYDEEP_TERRAFORM); install Terraform >= 1.6 to run the infra checks"
        )
    return binary


@pytest.fixture(scope="session")
def infra_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch copy of infra/, so init never writes .terraform/ or lock files into the repo."""
    target = tmp_path_factory.mktemp("tf") / "infra"
    shutil.copytree(INFRA, target, ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "*.tfstate*"))
    return target


@pytest.fixture(scope="session")
def tf_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment keeping terraform offline and its CLI config neutral."""
    return offline_terraform_env(tmp_path_factory.mktemp("tfcli"))


@pytest.fixture(scope="session")
def aws_plugin_dir() -> Path:
    """Local filesystem mirror with hashicorp/aws; skips (only) when this machine has none."""
    found = find_plugin_dir()
    if found is None:
        pytest.skip(
            "provider hashicorp/aws is not present on this machine as a local plugin directory "
            "(set VERYDEEP_TF_PLUGIN_DIR to a directory containing registry.terraform.io/hashicorp/aws/...); "
            "terraform init/validate cannot run offline without it"
        )
    return found
