variable "name" {
  description = "Name prefix for every resource of the network."
  type        = string
}

variable "cluster_name" {
  description = "EKS cluster name, used to tag the private subnets for internal load balancers."
  type        = string
}

variable "vpc_cidr" {
  description = "CIDR block of the VPC (a /16 leaves room for pod addresses)."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 16
    error_message = "vpc_cidr must be a valid IPv4 CIDR of size /16 or larger."
  }
}

variable "availability_zones" {
  description = "Zones (names, e.g. us-east-1a) to place one private and one NAT subnet in each."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 6 && length(distinct(var.availability_zones)) == length(var.availability_zones)
    error_message = "EKS and Multi-AZ RDS need at least two distinct zones; at most 6 fit the addressing plan."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones (cheaper) instead of one per zone (survives a zone outage)."
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "Days to keep VPC flow logs."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
