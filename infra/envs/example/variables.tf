# Everything account- or site-specific is a variable; see terraform.tfvars.example.

variable "region" {
  description = "AWS region for every resource."
  type        = string
}

variable "name" {
  description = "Name of the deployment: prefix of every resource and the EKS cluster name."
  type        = string
  default     = "verydeep"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,20}$", var.name))
    error_message = "name must be 3-21 lowercase letters, digits or hyphens, starting with a letter (it is part of S3 bucket names)."
  }
}

variable "tags" {
  description = "Extra tags on every resource (cost centre, owner, ...)."
  type        = map(string)
  default     = {}
}

# --- images -------------------------------------------------------------------------------------

variable "ray_image" {
  description = "Image with Ray and verydeep installed (build infra/ray/Dockerfile), e.g. <account>.dkr.ecr.<region>.amazonaws.com/verydeep:<tag>."
  type        = string

  validation {
    condition     = can(regex("(:[A-Za-z0-9_][A-Za-z0-9_.-]*|@sha256:[0-9a-f]{64})$", var.ray_image)) && !endswith(var.ray_image, ":latest")
    error_message = "ray_image must carry an explicit tag other than latest, or a sha256 digest."
  }
}

variable "ray_version" {
  description = "Ray version inside ray_image (KubeRay derives the start command from it)."
  type        = string
  default     = "2.60.0"
}

variable "mlflow_image" {
  description = "Image with mlflow, boto3 and psycopg2 (build infra/mlflow/Dockerfile)."
  type        = string

  validation {
    condition     = can(regex("(:[A-Za-z0-9_][A-Za-z0-9_.-]*|@sha256:[0-9a-f]{64})$", var.mlflow_image)) && !endswith(var.mlflow_image, ":latest")
    error_message = "mlflow_image must carry an explicit tag other than latest, or a sha256 digest."
  }
}

# --- network and access -------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "CIDR block of the VPC."
  type        = string
  default     = "10.42.0.0/16"
}

variable "availability_zones" {
  description = "Zone names for the subnets (the database and CPU nodes spread over them), e.g. [\"us-east-1a\", \"us-east-1b\", \"us-east-1c\"]."
  type        = list(string)
}

variable "gpu_availability_zone" {
  description = "The one zone of availability_zones that holds every GPU node (pick one with capacity for gpu_instance_type); DDP traffic then never crosses zones."
  type        = string
}

variable "single_nat_gateway" {
  description = "One shared NAT gateway (cheaper) instead of one per zone."
  type        = bool
  default     = true
}

variable "api_public_cidrs" {
  description = "Networks (e.g. your VPN egress /32) allowed to reach the Kubernetes API endpoint from outside the VPC. Empty: the endpoint is private to the VPC."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.api_public_cidrs : can(cidrhost(c, 0)) && !contains(["0.0.0.0/0", "::/0"], c)])
    error_message = "api_public_cidrs must be valid CIDRs and must not include 0.0.0.0/0 or ::/0."
  }
}

variable "admin_principal_arns" {
  description = "IAM roles/users granted cluster-admin besides the principal running terraform (which always is; do not list it again)."
  type        = list(string)
  default     = []
}

# --- compute ------------------------------------------------------------------------------------

variable "kubernetes_version" {
  description = "EKS Kubernetes minor version."
  type        = string
  default     = "1.33"
}

variable "system_instance_type" {
  description = "CPU node type for the Ray head, MLflow and cluster add-ons."
  type        = string
  default     = "m6i.2xlarge"
}

variable "system_min_nodes" {
  description = "Minimum number of CPU nodes."
  type        = number
  default     = 1
}

variable "system_max_nodes" {
  description = "Maximum number of CPU nodes."
  type        = number
  default     = 3
}

variable "gpu_instance_type" {
  description = "GPU node type of the on-demand group."
  type        = string
  default     = "g5.12xlarge"
}

variable "gpu_spot_instance_types" {
  description = "GPU node types the spot group may draw from (same GPU model and count as gpu_instance_type)."
  type        = list(string)
  default     = ["g5.12xlarge"]
}

variable "gpus_per_node" {
  description = "GPUs per GPU node (4 for g5.12xlarge)."
  type        = number
  default     = 4
}

variable "gpu_accelerator_label" {
  description = "GPU model label for the Cluster Autoscaler (k8s.amazonaws.com/accelerator)."
  type        = string
  default     = "nvidia-a10g"
}

variable "gpu_ondemand_max_nodes" {
  description = "Upper bound of on-demand GPU nodes (the group idles at zero)."
  type        = number
  default     = 2
}

variable "gpu_spot_max_nodes" {
  description = "Upper bound of spot GPU nodes (the group idles at zero; 0 disables spot)."
  type        = number
  default     = 4
}

# Pod sizes must fit the node types above after kubelet and daemon-set reservations.
# Defaults fit g5.12xlarge (48 vCPU, 192 GiB) and m6i.2xlarge (8 vCPU, 32 GiB).

variable "head_cpu" {
  description = "CPU of the Ray head pod."
  type        = number
  default     = 4
}

variable "head_memory_gib" {
  description = "Memory of the Ray head pod (GiB)."
  type        = number
  default     = 16
}

variable "head_shm_gib" {
  description = "Size of /dev/shm in the Ray head pod (GiB)."
  type        = number
  default     = 4
}

variable "worker_cpu" {
  description = "CPU of a Ray GPU worker pod (DALI and Ray Data use them for decoding and I/O)."
  type        = number
  default     = 44
}

variable "worker_memory_gib" {
  description = "Memory limit of a Ray GPU worker pod (GiB), including its /dev/shm."
  type        = number
  default     = 170
}

variable "object_store_gib" {
  description = "Ray object store per GPU worker (GiB); /dev/shm is sized 4 GiB above it."
  type        = number
  default     = 56

  validation {
    condition     = var.object_store_gib >= 1
    error_message = "object_store_gib must be at least 1."
  }
}

# --- storage and MLflow -------------------------------------------------------------------------

variable "force_destroy_buckets" {
  description = "Allow `terraform destroy` to delete non-empty buckets. Keep false until you tear down on purpose."
  type        = bool
  default     = false
}

variable "checkpoint_noncurrent_days" {
  description = "Days deleted or overwritten checkpoints stay recoverable."
  type        = number
  default     = 14
}

variable "checkpoint_ia_days" {
  description = "Days before checkpoints move to STANDARD_IA (null: never)."
  type        = number
  default     = 30
}

variable "checkpoint_expiration_days" {
  description = "Days before checkpoints are deleted (null: never)."
  type        = number
  default     = 180
}

variable "db_instance_class" {
  description = "RDS instance class of the MLflow database."
  type        = string
  default     = "db.t4g.small"
}

variable "db_multi_az" {
  description = "Keep a standby of the MLflow database in a second zone."
  type        = bool
  default     = true
}

variable "db_deletion_protection" {
  description = "Refuse to delete the MLflow database; set false (and apply) before `terraform destroy`."
  type        = bool
  default     = true
}
