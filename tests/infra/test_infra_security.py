"""Security invariants of infra/, read with a real HCL parser (python-hcl2).

Each scanner is also run on deliberately bad snippets, so a scanner that silently stops
matching fails here instead of passing the real configuration by accident.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from infra_support import (
    INFRA,
    Module,
    as_list,
    bucket_findings,
    iam_findings,
    load_hcl,
    load_module,
    module_dirs,
    world_open_findings,
)

MODULES = [d.relative_to(INFRA).as_posix() for d in module_dirs()]


def snippet_module(tmp_path: Path, hcl: str) -> Module:
    """Write one .tf snippet into its own directory and parse it as a module."""
    directory = tmp_path / "snippet"
    directory.mkdir(exist_ok=True)
    (directory / "main.tf").write_text(hcl)
    return load_module(directory)


# --- every .tf file is real HCL ----------------------------------------------------------------


@pytest.mark.parametrize("tf", sorted(p.relative_to(INFRA).as_posix() for p in INFRA.rglob("*.tf")))
def test_every_tf_file_parses(tf: str) -> None:
    """python-hcl2 parses every Terraform file (the scanners below see all of them)."""
    assert isinstance(load_hcl((INFRA / tf).read_text()), dict)


# --- no world-open ingress on Ray / MLflow ports ------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_no_world_open_ingress_on_ray_or_mlflow_ports(module: str) -> None:
    """No security group or load balancer opens 8265, 6379, 10001 or 5000 to 0.0.0.0/0 or ::/0."""
    assert world_open_findings(load_module(INFRA / module)) == []


BAD_INGRESS = {
    "inline ingress on the dashboard": """
resource "aws_security_group" "bad" {
  ingress {
    from_port   = 8265
    to_port     = 8265
    protocol    = "tcp"
    cidr_blocks = ["10.0.0.0/8", "0.0.0.0/0"]
  }
}""",
    "standalone rule on GCS over IPv6": """
resource "aws_security_group_rule" "bad" {
  type              = "ingress"
  from_port         = 6379
  to_port           = 6379
  protocol          = "tcp"
  ipv6_cidr_blocks  = ["::/0"]
  security_group_id = "sg-123"
}""",
    "all-protocol rule (covers every port)": """
resource "aws_vpc_security_group_ingress_rule" "bad" {
  security_group_id = "sg-123"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}""",
    "port range covering the Ray client port": """
resource "aws_vpc_security_group_ingress_rule" "bad" {
  security_group_id = "sg-123"
  ip_protocol       = "tcp"
  from_port         = 10000
  to_port           = 10100
  cidr_ipv6         = "::/0"
}""",
    "world CIDR hidden in a variable default": """
variable "allowed" {
  type    = list(string)
  default = ["0.0.0.0/0"]
}
resource "aws_security_group" "bad" {
  ingress {
    from_port   = 5000
    to_port     = 5000
    protocol    = "tcp"
    cidr_blocks = var.allowed
  }
}""",
    "dynamic ingress block": """
resource "aws_security_group" "bad" {
  dynamic "ingress" {
    for_each = [8265]
    content {
      from_port   = ingress.value
      to_port     = ingress.value
      protocol    = "tcp"
      cidr_blocks = ["0.0.0.0/0"]
    }
  }
}""",
    "internet-facing load balancer": """
resource "aws_lb" "bad" {
  name               = "ray"
  load_balancer_type = "network"
}""",
}


@pytest.mark.parametrize("case", sorted(BAD_INGRESS))
def test_ingress_scanner_catches_world_open_snippets(case: str, tmp_path: Path) -> None:
    """The scanner flags each way of exposing a sensitive port to the internet."""
    assert world_open_findings(snippet_module(tmp_path, BAD_INGRESS[case]))


def test_ingress_scanner_accepts_private_sources(tmp_path: Path) -> None:
    """VPC CIDRs, security-group references, other ports and internal LBs are not findings."""
    module = snippet_module(
        tmp_path,
        """
resource "aws_security_group" "ok" {
  ingress {
    from_port   = 8265
    to_port     = 8265
    protocol    = "tcp"
    cidr_blocks = ["10.42.0.0/16"]
  }
  ingress {
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}
resource "aws_vpc_security_group_ingress_rule" "ok" {
  security_group_id            = "sg-123"
  ip_protocol                  = "tcp"
  from_port                    = 5000
  to_port                      = 5000
  referenced_security_group_id = "sg-456"
}
resource "aws_lb" "ok" {
  internal = true
}""",
    )
    assert world_open_findings(module) == []


# --- buckets: encryption, public-access blocks, TLS-only -----------------------------------------


def test_infra_defines_buckets() -> None:
    """The bucket check below has something to check."""
    assert sum(1 for m in MODULES for _ in load_module(INFRA / m).resources_of("aws_s3_bucket")) >= 2


@pytest.mark.parametrize("module", MODULES)
def test_every_bucket_is_encrypted_private_and_tls_only(module: str) -> None:
    """Each aws_s3_bucket has SSE, all four public-access blocks and a deny-non-TLS policy."""
    assert bucket_findings(load_module(INFRA / module)) == []


def test_bucket_scanner_catches_missing_controls(tmp_path: Path) -> None:
    """A bare bucket, or one with a partial public-access block, is reported."""
    module = snippet_module(
        tmp_path,
        """
resource "aws_s3_bucket" "bare" {
  bucket = "bare"
}
resource "aws_s3_bucket" "partial" {
  bucket = "partial"
}
resource "aws_s3_bucket_public_access_block" "partial" {
  bucket                  = aws_s3_bucket.partial.id
  block_public_acls       = true
  block_public_policy     = false
  ignore_public_acls      = true
  restrict_public_buckets = true
}""",
    )
    findings = "\n".join(bucket_findings(module))
    assert "aws_s3_bucket.bare has no aws_s3_bucket_public_access_block" in findings
    assert "aws_s3_bucket.bare has no default server-side encryption" in findings
    assert "aws_s3_bucket.bare has no bucket policy denying" in findings
    assert "aws_s3_bucket.partial does not set all four public-access blocks" in findings


def test_checkpoint_bucket_is_versioned_with_lifecycle() -> None:
    """Checkpoints are versioned, old versions expire, and old checkpoints age out."""
    bucket = load_module(INFRA / "modules/s3_bucket")
    ((_, versioning),) = bucket.resources_of("aws_s3_bucket_versioning")
    assert as_list(versioning["versioning_configuration"])[0]["status"] == "Enabled"
    ((_, lifecycle),) = bucket.resources_of("aws_s3_bucket_lifecycle_configuration")
    rule_ids = {rule["id"] for rule in lifecycle["rule"]}
    assert {"housekeeping", "old-objects-to-infrequent-access", "expire-old-objects"} <= rule_ids

    storage = load_module(INFRA / "modules/storage")
    checkpoints = storage.modules["checkpoints"]
    assert checkpoints["source"] == "../s3_bucket"
    assert checkpoints["current_version_expiration_days"] == "${var.checkpoint_expiration_days}"
    assert isinstance(storage.variables["checkpoint_expiration_days"]["default"], int)


# --- IAM: least privilege ----------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_no_wildcard_iam_grants(module: str) -> None:
    """No Allow of action "*", of wildcard actions on resource "*", or to principal "*"."""
    assert iam_findings(load_module(INFRA / module)) == []


def test_iam_scanner_catches_wildcards(tmp_path: Path) -> None:
    """Admin-style statements and inline JSON policies are reported."""
    module = snippet_module(
        tmp_path,
        """
data "aws_iam_policy_document" "bad" {
  statement {
    actions   = ["s3:*"]
    resources = ["*"]
  }
  statement {
    actions   = ["*"]
    resources = ["arn:aws:s3:::x"]
  }
}
resource "aws_iam_role_policy" "inline" {
  role   = "r"
  policy = jsonencode({ Statement = [{ Effect = "Allow", Action = "*", Resource = "*" }] })
}
resource "aws_iam_role_policy_attachment" "admin" {
  role       = "r"
  policy_arn = "arn:aws:iam::aws:policy/AdministratorAccess"
}""",
    )
    findings = "\n".join(iam_findings(module))
    assert "wildcard actions ['s3:*'] on \"*\"" in findings
    assert 'allows action "*"' in findings
    assert "aws_iam_role_policy.inline policy is not an aws_iam_policy_document" in findings
    assert "attaches AdministratorAccess" in findings


def test_ray_role_reads_data_and_writes_checkpoints_only() -> None:
    """The Ray pods' role: read-only on the dataset, read/write on checkpoints and artifacts."""
    identity = load_module(INFRA / "modules/identity")
    documents = dict(identity.data_of("aws_iam_policy_document"))
    statements = {s["sid"]: s for s in documents["ray"]["statement"]}
    assert statements["ReadDataset"]["actions"] == ["s3:GetObject"]
    assert statements["ReadDataset"]["resources"] == ["${var.data_bucket_arn}/*"]
    write = statements["ReadWriteCheckpointsAndArtifacts"]
    assert "s3:PutObject" in write["actions"]
    assert all("data_bucket" not in r for r in write["resources"])


# --- no credentials, nothing account-specific hard-coded ------------------------------------------

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key assignment": re.compile(r"(?i)aws_secret_access_key|secret_key\s*="),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "literal password": re.compile(r"(?i)\bpassword\s*=\s*\"[^\"$]+\""),
}


def infra_text_files() -> list[Path]:
    """Every text file under infra/ (Terraform, manifests, docs, examples)."""
    return sorted(p for p in INFRA.rglob("*") if p.is_file() and ".terraform" not in p.parts)


@pytest.mark.parametrize("name", sorted(SECRET_PATTERNS))
def test_no_credentials_in_infra(name: str) -> None:
    """No file under infra/ carries keys, secrets or passwords."""
    pattern = SECRET_PATTERNS[name]
    hits = [
        f"{p.relative_to(INFRA)}:{i}"
        for p in infra_text_files()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def test_providers_take_no_credentials() -> None:
    """Provider blocks configure a region only; credentials come from the caller's AWS session."""
    for directory in module_dirs():
        for name, body in load_module(directory).providers:
            assert name == "aws"
            assert set(body) <= {"region", "default_tags"}, f"{directory}: provider sets {sorted(body)}"


def test_database_password_is_generated_by_rds() -> None:
    """The MLflow database password is created and kept by RDS in Secrets Manager."""
    ((_, db),) = load_module(INFRA / "modules/mlflow").resources_of("aws_db_instance")
    assert db["manage_master_user_password"] is True
    assert "password" not in db and "password_wo" not in db
    assert db["publicly_accessible"] is False
    assert db["storage_encrypted"] is True


def test_nothing_account_specific_is_hard_coded() -> None:
    """Account ids, regions and zones appear only in variables' values (tfvars), never in code."""
    account = re.compile(r"(?<![0-9])[0-9]{12}(?![0-9])")
    region = re.compile(
        r"\b(us|eu|ap|sa|ca|me|af|il|mx)-(gov-)?(east|west|north|south|central|northeast|southeast|northwest|southwest)-[0-9]\b"
    )
    hits = []
    for path in infra_text_files():
        if path.suffix not in {".tf", ".yaml", ".py"}:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if account.search(line) or region.search(line):
                hits.append(f"{path.relative_to(INFRA)}:{number}: {line.strip()}")
    assert hits == []


def test_api_endpoint_cannot_be_opened_to_the_world() -> None:
    """The EKS API's public CIDRs come from a variable whose validation rejects 0.0.0.0/0 and ::/0."""
    example = load_module(INFRA / "envs/example")
    validation = example.variables["api_public_cidrs"]["validation"]
    condition = as_list(validation)[0]["condition"]
    assert "0.0.0.0/0" in condition and "::/0" in condition
    assert example.variables["api_public_cidrs"]["default"] == []
    ((_, cluster),) = load_module(INFRA / "modules/eks").resources_of("aws_eks_cluster")
    vpc = as_list(cluster["vpc_config"])[0]
    assert vpc["endpoint_private_access"] is True
    assert vpc["endpoint_public_access"] == "${length(var.api_public_cidrs) > 0}"
