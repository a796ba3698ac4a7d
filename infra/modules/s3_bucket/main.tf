# One private bucket with the invariants every verydeep bucket shares: SSE-KMS, all four
# public-access blocks, ACLs disabled, TLS-only access, versioning, access logs, lifecycle.

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost for data that is re-derivable (shards from ImageNet, checkpoints and artifacts from training); versioning plus lifecycle cover accidental deletes.
  #checkov:skip=CKV2_AWS_62:No consumer of bucket events exists; training and MLflow poll S3 directly.
  bucket        = var.bucket_name
  force_destroy = var.force_destroy
  tags          = merge(var.tags, { Purpose = var.purpose })
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    # S3 Bucket Keys cut KMS requests (and their cost) by orders of magnitude when
    # thousands of shards are read per epoch.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_logging" "this" {
  bucket        = aws_s3_bucket.this.id
  target_bucket = var.access_log_bucket
  target_prefix = "${var.bucket_name}/"
}

data "aws_iam_policy_document" "tls_only" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.this.arn,
      "${aws_s3_bucket.this.arn}/*",
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

  statement {
    sid     = "DenyOutdatedTls"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.this.arn,
      "${aws_s3_bucket.this.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.tls_only.json

  # A bucket policy put before the public-access block could be judged public and refused.
  depends_on = [aws_s3_bucket_public_access_block.this]
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  # Overwritten or deleted objects stay recoverable for a while, then stop costing money;
  # so do the parts of uploads that never completed (e.g. a preempted checkpoint write).
  rule {
    id     = "housekeeping"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  # Age-based rules are always declared and switched off when their variable is null (a
  # disabled rule needs a valid period, hence the placeholder of 100 years).
  rule {
    id     = "old-objects-to-infrequent-access"
    status = var.current_version_ia_days == null ? "Disabled" : "Enabled"

    filter {
      prefix = var.lifecycle_prefix
    }

    transition {
      days          = coalesce(var.current_version_ia_days, 36500)
      storage_class = "STANDARD_IA"
    }
  }

  rule {
    id     = "expire-old-objects"
    status = var.current_version_expiration_days == null ? "Disabled" : "Enabled"

    filter {
      prefix = var.lifecycle_prefix
    }

    expiration {
      days = coalesce(var.current_version_expiration_days, 36500)
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}
