variable "name" {
  description = "Name prefix."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the database."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the database (at least two zones)."
  type        = list(string)
}

variable "client_security_groups" {
  description = "Security groups allowed to connect on 5432, by a static label (keys must be known at plan time)."
  type        = map(string)
}

variable "engine_version" {
  description = "PostgreSQL version (major or major.minor)."
  type        = string
  default     = "16"
}

variable "instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.small"
}

variable "multi_az" {
  description = "Standby replica in a second zone."
  type        = bool
  default     = true
}

variable "allocated_storage_gib" {
  description = "Initial storage."
  type        = number
  default     = 20
}

variable "max_allocated_storage_gib" {
  description = "Storage autoscaling ceiling."
  type        = number
  default     = 100
}

variable "backup_retention_days" {
  description = "Days of automated backups."
  type        = number
  default     = 7
}

variable "deletion_protection" {
  description = "Refuse to delete the database (set false before `terraform destroy`)."
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "Days to keep database logs."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
