"""Terraform's own checks, offline: formatting, and init + validate of every module."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from infra_support import INFRA, load_hcl, load_module, module_dirs, root_module_dirs

ROOTS = [d.relative_to(INFRA).as_posix() for d in root_module_dirs()]
ALL_MODULES = [d.relative_to(INFRA).as_posix() for d in module_dirs()]


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 180) -> subprocess.CompletedProcess[str]:
    """Run a terraform command, capturing output."""
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_layout_has_an_example_environment() -> None:
    """The example root module exists with its tfvars example, so the parametrized checks below run."""
    assert "envs/example" in ROOTS
    assert (INFRA / "envs/example/terraform.tfvars.example").is_file()
    assert {"modules/network", "modules/storage", "modules/identity", "modules/eks", "modules/mlflow"} <= set(
        ALL_MODULES
    )


def test_fmt(terraform_bin: str, tf_env: dict[str, str]) -> None:
    """`terraform fmt -check -recursive` finds nothing to reformat."""
    result = run([terraform_bin, "fmt", "-check", "-recursive", "-diff", str(INFRA)], INFRA, tf_env)
    assert result.returncode == 0, f"terraform fmt would change files:\n{result.stdout}{result.stderr}"


@pytest.mark.slow
@pytest.mark.parametrize("module", ALL_MODULES)
def test_init_and_validate(
    module: str, terraform_bin: str, aws_plugin_dir: Path, infra_copy: Path, tf_env: dict[str, str], tmp_path: Path
) -> None:
    """`terraform init -backend=false` from the local plugin dir, then `terraform validate` is clean."""
    workdir = infra_copy / module
    env = {**tf_env, "TF_DATA_DIR": str(tmp_path / ".terraform")}
    init = run(
        [terraform_bin, "init", "-backend=false", f"-plugin-dir={aws_plugin_dir}", "-input=false", "-no-color"],
        workdir,
        env,
    )
    assert init.returncode == 0, f"terraform init failed in {module}:\n{init.stdout}{init.stderr}"

    validate = run([terraform_bin, "validate", "-json", "-no-color"], workdir, env)
    report = json.loads(validate.stdout)
    messages = [
        f"{d['severity']}: {d['summary']} {d.get('detail', '')} ({d.get('range', {}).get('filename', '')})"
        for d in report["diagnostics"]
    ]
    print(
        f"terraform validate {module}: valid={report['valid']} errors={report['error_count']} warnings={report['warning_count']}"
    )
    assert report["valid"] and report["error_count"] == 0, "\n".join(messages)
    assert report["warning_count"] == 0, "\n".join(messages)


def test_validate_ran_against_the_aws_provider_constraint(aws_plugin_dir: Path) -> None:
    """Every module pins hashicorp/aws to 5.x, which the local provider must satisfy."""
    versions = sorted(p.name for p in (aws_plugin_dir / "registry.terraform.io/hashicorp/aws").iterdir())
    assert any(v.startswith("5.") for v in versions), f"local hashicorp/aws versions {versions} do not satisfy ~> 5.0"
    for module in ALL_MODULES:
        parsed = load_hcl((INFRA / module / "versions.tf").read_text())
        aws = parsed["terraform"][0]["required_providers"][0]["aws"]
        assert aws == {"source": "hashicorp/aws", "version": "~> 5.0"}, module


@pytest.mark.parametrize("root", ROOTS)
def test_tfvars_example_matches_variables(root: str) -> None:
    """terraform.tfvars.example sets every required variable and only declared ones."""
    module = load_module(INFRA / root)
    example = load_hcl((INFRA / root / "terraform.tfvars.example").read_text())
    required = {name for name, spec in module.variables.items() if "default" not in spec}
    assert required <= set(example), f"tfvars example misses required variables {sorted(required - set(example))}"
    assert set(example) <= set(module.variables), (
        f"tfvars example sets undeclared variables {sorted(set(example) - set(module.variables))}"
    )


@pytest.mark.parametrize("module", ALL_MODULES)
def test_variables_and_outputs_are_described(module: str) -> None:
    """Every variable and output carries a description (the module's interface documentation)."""
    parsed = load_module(INFRA / module)
    undocumented = [name for name, spec in parsed.variables.items() if not spec.get("description")]
    assert not undocumented, f"{module}: variables without description: {undocumented}"
    outputs = (
        load_hcl((INFRA / module / "outputs.tf").read_text()).get("output", [])
        if (INFRA / module / "outputs.tf").exists()
        else []
    )
    for entry in outputs:
        for name, spec in entry.items():
            assert spec.get("description"), f"{module}: output {name} has no description"
