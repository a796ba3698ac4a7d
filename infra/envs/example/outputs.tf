# --- where things are ---------------------------------------------------------------------------

output "region" {
  description = "AWS region of the deployment."
  value       = var.region
}

output "cluster_name" {
  description = "EKS cluster name."
  value       = module.eks.cluster_name
}

output "data_bucket_uri" {
  description = "Bucket for the Parquet dataset shards."
  value       = "s3://${module.storage.data_bucket}"
}

output "dataset_manifest_uri" {
  description = "Where trainer.run expects the ImageNet shard manifest (--data)."
  value       = local.data_uri
}

output "checkpoint_bucket_uri" {
  description = "Bucket for training checkpoints."
  value       = "s3://${module.storage.checkpoint_bucket}"
}

output "checkpoint_storage_uri" {
  description = "Prefix trainer.run writes runs and checkpoints under (--storage)."
  value       = local.storage_uri
}

output "mlflow_artifact_uri" {
  description = "Where the MLflow server stores artifacts."
  value       = local.k8s_template_vars.artifacts_destination
}

output "ray_job_address" {
  description = "Ray job API as seen from your machine once `kubectl port-forward` runs (private: no public endpoint exists)."
  value       = "http://localhost:8265"
}

output "ray_job_address_in_cluster" {
  description = "Ray job API inside the cluster (ClusterIP service)."
  value       = "http://${local.ray_head_svc}.ray.svc.cluster.local:8265"
}

output "mlflow_tracking_uri" {
  description = "MLflow tracking URI inside the cluster (set as MLFLOW_TRACKING_URI in every Ray pod)."
  value       = local.mlflow_uri
}

output "mlflow_ui_url" {
  description = "MLflow UI from your machine once `kubectl port-forward` runs."
  value       = "http://localhost:5000"
}

# --- rendered Kubernetes inputs ------------------------------------------------------------------

output "k8s_manifests" {
  description = "Namespaces, RayCluster and MLflow server for this environment: pipe into `kubectl apply -f -`."
  value = join("\n---\n", [
    file("${local.k8s_dir}/namespaces.yaml"),
    templatefile("${local.k8s_dir}/mlflow.yaml", local.k8s_template_vars),
    templatefile("${local.k8s_dir}/raycluster.yaml", local.k8s_template_vars),
  ])
}

output "cluster_autoscaler_values" {
  description = "Helm values of the Cluster Autoscaler for this environment: pipe into `helm ... -f -`."
  value       = templatefile("${local.k8s_dir}/cluster-autoscaler-values.yaml", local.cluster_autoscaler_template_vars)
}

# --- what to type ---------------------------------------------------------------------------------

output "commands" {
  description = "Exact commands, run from the repository root, to bring up, use and tear down the cluster."
  value       = <<-EOT
    # 1. kubeconfig (needs network access to the API endpoint: VPN/bastion, or api_public_cidrs)
    aws eks update-kubeconfig --region ${var.region} --name ${module.eks.cluster_name}

    # 2. cluster add-ons, once per cluster
    helm repo add nvdp https://nvidia.github.io/k8s-device-plugin
    helm repo add autoscaler https://kubernetes.github.io/autoscaler
    helm repo add kuberay https://ray-project.github.io/kuberay-helm/
    helm repo update
    helm upgrade --install nvidia-device-plugin nvdp/nvidia-device-plugin --version ${local.charts.nvidia_device_plugin} \
      --namespace kube-system -f infra/k8s/nvidia-device-plugin-values.yaml
    terraform -chdir=${local.env_dir} output -raw cluster_autoscaler_values | \
      helm upgrade --install cluster-autoscaler autoscaler/cluster-autoscaler --version ${local.charts.cluster_autoscaler} \
      --namespace kube-system -f -
    helm upgrade --install kuberay-operator kuberay/kuberay-operator --version ${local.charts.kuberay_operator} \
      --namespace ray-system --create-namespace -f infra/k8s/kuberay-operator-values.yaml

    # 3. Ray cluster and MLflow server
    terraform -chdir=${local.env_dir} output -raw k8s_manifests | kubectl apply -f -
    kubectl -n ray wait raycluster/verydeep --for=jsonpath='{.status.state}'=ready --timeout=15m
    kubectl -n mlflow rollout status deploy/mlflow --timeout=10m

    # 4. private tunnels to the Ray dashboard/job API and the MLflow UI (keep them running)
    kubectl -n ray port-forward svc/${local.ray_head_svc} 8265:8265 &
    kubectl -n mlflow port-forward svc/mlflow 5000:5000 &

    # 5. submit training of configuration E
    ray job submit --address http://localhost:8265 --working-dir . -- \
      python -m trainer.run --arch E --data ${local.data_uri} --storage ${local.storage_uri}

    # 6. watch: job logs, Ray dashboard, MLflow UI, GPU nodes
    ray job list --address http://localhost:8265
    ray job logs --address http://localhost:8265 --follow <submission-id>
    open http://localhost:8265   # Ray dashboard
    open http://localhost:5000   # MLflow UI
    kubectl get nodes -L verydeep.io/pool,eks.amazonaws.com/capacityType -w

    # 7. tear down (GPU nodes first, then everything; buckets and database are protected)
    terraform -chdir=${local.env_dir} output -raw k8s_manifests | kubectl delete --ignore-not-found -f -
    helm uninstall kuberay-operator --namespace ray-system
    helm uninstall cluster-autoscaler nvidia-device-plugin --namespace kube-system
    terraform -chdir=${local.env_dir} apply -var force_destroy_buckets=true -var db_deletion_protection=false
    terraform -chdir=${local.env_dir} destroy
  EOT
}
