variable "name" {
  description = "Name prefix; bucket names are <name>-<account id>-<purpose>."
  type        = string
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete non-empty buckets (dataset, checkpoints and artifacts are lost)."
  type        = bool
  default     = false
}

variable "checkpoint_prefix" {
  description = "Key prefix under which training runs write checkpoints."
  type        = string
  default     = "runs/"
}

variable "checkpoint_noncurrent_days" {
  description = "Days a deleted or overwritten checkpoint stays recoverable."
  type        = number
  default     = 14
}

variable "checkpoint_ia_days" {
  description = "Move checkpoints to STANDARD_IA after this many days (null: never)."
  type        = number
  default     = 30
}

variable "checkpoint_expiration_days" {
  description = "Delete checkpoints after this many days (null: keep forever)."
  type        = number
  default     = 180
}

variable "access_log_retention_days" {
  description = "Days to keep S3 server access logs."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
