# EKS control plane, node groups and the add-ons that must exist before any workload:
# - `system` (CPU, on-demand): Ray head, MLflow, KubeRay operator, Cluster Autoscaler, CoreDNS.
# - `gpu-ondemand` and `gpu-spot` (both labelled verydeep.io/pool=gpu): Ray GPU workers only.
#   Both scale to zero, are tainted nvidia.com/gpu=true:NoSchedule so nothing else lands on
#   them, and sit in ONE availability zone: DDP all-reduces VGG's ~550 MB of gradients every
#   step, which across zones would be slow and billed per GB.

locals {
  gpu_subnet_ids = [var.subnet_ids[var.gpu_subnet_index]]

  gpu_taint = {
    key    = "nvidia.com/gpu"
    value  = "true"
    effect = "NO_SCHEDULE"
  }

  gpu_groups = {
    gpu-ondemand = {
      capacity_type  = "ON_DEMAND"
      instance_types = [var.gpu_instance_type]
      max_size       = var.gpu_ondemand_max_nodes
    }
    gpu-spot = {
      capacity_type  = "SPOT"
      instance_types = var.gpu_spot_instance_types
      max_size       = var.gpu_spot_max_nodes
    }
  }

  gpu_labels = {
    for group, _ in local.gpu_groups : group => {
      "verydeep.io/pool"              = "gpu"
      "nvidia.com/gpu.present"        = "true" # the NVIDIA device plugin chart schedules on this label
      "k8s.amazonaws.com/accelerator" = var.gpu_accelerator_label
    }
  }

  # Cluster Autoscaler must know what a node of an empty (size 0) group would look like:
  # its labels, taints and GPU count are published as tags on the group's Auto Scaling group.
  asg_template_tags = merge([
    for group, _ in local.gpu_groups : merge(
      {
        for k, v in local.gpu_labels[group] :
        "${group}|k8s.io/cluster-autoscaler/node-template/label/${k}" => v
      },
      {
        "${group}|k8s.io/cluster-autoscaler/node-template/taint/${local.gpu_taint.key}" = "${local.gpu_taint.value}:NoSchedule"
        "${group}|k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"     = tostring(var.gpus_per_node)
      },
    )
  ]...)
}

# --- encryption and audit logs ----------------------------------------------------------------

module "key" {
  source                = "../kms_key"
  name                  = "${var.name}-eks"
  description           = "Encrypts Kubernetes secrets and control-plane logs of ${var.name}."
  allow_cloudwatch_logs = true
  tags                  = var.tags
}

# Created before the cluster so EKS writes into a log group with retention and encryption
# instead of creating its own that never expires.
resource "aws_cloudwatch_log_group" "cluster" {
  name              = "/aws/eks/${var.name}/cluster"
  retention_in_days = var.log_retention_days
  kms_key_id        = module.key.arn
  tags              = var.tags
}

# --- control plane ----------------------------------------------------------------------------

resource "aws_eks_cluster" "this" {
  name     = var.name
  version  = var.kubernetes_version
  role_arn = var.cluster_role_arn

  vpc_config {
    subnet_ids              = var.subnet_ids
    endpoint_private_access = true
    # The API endpoint is private unless the operator lists the networks allowed to reach it
    # (validation in the root module rejects 0.0.0.0/0 and ::/0).
    endpoint_public_access = length(var.api_public_cidrs) > 0
    public_access_cidrs    = length(var.api_public_cidrs) > 0 ? var.api_public_cidrs : null
  }

  access_config {
    authentication_mode                         = "API"
    bootstrap_cluster_creator_admin_permissions = true
  }

  encryption_config {
    resources = ["secrets"]

    provider {
      key_arn = module.key.arn
    }
  }

  enabled_cluster_log_types = ["api", "audit", "authenticator", "controllerManager", "scheduler"]

  # Falling into extended support multiplies the control-plane price by six; fail loudly instead.
  upgrade_policy {
    support_type = "STANDARD"
  }

  tags = var.tags

  depends_on = [aws_cloudwatch_log_group.cluster]
}

resource "aws_iam_openid_connect_provider" "this" {
  url            = aws_eks_cluster.this.identity[0].oidc[0].issuer
  client_id_list = ["sts.amazonaws.com"]
  tags           = var.tags
}

resource "aws_eks_access_entry" "admins" {
  for_each = toset(var.admin_principal_arns)

  cluster_name  = aws_eks_cluster.this.name
  principal_arn = each.value
  type          = "STANDARD"
}

resource "aws_eks_access_policy_association" "admins" {
  for_each = toset(var.admin_principal_arns)

  cluster_name  = aws_eks_cluster.this.name
  principal_arn = each.value
  policy_arn    = "arn:${data.aws_partition.current.partition}:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"

  access_scope {
    type = "cluster"
  }

  depends_on = [aws_eks_access_entry.admins]
}

data "aws_partition" "current" {}

# --- launch templates: IMDSv2 only, closed to pods; encrypted root volumes ---------------------

resource "aws_launch_template" "system" {
  name_prefix            = "${var.name}-system-"
  update_default_version = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = var.system_disk_gib
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name}-system" })
  }

  tags = var.tags
}

resource "aws_launch_template" "gpu" {
  name_prefix            = "${var.name}-gpu-"
  update_default_version = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  # The Ray image (CUDA, PyTorch, DALI) is tens of GB unpacked; Ray also spills objects here.
  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = var.gpu_disk_gib
      volume_type           = "gp3"
      throughput            = 500
      iops                  = 6000
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name}-gpu" })
  }

  tags = var.tags
}

# --- node groups ------------------------------------------------------------------------------

resource "aws_eks_node_group" "system" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "system"
  node_role_arn   = var.node_role_arn
  subnet_ids      = var.subnet_ids
  ami_type        = "AL2023_x86_64_STANDARD"
  capacity_type   = "ON_DEMAND"
  instance_types  = [var.system_instance_type]

  launch_template {
    id      = aws_launch_template.system.id
    version = aws_launch_template.system.latest_version
  }

  scaling_config {
    min_size     = var.system_min_nodes
    desired_size = var.system_min_nodes
    max_size     = var.system_max_nodes
  }

  update_config {
    max_unavailable = 1
  }

  labels = {
    "verydeep.io/pool" = "system"
  }

  tags = var.tags

  # The Cluster Autoscaler owns the size between min and max.
  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }
}

resource "aws_eks_node_group" "gpu" {
  for_each = local.gpu_groups

  cluster_name    = aws_eks_cluster.this.name
  node_group_name = each.key
  node_role_arn   = var.node_role_arn
  subnet_ids      = local.gpu_subnet_ids
  ami_type        = "AL2023_x86_64_NVIDIA" # NVIDIA driver and container toolkit preinstalled
  capacity_type   = each.value.capacity_type
  instance_types  = each.value.instance_types

  launch_template {
    id      = aws_launch_template.gpu.id
    version = aws_launch_template.gpu.latest_version
  }

  scaling_config {
    min_size     = 0
    desired_size = 0
    max_size     = each.value.max_size
  }

  update_config {
    max_unavailable = 1
  }

  labels = local.gpu_labels[each.key]

  taint {
    key    = local.gpu_taint.key
    value  = local.gpu_taint.value
    effect = local.gpu_taint.effect
  }

  tags = var.tags

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }
}

resource "aws_autoscaling_group_tag" "gpu_node_template" {
  for_each = local.asg_template_tags

  autoscaling_group_name = aws_eks_node_group.gpu[split("|", each.key)[0]].resources[0].autoscaling_groups[0].name

  tag {
    key                 = split("|", each.key)[1]
    value               = each.value
    propagate_at_launch = false
  }
}

# --- add-ons ----------------------------------------------------------------------------------

resource "aws_eks_addon" "vpc_cni" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "vpc-cni"
  service_account_role_arn    = var.vpc_cni_role_arn
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
  # Enforce the NetworkPolicies shipped in infra/k8s (Ray and MLflow only reachable in-cluster
  # from their own namespaces).
  configuration_values = jsonencode({ enableNetworkPolicy = "true" })
  tags                 = var.tags
}

resource "aws_eks_addon" "kube_proxy" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "kube-proxy"
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
  tags                        = var.tags
}

resource "aws_eks_addon" "coredns" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "coredns"
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
  tags                        = var.tags

  # CoreDNS pods need a node to run on, or the add-on never turns healthy.
  depends_on = [aws_eks_node_group.system]
}
