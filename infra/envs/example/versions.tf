terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }

  # State holds bucket names, role ARNs and the database endpoint (no passwords: RDS keeps
  # those in Secrets Manager). Teams should keep it in an encrypted, versioned S3 bucket:
  # copy backend.tf.example to backend.tf and run `terraform init -backend-config=...`.
}
