variable "name" {
  description = "Name prefix for roles."
  type        = string
}

variable "cluster_name" {
  description = "EKS cluster the node groups and autoscaler belong to."
  type        = string
}

variable "oidc_provider_arn" {
  description = "ARN of the cluster's IAM OIDC provider (for IRSA)."
  type        = string
}

variable "oidc_issuer_url" {
  description = "OIDC issuer URL of the cluster."
  type        = string
}

variable "service_accounts" {
  description = "Kubernetes service accounts that get an IRSA role, by role key."
  type = map(object({
    namespace = string
    name      = string
  }))
  default = {
    ray                = { namespace = "ray", name = "ray" }
    mlflow             = { namespace = "mlflow", name = "mlflow" }
    cluster_autoscaler = { namespace = "kube-system", name = "cluster-autoscaler" }
    vpc_cni            = { namespace = "kube-system", name = "aws-node" }
  }

  validation {
    condition     = alltrue([for k in ["ray", "mlflow", "cluster_autoscaler", "vpc_cni"] : contains(keys(var.service_accounts), k)])
    error_message = "service_accounts must define ray, mlflow, cluster_autoscaler and vpc_cni."
  }
}

variable "data_bucket_arn" {
  description = "Dataset bucket (read-only for Ray)."
  type        = string
}

variable "checkpoint_bucket_arn" {
  description = "Checkpoint bucket (read/write for Ray)."
  type        = string
}

variable "artifact_bucket_arn" {
  description = "MLflow artifact bucket (read/write for Ray and MLflow)."
  type        = string
}

variable "s3_kms_key_arn" {
  description = "KMS key of the buckets."
  type        = string
}

variable "db_secret_arn" {
  description = "Secrets Manager secret holding the MLflow database credentials."
  type        = string
}

variable "db_kms_key_arn" {
  description = "KMS key encrypting the database secret."
  type        = string
}

variable "tags" {
  description = "Tags for every role."
  type        = map(string)
  default     = {}
}
