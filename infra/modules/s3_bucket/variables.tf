variable "bucket_name" {
  description = "Globally unique bucket name."
  type        = string
}

variable "purpose" {
  description = "What the bucket holds (tag value)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for default SSE-KMS encryption."
  type        = string
}

variable "access_log_bucket" {
  description = "Bucket receiving S3 server access logs."
  type        = string
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete a non-empty bucket (all objects and versions are lost)."
  type        = bool
  default     = false
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted object version is kept."
  type        = number
  default     = 30
}

variable "lifecycle_prefix" {
  description = "Key prefix the age-based rules apply to (empty: whole bucket)."
  type        = string
  default     = ""
}

variable "current_version_ia_days" {
  description = "Move objects under lifecycle_prefix to STANDARD_IA after this many days (null: never)."
  type        = number
  default     = null

  validation {
    condition     = var.current_version_ia_days == null ? true : var.current_version_ia_days >= 30
    error_message = "S3 accepts STANDARD_IA transitions only after at least 30 days."
  }
}

variable "current_version_expiration_days" {
  description = "Delete objects under lifecycle_prefix after this many days (null: never)."
  type        = number
  default     = null
}

variable "tags" {
  description = "Tags for the bucket."
  type        = map(string)
  default     = {}
}
