output "cluster_role_arn" {
  description = "Role of the EKS control plane."
  value       = aws_iam_role.cluster.arn
}

output "node_role_arn" {
  description = "Role of the EC2 worker nodes."
  value       = aws_iam_role.node.arn
}

output "ray_role_arn" {
  description = "IRSA role of the `ray` service account."
  value       = aws_iam_role.irsa["ray"].arn
}

output "mlflow_role_arn" {
  description = "IRSA role of the `mlflow` service account."
  value       = aws_iam_role.irsa["mlflow"].arn
}

output "cluster_autoscaler_role_arn" {
  description = "IRSA role of the Cluster Autoscaler."
  value       = aws_iam_role.irsa["cluster_autoscaler"].arn
}

output "vpc_cni_role_arn" {
  description = "IRSA role of the VPC CNI (aws-node)."
  value       = aws_iam_role.irsa["vpc_cni"].arn
}
