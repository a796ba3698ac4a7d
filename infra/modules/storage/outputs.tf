output "kms_key_arn" {
  description = "KMS key encrypting the data, checkpoint and artifact buckets."
  value       = module.key.arn
}

output "data_bucket" {
  description = "Bucket for the Parquet dataset shards."
  value       = module.data.id
}

output "data_bucket_arn" {
  description = "ARN of the dataset bucket."
  value       = module.data.arn
}

output "checkpoint_bucket" {
  description = "Bucket for training checkpoints."
  value       = module.checkpoints.id
}

output "checkpoint_bucket_arn" {
  description = "ARN of the checkpoint bucket."
  value       = module.checkpoints.arn
}

output "artifact_bucket" {
  description = "Bucket for MLflow artifacts."
  value       = module.artifacts.id
}

output "artifact_bucket_arn" {
  description = "ARN of the MLflow artifact bucket."
  value       = module.artifacts.arn
}

output "access_log_bucket" {
  description = "Bucket receiving S3 server access logs."
  value       = aws_s3_bucket.access_logs.id
}
