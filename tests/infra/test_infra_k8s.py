"""The Kubernetes side: templates render with exactly the variables Terraform passes, and the
rendered RayCluster / MLflow manifests keep the cluster private and GPU workers well-formed."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from infra_support import INFRA, load_module, render_template, template_placeholders

K8S = INFRA / "k8s"
EXAMPLE = load_module(INFRA / "envs/example")
GIB = 1024**3

# Plausible values for every template variable (types as Terraform renders them: strings).
SAMPLE = {
    "region": "xx-test-1",
    "ray_image": "registry.example/verydeep:0.1.0",
    "ray_version": "2.60.0",
    "ray_role_arn": "arn:aws:iam::000000000000:role/ray",
    "mlflow_tracking_uri": "http://mlflow.mlflow.svc.cluster.local:5000",
    "data_uri": "s3://data/imagenet/manifest.json",
    "storage_uri": "s3://ckpt/runs",
    "head_cpu": "4",
    "head_memory": "16Gi",
    "head_shm": "4Gi",
    "gpu_max_workers": "6",
    "gpus_per_node": "4",
    "worker_cpu": "44",
    "worker_memory": "170Gi",
    "worker_shm": "60Gi",
    "object_store_bytes": str(56 * GIB),
    "mlflow_image": "registry.example/verydeep-mlflow:3.17.2",
    "mlflow_role_arn": "arn:aws:iam::000000000000:role/mlflow",
    "db_secret_arn": "arn:aws:secretsmanager:xx-test-1:000000000000:secret:rds",
    "db_host": "db.internal",
    "db_port": "5432",
    "db_name": "mlflow",
    "artifacts_destination": "s3://artifacts/mlflow",
    "cluster_name": "verydeep",
    "image_tag": "v1.33.0",
    "role_arn": "arn:aws:iam::000000000000:role/ca",
}


def rendered(name: str, keys: set[str]) -> list[dict[str, Any]]:
    """Render one template with sample values for `keys` and parse its YAML documents."""
    text = render_template((K8S / name).read_text(), {k: SAMPLE[k] for k in keys})
    return [doc for doc in yaml.safe_load_all(text) if doc]


def all_manifests() -> list[dict[str, Any]]:
    """Every Kubernetes object the example environment applies."""
    keys = set(EXAMPLE.locals["k8s_template_vars"])
    docs = [doc for doc in yaml.safe_load_all((K8S / "namespaces.yaml").read_text()) if doc]
    return docs + rendered("mlflow.yaml", keys) + rendered("raycluster.yaml", keys)


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Pod specs inside a Deployment or RayCluster."""
    if doc["kind"] == "RayCluster":
        groups = [doc["spec"]["headGroupSpec"], *doc["spec"].get("workerGroupSpecs", [])]
        return [group["template"]["spec"] for group in groups]
    if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return [doc["spec"]["template"]["spec"]]
    return []


def quantity_bytes(quantity: str) -> int:
    """Kubernetes binary quantity (e.g. 60Gi) in bytes."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", quantity)
    assert match, quantity
    return int(match.group(1)) * {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": GIB, "Ti": 1024**4}[match.group(2)]


def test_templates_use_exactly_the_variables_terraform_passes() -> None:
    """Placeholders of mlflow.yaml + raycluster.yaml == keys of local.k8s_template_vars."""
    keys = set(EXAMPLE.locals["k8s_template_vars"])
    used = template_placeholders((K8S / "mlflow.yaml").read_text()) | template_placeholders(
        (K8S / "raycluster.yaml").read_text()
    )
    assert used == keys, f"undefined: {sorted(used - keys)}, unused: {sorted(keys - used)}"
    ca_keys = set(EXAMPLE.locals["cluster_autoscaler_template_vars"])
    assert template_placeholders((K8S / "cluster-autoscaler-values.yaml").read_text()) == ca_keys
    assert set(SAMPLE) >= keys | ca_keys


def test_template_files_are_referenced_by_the_environment() -> None:
    """Each template in infra/k8s that has placeholders is rendered by an output."""
    outputs = (INFRA / "envs/example/outputs.tf").read_text()
    for template in ("namespaces.yaml", "mlflow.yaml", "raycluster.yaml", "cluster-autoscaler-values.yaml"):
        assert f'/{template}"' in outputs, template


def test_no_service_is_exposed_outside_the_cluster() -> None:
    """Only ClusterIP services; no Ingress, NodePort, LoadBalancer, host ports or host network."""
    for doc in all_manifests():
        assert doc["kind"] not in {"Ingress", "Gateway", "HTTPRoute"}, doc["metadata"]["name"]
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", doc["metadata"]["name"]
        for spec in pod_specs(doc):
            assert not spec.get("hostNetwork"), doc["metadata"]["name"]
            for container in spec["containers"]:
                assert all("hostPort" not in p for p in container.get("ports", [])), container["name"]


def raycluster() -> dict[str, Any]:
    """The rendered RayCluster."""
    (doc,) = [d for d in all_manifests() if d["kind"] == "RayCluster"]
    return doc


def test_raycluster_head_is_private_and_autoscaling() -> None:
    """ray.io/v1, in-tree autoscaling on, ClusterIP head exposing the dashboard, GCS and client ports."""
    cluster = raycluster()
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    head = cluster["spec"]["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert head["rayStartParams"]["num-cpus"] == "0"
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {6379, 8265, 10001}


def test_raycluster_gpu_workers() -> None:
    """GPU workers scale from zero, request all GPUs of a node, tolerate the GPU taint."""
    (group,) = raycluster()["spec"]["workerGroupSpecs"]
    assert group["minReplicas"] == 0 and group["replicas"] == 0 and group["maxReplicas"] == 6
    spec = group["template"]["spec"]
    assert spec["nodeSelector"] == {"verydeep.io/pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    (container,) = spec["containers"]
    assert container["image"] == SAMPLE["ray_image"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert spec["serviceAccountName"] == "ray"


@pytest.mark.parametrize("group", ["head", "gpu"])
def test_dev_shm_is_sized_for_the_object_store(group: str) -> None:
    """/dev/shm is a memory-backed emptyDir with a size limit, larger than the object store."""
    cluster = raycluster()["spec"]
    spec = cluster["headGroupSpec"] if group == "head" else cluster["workerGroupSpecs"][0]
    pod = spec["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"]["medium"] == "Memory"
    shm = quantity_bytes(volume["emptyDir"]["sizeLimit"])
    assert shm > 64 * 1024**2
    if "object-store-memory" in spec["rayStartParams"]:
        store = int(spec["rayStartParams"]["object-store-memory"])
        memory = quantity_bytes(pod["containers"][0]["resources"]["limits"]["memory"])
        assert store < shm < memory


def test_gpu_node_labels_and_taint_match_the_manifests() -> None:
    """Pool label, device-plugin label and GPU taint agree between Terraform and Kubernetes."""
    eks = (INFRA / "modules/eks/main.tf").read_text()
    assert re.search(r'"verydeep\.io/pool"\s*=\s*"gpu"', eks)
    assert re.search(r'"nvidia\.com/gpu\.present"\s*=\s*"true"', eks)
    assert re.search(r'key\s*=\s*"nvidia\.com/gpu"', eks) and '"NO_SCHEDULE"' in eks
    plugin = yaml.safe_load((K8S / "nvidia-device-plugin-values.yaml").read_text())
    assert plugin["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in plugin["tolerations"])
    system = re.search(r'labels = \{\s*"verydeep\.io/pool" = "system"', eks)
    assert system, "system node group label"
    operator = yaml.safe_load((K8S / "kuberay-operator-values.yaml").read_text())
    assert operator["nodeSelector"] == {"verydeep.io/pool": "system"}


def test_mlflow_server_is_hardened_and_private() -> None:
    """MLflow: non-root, read-only root fs, IRSA service account, ClusterIP on 5000, NetworkPolicy."""
    docs = all_manifests()
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["serviceAccountName"] == "mlflow"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DB_SECRET_ARN"] == SAMPLE["db_secret_arn"] and "PASSWORD" not in " ".join(env)
    (service,) = [d for d in docs if d["kind"] == "Service"]
    assert service["spec"]["ports"][0]["port"] == 5000
    policies = {d["metadata"]["namespace"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert policies == {"mlflow", "ray"}


def test_irsa_annotations_point_at_terraform_roles() -> None:
    """Service accounts carry the IRSA role ARNs rendered from Terraform."""
    accounts = {d["metadata"]["name"]: d for d in all_manifests() if d["kind"] == "ServiceAccount"}
    assert accounts["ray"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == SAMPLE["ray_role_arn"]
    assert accounts["mlflow"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == SAMPLE["mlflow_role_arn"]
    values = yaml.safe_load(render_template((K8S / "cluster-autoscaler-values.yaml").read_text(), SAMPLE))
    assert values["rbac"]["serviceAccount"]["annotations"]["eks.amazonaws.com/role-arn"] == SAMPLE["role_arn"]
    assert values["autoDiscovery"]["clusterName"] == "verydeep"


def test_identity_service_accounts_match_manifests() -> None:
    """The IRSA trust policies name the namespace/service account the manifests use."""
    default = load_module(INFRA / "modules/identity").variables["service_accounts"]["default"]
    assert default["ray"] == {"namespace": "ray", "name": "ray"}
    assert default["mlflow"] == {"namespace": "mlflow", "name": "mlflow"}
    values = yaml.safe_load(render_template((K8S / "cluster-autoscaler-values.yaml").read_text(), SAMPLE))
    assert default["cluster_autoscaler"] == {
        "namespace": "kube-system",
        "name": values["rbac"]["serviceAccount"]["name"],
    }


def test_readme_documents_the_pinned_chart_versions() -> None:
    """infra/README.md states the same chart versions the `commands` output installs."""
    readme = (INFRA / "README.md").read_text()
    for chart, version in EXAMPLE.locals["charts"].items():
        assert version in readme, f"{chart} {version} missing from infra/README.md"


def test_manifest_namespaces_exist() -> None:
    """Every namespaced object lives in a namespace created by namespaces.yaml (or by helm)."""
    docs = all_manifests()
    created = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] in created, doc["metadata"]["name"]


def test_rendered_outputs_have_no_leftover_placeholders() -> None:
    """After rendering nothing that looks like a Terraform interpolation remains, except escapes."""
    for name in ("mlflow.yaml", "raycluster.yaml", "cluster-autoscaler-values.yaml"):
        text = render_template((K8S / name).read_text(), SAMPLE)
        leftovers = [line for line in text.splitlines() if "${" in line and not line.lstrip().startswith("#")]
        assert leftovers == [], name


def test_terraform_templatefile_renders_like_the_tests(
    terraform_bin: str, tf_env: dict[str, str], tmp_path: Path
) -> None:
    """Terraform's own templatefile() accepts every template and yields what these tests parsed."""
    keys = set(EXAMPLE.locals["k8s_template_vars"])
    templates = {
        "mlflow.yaml": keys,
        "raycluster.yaml": keys,
        "cluster-autoscaler-values.yaml": set(EXAMPLE.locals["cluster_autoscaler_template_vars"]),
    }
    expressions = []
    for name, names in templates.items():
        variables = ", ".join(f"{k} = {json.dumps(SAMPLE[k])}" for k in sorted(names))
        expressions.append(f"sha256(templatefile({json.dumps(str(K8S / name))}, {{ {variables} }}))")
    result = subprocess.run(
        [terraform_bin, "console"],
        # console reads one expression from stdin: evaluate all digests in one.
        input=f'join(",", [{", ".join(expressions)}])\n',
        cwd=tmp_path,
        env=tf_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    digests = result.stdout.strip().strip('"').split(",")
    expected = [
        hashlib.sha256(render_template((K8S / name).read_text(), SAMPLE).encode()).hexdigest() for name in templates
    ]
    assert digests == expected
