"""Helpers for the offline infra checks: tool discovery, HCL loading and the security scanner."""

from __future__ import annotations

import glob
import ipaddress
import os
import platform
import re
import shutil
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"

# Ray dashboard / job API, Ray GCS, Ray client, MLflow tracking server.
SENSITIVE_PORTS = {8265: "Ray dashboard/jobs", 6379: "Ray GCS", 10001: "Ray client", 5000: "MLflow"}

PROVIDER_GLOB = "registry.terraform.io/hashicorp/aws/*/{platform}/terraform-provider-aws*"


# --- tools ---------------------------------------------------------------------------------------


def terraform_platform() -> str:
    """Terraform's name for this OS/architecture pair, e.g. linux_amd64."""
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    system = {"linux": "linux", "darwin": "darwin", "win32": "windows"}.get(sys.platform, sys.platform)
    return f"{system}_{arch}"


def plugin_search_roots() -> list[Path]:
    """Directories that commonly hold a Terraform filesystem mirror, most specific first."""
    home = Path.home()
    xdg = Path(os.environ.get("XDG_DATA_HOME", home / ".local" / "share"))
    return [
        home / ".terraform.d" / "plugins",
        xdg / "terraform" / "plugins",
        Path("/usr/local/share/terraform/plugins"),
        Path("/usr/share/terraform/plugins"),
        Path("/opt"),
        Path("/usr/local/share"),
    ]


def find_plugin_dir() -> Path | None:
    """Locate a directory usable as `terraform init -plugin-dir` that holds hashicorp/aws."""
    pattern = PROVIDER_GLOB.format(platform=terraform_platform())
    override = os.environ.get("VERYDEEP_TF_PLUGIN_DIR")
    candidates = [Path(override)] if override else []
    for root in plugin_search_roots():
        # The mirror may sit directly in a root or one or two levels below it.
        candidates += [root, *map(Path, glob.glob(f"{root}/*")), *map(Path, glob.glob(f"{root}/*/*"))]
    for candidate in candidates:
        if candidate.is_dir() and glob.glob(str(candidate / pattern)):
            return candidate
    return None


def find_terraform() -> str | None:
    """Path of the terraform binary (VERYDEEP_TERRAFORM or PATH)."""
    return os.environ.get("VERYDEEP_TERRAFORM") or shutil.which("terraform")


def find_checkov() -> str | None:
    """Path of checkov: VERYDEEP_CHECKOV, the repo's .venv-checkov, or PATH."""
    override = os.environ.get("VERYDEEP_CHECKOV")
    if override:
        return override
    local = REPO / ".venv-checkov" / "bin" / "checkov"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("checkov")


def offline_terraform_env(tmp: Path) -> dict[str, str]:
    """Environment that keeps terraform off the network and its state out of the repo."""
    cli_config = tmp / "terraformrc"
    cli_config.write_text("")  # no user mirrors or credentials leak into the check
    env = dict(os.environ)
    env.update(
        {
            "TF_CLI_CONFIG_FILE": str(cli_config),
            "CHECKPOINT_DISABLE": "1",  # no version check against HashiCorp's servers
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
        }
    )
    env.pop("TF_DATA_DIR", None)
    return env


# --- HCL ---------------------------------------------------------------------------------------


def load_hcl(text: str) -> dict[str, Any]:
    """Parse HCL2 text into plain Python data with python-hcl2 (strings unquoted, no comments)."""
    import hcl2
    from hcl2 import SerializationOptions

    options = SerializationOptions(strip_string_quotes=True, with_comments=False, explicit_blocks=False)
    return hcl2.loads(text, serialization_options=options)


def as_list(value: Any) -> list[Any]:
    """A block or attribute that may be single or repeated, as a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


@dataclass
class Module:
    """All .tf files of one directory, parsed and merged."""

    path: Path
    resources: list[tuple[str, str, dict[str, Any]]]
    data: list[tuple[str, str, dict[str, Any]]]
    variables: dict[str, dict[str, Any]]
    locals: dict[str, Any]
    modules: dict[str, dict[str, Any]]
    providers: list[tuple[str, dict[str, Any]]]

    def resources_of(self, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(name, body) of every resource of one type."""
        return ((name, body) for rtype, name, body in self.resources if rtype == kind)

    def data_of(self, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(name, body) of every data source of one type."""
        return ((name, body) for dtype, name, body in self.data if dtype == kind)


def _typed_blocks(entries: Iterable[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """Flatten hcl2's [{type: {name: body}}] into (type, name, body)."""
    out = []
    for entry in entries:
        for rtype, named in entry.items():
            for name, body in named.items():
                out.append((rtype, name, body))
    return out


def load_module(path: Path) -> Module:
    """Parse every *.tf file of a module directory."""
    module = Module(path, [], [], {}, {}, {}, [])
    for tf in sorted(path.glob("*.tf")):
        parsed = load_hcl(tf.read_text())
        module.resources += _typed_blocks(parsed.get("resource", []))
        module.data += _typed_blocks(parsed.get("data", []))
        for entry in parsed.get("variable", []):
            module.variables.update(entry)
        for entry in parsed.get("locals", []):
            module.locals.update(entry)
        for entry in parsed.get("module", []):
            module.modules.update(entry)
        for entry in parsed.get("provider", []):
            module.providers += list(entry.items())
    return module


def module_dirs(root: Path = INFRA) -> list[Path]:
    """Every directory under root holding *.tf files (modules and root modules)."""
    return sorted({tf.parent for tf in root.rglob("*.tf") if ".terraform" not in tf.parts})


def root_module_dirs(root: Path = INFRA) -> list[Path]:
    """Root modules: the environments (directories under envs/ with *.tf files)."""
    return [d for d in module_dirs(root) if "envs" in d.relative_to(root).parts]


# --- security scanner ----------------------------------------------------------------------------

_REF = re.compile(r"^\$\{(var|local)\.([A-Za-z0-9_]+)\}$")


def resolve(module: Module, value: Any) -> Any:
    """Replace a bare `${var.x}` / `${local.x}` by the variable default or local value, if literal."""
    if isinstance(value, list):
        out: list[Any] = []
        for item in value:
            resolved = resolve(module, item)
            out += resolved if isinstance(resolved, list) and _REF.match(str(item)) else [resolved]
        return out
    if isinstance(value, str):
        match = _REF.match(value)
        if match and match.group(1) == "var" and match.group(2) in module.variables:
            return resolve(module, module.variables[match.group(2)].get("default"))
        if match and match.group(1) == "local" and match.group(2) in module.locals:
            return resolve(module, module.locals[match.group(2)])
    return value


def is_world(cidr: Any) -> bool:
    """True for a CIDR that matches every address (0.0.0.0/0, ::/0 and spellings of them)."""
    if not isinstance(cidr, str):
        return False
    try:
        return ipaddress.ip_network(cidr.strip(), strict=False).prefixlen == 0
    except ValueError:
        return False


def _port(value: Any) -> int | None:
    """A literal port number, or None when it is an expression."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def exposed_ports(module: Module, rule: dict[str, Any], protocol_key: str) -> set[int]:
    """Sensitive ports an ingress rule admits; unknown port expressions count as all of them."""
    protocol = str(resolve(module, rule.get(protocol_key, "tcp"))).lower()
    if protocol in {"-1", "all"}:
        return set(SENSITIVE_PORTS)
    if protocol not in {"tcp", "6"} and not protocol.startswith("${"):
        return set()  # UDP/ICMP cannot reach the TCP services
    low = _port(resolve(module, rule.get("from_port")))
    high = _port(resolve(module, rule.get("to_port")))
    if low is None or high is None:
        return set(SENSITIVE_PORTS)
    if low == 0 and high in (0, 65535):
        return set(SENSITIVE_PORTS)
    return {port for port in SENSITIVE_PORTS if low <= port <= high}


def world_sources(module: Module, rule: dict[str, Any]) -> list[str]:
    """World-open CIDRs among a rule's IPv4/IPv6 sources (lists or single attributes)."""
    sources: list[Any] = []
    for key in ("cidr_blocks", "ipv6_cidr_blocks", "cidr_ipv4", "cidr_ipv6"):
        value = resolve(module, rule.get(key))
        sources += as_list(value)
    return [str(s) for s in sources if is_world(s)]


def _ingress_blocks(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Inline ingress blocks of an aws_security_group, including `dynamic "ingress"` content."""
    yield from as_list(body.get("ingress"))
    for dynamic in as_list(body.get("dynamic")):
        for name, spec in dynamic.items():
            if name == "ingress":
                yield from as_list(spec.get("content"))


def world_open_findings(module: Module) -> list[str]:
    """Ingress rules and load balancers of one module that expose sensitive ports to the internet."""
    findings = []

    def check(where: str, rule: dict[str, Any], protocol_key: str) -> None:
        world = world_sources(module, rule)
        ports = exposed_ports(module, rule, protocol_key) if world else set()
        if ports:
            names = ", ".join(f"{p} ({SENSITIVE_PORTS[p]})" for p in sorted(ports))
            findings.append(f"{module.path.name}: {where} opens {names} to {', '.join(world)}")

    for name, body in module.resources_of("aws_security_group"):
        for rule in _ingress_blocks(body):
            check(f"aws_security_group.{name} ingress", rule, "protocol")
    for name, body in module.resources_of("aws_security_group_rule"):
        if str(body.get("type", "")).lower() == "ingress":
            check(f"aws_security_group_rule.{name}", body, "protocol")
    for name, body in module.resources_of("aws_vpc_security_group_ingress_rule"):
        check(f"aws_vpc_security_group_ingress_rule.{name}", body, "ip_protocol")
    # An internet-facing load balancer would publish whatever listens behind it.
    for kind in ("aws_lb", "aws_alb", "aws_elb"):
        for name, body in module.resources_of(kind):
            if resolve(module, body.get("internal", False)) is not True:
                findings.append(f"{module.path.name}: {kind}.{name} is internet-facing (internal != true)")
    return findings


def _references(value: Any, kind: str, name: str) -> bool:
    """True if an attribute is a reference to `<kind>.<name>` (e.g. aws_s3_bucket.this.id)."""
    return (
        isinstance(value, str)
        and re.fullmatch(rf"\$\{{{kind}\.{name}(\[[^\]]+\])?\.(id|bucket|arn)\}}", value) is not None
    )


def _tls_only(module: Module, policy: Any) -> bool:
    """True if a bucket policy (a policy-document reference) denies requests without TLS."""
    match = re.fullmatch(r"\$\{data\.aws_iam_policy_document\.([A-Za-z0-9_]+)\.json\}", str(policy))
    if not match:
        return False
    documents = dict(module.data_of("aws_iam_policy_document"))
    for statement in as_list(documents.get(match.group(1), {}).get("statement")):
        if statement.get("effect") != "Deny":
            continue
        for condition in as_list(statement.get("condition")):
            if condition.get("variable") == "aws:SecureTransport" and as_list(condition.get("values")) == ["false"]:
                return True
    return False


def bucket_findings(module: Module) -> list[str]:
    """Buckets lacking SSE, any of the four public-access blocks, or a TLS-only policy."""
    findings = []
    for bucket, body in module.resources_of("aws_s3_bucket"):
        where = f"{module.path.name}: aws_s3_bucket.{bucket}"
        if any(key in body for key in ("acl", "website")):
            findings.append(f"{where} sets an ACL or website hosting")

        blocks = [
            b
            for _, b in module.resources_of("aws_s3_bucket_public_access_block")
            if _references(b.get("bucket"), "aws_s3_bucket", bucket)
        ]
        flags = ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
        if not blocks:
            findings.append(f"{where} has no aws_s3_bucket_public_access_block")
        elif not any(all(b.get(flag) is True for flag in flags) for b in blocks):
            findings.append(f"{where} does not set all four public-access blocks to true")

        sse = [
            b
            for _, b in module.resources_of("aws_s3_bucket_server_side_encryption_configuration")
            if _references(b.get("bucket"), "aws_s3_bucket", bucket)
        ]
        algorithms = {
            default.get("sse_algorithm")
            for config in sse
            for rule in as_list(config.get("rule"))
            for default in as_list(rule.get("apply_server_side_encryption_by_default"))
        }
        if not algorithms & {"aws:kms", "aws:kms:dsse", "AES256"}:
            findings.append(f"{where} has no default server-side encryption")

        policies = [
            b
            for _, b in module.resources_of("aws_s3_bucket_policy")
            if _references(b.get("bucket"), "aws_s3_bucket", bucket)
        ]
        if not any(_tls_only(module, p.get("policy")) for p in policies):
            findings.append(f"{where} has no bucket policy denying aws:SecureTransport=false")
    return findings


BROAD_MANAGED_POLICIES = ("AdministratorAccess", "PowerUserAccess", "IAMFullAccess", "AmazonS3FullAccess")


def iam_findings(module: Module) -> list[str]:
    """IAM grants that are too wide: wildcard actions on "*", Allow to any principal, inline JSON."""
    findings = []
    for name, body in module.data_of("aws_iam_policy_document"):
        for index, statement in enumerate(as_list(body.get("statement"))):
            where = f"{module.path.name}: data.aws_iam_policy_document.{name} statement {statement.get('sid', index)}"
            if statement.get("effect", "Allow") != "Allow":
                continue
            actions = [str(a) for a in as_list(statement.get("actions"))]
            resources = [str(r) for r in as_list(statement.get("resources"))]
            principals = as_list(statement.get("principals"))
            if "*" in actions or any(str(a).strip() == "*" for a in as_list(statement.get("not_actions"))):
                findings.append(f'{where} allows action "*"')
            if principals:
                # A resource policy (key or trust policy): "*" resources mean the resource itself,
                # but nobody outside must be let in.
                for principal in principals:
                    if "*" in [str(i) for i in as_list(principal.get("identifiers"))]:
                        findings.append(f'{where} allows principal "*"')
            elif "*" in resources and any("*" in a for a in actions):
                findings.append(f'{where} allows wildcard actions {actions} on "*"')
    for kind in ("aws_iam_policy", "aws_iam_role_policy", "aws_iam_user_policy", "aws_iam_group_policy"):
        for name, body in module.resources_of(kind):
            if not re.fullmatch(
                r"\$\{data\.aws_iam_policy_document\.[A-Za-z0-9_]+(\[[^\]]+\])?\.json\}", str(body.get("policy"))
            ):
                findings.append(
                    f"{module.path.name}: {kind}.{name} policy is not an aws_iam_policy_document (cannot be checked)"
                )
    for kind in ("aws_iam_role_policy_attachment", "aws_iam_policy_attachment", "aws_iam_user_policy_attachment"):
        for name, body in module.resources_of(kind):
            text = " ".join(str(v) for v in (body.get("policy_arn"), body.get("for_each")))
            for broad in BROAD_MANAGED_POLICIES:
                if re.search(rf"\b{broad}\b", text):
                    findings.append(f"{module.path.name}: {kind}.{name} attaches {broad}")
    return findings


# --- Terraform templatefile() subset used by infra/k8s ------------------------------------------

_PLACEHOLDER = re.compile(r"(?<!\$)\$\{([^}]*)\}")


def template_placeholders(text: str) -> set[str]:
    """Names interpolated by a template (escaped `$${...}` excluded)."""
    return {m.group(1).strip() for m in _PLACEHOLDER.finditer(text)}


def render_template(text: str, variables: dict[str, str]) -> str:
    """Render like templatefile() for plain `${name}` interpolation and the `$${` escape."""
    if "%{" in text:
        raise ValueError("template directives (%{...}) are not supported by this renderer")
    missing = template_placeholders(text) - set(variables)
    if missing:
        raise KeyError(f"template uses undefined variables: {sorted(missing)}")
    rendered = _PLACEHOLDER.sub(lambda m: str(variables[m.group(1).strip()]), text)
    return rendered.replace("$${", "${")
