variable "name" {
  description = "Cluster name."
  type        = string
}

variable "kubernetes_version" {
  description = "Kubernetes minor version of the control plane and nodes."
  type        = string
}

variable "cluster_role_arn" {
  description = "IAM role of the control plane."
  type        = string
}

variable "node_role_arn" {
  description = "IAM role of the worker nodes."
  type        = string
}

variable "vpc_cni_role_arn" {
  description = "IRSA role of the VPC CNI."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the control-plane ENIs and the system nodes."
  type        = list(string)
}

variable "gpu_subnet_index" {
  description = "Index in subnet_ids of the one subnet (zone) GPU nodes are placed in."
  type        = number
  default     = 0
}

variable "api_public_cidrs" {
  description = "Networks allowed to reach the public API endpoint; empty keeps the endpoint private."
  type        = list(string)
  default     = []
}

variable "admin_principal_arns" {
  description = "IAM principals granted cluster-admin through EKS access entries."
  type        = list(string)
  default     = []
}

variable "system_instance_type" {
  description = "Instance type of the CPU node group."
  type        = string
}

variable "system_min_nodes" {
  description = "Minimum (and initial) size of the CPU node group."
  type        = number
}

variable "system_max_nodes" {
  description = "Maximum size of the CPU node group."
  type        = number
}

variable "system_disk_gib" {
  description = "Root volume of CPU nodes."
  type        = number
  default     = 100
}

variable "gpu_instance_type" {
  description = "Instance type of the on-demand GPU node group."
  type        = string
}

variable "gpu_spot_instance_types" {
  description = "Instance types the spot GPU node group may use (same GPU count and model)."
  type        = list(string)
}

variable "gpus_per_node" {
  description = "GPUs per GPU node (published to the Cluster Autoscaler for scale-from-zero)."
  type        = number
}

variable "gpu_accelerator_label" {
  description = "Value of the k8s.amazonaws.com/accelerator label on GPU nodes."
  type        = string
}

variable "gpu_ondemand_max_nodes" {
  description = "Upper bound of the on-demand GPU node group."
  type        = number
}

variable "gpu_spot_max_nodes" {
  description = "Upper bound of the spot GPU node group."
  type        = number
}

variable "gpu_disk_gib" {
  description = "Root volume of GPU nodes (container images and Ray spill)."
  type        = number
  default     = 300
}

variable "log_retention_days" {
  description = "Days to keep control-plane logs."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
