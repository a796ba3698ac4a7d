# The three buckets verydeep uses, plus the bucket their access logs go to.
# Names carry the account id so they are globally unique without random suffixes.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  prefix = "${var.name}-${data.aws_caller_identity.current.account_id}"
}

module "key" {
  source      = "../kms_key"
  name        = "${var.name}-s3"
  description = "Default encryption of the ${var.name} dataset, checkpoint and MLflow artifact buckets."
  tags        = var.tags
}

module "data" {
  source            = "../s3_bucket"
  bucket_name       = "${local.prefix}-data"
  purpose           = "dataset-shards"
  kms_key_arn       = module.key.arn
  access_log_bucket = aws_s3_bucket.access_logs.id
  force_destroy     = var.force_destroy
  tags              = var.tags
}

module "checkpoints" {
  source            = "../s3_bucket"
  bucket_name       = "${local.prefix}-checkpoints"
  purpose           = "training-checkpoints"
  kms_key_arn       = module.key.arn
  access_log_bucket = aws_s3_bucket.access_logs.id
  force_destroy     = var.force_destroy
  # Ray Train deletes checkpoints beyond num_to_keep; versioning keeps them recoverable
  # for a while. Finished runs' checkpoints age into STANDARD_IA and then expire.
  noncurrent_version_days         = var.checkpoint_noncurrent_days
  lifecycle_prefix                = var.checkpoint_prefix
  current_version_ia_days         = var.checkpoint_ia_days
  current_version_expiration_days = var.checkpoint_expiration_days
  tags                            = var.tags
}

module "artifacts" {
  source            = "../s3_bucket"
  bucket_name       = "${local.prefix}-mlflow-artifacts"
  purpose           = "mlflow-artifacts"
  kms_key_arn       = module.key.arn
  access_log_bucket = aws_s3_bucket.access_logs.id
  force_destroy     = var.force_destroy
  tags              = var.tags
}

# --- access-log bucket ----------------------------------------------------------------------
# S3 server access logging can only deliver to a bucket encrypted with SSE-S3, and a log
# bucket logging into itself would loop; hence this bucket is written out by hand.

resource "aws_s3_bucket" "access_logs" {
  #checkov:skip=CKV_AWS_18:This is the access-log target; logging it into itself would create a feedback loop.
  #checkov:skip=CKV_AWS_145:S3 server access log delivery supports only SSE-S3 (AES256) on the target bucket, not SSE-KMS.
  #checkov:skip=CKV_AWS_144:Access logs are kept for audit in-region; replicating them doubles cost without protecting training data.
  #checkov:skip=CKV2_AWS_62:Nothing consumes events for log objects.
  bucket        = "${local.prefix}-access-logs"
  force_destroy = var.force_destroy
  tags          = merge(var.tags, { Purpose = "s3-access-logs" })
}

resource "aws_s3_bucket_public_access_block" "access_logs" {
  bucket                  = aws_s3_bucket.access_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_versioning" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  rule {
    id     = "expire-logs"
    status = "Enabled"

    filter {}

    expiration {
      days = var.access_log_retention_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 7
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.access_logs]
}

data "aws_iam_policy_document" "access_logs" {
  statement {
    sid       = "S3ServerAccessLogDelivery"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.access_logs.arn}/*"]

    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.access_logs.arn,
      "${aws_s3_bucket.access_logs.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "access_logs" {
  bucket     = aws_s3_bucket.access_logs.id
  policy     = data.aws_iam_policy_document.access_logs.json
  depends_on = [aws_s3_bucket_public_access_block.access_logs]
}
