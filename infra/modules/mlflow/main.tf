# The MLflow tracking server's state: a private PostgreSQL (RDS) for runs and metrics.
# The server itself runs in the cluster (infra/k8s/mlflow.yaml) behind a ClusterIP service;
# artifacts go to the S3 bucket from the storage module. Nothing here has a public address.

locals {
  identifier = "${var.name}-mlflow"
}

module "key" {
  source                = "../kms_key"
  name                  = "${var.name}-mlflow-db"
  description           = "Encrypts the ${var.name} MLflow database, its credentials secret and its logs."
  allow_cloudwatch_logs = true
  tags                  = var.tags
}

resource "aws_db_subnet_group" "this" {
  name_prefix = "${local.identifier}-"
  subnet_ids  = var.subnet_ids
  tags        = var.tags
}

resource "aws_security_group" "db" {
  name_prefix = "${local.identifier}-db-"
  description = "PostgreSQL of the MLflow tracking server; reachable from EKS nodes and pods only."
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${local.identifier}-db" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "db_from_cluster" {
  for_each = var.client_security_groups

  security_group_id            = aws_security_group.db.id
  description                  = "PostgreSQL from ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = each.value
}

resource "aws_db_parameter_group" "this" {
  name_prefix = "${local.identifier}-"
  family      = "postgres${split(".", var.engine_version)[0]}"
  description = "TLS-only connections and query logging for the MLflow database."
  tags        = var.tags

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }

  lifecycle {
    create_before_destroy = true
  }
}

# RDS would create these on first write with no retention and no encryption.
resource "aws_cloudwatch_log_group" "db" {
  for_each = toset(["postgresql", "upgrade"])

  name              = "/aws/rds/instance/${local.identifier}/${each.value}"
  retention_in_days = var.log_retention_days
  kms_key_id        = module.key.arn
  tags              = var.tags
}

resource "aws_db_instance" "this" {
  #checkov:skip=CKV_AWS_118:Enhanced monitoring adds an IAM role and per-second OS metrics nobody reads for a metadata store of a few hundred runs; CloudWatch basic metrics and exported logs are kept.
  #checkov:skip=CKV_AWS_353:Performance Insights is not needed for MLflow's tiny query load (and not offered on every burstable class); slow queries are logged via log_min_duration_statement.
  #checkov:skip=CKV_AWS_354:Performance Insights is disabled (see CKV_AWS_353), so there is nothing to encrypt.
  identifier     = local.identifier
  engine         = "postgres"
  engine_version = var.engine_version
  instance_class = var.instance_class
  db_name        = "mlflow"
  username       = "mlflow_owner"
  port           = 5432

  # RDS generates the password and keeps it in Secrets Manager under our KMS key;
  # it never appears in Terraform state, variables or manifests.
  manage_master_user_password         = true
  master_user_secret_kms_key_id       = module.key.arn
  iam_database_authentication_enabled = true

  allocated_storage     = var.allocated_storage_gib
  max_allocated_storage = var.max_allocated_storage_gib
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = module.key.arn

  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [aws_security_group.db.id]
  publicly_accessible    = false
  multi_az               = var.multi_az
  parameter_group_name   = aws_db_parameter_group.this.name
  ca_cert_identifier     = "rds-ca-rsa2048-g1"

  backup_retention_period         = var.backup_retention_days
  copy_tags_to_snapshot           = true
  deletion_protection             = var.deletion_protection
  skip_final_snapshot             = false
  final_snapshot_identifier       = "${local.identifier}-final"
  auto_minor_version_upgrade      = true
  enabled_cloudwatch_logs_exports = ["postgresql", "upgrade"]
  performance_insights_enabled    = false

  tags = var.tags

  depends_on = [aws_cloudwatch_log_group.db]
}
