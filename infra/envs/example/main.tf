# Example environment: everything verydeep needs in one AWS account and region.
# AWS resources are created here; the Kubernetes side (device plugin, autoscaler, KubeRay,
# RayCluster, MLflow) is applied afterwards with helm/kubectl from files in infra/k8s,
# rendered with this environment's values (see the `commands` output and infra/README.md).

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ Project = "verydeep", ManagedBy = "terraform", Environment = var.name }, var.tags)
  }
}

locals {
  cluster_name = var.name

  gib = 1024 * 1024 * 1024

  # Chart versions the commands below install; upgrade them together after testing.
  charts = {
    nvidia_device_plugin = "0.18.2"
    cluster_autoscaler   = "9.46.0"
    kuberay_operator     = "1.7.0"
  }

  # Cluster Autoscaler minor version must match the Kubernetes minor version.
  cluster_autoscaler_image_tag = "v${var.kubernetes_version}.0"

  data_uri     = "s3://${module.storage.data_bucket}/imagenet/manifest.json"
  storage_uri  = "s3://${module.storage.checkpoint_bucket}/runs"
  mlflow_uri   = "http://mlflow.mlflow.svc.cluster.local:5000"
  ray_head_svc = "verydeep-head-svc"
  env_dir      = "infra/envs/${basename(abspath(path.module))}"
  k8s_dir      = "${path.module}/../../k8s"

  k8s_template_vars = {
    region                = var.region
    ray_image             = var.ray_image
    ray_version           = var.ray_version
    ray_role_arn          = module.identity.ray_role_arn
    mlflow_tracking_uri   = local.mlflow_uri
    data_uri              = local.data_uri
    storage_uri           = local.storage_uri
    head_cpu              = tostring(var.head_cpu)
    head_memory           = "${var.head_memory_gib}Gi"
    head_shm              = "${var.head_shm_gib}Gi"
    gpu_max_workers       = tostring(var.gpu_ondemand_max_nodes + var.gpu_spot_max_nodes)
    gpus_per_node         = tostring(var.gpus_per_node)
    worker_cpu            = tostring(var.worker_cpu)
    worker_memory         = "${var.worker_memory_gib}Gi"
    worker_shm            = "${var.object_store_gib + 4}Gi"
    object_store_bytes    = tostring(var.object_store_gib * local.gib)
    mlflow_image          = var.mlflow_image
    mlflow_role_arn       = module.identity.mlflow_role_arn
    db_secret_arn         = module.mlflow.db_secret_arn
    db_host               = module.mlflow.db_address
    db_port               = tostring(module.mlflow.db_port)
    db_name               = module.mlflow.db_name
    artifacts_destination = "s3://${module.storage.artifact_bucket}/mlflow"
  }

  cluster_autoscaler_template_vars = {
    region       = var.region
    cluster_name = local.cluster_name
    image_tag    = local.cluster_autoscaler_image_tag
    role_arn     = module.identity.cluster_autoscaler_role_arn
  }
}

module "network" {
  source             = "../../modules/network"
  name               = var.name
  cluster_name       = local.cluster_name
  vpc_cidr           = var.vpc_cidr
  availability_zones = var.availability_zones
  single_nat_gateway = var.single_nat_gateway
}

module "storage" {
  source                     = "../../modules/storage"
  name                       = var.name
  force_destroy              = var.force_destroy_buckets
  checkpoint_prefix          = "runs/"
  checkpoint_noncurrent_days = var.checkpoint_noncurrent_days
  checkpoint_ia_days         = var.checkpoint_ia_days
  checkpoint_expiration_days = var.checkpoint_expiration_days
}

module "identity" {
  source                = "../../modules/identity"
  name                  = var.name
  cluster_name          = local.cluster_name
  oidc_provider_arn     = module.eks.oidc_provider_arn
  oidc_issuer_url       = module.eks.oidc_issuer_url
  data_bucket_arn       = module.storage.data_bucket_arn
  checkpoint_bucket_arn = module.storage.checkpoint_bucket_arn
  artifact_bucket_arn   = module.storage.artifact_bucket_arn
  s3_kms_key_arn        = module.storage.kms_key_arn
  db_secret_arn         = module.mlflow.db_secret_arn
  db_kms_key_arn        = module.mlflow.kms_key_arn
}

module "eks" {
  source                  = "../../modules/eks"
  name                    = local.cluster_name
  kubernetes_version      = var.kubernetes_version
  cluster_role_arn        = module.identity.cluster_role_arn
  node_role_arn           = module.identity.node_role_arn
  vpc_cni_role_arn        = module.identity.vpc_cni_role_arn
  subnet_ids              = module.network.private_subnet_ids
  gpu_subnet_index        = index(var.availability_zones, var.gpu_availability_zone)
  api_public_cidrs        = var.api_public_cidrs
  admin_principal_arns    = var.admin_principal_arns
  system_instance_type    = var.system_instance_type
  system_min_nodes        = var.system_min_nodes
  system_max_nodes        = var.system_max_nodes
  gpu_instance_type       = var.gpu_instance_type
  gpu_spot_instance_types = var.gpu_spot_instance_types
  gpus_per_node           = var.gpus_per_node
  gpu_accelerator_label   = var.gpu_accelerator_label
  gpu_ondemand_max_nodes  = var.gpu_ondemand_max_nodes
  gpu_spot_max_nodes      = var.gpu_spot_max_nodes
}

module "mlflow" {
  source                 = "../../modules/mlflow"
  name                   = var.name
  vpc_id                 = module.network.vpc_id
  subnet_ids             = module.network.private_subnet_ids
  client_security_groups = { eks-cluster = module.eks.cluster_security_group_id }
  instance_class         = var.db_instance_class
  multi_az               = var.db_multi_az
  deletion_protection    = var.db_deletion_protection
}
